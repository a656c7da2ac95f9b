"""Entry point of the `topic-admin` console script (click).

    topic-admin [ensure]                create missing topics, grow partitions, never delete (default)
    topic-admin wait                    only wait for the broker (exit 3 if it never answers)
    topic-admin reset                   delete and re-create the topics (loses their jobs)
    topic-admin describe [--json]       topics, partitions, offsets, the group's lag and members
    topic-admin describe --watch        the same, refreshed with jobs/s and lag trend, until Ctrl-C
    topic-admin redrive [filters]       dead letters back to JOBS_TOPIC, exactly once (--dry-run)
    topic-admin dlq list [filters]      dead letters, filtered; `dlq show P:O` one of them
    topic-admin offsets [target]        the group's committed offsets; a target moves them (--execute)

Results go to stdout; logs go to stderr so `--json` output stays pure JSON. Bad input (an
unknown command or flag, a malformed value) is one line on stderr and exit 2, before anything
is read or changed. Each command parses its flags into a service body that run_service runs
with the settings from the environment.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from rich.live import Live
from tabulate import tabulate

from jobpipe.access import check_access, refusals_named
from jobpipe.errors import ExitCode
from jobpipe.group_offsets import GroupReader
from jobpipe.kafka_clients import admin_config, wait_for_broker
from jobpipe.logs import event
from jobpipe.service import Body, Outcome, Probes, run_service
from topic_admin_service import output
from topic_admin_service.errors import Refused
from topic_admin_service.offset_plan import Target, TargetKind, offsets_csv, parse_offsets_csv, plan, totals
from topic_admin_service.offsets import OffsetAdmin, active_members_refusal, offsets_needs
from topic_admin_service.redrive import Selection, Verdict
from topic_admin_service.redriver import Redriver
from topic_admin_service.settings import TopicAdminSettings
from topic_admin_service.topics import REQUEST_TIMEOUT_S, Description, TopicAdmin
from topic_admin_service.watch import HISTORY, Sample, sample_of, watch_rows
from topic_admin_service.when import BadTime, parse_when

COMMANDS = ("ensure", "wait", "reset", "describe", "redrive", "offsets", "dlq")
TopicBody = Body[TopicAdminSettings]


# librdkafka (2.16) has no share-group admin call yet; the broker's own tool answers.
SHARE_DESCRIBE_HINT = (
    "members and records not yet delivered: the broker's own tool shows them, e.g. in compose\n"
    "  docker compose exec kafka /opt/kafka/bin/kafka-share-groups.sh --bootstrap-server kafka:19092 "
    "--describe --group {group} --members   (without --members: start offset and lag per partition)")


def render_table(description: Description) -> str:
    rows = [[topic.name, p.partition, p.leader, ",".join(map(str, p.replicas)), ",".join(map(str, p.isr)),
             p.start_offset, p.end_offset, "-" if p.committed is None else p.committed,
             "-" if p.lag is None else p.lag]
            for topic in description.topics for p in topic.partitions]
    text = [tabulate(rows, headers=["topic", "partition", "leader", "replicas", "isr", "start", "end",
                                    "committed", "lag"], tablefmt="simple")]
    if description.mode == "share":
        configs = ", ".join(f"{name}={value}" for name, value in description.share_configs.items())
        text.append(f"\nshare group {description.group}: {configs or 'the broker defaults'}")
        text.append(SHARE_DESCRIBE_HINT.format(group=description.group))
    elif description.group_exists:
        text.append(f"\ngroup {description.group}: total lag {description.total_lag}, "
                    f"{len(description.members)} member(s) ({description.group_state})")
    else:
        text.append(f"\ngroup {description.group}: no such group (no members, no committed offsets)")
    if description.members:
        text.append(tabulate([[m["client_id"], m["host"], ",".join(map(str, m["partitions"])) or "-",
                               m["member_id"]] for m in description.members],
                             headers=["member", "host", "partitions", "member id"], tablefmt="simple"))
    if description.tiers:
        text.append("\n" + tabulate([[t.topic, t.waiting, t.next_due or "-"] for t in description.tiers],
                                    headers=["delay tier", "waiting", "next due"], tablefmt="simple"))
    if description.missing:
        text.append(f"missing topics: {', '.join(description.missing)} (run `topic-admin ensure`)")
    return "\n".join(text)


def _admin(settings: TopicAdminSettings) -> AdminClient:
    return AdminClient(admin_config(settings, "topic-admin"))


def _print_json(document: Any, *, compact: bool = False) -> None:
    print(json.dumps(document, indent=None if compact else 2, default=str), flush=True)


# ---- the command line -----------------------------------------------------------------------

class When(click.ParamType[datetime, Any]):
    """RFC 3339 with a time zone, or a duration back from now: 2h, 30m, 7d."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_when(str(value), datetime.now(UTC))
        except BadTime as error:
            self.fail(f"{value!r}: {error}", param, ctx)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# `--json` used to be accepted by every command (one argparse flag); these print no result.
