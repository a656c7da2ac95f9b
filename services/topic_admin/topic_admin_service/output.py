"""What the new commands print for a person (rich): tables on stdout, a progress bar on stderr
while it is a terminal. Programs use `--json` instead. (`describe` keeps its tabulate table.)"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, Protocol, TextIO

from rich import box
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from jobpipe.group_offsets import PartitionState
from topic_admin_service.offset_plan import Move, Target, totals
from topic_admin_service.redrive import DeadLetter, Tally, Verdict
from topic_admin_service.watch import WatchRow, lag_direction

PIPE_WIDTH = 200  # columns a table may take when stdout is a file or a pipe


def console(stream: TextIO | None = None) -> Console:
    """A console for results: plain text (no colours, no highlighting) unless a terminal."""
    target = stream or sys.stdout
    terminal = target.isatty()
    return Console(file=target, highlight=False, emoji=False, width=None if terminal else PIPE_WIDTH)


def table(*columns: str, numeric: Sequence[str] = ()) -> Table:
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        grid.add_column(column, justify="right" if column in numeric else "left", overflow="fold")
    return grid


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


# ---- progress -------------------------------------------------------------------------------

class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, count: int = 1) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    """Not a terminal: no bar (the `redrive.progress` log events say how far it got)."""

    shown = False

    def start(self, total: int) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Bar:
    """A progress bar on stderr."""

    shown = True

    def __init__(self, description: str) -> None:
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), redirect_stderr=False,
                                 redirect_stdout=False)
        self._description = description
        self._task: int | None = None

    def start(self, total: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task(self._description, total=total)

    def advance(self, count: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, count)  # type: ignore[arg-type]

    def close(self) -> None:
        self._bar.stop()


def progress(description: str) -> NoProgress | Bar:
    return Bar(description) if sys.stderr.isatty() else NoProgress()


# ---- redrive --------------------------------------------------------------------------------

VERDICT_LABELS = {Verdict.MOVE: "moved", Verdict.FILTERED: "skipped by filter",
                  Verdict.MAX_REDRIVES: "left (--max-redrives)", Verdict.ALREADY: "already re-driven"}


SUMMARY_ORDER = (Verdict.MOVE, Verdict.FILTERED, Verdict.MAX_REDRIVES, Verdict.ALREADY)


def redrive_tables(tally: Tally, dlq_topic: str, jobs_topic: str) -> list[RenderableType]:
    moved = "would move" if tally.dry_run else "moved"
    heading = f"{dlq_topic} -> {jobs_topic}" + (" (dry run: nothing moved)" if tally.dry_run else "")
    by_error = table("error", moved, numeric=[moved])
    for error, count in tally.moved_by_error.most_common():
        by_error.add_row(error, str(count))
    if not tally.moved_by_error:
        by_error.add_row("(none)", "0")
    summary = table("dead letters", "count", numeric=["count"])
    for verdict in SUMMARY_ORDER:
        label = moved if verdict is Verdict.MOVE else VERDICT_LABELS[verdict]
        summary.add_row(label, str(tally.counts[verdict]))
    summary.add_row("scanned", str(tally.scanned))
    rendered: list[RenderableType] = [heading, by_error, summary]
    if tally.interrupted:
        rendered.append("interrupted: the dead letters counted as moved were moved; run again to go on")
    return rendered


# ---- offsets --------------------------------------------------------------------------------

def offsets_table(group: str, topic: str, states: Sequence[PartitionState]) -> list[RenderableType]:
    grid = table("partition", "start", "end", "committed", "lag",
                 numeric=["partition", "start", "end", "committed", "lag"])
    for state in states:
        grid.add_row(str(state.partition), str(state.start), str(state.end), _number(state.committed),
                     str(state.lag))
    return [f"group {group} on {topic}", grid]


def plan_table(group: str, topic: str, target: Target, moves: Sequence[Move],
               executed: bool) -> list[RenderableType]:
    status = "applied" if executed else "dry run: nothing changed; add --execute to apply"
    grid = table("partition", "current", "new", "skipped/replayed", numeric=["partition", "current", "new"])
    for move in moves:
        current = _number(move.committed) + ("" if move.committed == move.current else f" ({move.current})")
        grid.add_row(str(move.partition), current, str(move.new) + (" (clamped)" if move.clamped else ""),
                     move.change)
    summary = totals(moves)
    return [f"group {group} on {topic}, {target} ({status})", grid,
            f"in all: skips {summary['skipped']}, replays {summary['replayed']}"]


# ---- describe --watch -----------------------------------------------------------------------

def watch_table(rows: Sequence[WatchRow], caption: str) -> Table:
    grid = table("topic", "partition", "end", "committed", "lag", "in jobs/s", "done jobs/s", "lag trend",
                 numeric=["partition", "end", "committed", "lag", "in jobs/s", "done jobs/s"])
    grid.caption = caption
    grid.caption_justify = "left"
    for row in rows:
        trend = f"{row.trend} {lag_direction(row.lag_per_s)}".strip()
        grid.add_row(row.topic, str(row.partition), str(row.end), _number(row.committed), _number(row.lag),
                     _rate(row.in_per_s), _rate(row.out_per_s), trend)
    return grid


# ---- dead letters ---------------------------------------------------------------------------

def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def dead_letter_summary(letter: DeadLetter, redriven: bool) -> dict[str, Any]:
    """One line of `dlq list --json`."""
    failed = letter.failed_at
    return {"at": f"{letter.partition}:{letter.offset}", "partition": letter.partition,
            "offset": letter.offset, "key": letter.key.decode(errors="replace") if letter.key else None,
            "failed_at": failed.isoformat() if failed else None, "attempts": letter.attempts,
            "error": letter.error, "original_partition": letter.original_partition,
            "original_offset": letter.original_offset, "redrives": letter.redrives,
            "redriven": redriven}


def dead_letters_table(found: Sequence[tuple[DeadLetter, bool]], dlq_topic: str) -> Table:
    grid = table("at", "key", "failed at", "attempts", "from", "error", "re-driven",
                 numeric=["attempts"])
    grid.caption = f"{len(found)} dead letter(s) of {dlq_topic}; `topic-admin dlq show P:O` for one"
    grid.caption_justify = "left"
    for letter, redriven in found:
        row = dead_letter_summary(letter, redriven)
        origin = ("-" if row["original_partition"] is None
                  else f"{row['original_partition']}:{row['original_offset']}")
        grid.add_row(row["at"], row["key"] or "-", (row["failed_at"] or "-")[:23], _number(row["attempts"]),
                     origin, _shorten(letter.error, 80), "yes" if redriven else "")
    return grid


def _body(value: bytes | None) -> Any:
    """The body as JSON when it is, else as text."""
    if value is None:
        return None
    text = value.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def dead_letter_detail(letter: DeadLetter, redriven: bool) -> dict[str, Any]:
    """`dlq show --json`: the summary, every header and the body."""
    return dead_letter_summary(letter, redriven) | {
        "headers": [[name, None if value is None else value.decode(errors="replace")]
                    for name, value in letter.headers],
        "body": _body(letter.value)}


def dead_letter_text(letter: DeadLetter, redriven: bool, dlq_topic: str) -> str:
    """`dlq show`: for a person."""
    row = dead_letter_detail(letter, redriven)
    lines = [f"{dlq_topic} {row['at']}" + ("  (re-driven)" if redriven else ""),
             f"key       {row['key'] or '-'}",
             f"error     {row['error']}",
             f"attempts  {_number(row['attempts'])}",
             f"failed at {row['failed_at'] or '-'}",
             "headers:"]
    lines += [f"  {name}: {value}" for name, value in row["headers"]]
    body = row["body"]
    lines += ["body:", json.dumps(body, indent=2, ensure_ascii=False) if not isinstance(body, str) else body]
    return "\n".join(lines)
