"""A table printed at the end of a pytest run: how the reliability and benchmark reports show
their results after the tests' own output."""

from __future__ import annotations

from typing import Any

import pytest


class SummaryTable:
    """Registered as a pytest plugin; whatever `text` holds at the end is printed under `title`."""

    def __init__(self, request: pytest.FixtureRequest, title: str) -> None:
        self.title = title
        self.text = ""
        request.config.pluginmanager.register(self, title)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.text:
            terminalreporter.write_sep("=", self.title)
            terminalreporter.write_line(self.text)
