"""The configuration table (docs/configuration.md, "## Settings") is the settings classes' truth:
every setting is documented with its real default, and nothing documented is missing from the
code. README, the entry, still shows how to run and test the pipeline."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic.fields import FieldInfo

from console_service.settings import ConsoleSettings
from consumer_service.settings import ConsumerSettings
from inmemory_service.settings import InMemorySettings
from producer_service.settings import ProducerSettings
from topic_admin_service.settings import TopicAdminSettings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
CLASSES = [ProducerSettings, ConsumerSettings, TopicAdminSettings, InMemorySettings, ConsoleSettings]


def default_text(field: FieldInfo) -> str:
    """How the configuration table writes a field's default."""
    value = field.get_default(call_default_factory=True)
    if value in (None, {}):
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"`{value}`" if isinstance(value, str) else str(value)


def documented() -> dict[str, str]:
    """The rows of the table under "## Settings" (other sections list compose-only variables)."""
    section = CONFIGURATION.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]+) \|", section, re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def test_every_setting_is_in_the_configuration_table_with_its_default() -> None:
    table = documented()
    for cls in CLASSES:
        for name, field in cls.model_fields.items():
            variable = name.upper()
            assert variable in table, f"{variable} ({cls.__name__}) is not in {CONFIGURATION.name}"
            assert table[variable] == default_text(field), (variable, table[variable], default_text(field))


def test_the_configuration_table_documents_no_setting_that_does_not_exist() -> None:
    known = {name.upper() for cls in CLASSES for name in cls.model_fields}
    assert set(documented()) - known == set()


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "docker compose up" in text
    assert "make test" in text
