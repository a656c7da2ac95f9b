"""The chart's tests run last in `make test`: their tools (helmcheck, checkov) are built in the
background when `make test` starts (Makefile), and the other tests give that build the time."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.is_relative_to(HERE))  # stable: the rest keep their order