IGNORED_JSON = click.option("--json", "json_output", is_flag=True, hidden=True)


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@click.option("--json", "json_output", is_flag=True, hidden=True,
              help="Kept for `topic-admin --json describe` (the flag used to be global).")
@click.pass_context
def cli(ctx: click.Context, json_output: bool) -> TopicBody | None:
    """Manage the job pipeline's Kafka topics, dead letters and consumer group offsets.

    Configuration comes from environment variables (see docs/configuration.md); flags choose what to do.
    With no command, `ensure` runs. Results go to stdout, logs to stderr.
    """
    ctx.obj = {"json": json_output}
    if ctx.invoked_subcommand is None:
        return topics_body("ensure")
    return None


@cli.command(short_help="Create missing topics, grow partitions (the default).")
@IGNORED_JSON
def ensure(json_output: bool) -> TopicBody:
    """Create missing topics, grow partitions; never shrinks or deletes (the default)."""
    return topics_body("ensure")


@cli.command(short_help="Only wait for the broker.")
@IGNORED_JSON
def wait(json_output: bool) -> TopicBody:
    """Only wait for the broker (exit 3 if it never answers)."""
    return topics_body("wait")


@cli.command(short_help="Delete and re-create the topics (loses their jobs).")
@IGNORED_JSON
def reset(json_output: bool) -> TopicBody:
    """Delete and re-create JOBS_TOPIC and DLQ_TOPIC (their jobs are lost)."""
    return topics_body("reset")


def topics_body(command: str) -> TopicBody:
    def body(settings: TopicAdminSettings, stop: threading.Event, _probes: Probes) -> Outcome:
        wait_for_broker(settings, stop)
        if command == "wait":
            return Outcome()
        admin = TopicAdmin(_admin(settings), settings)
        actions = admin.reset() if command == "reset" else admin.ensure()
        return Outcome(ExitCode.OK, dict(Counter(actions.values())))

    return body


@cli.command(short_help="Offsets, lag and members; --watch refreshes.")
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of a table.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C, with jobs/s and lag trend per partition.")
@click.option("--interval", type=click.FloatRange(min=0.2, max=3600), default=2.0, show_default=True,
              metavar="SECONDS", help="--watch: seconds between refreshes.")
