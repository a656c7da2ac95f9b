"""topic-admin's decisions without a broker: which dead letters a redrive moves and with which
headers, the ledger, the new offsets of `offsets`, the rates of `describe --watch`, the times
the flags accept, and the command line's answer to bad input."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from consumer_service.runner import attempts_before
from jobpipe.access import refusals_named
from jobpipe.delays import PARKED_HEADERS
from jobpipe.errors import KafkaRefused, exit_code_for
from jobpipe.group_offsets import PartitionState
from jobpipe.redrive_ledger import dead_letters_waiting, merged, offset_ranges, read_ledger_record
from topic_admin_service.main import parse
from topic_admin_service.offset_plan import (
    Move,
    Target,
    TargetKind,
    offsets_csv,
    parse_offsets_csv,
    plan,
    totals,
)
from topic_admin_service.offsets import offsets_needs
from topic_admin_service.redrive import (
    NO_ERROR,
    DeadLetter,
    Ledger,
    Selection,
    Tally,
    Verdict,
    ledger_record,
    pace,
    redriven_headers,
    target_partition,
)
from topic_admin_service.settings import TopicAdminSettings
from topic_admin_service.watch import PartitionSample, Sample, sparkline, watch_rows
from topic_admin_service.when import BadTime, parse_duration, parse_when

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def letter(offset: int = 0, *, error: str = "ValueError: bad", key: bytes | None = b"p1-m0",
           failed_at: datetime | None = NOW, redrives: int | None = None, partition: int = 0,
           extra: tuple[tuple[str, bytes | None], ...] = ()) -> DeadLetter:
    headers: list[tuple[str, bytes | None]] = [*extra, ("dlq.error", error.encode()),
                                               ("dlq.attempts", b"5"),
                                               ("dlq.original.topic", b"jobs"),
                                               ("dlq.original.partition", b"2"),
                                               ("dlq.original.offset", b"41")]
    if failed_at is not None:
        headers.append(("dlq.failed_at", failed_at.isoformat(timespec="milliseconds").encode()))
    if redrives is not None:
        headers.append(("redrive.count", str(redrives).encode()))
    return DeadLetter(partition=partition, offset=offset, key=key, value=b'{"id": "x"}',
                      headers=tuple(headers))


# ---- times ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2h", NOW - timedelta(hours=2)),
    ("90s", NOW - timedelta(seconds=90)),
    ("1h30m", NOW - timedelta(minutes=90)),
    ("7d", NOW - timedelta(days=7)),
    ("1w", NOW - timedelta(weeks=1)),
    ("2026-11-28T10:00:00Z", datetime(2026, 11, 28, 10, tzinfo=UTC)),
    ("2026-11-28T11:00:00+01:00", datetime(2026, 11, 28, 10, tzinfo=UTC)),
    ("2026-11-28 10:00:00.250Z", datetime(2026, 11, 28, 10, 0, 0, 250_000, tzinfo=UTC)),
])
def test_when_accepts_rfc3339_and_durations_ago(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2h", "", "2026-11-28T10:00:00", "2026-11-28", "h"])
def test_when_refuses_anything_else(text: str) -> None:
    with pytest.raises(BadTime):
        parse_when(text, NOW)


def test_duration_is_none_for_a_timestamp() -> None:
    assert parse_duration("2026-11-28T10:00:00Z") is None
    assert parse_duration("30m") == timedelta(minutes=30)


# ---- which dead letters move ----------------------------------------------------------------

def test_a_dead_letter_reads_its_dlq_headers() -> None:
    dead = letter(redrives=2)
    assert dead.error == "ValueError: bad"
    assert dead.failed_at == NOW
    assert dead.redrives == 2
    assert dead.key_text == "p1-m0"
    assert DeadLetter(partition=0, offset=0).error == NO_ERROR
    assert letter(redrives=None).redrives == 0


def test_failed_at_falls_back_to_the_message_timestamp() -> None:
    stamped = DeadLetter(partition=0, offset=0, timestamp_ms=int(NOW.timestamp() * 1000))
    assert stamped.failed_at == NOW
    assert DeadLetter(partition=0, offset=0).failed_at is None


@pytest.mark.parametrize(("selection", "moves"), [
    (Selection(), True),
    (Selection(error_contains="ValueError"), True),
    (Selection(error_contains="Timeout"), False),
    (Selection(error_contains="valueerror"), True),  # whatever the case
    (Selection(error_pattern=re.compile(r"^valueerror: b", re.IGNORECASE)), True),
    (Selection(error_pattern=re.compile(r"timeout", re.IGNORECASE)), False),
    (Selection(original_partition=2, original_offset=41), True),
    (Selection(original_partition=2, original_offset=40), False),
    (Selection(original_partition=1), False),
    (Selection(attempts=5), True),
    (Selection(attempts=1), False),
    (Selection(at=(0, 0)), True),
    (Selection(at=(0, 1)), False),
    (Selection(key_pattern="p1-*"), True),
    (Selection(key_pattern="p2-*"), False),
    (Selection(key_pattern="p?-m[0-4]"), True),
    (Selection(since=NOW), True),  # since is inclusive
    (Selection(since=NOW + timedelta(seconds=1)), False),
    (Selection(until=NOW), False),  # until is exclusive
    (Selection(until=NOW + timedelta(seconds=1)), True),
    (Selection(since=NOW - timedelta(hours=1), until=NOW + timedelta(hours=1), error_contains="bad",
               key_pattern="p1-m0"), True),
])
def test_every_given_filter_must_match(selection: Selection, moves: bool) -> None:
    verdict = selection.verdict(letter(), already_redriven=False)
    assert verdict is (Verdict.MOVE if moves else Verdict.FILTERED)


@given(st.integers(0, 1000), st.floats(0, 100), st.floats(0.1, 1000))
def test_pace_keeps_a_redrive_at_its_rate(moved: int, elapsed: float, rate: float) -> None:
    """Waiting what `pace` says before each move, `moved` moves never take less than
    `moved / rate` seconds; and nothing waits without a rate."""
    wait = pace(moved, elapsed, rate)
    assert wait >= 0 and elapsed + wait >= moved / rate - 1e-9
    assert wait == 0 or elapsed + wait <= moved / rate + 1e-9
    assert pace(moved, elapsed, None) == 0


def test_a_time_filter_skips_a_dead_letter_without_a_time() -> None:
    assert Selection(since=NOW).verdict(letter(failed_at=None), already_redriven=False) is Verdict.FILTERED
    assert Selection().verdict(letter(failed_at=None), already_redriven=False) is Verdict.MOVE


def test_max_redrives_leaves_jobs_re_driven_that_often() -> None:
    selection = Selection(max_redrives=2)
    assert selection.verdict(letter(redrives=1), already_redriven=False) is Verdict.MOVE
    assert selection.verdict(letter(redrives=2), already_redriven=False) is Verdict.MAX_REDRIVES
    assert selection.verdict(letter(redrives=3), already_redriven=False) is Verdict.MAX_REDRIVES


def test_a_dead_letter_in_the_ledger_is_never_moved_again() -> None:
    assert Selection().verdict(letter(), already_redriven=True) is Verdict.ALREADY
    # ... and that is said before any filter is looked at
    assert Selection(error_contains="nope").verdict(letter(), already_redriven=True) is Verdict.ALREADY


def test_tally_counts_moves_by_error_and_stops_at_the_limit() -> None:
    tally, selection = Tally(), Selection(limit=2)
    tally.add(Verdict.MOVE, letter(error="A"))
    assert not tally.limit_reached(selection)
    tally.add(Verdict.FILTERED, letter(error="B"))
    tally.add(Verdict.MOVE, letter(error="A"))
    assert tally.limit_reached(selection)
    assert not tally.limit_reached(Selection())
    summary = tally.as_dict()
    assert summary["moved"] == 2 and summary["skipped_by_filter"] == 1 and summary["scanned"] == 3
    assert summary["moved_by_error"] == {"A": 2}


# ---- the copy -------------------------------------------------------------------------------

def test_the_copy_keeps_original_headers_drops_dlq_ones_and_counts_redrives() -> None:
    dead = letter(offset=7, partition=1, redrives=1,
                  extra=(("trace-id", b"abc"), ("empty", None), ("redrive.source", b"old/0/0")))
    headers = redriven_headers(dead, "jobs.dlq")
    assert headers == [("trace-id", b"abc"), ("empty", None), ("redrive.count", b"2"),
                       ("redrive.source", b"jobs.dlq/1/7")]


def test_redrive_delay_sets_the_due_time_in_place_of_an_earlier_one() -> None:
    dead = letter(extra=(("delay.due_ms", b"5"), ("retry.attempts", b"3")))
    headers = redriven_headers(dead, "jobs.dlq", due=1000.0004)
    assert [name for name, _ in headers].count("delay.due_ms") == 1
    assert dict(headers)["delay.due_ms"] == b"1000001", "rounded up: never read earlier"
    assert "delay.due_ms" not in dict(redriven_headers(dead, "jobs.dlq")), "no --delay: due now"


def test_a_redriven_job_starts_its_attempts_afresh_not_after_a_parked_retrys() -> None:
    """A job dead-lettered after a parked retry (docs/delays.md) carries that copy's retry.* and
    delay.* headers; kept on the re-driven copy, its first attempt would be numbered after them
    (consumer_service.runner) and it would be dead-lettered again after one attempt."""
    dead = letter(extra=(("trace-id", b"abc"), ("retry.attempts", b"4"), ("retry.error", b"boom"),
                         ("delay.due_ms", b"1000"), ("delay.release_ms", b"1000"), ("delay.tier", b"1m")))
    headers = dict(redriven_headers(dead, "jobs.dlq"))
    assert attempts_before(headers) == 0
    assert not set(headers) & set(PARKED_HEADERS)
    assert headers["trace-id"] == b"abc"


def test_a_first_redrive_counts_one() -> None:
    assert dict(redriven_headers(letter(), "jobs.dlq"))["redrive.count"] == b"1"


def test_the_copy_goes_back_to_its_original_partition_when_it_still_exists() -> None:
    assert target_partition(letter(), "jobs", 3) == 2
    assert target_partition(letter(), "jobs", 2) is None  # gone: placed by its key
    assert target_partition(letter(), "other", 3) is None  # came from another topic
    assert target_partition(DeadLetter(partition=0, offset=0), "jobs", 3) is None


# ---- the ledger -----------------------------------------------------------------------------

def test_offset_ranges_compress_runs() -> None:
    assert offset_ranges([5, 3, 4, 9, 9]) == [[3, 5], [9, 9]]
    assert offset_ranges([]) == []


@given(st.sets(st.integers(min_value=0, max_value=10_000)))
def test_offset_ranges_cover_exactly_the_offsets(offsets: set[int]) -> None:
    covered = {o for first, last in offset_ranges(offsets) for o in range(first, last + 1)}
    assert covered == offsets


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 100_000)), max_size=200))
def test_a_ledger_record_gives_back_exactly_the_letters_it_was_made_of(places: list[tuple[int, int]]) -> None:
    moved = [DeadLetter(partition=p, offset=o) for p, o in places]
    ledger = Ledger()
    ledger.add_ranges(read_ledger_record(ledger_record("jobs.dlq", "id-1", moved, NOW), "id-1"))
    assert all(dead in ledger for dead in moved)
    assert len(ledger) == len(set(places))
    assert DeadLetter(partition=6, offset=0) not in ledger


def test_a_ledger_record_of_another_dlq_incarnation_or_garbage_counts_for_nothing() -> None:
    record = ledger_record("jobs.dlq", "id-1", [letter(offset=3)], NOW)
    assert read_ledger_record(record, "id-2") == {}
    assert read_ledger_record(b"not json", "id-1") == {}
    assert read_ledger_record(None, "id-1") == {}
    assert read_ledger_record(b'{"topic_id": "id-1", "moved": {"0": [[1, "x"]]}}', "id-1") == {}


# ---- offsets --------------------------------------------------------------------------------

STATES = [PartitionState(partition=0, start=10, end=100, committed=50),
          PartitionState(partition=1, start=0, end=20, committed=None),
          PartitionState(partition=2, start=30, end=40, committed=5)]  # committed below start (deleted)


def by_partition(moves: list[Move]) -> dict[int, tuple[int, int]]:
    return {m.partition: (m.current, m.new) for m in moves}


def test_position_is_the_committed_offset_or_the_start() -> None:
    assert [s.position for s in STATES] == [50, 0, 30]
    assert [s.lag for s in STATES] == [50, 20, 10]
    assert PartitionState(partition=0, start=0, end=10, committed=99).position == 0  # out of range


@pytest.mark.parametrize(("target", "expected"), [
    (Target(TargetKind.EARLIEST), {0: (50, 10), 1: (0, 0), 2: (30, 30)}),
    (Target(TargetKind.LATEST), {0: (50, 100), 1: (0, 20), 2: (30, 40)}),
    (Target(TargetKind.SHIFT, number=5), {0: (50, 55), 1: (0, 5), 2: (30, 35)}),
    (Target(TargetKind.SHIFT, number=-45), {0: (50, 10), 1: (0, 0), 2: (30, 30)}),
    (Target(TargetKind.OFFSET, number=35), {0: (50, 35), 1: (0, 20), 2: (30, 35)}),
])
def test_plan_moves_each_partition_inside_its_range(target: Target,
                                                    expected: dict[int, tuple[int, int]]) -> None:
    assert by_partition(plan(STATES, target)) == expected


def test_plan_to_a_datetime_uses_the_offsets_found_or_the_end() -> None:
    moves = plan(STATES, Target(TargetKind.DATETIME, moment=NOW), at_time={0: 70, 1: -1, 2: 12})
    assert by_partition(moves) == {0: (50, 70), 1: (0, 20), 2: (30, 30)}


def test_a_move_says_how_many_jobs_it_skips_or_replays() -> None:
    back = plan(STATES, Target(TargetKind.SHIFT, number=-20))[0]
    forward = plan(STATES, Target(TargetKind.SHIFT, number=20))[0]
    same = plan(STATES, Target(TargetKind.SHIFT, number=0))[0]
    assert (back.replayed, back.skipped, back.change) == (20, 0, "replays 20")
    assert (forward.skipped, forward.replayed, forward.change) == (20, 0, "skips 20")
    assert same.change == "unchanged"
    assert plan(STATES, Target(TargetKind.OFFSET, number=1000))[0].clamped
    assert totals(plan(STATES, Target(TargetKind.EARLIEST))) == {"skipped": 0, "replayed": 40, "changed": 1}


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(-200, 200))
def test_shift_never_leaves_the_partition(start: int, length: int, committed: int, shift: int) -> None:
    state = PartitionState(partition=0, start=start, end=start + length, committed=committed)
    move = plan([state], Target(TargetKind.SHIFT, number=shift))[0]
    assert state.start <= move.new <= state.end
    assert move.skipped - move.replayed == move.new - move.current


def test_to_current_moves_nothing_and_from_file_moves_only_the_partitions_it_names() -> None:
    assert by_partition(plan(STATES, Target(TargetKind.CURRENT))) == {0: (50, 50), 1: (0, 0), 2: (30, 30)}
    moves = plan(STATES, Target(TargetKind.FILE, offsets={0: 60, 2: 99}, source="saved.csv"))
    assert by_partition(moves) == {0: (50, 60), 2: (30, 40)}  # 99 is past partition 2's end: clamped
    assert [m.clamped for m in moves] == [False, True]


@given(st.dictionaries(st.integers(0, 50), st.integers(0, 10**12), min_size=1))
def test_export_then_from_file_gives_back_the_same_offsets(offsets: dict[int, int]) -> None:
    states = [PartitionState(partition=p, start=0, end=10**12, committed=o) for p, o in offsets.items()]
    exported = offsets_csv("jobs", plan(states, Target(TargetKind.CURRENT)))
    assert parse_offsets_csv(exported, "jobs") == offsets


@pytest.mark.parametrize(("text", "says"), [
    ("jobs,0,5\nother,1,5\n", "line 2: topic 'other' is not 'jobs'"),
    ("jobs,0\n", "line 1: expected topic,partition,offset"),
    ("jobs,0,five\n", "line 1: partition and offset must be whole numbers"),
    ("# saved\njobs,0,5\njobs,0,6\n", "line 3: partition 0 is given twice"),
    ("jobs,-1,5\n", "line 1: partition and offset must not be negative"),
    ("\n# nothing\n", "no offsets in the file"),
])
def test_an_offsets_file_that_is_not_one_is_refused_naming_the_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_offsets_csv(text, "jobs")


def test_target_reads_like_its_flag() -> None:
    assert str(Target(TargetKind.SHIFT, number=-3)) == "--shift-by -3"
    assert str(Target(TargetKind.EARLIEST)) == "--to-earliest"


# ---- describe --watch -----------------------------------------------------------------------

def sample(at: float, end: int, committed: int | None) -> Sample:
    lag = None if committed is None else end - committed
    return Sample(at=at, partitions={("jobs", 0): PartitionSample(end=end, committed=committed, lag=lag)},
                  total_lag=lag or 0)


def test_watch_rows_have_no_rates_on_the_first_sample() -> None:
    (row,) = watch_rows([sample(0.0, 10, 5)])
    assert (row.in_per_s, row.out_per_s, row.lag_per_s) == (None, None, None)
    assert row.lag == 5


def test_watch_rows_give_jobs_per_second_and_the_lag_trend() -> None:
    (row,) = watch_rows([sample(0.0, 10, 5), sample(2.0, 30, 9)])
    assert row.in_per_s == 10.0 and row.out_per_s == 2.0 and row.lag_per_s == 8.0
    assert row.trend == sparkline([5, 21])
    assert watch_rows([]) == []


def test_sparkline_scales_from_zero_to_the_top() -> None:
    assert sparkline([0, 4, 8]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([None, 3]) == " █"


# ---- the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["bogus"],
    ["describe", "--frob"],
    ["describe", "--interval", "0"],
    ["redrive", "--since", "yesterday"],
    ["redrive", "--since", "1h", "--until", "2h"],  # since after until
    ["redrive", "--limit", "0"],
    ["redrive", "--max-redrives", "x"],
    ["offsets", "--execute"],  # no target
    ["offsets", "--to-earliest", "--to-latest"],
    ["offsets", "--to-offset", "-1"],
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("topic-admin: usage error: "), captured.err


@pytest.mark.parametrize("argv", [[], ["ensure"], ["wait"], ["reset"], ["ensure", "--json"],
                                  ["describe", "--json"],
                                  ["--json", "describe"], ["describe", "--watch", "--interval", "0.5"],
                                  ["redrive", "--dry-run", "--error-contains", "x", "--key", "p1-*",
                                   "--since", "2h", "--until", "2099-01-01T00:00:00Z", "--limit", "5",
                                   "--max-redrives", "3"],
                                  ["offsets"], ["offsets", "--shift-by", "-5", "-p", "0", "-p", "2"],
                                  ["offsets", "--to-datetime", "1d", "--execute", "--group", "g"]])
def test_good_input_gives_a_service_body(argv: list[str]) -> None:
    assert callable(parse(argv))


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["redrive", "--help"]) == 0
    assert "--error-contains" in capsys.readouterr().out


@given(st.integers(0, 40), st.sets(st.integers(0, 80), max_size=40),
       st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=8))
def test_dead_letters_waiting_are_the_letters_in_the_partition_no_redrive_lists(
        start: int, letters: set[int], ranges: list[tuple[int, int]]) -> None:
    """The DLQ backlog the lag exporter serves (jobs_dead_letters_waiting): the offsets that hold
    dead letters (not transaction markers, not aborted records) from the partition's start on,
    less those a committed redrive lists."""
    redriven = {o for first, last in ranges for o in range(first, last + 1)}
    runs = [(first, last) for first, last in offset_ranges(letters)]
    assert dead_letters_waiting(start, runs, ranges) == len({o for o in letters if o >= start} - redriven)
    joined = merged(ranges)
    assert {o for first, last in joined for o in range(first, last + 1)} == redriven
    assert all(a[1] + 1 < b[0] for a, b in pairwise(joined))


@pytest.mark.parametrize(("code", "named"), [
    (KafkaError.GROUP_AUTHORIZATION_FAILED, "READ group 'workers' (CONSUMER_GROUP)"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, "READ topic 'jobs' (--topic)"),
])
def test_a_move_the_broker_refuses_is_one_line_naming_the_acl(code: int, named: str) -> None:
    """`offsets --execute` past the start-up check (an ACL removed meanwhile): librdkafka's
    authorization error becomes the refusal (exit 3) naming what is missing, not a traceback."""
    settings = TopicAdminSettings(kafka_bootstrap_servers="127.0.0.1:1", kafka_security_protocol="SASL_SSL",
                                  kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="ops",
                                  kafka_sasl_password="secret")
    needs = offsets_needs("workers", "CONSUMER_GROUP", "jobs", "--topic", execute=True)
    with pytest.raises(KafkaRefused) as refused, refusals_named(settings, needs):
        raise KafkaException(KafkaError(code))
    assert str(refused.value) == f"Kafka does not authorize User:ops to {named}: grant it with an ACL " \
        "(see docs/security.md)"
    assert exit_code_for(refused.value) == 3
    with pytest.raises(KafkaException), refusals_named(settings, needs):  # not a refusal: as it was
        raise KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))
