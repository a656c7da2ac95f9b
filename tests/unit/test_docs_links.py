"""README is the entry and docs/ holds the depth, so a reader moves between them by links: every
relative link in README.md and docs/*.md must reach a file that exists, and every #anchor a
heading of its target, named as GitHub names it. A moved or renamed section then fails here
instead of leaving a dead link."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
INLINE_CODE = re.compile(r"(`+).+?\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents(repo: Path) -> list[Path]:
    """The files whose links are checked: README.md and every Markdown file under docs/."""
    return [repo / "README.md", *sorted((repo / "docs").glob("**/*.md"))]


def prose_lines(text: str) -> Iterator[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the rendered text in lower case, without punctuation
    (letters, digits, `_`, `-` and spaces stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown text's headings make; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose_lines(text):
        match = HEADING.match(line)
        if match is None:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(text: str) -> Iterator[str]:
    """The targets of the inline links and link definitions outside code."""
    for line in prose_lines(text):
        if (definition := REFERENCE_DEFINITION.match(line)) is not None:
            yield definition.group(1)
            continue
        yield from INLINE_LINK.findall(INLINE_CODE.sub("", line))


def broken_links(repo: Path) -> list[str]:
    """One line per relative link of the documents that reaches no file, or no heading."""
    problems: list[str] = []
    for document in documents(repo):
        name = document.relative_to(repo).as_posix()
        for target in links(document.read_text(encoding="utf-8")):
            if SCHEME.match(target):  # http:, https:, mailto: are not checked here
                continue
            path_part, _, anchor = target.partition("#")
            destination = (document.parent / unquote(path_part)).resolve() if path_part else document
            if not destination.is_relative_to(repo):
                problems.append(f"{name}: {target} leaves the repository")
                continue
            relative = destination.relative_to(repo).as_posix()
            if not destination.exists():
                problems.append(f"{name}: {target} -> {relative} does not exist")
                continue
            if not anchor:
                continue
            if destination.suffix != ".md" or destination.is_dir():
                problems.append(f"{name}: {target} has an anchor into a file without headings")
            elif unquote(anchor) not in anchors(destination.read_text(encoding="utf-8")):
                problems.append(f"{name}: {target} -> no heading #{anchor} in {relative}")
    return problems


def test_every_link_in_readme_and_docs_reaches_a_file_and_a_heading() -> None:
    assert broken_links(REPO) == []


def test_a_missing_file_and_a_missing_heading_are_both_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Move a group's offsets\n\n## `make test`\n\n"
        "```bash\n# not a heading\n```\n\n[back](../README.md#run-it)\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text(
        "# Title\n\n## Run it\n\n"
        "[ok](docs/guide.md#move-a-groups-offsets) [ok](docs/guide.md#make-test) [ok](#run-it)\n"
        "[gone](docs/gone.md) [no heading](docs/guide.md#not-a-heading)\n"
        "`[in code](docs/code.md)` [web](https://example.com/x.md)\n",
        encoding="utf-8",
    )
    assert broken_links(tmp_path) == [
        "README.md: docs/gone.md -> docs/gone.md does not exist",
        "README.md: docs/guide.md#not-a-heading -> no heading #not-a-heading in docs/guide.md",
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Move a group's offsets", "move-a-groups-offsets"),
        ("Fault scenarios: `make reliability`", "fault-scenarios-make-reliability"),
        ("OAUTHBEARER / OIDC", "oauthbearer--oidc"),
        ("What `make test` installs, and where", "what-make-test-installs-and-where"),
        ("Kafka client properties and at-least-once delivery",
         "kafka-client-properties-and-at-least-once-delivery"),
        ("The [client](client.md) API", "the-client-api"),
        ("CONSUMER_MODE and Ünïcode", "consumer_mode-and-ünïcode"),
    ],
)
def test_anchors_are_named_as_github_names_them(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_a_repeated_heading_gets_a_numbered_anchor() -> None:
    assert anchors("## Alerts\n\n## Alerts\n\n## Alerts\n") == {"alerts", "alerts-1", "alerts-2"}