@click.option("--group", metavar="NAME", help="Consumer group  [default: CONSUMER_GROUP]")
@click.option("--topic", metavar="NAME", help="Jobs topic  [default: JOBS_TOPIC]")
@click.pass_context
def describe(ctx: click.Context, *, json_output: bool, watch: bool, interval: float, group: str | None,
             topic: str | None) -> TopicBody:
    """Topics, partitions, leaders, offsets, the group's committed offsets, lag and members.

    A group that does not exist (no members, no committed offsets: a typo?) is shown, then
    refused (exit 2); --watch shows it and goes on (the group may be about to start).
    """
    as_json = json_output or bool(ctx.obj and ctx.obj.get("json"))

    def body(settings: TopicAdminSettings, stop: threading.Event, _probes: Probes) -> Outcome:
        chosen = {name: value for name, value in (("consumer_group", group), ("jobs_topic", topic)) if value}
        settings = settings.model_copy(update=chosen)
        wait_for_broker(settings, stop)
        if watch:
            # Each answer waits at most a few seconds: a broker that died shows within one refresh.
            timeout_s = min(REQUEST_TIMEOUT_S, max(3.0, interval))
            admin = TopicAdmin(_admin(settings), settings, timeout_s=timeout_s)
            return watch_loop(admin, stop, interval, as_json)
        description = TopicAdmin(_admin(settings), settings).describe()
        print(json.dumps(description.as_dict(), indent=2) if as_json else render_table(description))
        if not description.group_exists:
            raise Refused(f"{'--group' if group else 'CONSUMER_GROUP'}={description.group!r}: no such group "
                          "(no members, no committed offsets): its lag counts every job in the topic")
        return Outcome(ExitCode.OK, {"total_lag": description.total_lag})

    return body


def describe_or_stop(admin: TopicAdmin, stop: threading.Event) -> Description | None:
    """`admin.describe()`, or None as soon as a stop is asked for (the describe is left to end
    on its daemon thread): Ctrl-C never waits for a broker's answer."""
    answered = threading.Event()
    result: list[Description | BaseException] = []

    def run() -> None:
        try:
            result.append(admin.describe())
        except BaseException as error:  # handed to the waiting thread
            result.append(error)
        finally:
            answered.set()

    threading.Thread(target=run, name="describe", daemon=True).start()
    while not answered.wait(0.1):
        if stop.is_set():
            return None
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def watch_caption(description: Description, interval: float, live: bool) -> str:
    now = datetime.now(UTC)
    group = (f"group {description.group}: total lag {description.total_lag}, "
             f"{len(description.members)} member(s)" if description.group_exists
             else f"group {description.group}: no such group yet (no members, no committed offsets)")
    caption = f"{group}; {now:%H:%M:%S} UTC, every {interval:g} s" + (", Ctrl-C to stop" if live else "")
    if description.missing:
        caption += f"\nmissing topics: {', '.join(description.missing)} (run `topic-admin ensure`)"
    return caption


def watch_loop(admin: TopicAdmin, stop: threading.Event, interval: float, as_json: bool) -> Outcome:
    """Describe every `interval` seconds until SIGINT/SIGTERM; a failed refresh is logged (and
    shown on a terminal) and retried at the next one. Exit 0."""
    history: deque[Sample] = deque(maxlen=HISTORY)
    console = output.console()
    refreshes = 0
    live = Live(console=console, auto_refresh=False, redirect_stderr=False, redirect_stdout=False) \
        if console.is_terminal and not as_json else None
    if live is not None:
        live.start()
    try:
        while not stop.is_set():
            try:
                description = describe_or_stop(admin, stop)
            except KafkaException as error:
                event("watch.refresh_failed", f"could not refresh: {error}", level="WARNING",
                      error=str(error))
                if live is not None:
                    live.update(f"could not refresh at {datetime.now(UTC):%H:%M:%S} UTC: {error}; "
                                "trying again", refresh=True)
                stop.wait(interval)
                continue
            if description is None:
                break
            history.append(sample_of(description, time.monotonic()))
            rows = watch_rows(list(history))
            refreshes += 1
            if as_json:
                _print_json({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                             "group": description.group, "group_exists": description.group_exists,
                             "total_lag": description.total_lag, "members": len(description.members),
                             "missing": description.missing, "partitions": [r.as_dict() for r in rows]},
                            compact=True)
            else:
                table = output.watch_table(rows, watch_caption(description, interval, live is not None))
                if live is not None:
                    live.update(table, refresh=True)
                else:
                    console.print(table, "", sep="\n")
                    console.file.flush()
            stop.wait(interval)
    finally:
        if live is not None:
            live.stop()
    return Outcome(ExitCode.OK, {"refreshes": refreshes})


class DlqPosition(click.ParamType[tuple[int, int], Any]):
    """A dead letter's place in DLQ_TOPIC: PARTITION:OFFSET, as `dlq list` shows it."""

    name = "PARTITION:OFFSET"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        partition, sep, offset = str(value).partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            self.fail(f"{value!r}: expected PARTITION:OFFSET, e.g. 0:42", param, ctx)
        return int(partition), int(offset)


class Pattern(click.ParamType[re.Pattern[str], Any]):
    """A regular expression, matched whatever the case."""

    name = "REGEX"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> re.Pattern[str]:
        if isinstance(value, re.Pattern):
            return value
        try:
            return re.compile(str(value), re.IGNORECASE)
        except re.error as error:
            self.fail(f"{value!r}: not a regular expression: {error}", param, ctx)


def selection_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The filters `redrive` and `dlq list` share: each given one must match a dead letter."""
    options = [
        click.option("--error-contains", metavar="TEXT",
                     help="Only dead letters whose dlq.error contains TEXT (whatever the case)."),
        click.option("--error-regex", "error_pattern", type=Pattern(),
                     help="Only dead letters whose dlq.error matches REGEX (whatever the case)."),
        click.option("--key", "key_pattern", metavar="PATTERN",
                     help="Only keys matching a shell pattern, e.g. 'p1-*'."),
        click.option("--since", type=When(),
                     help="Only jobs that failed at or after WHEN (RFC 3339, or 2h = 2 hours ago)."),
        click.option("--until", type=When(), help="Only jobs that failed before WHEN."),
        click.option("--original-partition", type=click.IntRange(min=0), metavar="N",
                     help="Only jobs read from partition N of the jobs topic."),
        click.option("--original-offset", type=click.IntRange(min=0), metavar="N",
                     help="Only the job read at offset N of the jobs topic."),
        click.option("--attempts", type=click.IntRange(min=0), metavar="N",
                     help="Only jobs given up after N attempts (0: messages that were not jobs)."),
        click.option("--at", type=DlqPosition(),
                     help="Only the dead letter at PARTITION:OFFSET of DLQ_TOPIC."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def selection_of(filters: dict[str, Any], **more: Any) -> Selection:
    since, until = filters["since"], filters["until"]
    if since is not None and until is not None and since >= until:
        raise click.BadParameter(f"{since.isoformat()} is not before --until {until.isoformat()}",
                                 param_hint="'--since'")
    return Selection(**filters, **more)


@cli.command(short_help="Dead letters back to JOBS_TOPIC, exactly once.")
@click.option("--dry-run", is_flag=True, help="Count what would move, by error; move nothing.")
@selection_options
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Move at most N dead letters.")
@click.option("--max-redrives", type=click.IntRange(min=1), metavar="N",
              help="Leave jobs that have already been re-driven N times in the DLQ.")
@click.option("--rate", type=click.FloatRange(min=0.1), metavar="N",
              help="Move at most N dead letters per second (spare a downstream that just recovered).")
@click.option("--batch-size", type=click.IntRange(min=1, max=100_000), default=500, show_default=True,
              metavar="N", help="Dead letters per transaction.")
@click.option("--delay", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Run the moved jobs no sooner than SECONDS after the move (docs/delays.md).")
@click.option("--json", "json_output", is_flag=True, help="Print the summary as JSON.")
def redrive(*, dry_run: bool, limit: int | None, max_redrives: int | None, rate: float | None,
            batch_size: int, delay: float | None, json_output: bool, **filters: Any) -> TopicBody:
    """Move dead letters from DLQ_TOPIC back to JOBS_TOPIC, exactly once.

    Each copy keeps its key, value and headers, without the dlq.* headers, and carries
    redrive.count (how often it has been re-driven) and redrive.source (DLQ/partition/offset);
    with --delay, delay.due_ms too (a consumer starts none of them before then).
    Kafka transactions make it safe to stop at any moment and run again: nothing is lost
    or moved twice. A run stopped before it went through everything exits 1.
    """
    selection = selection_of(filters, limit=limit, max_redrives=max_redrives)

    def body(settings: TopicAdminSettings, stop: threading.Event, _probes: Probes) -> Outcome:
        wait_for_broker(settings, stop)
        bar = output.progress("dry run" if dry_run else "re-driving")
        redriver = Redriver(settings, _admin(settings), stop, dry_run=dry_run, batch_size=batch_size,
                            progress=bar, rate=rate, delay_s=delay)
        tally = redriver.run(selection)
        if json_output:
            _print_json({"dlq_topic": settings.dlq_topic, "jobs_topic": settings.jobs_topic,
                         **tally.as_dict()})
        else:
            console = output.console()
            for renderable in output.redrive_tables(tally, settings.dlq_topic, settings.jobs_topic):
                console.print(renderable)
        event("redrive.done", ("dry run: " if dry_run else "") +
              f"{tally.moved} dead letter(s) {'would move' if dry_run else 'moved'}, "
              f"{tally.counts[Verdict.FILTERED]} skipped by filter, "
              f"{tally.counts[Verdict.MAX_REDRIVES]} left by --max-redrives, "
              f"{tally.counts[Verdict.ALREADY]} already re-driven"
              + ("; interrupted: run it again to go on" if tally.interrupted else ""),
              level="WARNING" if tally.interrupted else "INFO", **tally.as_dict())
        # Interrupted: what it moved stays moved, but a script must not take the run for done.
        return Outcome(ExitCode.FAILURE if tally.interrupted else ExitCode.OK,
                       {verdict.value: tally.counts[verdict] for verdict in Verdict})

    return body


@cli.group(short_help="Look at dead letters: list them, show one.")
def dlq() -> None:
    """Look at the dead letters of DLQ_TOPIC before re-driving them (nothing is changed)."""


@dlq.command("list", short_help="Dead letters, filtered: where, key, attempts, error.")
@selection_options
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, metavar="N",
              help="Show at most N dead letters.")
@click.option("--json", "json_output", is_flag=True, help="Print JSON lines instead of a table.")
def dlq_list(*, limit: int, json_output: bool, **filters: Any) -> TopicBody:
    """The dead letters that every given filter matches, oldest first per DLQ partition, with
    PARTITION:OFFSET (for `dlq show` and `redrive --at`) and whether a re-drive moved them."""
    selection = selection_of(filters)

    def body(settings: TopicAdminSettings, stop: threading.Event, _probes: Probes) -> Outcome:
        wait_for_broker(settings, stop)
        found = Redriver(settings, _admin(settings), stop, dry_run=True, batch_size=1,
                         progress=output.NoProgress()).browse(selection, limit)
        if json_output:
            for letter, redriven in found:
                _print_json(output.dead_letter_summary(letter, redriven), compact=True)
        else:
            output.console().print(output.dead_letters_table(found, settings.dlq_topic))
        return Outcome(ExitCode.OK, {"listed": len(found)})

    return body


@dlq.command("show", short_help="One dead letter: headers and body.")
@click.argument("position", type=DlqPosition())
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of text.")
def dlq_show(*, position: tuple[int, int], json_output: bool) -> TopicBody:
    """The dead letter at PARTITION:OFFSET of DLQ_TOPIC: its error, attempts, where it came
    from, every header and its body."""
    selection = Selection(at=position)

    def body(settings: TopicAdminSettings, stop: threading.Event, _probes: Probes) -> Outcome:
        wait_for_broker(settings, stop)
        found = Redriver(settings, _admin(settings), stop, dry_run=True, batch_size=1,
                         progress=output.NoProgress()).browse(selection, 1)
        if not found:
            raise Refused(f"{position[0]}:{position[1]}: {settings.dlq_topic} has no dead letter there")
        letter, redriven = found[0]
        if json_output:
            _print_json(output.dead_letter_detail(letter, redriven))
        else:
            output.console().print(output.dead_letter_text(letter, redriven, settings.dlq_topic))
        return Outcome(ExitCode.OK, {"shown": 1})

    return body


@cli.command(short_help="Show or move the group's committed offsets.")
@click.option("--to-earliest", "earliest", is_flag=True, help="Replay everything still in the topic.")
@click.option("--to-latest", "latest", is_flag=True, help="Skip everything not yet processed.")
@click.option("--to-current", "current", is_flag=True,
              help="Where the group is now (with --export: save it, to come back to later).")
@click.option("--to-datetime", "moment", type=When(), help="To the first job at or after WHEN.")
@click.option("--shift-by", type=int, metavar="N", help="Forward N jobs (skip), or back (-N: replay).")
@click.option("--to-offset", type=click.IntRange(min=0), metavar="N", help="To offset N.")
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="To the offsets in FILE: topic,partition,offset lines, as --export writes them.")
@click.option("--export", "export_to", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              metavar="FILE", help="Write the planned offsets to FILE (topic,partition,offset).")
@click.option("--topic", metavar="NAME", help="Topic whose offsets move  [default: JOBS_TOPIC]")
@click.option("--partition", "-p", "partitions", type=click.IntRange(min=0), multiple=True, metavar="N",
              help="Only this partition (repeat for more)  [default: all]")
@click.option("--group", metavar="NAME", help="Consumer group  [default: CONSUMER_GROUP]")
@click.option("--execute", is_flag=True, help="Apply the move (without it: a dry run).")
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of a table.")
def offsets(*, earliest: bool, latest: bool, current: bool, moment: datetime | None, shift_by: int | None,
            to_offset: int | None, from_file: Path | None, export_to: Path | None, topic: str | None,
            partitions: tuple[int, ...], group: str | None, execute: bool, json_output: bool) -> TopicBody:
    """Show a consumer group's committed offsets, or move them (a dry run unless --execute).

    Moving is refused while the group has active members: stop its consumers first. A group
    that does not exist yet can be positioned (its offsets are created) before its consumers
    first start; showing it is refused.
    """
    targets = [target for target, given in [
        (Target(TargetKind.EARLIEST), earliest), (Target(TargetKind.LATEST), latest),
        (Target(TargetKind.CURRENT), current),
        (Target(TargetKind.DATETIME, moment=moment), moment is not None),
        (Target(TargetKind.SHIFT, number=shift_by or 0), shift_by is not None),
        (Target(TargetKind.OFFSET, number=to_offset or 0), to_offset is not None),
        (Target(TargetKind.FILE, source=str(from_file)), from_file is not None)] if given]
    if len(targets) > 1:
        raise click.UsageError("choose one of --to-earliest, --to-latest, --to-current, --to-datetime, "
                               "--shift-by, --to-offset, --from-file")
    if (execute or export_to) and not targets:
        raise click.UsageError(f"{'--execute' if execute else '--export'} needs a target: --to-earliest, "
                               "--to-latest, --to-current, --to-datetime, --shift-by, --to-offset or "
                               "--from-file")
    if from_file is not None and partitions:
        raise click.UsageError("--from-file names its partitions: leave out --partition")
    target = targets[0] if targets else None
    file_text = _read_text(from_file) if from_file is not None else None

    def body(settings: TopicAdminSettings, stop: threading.Event, _probes: Probes) -> Outcome:
        nonlocal target
        name, topic_name = group or settings.consumer_group, topic or settings.jobs_topic
        if target is not None and file_text is not None:
            try:
                target = replace(target, offsets=parse_offsets_csv(file_text, topic_name))
            except ValueError as error:
                raise Refused(f"--from-file {from_file}: {error}") from None
        admin = OffsetAdmin(_admin(settings), GroupReader(settings, name, "topic-admin", REQUEST_TIMEOUT_S))
        chosen = tuple(sorted(target.offsets)) if target is not None and target.offsets else partitions
        found = admin.read(name, topic_name, chosen)
        if not found.exists:
            if target is None:
                raise Refused(f"CONSUMER_GROUP={name!r}: no such group (no members, no committed offsets)")
            event("offsets.new_group", f"group {name} does not exist yet: "
                  + ("its offsets will be created" if execute else "--execute would create its offsets"),
                  group=name, topic=topic_name)
        if target is None:
            if json_output:
                _print_json({"group": name, "topic": topic_name, "members": found.members,
                             "partitions": [{"partition": s.partition, "start": s.start, "end": s.end,
                                             "committed": s.committed, "lag": s.lag} for s in found.states]})
            else:
                output.console().print(*output.offsets_table(name, topic_name, found.states), sep="\n")
            return Outcome(ExitCode.OK, {"lag": sum(s.lag for s in found.states)})
        if execute and found.members:
            raise active_members_refusal(name, found.members)
        at_time = None
        if target.kind is TargetKind.DATETIME and target.moment is not None:
            at_time = admin.at_time(topic_name, [s.partition for s in found.states], target.moment)
        moves = plan(found.states, target, at_time)
        if export_to is not None:
            export_to.write_text(offsets_csv(topic_name, moves))
            event("offsets.exported", f"wrote {len(moves)} partition(s)' offsets to {export_to}",
                  path=str(export_to), partitions=len(moves))
        if execute:
            admin.apply(name, topic_name, moves)
        elif found.members:
            event("offsets.group_active", f"group {name} has {len(found.members)} active member(s): "
                  "--execute would be refused until they stop", level="WARNING", members=found.members)
        summary = totals(moves)
        if json_output:
            _print_json({"group": name, "topic": topic_name, "target": str(target), "executed": execute,
                         "members": found.members, "partitions": [m.as_dict() for m in moves], **summary})
        else:
            output.console().print(*output.plan_table(name, topic_name, target, moves, execute), sep="\n")
        return Outcome(ExitCode.OK, summary | {"executed": int(execute)})

    return refusals_of_offsets(body, group, topic, execute=execute)


def refusals_of_offsets(body: TopicBody, group: str | None, topic: str | None, *, execute: bool) -> TopicBody:
    """`offsets`' body once the broker answers and allows it: every authorization refusal is
    one line and exit 3 naming the ACL (docs/security.md), checked before anything is read
    and mapped if the broker refuses a request later."""
    def checked(settings: TopicAdminSettings, stop: threading.Event, probes: Probes) -> Outcome:
        wait_for_broker(settings, stop)
        needs = offsets_needs(group or settings.consumer_group, "--group" if group else "CONSUMER_GROUP",
                              topic or settings.jobs_topic, "--topic" if topic else "JOBS_TOPIC",
                              execute=execute)
        check_access(settings, needs)
        with refusals_named(settings, needs):
            return body(settings, stop, probes)

    return checked


def _read_text(path: Path) -> str:
    """A file given on the command line, or a usage error (exit 2) saying why not."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise click.BadParameter(f"{path}: {error}", param_hint="'--from-file'") from None


# ---- main -----------------------------------------------------------------------------------

def parse(argv: list[str] | None = None) -> TopicBody | int:
    """The body to run for `argv`, or an exit code (--help printed; bad input reported)."""
    try:
        result = cli.main(args=argv, prog_name="topic-admin", standalone_mode=False)
    except click.UsageError as error:  # includes bad values (BadParameter)
        message = " ".join(error.format_message().split())
        print(f"topic-admin: usage error: {message}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    except click.ClickException as error:
        print(f"topic-admin: {' '.join(error.format_message().split())}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    except click.Abort:
        return int(ExitCode.FAILURE)
    if callable(result):
        return result  # type: ignore[no-any-return]
    return int(result or 0)


def main(argv: list[str] | None = None) -> NoReturn:
    parsed = parse(argv)
    if isinstance(parsed, int):
        sys.exit(parsed)
    run_service("topic-admin", TopicAdminSettings, parsed, serve_probes=False, log_stream=sys.stderr)
