"""What the consumer does next with the jobs it fetched: the decisions, without Kafka.

Why it exists: a consumer that runs many jobs of one partition at once has to decide, on
every poll, which fetched jobs may start (jobs that share an ordering unit run one after
another in offset order; a job waiting for its retry holds back only its own unit), when
fetching must stop because too much is in hand (backpressure), which offset is safe to
commit, and what a rebalance must wait for or throws away. Keeping all of that here, pure
(no Kafka, no threads, no clock: the time is an argument), lets it be tested exhaustively
(tests/unit/test_scheduler.py drives random interleavings with hypothesis) while the Kafka
loop around it stays thin: poll, feed `fetched_many`, `start` what it says on the executor,
report each outcome, store `offsets()`, apply `flow()`, sleep until `next_due()` at most.

The life of a job (a `Task`):

    fetched --> pending (its unit is busy) --> ready (waits for a free slot) --> running
    running --succeeded--> finished
    running --failed(retry_at)--> waiting --(due)--> ready --> running ...
    running --wait(until)--> waiting (a delayed job held in memory: no attempt counted)
    running --settling--> settling --settled--> finished   (a record out: a dead letter, a parked copy)
                                settling --failed(retry_at)--> waiting (the publish is retried)
    running --settled--> finished (a record that needs no wait, as in memory)

Ordering units: `key` mode: the partition's messages with the same key (a message without a
key waits for nothing); `partition` mode: the whole partition; `none`: nothing waits. A unit
runs one job at a time, its oldest unfinished one, so handler starts follow offset order per
unit, and a job waiting for its retry keeps the unit's later jobs from starting.

Offsets: every fetched job is unfinished in an `OffsetTracker` until it succeeded or was
dead-lettered; `offsets()` returns the moved watermarks (lowest unfinished offset) to store.
A job that fails while its partition is being revoked is not retried here: it is handed back
(left unfinished, so uncommitted; the next owner fetches it again).

Backpressure (`flow()`): every assigned partition is paused once `max_in_flight` jobs are at
risk (`at_risk`: fetched and not yet below their partition's watermark, so unfinished or
finished above an unfinished one: what a crash now would make the next owner run again), and
resumed when a quarter of that budget is free again. So a job stuck at a partition's
watermark lets at most `max_in_flight` jobs finish above it before fetching stops; and that
partition alone is paused once half the budget has finished above its watermark, so the others
go on. A partition
whose ordering unit waits for a retry is paused too in `partition` mode (nothing of it can
run), and in `key` mode once it holds half the budget (so one stuck key cannot take the whole
budget from the other partitions). Pausing loses nothing: librdkafka resumes a partition from
the last message it handed over.

Rebalances: `revoke` stops a partition (its jobs not yet started are dropped, uncommitted) and
returns the jobs in flight there, which the revoke should wait for before committing;
`drop` (at the end of a revoke, or for a lost partition) forgets the partition and returns the
jobs still in flight, handed back: their outcomes, when they arrive, are ignored except that
their handler slot is freed, and, if the partition was assigned here again meanwhile, their
ordering units wait for them there (a key never runs twice at once on one member).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import StrEnum
from typing import Any

from consumer_service.offsets import TP, OffsetTracker, PartitionOffsets


class Ordering(StrEnum):
    """What must run one after another (the ORDERING setting)."""

    KEY = "key"  # jobs with the same key, in offset order; other keys of the partition alongside
    PARTITION = "partition"  # a partition's jobs one at a time, in offset order
    NONE = "none"  # no order at all


# A task's state (small ints: compared on the hot path).
PENDING, READY, RUNNING, WAITING, SETTLING, FINISHED, DROPPED = range(7)
STATE_NAMES = ("pending", "ready", "running", "waiting", "settling", "finished", "dropped")

_FREE: Any = object()  # the unit of a task that waits for no other task
_PARTITION_UNIT = b"\x00partition"  # the one unit of a partition in `partition` mode


class Task:
    """One fetched message, as the scheduler sees it.

    `tp`, `offset`, `key` and `payload` are what the caller fetched (the payload is opaque:
    typically the Kafka message). `attempt` is the number of the handler call that `start`
    hands out (1-based; each `failed` after a handler call adds one). `note` is the caller's
    to use (say, why a job is being dead-lettered); the scheduler never reads it.
    """

    __slots__ = ("_behind", "_failing", "_ghost", "_part", "_run", "_state", "_tail", "_unit",
                 "attempt", "key", "note", "offset", "payload", "tp")

    def __init__(self, tp: TP, offset: int, key: bytes | None, payload: Any, *,
                 part: _Partition, unit: Any) -> None:
        self.tp = tp
        self.offset = offset
        self.key = key
        self.payload = payload
        self.attempt = 1
        self.note: Any = None
        self._part = part
        self._unit = unit
        self._state = PENDING
        self._behind: Task | None = None  # the next task of the unit (set on a unit's tasks only)
        self._tail: Task = self  # the unit's last task (kept up to date on the unit's head only)
        self._failing = False  # failed at least once: counted in its partition's `retrying`
        self._run: Run | None = None  # the run it was handed out in, while running
        # Handed back by a drop while busy, and its partition assigned here again: the
        # placeholder that holds its unit there until its outcome comes back (see `assign`).
        self._ghost: Task | None = None

    def same_unit(self, other: Task) -> bool:
        """True if `other` must not start before this task finished (its ordering unit)."""
        return self._unit is not _FREE and self._part is other._part and self._unit == other._unit

    @property
    def cancelled(self) -> bool:
        """Its partition is being given up: a run should not start it (read from any thread)."""
        return self._part.closed

    @property
    def orphaned(self) -> bool:
        """Its partition was dropped while it was busy: it was handed back then, and its
        outcome changes nothing (read on the poll thread)."""
        return self._part.gone

    @property
    def state(self) -> str:
        """pending (behind its unit), ready (for a slot), running, waiting (for its retry),
        settling (its record being published), finished, or dropped (revoked or lost)."""
        state = self._state
        if state in (PENDING, READY, WAITING) and self._part.closed:
            state = DROPPED  # its partition went; tasks are not visited when that happens
        return STATE_NAMES[state]

    def __repr__(self) -> str:
        return (f"Task({self.tp[0]}[{self.tp[1]}]@{self.offset}, key={self.key!r}, "
                f"attempt={self.attempt}, {self.state})")


class Run:
    """Tasks handed to one handler slot, to be run one after another in this order.

    A run stops early at a stop or when a task's partition is `cancelled`; after a task
    fails (or is not a job), the run's later tasks of the same unit (`Task.same_unit`) must
    not start. Every task of a run is reported exactly once: its outcome, or `unstarted`.

    The slot and the poll loop share a run without a lock, each field written by one side
    (plain attribute and list stores are atomic in CPython, and seen in program order):
    the slot writes `results[i]` and then `done = i + 1` as each task ends (or is skipped),
    so the loop can report a run's outcomes task by task while a slower task of it still
    runs. The slot reads the stop flag and `cancelled` for task i only after it wrote
    `done = i`: so once the loop has closed a partition (or set the stop flag) and then read
    `done`, a task past `done` will never start, and the loop can give it back at once
    instead of waiting for the run.
    """

    __slots__ = ("done", "left", "reported", "results", "skipped", "taken_back", "tasks")

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks
        self.left = len(tasks)  # tasks not reported back yet; the slot is free at 0 (scheduler)
        self.results: list[Any] = [None] * len(tasks)  # each task's outcome (slot); None: not started
        self.done = 0  # results[:done] are final (slot)
        self.reported = 0  # results[:reported] were reported (poll loop)
        self.skipped = 0  # of those, not started (poll loop)
        self.taken_back: set[int] | None = None  # tasks given back before the slot reached them (poll loop)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


class Block:
    """The lane: fetched messages that the one slot runs in fetch order, with no Task each.

    When the member has one slot and holds nothing (`Scheduler.lane_open`), a fetched batch
    needs none of the scheduler's per-job decisions: with one slot every ORDERING holds by
    running the batch as it came (each partition's messages arrive in offset order), and
    jobs that succeed in order move their partition's watermark past them in one step. So
    the batch goes out as a block (`Scheduler.start_block`), its successes are reported in
    bulk (`block_progress`), and at the first job that is not a plain success (a failed call,
    a job not due yet, a message that is no job) the slot stops: the block's rest goes into
    the scheduler as fetched messages, the failed call's outcome with its task
    (`end_block`), and every rule applies to them as to any other job.

    The slot and the poll loop share a block as they share a `Run`, each field written by one
    side: the slot writes `done = i + 1` after message i succeeded (or, for a segment whose
    partition it found closed, `stops[s] = i` and then `done` = the segment's end), and reads
    the stop flag and `Segment.part.closed` for message i only after `done == i`; it sets
    `over` last. A failed call leaves `done` at its index, with its outcome in `failure`.
    """

    __slots__ = ("done", "failure", "key_of", "offset_of", "over", "payloads", "reported",
                 "results", "segments", "stops")

    def __init__(self, payloads: list[Any], segments: list[tuple[_Partition, int, int]],
                 offset_of: Callable[[Any], int], key_of: Callable[[Any], bytes | None]) -> None:
        self.payloads = payloads
        self.segments = segments  # (partition, start, end): consecutive runs of one partition
        self.offset_of = offset_of
        self.key_of = key_of
        self.done = 0  # payloads[:done] are over (slot): succeeded, or skipped (see `stops`)
        self.stops = [end for _, _, end in segments]  # where the slot stopped a segment (slot)
        self.results: list[Any] = [None] * len(payloads)  # each success's outcome (slot)
        self.failure: Any = None  # the outcome of payloads[done]'s failed call (slot)
        self.over = False  # the slot left the block (slot)
        self.reported = 0  # payloads[:reported] were reported (poll loop)

    def __len__(self) -> int:
        return len(self.payloads)

    def part_at(self, index: int) -> _Partition:
        """The partition of payloads[index]."""
        return next(part for part, start, end in self.segments if start <= index < end)

    def in_flight(self) -> Iterator[tuple[_Partition, int]]:
        """(partition, index) of each message whose outcome the loop has not taken yet: ended
        and not reported, or whose call may be running (poll loop)."""
        over = self.over  # read before `done`: once the slot left, `done` is final
        done = self.done
        last = done + 1 if not over or self.failure is not None else done
        for number, (part, start, end) in enumerate(self.segments):
            if start >= last:
                break
            yield from ((part, index) for index in range(max(start, self.reported),
                                                         min(end, last, self.stops[number])))


class _Partition:
    """The scheduler's state of one assigned partition."""

    __slots__ = ("at_risk", "block_out", "busy", "closed", "gone", "held", "offsets", "paused",
                 "retrying", "tp", "units")

    def __init__(self, tp: TP, offsets: PartitionOffsets) -> None:
        self.tp = tp
        self.offsets = offsets  # its unfinished offsets, in the scheduler's OffsetTracker
        self.units: dict[Any, Task] = {}  # unit -> its head: the oldest unfinished task
        self.busy: set[Task] = set()  # running or settling: what a revoke waits for
        self.held = 0  # fetched, unfinished and in memory
        self.at_risk = 0  # fetched and not yet below the watermark (Scheduler.at_risk)
        self.retrying = 0  # tasks that failed and are not finished (each holds its unit)
        self.paused = False  # as last told to the caller by `flow`
        self.closed = False  # being revoked (or dropped): nothing of it starts any more
        self.gone = False  # dropped: outcomes of its tasks are ignored
        self.block_out = 0  # messages of it in the block out, not reported yet (in `held` too)


def _resume_level(limit: int) -> int:
    """Hysteresis: paused at `limit`, resumed at or below this."""
    return limit - max(1, limit // 4)


class Scheduler:
    """Decides which fetched jobs start, what waits, what is paused, and what to commit.

    Not thread-safe: one thread (the poll loop) calls it. Times are the caller's clock
    (e.g. time.monotonic()), passed in.
    """

    def __init__(self, ordering: Ordering | str, concurrency: int, max_in_flight: int,
                 full_pause_s: float = 0.0) -> None:
        """`full_pause_s`: how long the member stays full before `flow` pauses every partition
        (the loop takes nothing meanwhile; see `flow`)."""
        self.ordering = Ordering(ordering)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_in_flight < concurrency:
            raise ValueError(f"max_in_flight ({max_in_flight}) must not be below "
                             f"the concurrency ({concurrency})")
        self.concurrency = concurrency
        self.max_in_flight = max_in_flight
        self.full_pause_s = full_pause_s
        self._resume_at = _resume_level(max_in_flight)
        self._retry_pause_at: int | None = {
            Ordering.KEY: max(1, max_in_flight // 2), Ordering.PARTITION: 1, Ordering.NONE: None,
        }[self.ordering]
        # A partition whose watermark is stuck (a long job, a retry, a dead letter the DLQ does
        # not take) is paused once half the budget has finished above it, so it cannot take the
        # whole member's budget from the other partitions.
        self._risk_pause_at = max(1, max_in_flight // 2)
        self._risk_resume_at = _resume_level(self._risk_pause_at)
        self._by_key = self.ordering is Ordering.KEY
        self._by_partition = self.ordering is Ordering.PARTITION
        self._tracker = OffsetTracker()
        self._parts: dict[TP, _Partition] = {}
        self._ready: deque[Task] = deque()  # may hold stale entries, skipped by `start`
        self._retries: list[tuple[float, int, Task]] = []  # heap of (due, seq, task); stale ones skipped
        self._seq = itertools.count()
        self._in_flight = 0  # tasks handed out (in runs) and not reported back
        self._slots = 0  # runs handed out and not fully reported back (at most `concurrency`)
        self._held = 0  # fetched, unfinished and in memory, over all partitions
        self._at_risk = 0  # fetched and not yet below a watermark, over all partitions (the bound)
        self._full = False  # at_risk reached max_in_flight (until it is down to _resume_at)
        self._full_since: float | None = None  # when `flow` first saw the member full
        self._full_paused = False  # full for full_pause_s: every partition paused
        self._flow_dirty: set[_Partition] = set()
        # Tasks busy when their partition was dropped, until their outcome comes back: if the
        # partition is assigned here again meanwhile, their units wait for them (`assign`).
        self._orphans: dict[TP, set[Task]] = {}
        self._block: Block | None = None  # the lane's block out, if any (see `Block`)
        self._held_back = 0  # fetched while the block is out, held by the caller (`held_back`)
        self._ends: dict[TP, int] = {}  # partition ends reached with jobs unfinished (`reached_end`)

    # ---- membership ---------------------------------------------------------------------

    def assign(self, tps: Iterable[TP]) -> list[Task]:
        """Partitions given to this member; `flow()` then pauses them if the member is full.

        Returns the tasks handed back if one of them was still being revoked (normally none).
        """
        handed_back: list[Task] = []
        for tp in tps:
            part = self._parts.get(tp)
            if part is not None and not part.closed:
                continue
            if part is not None:
                handed_back += self.drop([tp])
            part = self._parts[tp] = _Partition(tp, self._tracker.partition(tp))
            self._hold_units_of_orphans(part)
            self._flow_dirty.add(part)
        return handed_back

    def revoke(self, tps: Iterable[TP]) -> list[Task]:
        """Start giving up partitions: what is not in flight there is dropped, uncommitted.

        Returns the tasks in flight there (running, or settling): the revoke should wait for
        them (bounded), reporting their outcomes, then store `offsets()`, commit and `drop`.
        """
        tps = set(tps)
        waits: list[Task] = []
        for tp in tps:
            part = self._parts.get(tp)
            if part is None:
                continue
            if not part.closed:
                part.closed = True
                kept = len(part.busy) + part.block_out
                self._held -= part.held - kept
                part.held = kept
                self._at_risk -= part.at_risk - kept
                part.at_risk = kept
            waits += part.busy
        waits += self._block_tasks(tps)
        self._check_room()
        return waits

    def drop(self, tps: Iterable[TP]) -> list[Task]:
        """Forget partitions (the end of a revoke, or lost): their unfinished jobs are not
        committed, so the next owner fetches them again.

        Returns the tasks still in flight there: handed back. Their outcomes are still to be
        reported (that frees their slot) but change nothing else.
        """
        tps = set(tps)
        handed_back: list[Task] = self._block_tasks(tps)
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is None:
                continue
            part.closed = part.gone = True
            self._held -= part.held
            part.held = 0
            self._at_risk -= part.at_risk
            part.at_risk = 0
            handed_back += part.busy
            if part.busy:
                self._orphans.setdefault(tp, set()).update(part.busy)
            self._tracker.drop(tp)
        self._check_room()
        return handed_back

    # ---- fetching -----------------------------------------------------------------------

    def fetched_many(self, tp: TP, payloads: Sequence[Any], offset_of: Callable[[Any], int],
                     key_of: Callable[[Any], bytes | None]) -> list[Task]:
        """Messages of one partition were fetched, in fetch order (one call per batch: the
        consumer's hot path); `offset_of` and `key_of` read a payload's offset and key. Returns
        the tasks taken up. A message is not work to take up if its partition is not assigned
        (or is being revoked), or its offset is in hand already or finished (a duplicate
        delivery)."""
        if self._block is not None:
            raise ValueError("messages fetched while a block is out must wait for its end")
        part = self._parts.get(tp)
        if part is None or part.closed:
            return []
        add = part.offsets.add
        units = part.units
        ready = self._ready
        by_key = self._by_key
        fixed_unit = _PARTITION_UNIT if self._by_partition else _FREE
        tasks: list[Task] = []
        for payload in payloads:
            offset = offset_of(payload)
            if not add(offset):
                continue
            key = key_of(payload)
            unit = (_FREE if key is None else key) if by_key else fixed_unit
            task = Task(tp, offset, key, payload, part=part, unit=unit)
            tasks.append(task)
            if unit is not _FREE:
                head = units.get(unit)
                if head is not None:  # the unit is busy: wait behind its last task
                    head._tail._behind = task
                    head._tail = task
                    continue
                units[unit] = task
            task._state = READY
            ready.append(task)
        taken = len(tasks)
        if taken:
            part.held += taken
            part.at_risk += taken
            if part.retrying:
                self._flow_dirty.add(part)
            self._held += taken
            self._at_risk += taken
            if self._at_risk >= self.max_in_flight and not self._full:
                self._set_full(True)
        return tasks

    def reached_end(self, tp: TP, end: int) -> None:
        """The end of an assigned partition was reached at `end`: once nothing of it is
        unfinished, `offsets()` moves its watermark there, past records that are no jobs
        (transaction markers), so the group's lag is what is left to process. (librdkafka
        tells an end once: one that comes with jobs still unfinished is kept until they are.)"""
        part = self._parts.get(tp)
        if part is None or part.closed:
            return
        if part.block_out or part.offsets.unfinished:
            self._ends[tp] = end
        else:
            part.offsets.reached_end(end)

    # ---- the lane (see `Block`) ------------------------------------------------------------

    @property
    def lane_open(self) -> bool:
        """A fetched batch may go out as a block: one slot, and nothing held or running."""
        return self.concurrency == 1 and self._held == 0 and self._slots == 0 and self._block is None

    def start_block(self, batches: Iterable[tuple[TP, Sequence[Any]]], offset_of: Callable[[Any], int],
                    key_of: Callable[[Any], bytes | None]) -> Block | None:
        """Messages fetched (runs of one partition, in fetch order) go out as one block for the
        slot (only while `lane_open`). Messages of partitions not assigned (or being revoked)
        are not work. None if nothing is."""
        if not self.lane_open:
            raise ValueError("a block needs the lane open (one slot, nothing held)")
        payloads: list[Any] = []
        segments: list[tuple[_Partition, int, int]] = []
        for tp, batch in batches:
            part = self._parts.get(tp)
            if part is None or part.closed or not batch:
                continue
            start = len(payloads)
            payloads += batch
            segments.append((part, start, len(payloads)))
            part.held += len(batch)
            part.at_risk += len(batch)
            part.block_out += len(batch)
        taken = len(payloads)
        if not taken:
            return None
        self._held += taken
        self._at_risk += taken
        self._in_flight += taken
        self._slots += 1
        if self._at_risk >= self.max_in_flight and not self._full:
            self._set_full(True)
        block = self._block = Block(payloads, segments, offset_of, key_of)
        return block

    def held_back(self, count: int) -> None:
        """`count` more messages (fewer, if negative) fetched while the block is out wait for
        its end with the caller, who takes them up after it (`fetched_many`, or the next block)
        or forgets them with their partition. They are at risk (MAX_IN_FLIGHT counts them, and
        `flow` pauses a member full of them) until they are taken up or forgotten."""
        self._held_back += count
        self._at_risk += count
        if self._held_back < 0:
            raise ValueError(f"more messages given back than held back ({-self._held_back})")
        if count > 0 and self._at_risk >= self.max_in_flight and not self._full:
            self._set_full(True)
        elif count < 0:
            self._check_room()

    def block_progress(self, block: Block, succeeded: list[int] | None = None) -> int:
        """Report what the slot finished of `block` since last asked: its successes move their
        partitions' watermarks; messages it skipped (their partition closed) are handed back.
        Returns how many succeeded on partitions still held here (a partition dropped
        meanwhile handed its jobs back); their indexes are added to `succeeded` if given."""
        done = block.done
        reported = block.reported
        if done <= reported:
            return 0
        finished = 0
        for index, (part, start, end) in enumerate(block.segments):
            if end <= reported:
                continue
            if start >= done:
                break
            low, high = max(start, reported), min(end, done)
            part.block_out -= high - low
            if part.gone:
                continue
            ok = min(high, block.stops[index]) - low
            if ok > 0:
                part.offsets.passed(block.offset_of(block.payloads[low + ok - 1]) + 1)
                finished += ok
                if succeeded is not None:
                    succeeded += range(low, low + ok)
            part.held -= high - low
            part.at_risk -= high - low
            self._held -= high - low
            self._at_risk -= high - low
        self._in_flight -= done - reported
        block.reported = done
        self._check_room()
        return finished

    def end_block(self, block: Block, succeeded: list[int] | None = None) -> tuple[int, Run | None]:
        """The slot left `block`: its last successes are reported (`block_progress`); what it
        did not finish goes into the scheduler as fetched, in fetch order (what it found closed
        is dropped). Returns (successes, as `block_progress`; a run holding the task whose
        call failed, with `block.failure` as its result, to be reported as any run's: None if
        no call failed or its partition is being given up)."""
        if not block.over:
            raise ValueError("a block ends once its slot left it")
        finished = self.block_progress(block, succeeded)
        self._block = None
        self._slots -= 1
        rest = len(block) - block.done
        self._in_flight -= rest
        block.reported = len(block)
        batches: list[tuple[TP, list[Any]]] = []
        for part, start, end in block.segments:
            if end <= block.done:
                continue
            left = end - max(start, block.done)
            part.block_out -= left
            if part.gone:
                continue
            part.held -= left
            part.at_risk -= left
            self._held -= left
            self._at_risk -= left
            if not part.closed:
                batches.append((part.tp, block.payloads[max(start, block.done):end]))
        self._check_room()
        failed: Run | None = None
        for number, (tp, batch) in enumerate(batches):
            tasks = self.fetched_many(tp, batch, block.offset_of, block.key_of)
            if number == 0 and block.failure is not None and tasks and \
                    batch[0] is block.payloads[block.done]:
                failed = self._begin(tasks[0], block.failure)
        return finished, failed

    def _begin(self, task: Task, outcome: Any) -> Run:
        """A task (the head of its unit, just fetched) whose call already ran: handed out in a
        run of its own, `outcome` as its result, to be reported as a run's."""
        run = Run([task])
        run.results[0] = outcome
        run.done = 1
        self._ready.remove(task)  # else it would be handed out again once it is ready again
        task._state = RUNNING
        task._run = run
        task._part.busy.add(task)
        self._in_flight += 1
        self._slots += 1
        return run

    def _block_tasks(self, tps: set[TP]) -> list[Task]:
        """The block's messages on `tps` whose outcome the loop has not taken yet
        (`Block.in_flight`), as tasks: for a revoke to wait for, a drop to hand back."""
        block = self._block
        if block is None:
            return []
        tasks: list[Task] = []
        for part, index in block.in_flight():
            if part.tp in tps and not part.gone:
                payload = block.payloads[index]
                task = Task(part.tp, block.offset_of(payload), block.key_of(payload), payload,
                            part=part, unit=_FREE)
                task._state = RUNNING
                tasks.append(task)
        return tasks

    # ---- running ------------------------------------------------------------------------

    def start_runs(self, now: float, length: int) -> list[Run]:
        """Runs to start now, one per free slot: each holds up to `length` tasks for one slot
        to run one after another (a unit's head may bring its followers along: they run after
        it in the same run, so its order holds). The ready tasks are spread over the free
        slots. Retries due by `now` go first."""
        if self._retries and self._retries[0][0] <= now:
            self._promote(now)
        free = self.concurrency - self._slots
        ready = self._ready
        if free <= 0 or not ready:
            return []
        runs: list[Run] = []
        handed = 0
        while free and ready:
            waiting = self._held - self._in_flight - handed  # roughly: the jobs not handed out yet
            size = max(1, min(length, -(-waiting // free)))  # spread over the free slots
            tasks: list[Task] = []
            while ready and len(tasks) < size:
                task = ready.popleft()
                part = task._part
                if task._state != READY or part.closed:
                    continue  # stale: its partition is going
                tasks.append(task)
                follower = task._behind
                while follower is not None and len(tasks) < size and follower._state == PENDING:
                    tasks.append(follower)
                    follower = follower._behind
            if not tasks:
                continue
            run = Run(tasks)
            for task in tasks:
                task._state = RUNNING
                task._run = run
                task._part.busy.add(task)
            runs.append(run)
            handed += len(tasks)
            free -= 1
        self._in_flight += handed
        self._slots += len(runs)
        return runs

    def unstarted(self, task: Task) -> bool:
        """A task of a run that was not started (the run stopped early, or an earlier task of
        its unit failed in it): back to waiting for a slot, or behind its unit's head.

        False if it is handed back instead: its partition is being revoked or is gone.
        """
        part = self._back_from_running(task)
        if part is None:
            return False
        if part.closed:
            self._hand_back(task, part)
            return False
        if task._unit is _FREE or part.units.get(task._unit) is task:
            task._state = READY
            self._ready.appendleft(task)
        else:
            task._state = PENDING  # still behind its unit's head, made ready when that finishes
        return True

    def succeeded(self, task: Task) -> bool:
        """The handler call succeeded: the job is finished (its offset may be committed).

        False if its partition was dropped meanwhile (the job is handed back).
        """
        return self.succeeded_many((task,)) == 1

    def succeeded_many(self, tasks: Iterable[Task]) -> int:
        """`succeeded` for each of `tasks`, in order (the consumer's hot path: one call for the
        jobs of a run that succeeded). Returns how many finished; the others' partitions were
        dropped meanwhile (handed back)."""
        finished = 0
        last: _Partition | None = None
        for task in tasks:
            if task._state != RUNNING:
                raise ValueError(f"{task!r} is not running")
            self._reported(task)
            part = task._part
            if part.gone:
                self._orphan_back(task)
                continue
            part.busy.discard(task)
            self._finish(task, part)
            finished += 1
            if part is not last:
                if last is not None:
                    self._check_flow(last)
                last = part
        if last is not None:
            self._check_flow(last)
        return finished

    def failed(self, task: Task, retry_at: float) -> bool:
        """The handler call failed (or, for a settling task, the record's publish did):
        try again at `retry_at`. Its unit waits until then.

        False if the job is handed back instead: its partition is being revoked or is gone.
        """
        if task._state == RUNNING:
            task.attempt += 1
        return self.wait(task, retry_at)

    def wait(self, task: Task, until: float) -> bool:
        """A running (or settling) task may not start before `until`: a delayed job held in
        memory (its attempt number unchanged), or a failed one (see `failed`). Its unit waits
        until then, as for a retry.

        False if the job is handed back instead: its partition is being revoked or is gone.
        """
        part = self._back(task)
        if part is None:
            return False
        if part.closed:
            self._hand_back(task, part)
            return False
        task._state = WAITING
        heapq.heappush(self._retries, (until, next(self._seq), task))
        if not task._failing:
            task._failing = True
            part.retrying += 1
            self._flow_dirty.add(part)
        return True

    def settling(self, task: Task) -> bool:
        """A record for the job is being published (a dead letter after its last attempt or
        for a message that is not a job; a parked copy in a delay tier; see
        consumer_service.outgoing): its slot is free, but it stays unfinished, holding its unit
        and the watermark, until `settled` (or `failed`, to publish again).

        False if its partition was dropped meanwhile (the job is handed back).
        """
        if task._state != RUNNING:
            raise ValueError(f"{task!r} is not running")
        self._reported(task)
        if task._part.gone:
            self._orphan_back(task)
            return False
        task._state = SETTLING
        return True

    def settled(self, task: Task) -> bool:
        """The broker acknowledged the job's record: finished (from settling, or straight from
        running when the record needs no wait). False if its partition was dropped."""
        part = self._back(task)
        if part is None:
            return False
        self._finish(task, part)
        self._check_flow(part)
        return True

    # ---- what the loop asks -------------------------------------------------------------

    def offsets(self) -> list[tuple[TP, int]]:
        """(tp, offset) to store for each partition whose watermark moved since last asked:
        the lowest unfinished offset (the next one to read once everything below is done)."""
        if self._ends:
            self._reach_ends()
        return self._tracker.advanced()

    def _reach_ends(self) -> None:
        """Ends kept by `reached_end`, for partitions with nothing unfinished any more: the
        watermark moves there, unless a message at or past it was fetched since (then it was
        no end)."""
        for tp, end in list(self._ends.items()):
            part = self._parts.get(tp)
            if part is not None and not part.closed and (part.block_out or part.offsets.unfinished):
                continue
            del self._ends[tp]
            if part is not None and not part.closed:
                part.offsets.reached_end(end)

    def committable(self, tp: TP) -> int | None:
        """tp's watermark now (None: nothing fetched from it, or not assigned)."""
        return self._tracker.committable(tp)

    def flow(self, now: float = 0.0) -> tuple[list[TP], list[TP]]:
        """(to pause, to resume): partitions whose fetching must change since last asked.

        A member full for `full_pause_s` pauses every partition until a quarter of its budget
        is free. Until then the loop simply takes no message (`room` is 0): pausing makes
        librdkafka drop what it had fetched ahead and fetch it again on resume, which a full
        member that empties in a millisecond should not pay; but a member that stays full must
        still poll (rebalances, max.poll.interval.ms) without being handed messages.
        """
        if self._full and not self._full_paused:
            if self._full_since is None:
                self._full_since = now
            if now - self._full_since >= self.full_pause_s:
                self._full_paused = True
                self._flow_dirty.update(part for part in self._parts.values() if not part.closed)
        if not self._flow_dirty:
            return [], []
        pause: list[TP] = []
        resume: list[TP] = []
        for part in self._flow_dirty:
            if part.closed:
                continue
            want = self._wants_pause(part)
            if want != part.paused:
                part.paused = want
                (pause if want else resume).append(part.tp)
        self._flow_dirty.clear()
        return sorted(pause), sorted(resume)

    def pause_due(self) -> float | None:
        """When `flow` will pause a full member (None: not full, or paused already)."""
        if not self._full or self._full_paused or self._full_since is None:
            return None
        return self._full_since + self.full_pause_s

    @property
    def fetch_paused(self) -> bool:
        """Every partition is paused because the member is full: a fetch only serves
        librdkafka's callbacks, it hands over no message."""
        return self._full_paused

    def next_due(self) -> float | None:
        """When the earliest retry is due (None: no retry waiting): the loop's longest sleep."""
        retries = self._retries
        while retries:
            due, _, task = retries[0]
            if task._state == WAITING and not task._part.closed:
                return due
            heapq.heappop(retries)
        return None

    def in_flight_on(self, tps: Iterable[TP] | None = None) -> list[Task]:
        """Tasks running or settling on these partitions (None: on all assigned ones)."""
        parts = self._parts.values() if tps is None else (self._parts.get(tp) for tp in tps)
        return [task for part in parts if part is not None for task in part.busy] + \
            self._block_tasks(set(self._parts) if tps is None else set(tps))

    def retrying(self) -> list[Task]:
        """Tasks waiting for their retry, soonest first."""
        return [task for _, _, task in sorted(self._retries)
                if task._state == WAITING and not task._part.closed]

    @property
    def in_flight(self) -> int:
        """Tasks handed out by `start_runs` and not yet reported back."""
        return self._in_flight

    @property
    def runs(self) -> int:
        """Slots busy: runs handed out with a task not yet reported back."""
        return self._slots

    @property
    def held(self) -> int:
        """Jobs fetched, unfinished and in memory."""
        return self._held

    @property
    def at_risk(self) -> int:
        """Jobs fetched and not yet below their partition's watermark: unfinished, or finished
        above an unfinished one (or held back while a block is out). A crash now makes the next
        owner run them (again): what MAX_IN_FLIGHT bounds."""
        return self._at_risk

    @property
    def room(self) -> int:
        """How many more jobs may be fetched before the member is full."""
        return max(0, self.max_in_flight - self._at_risk)

    @property
    def assigned(self) -> list[TP]:
        """Partitions assigned and not being revoked."""
        return [tp for tp, part in self._parts.items() if not part.closed]

    @property
    def paused(self) -> list[TP]:
        """Partitions that `flow` said to pause and not yet to resume."""
        return sorted(tp for tp, part in self._parts.items() if part.paused and not part.closed)

    # ---- inside ---------------------------------------------------------------------------

    def _back_from_running(self, task: Task) -> _Partition | None:
        """`_back` for an outcome only a running task can have (succeeded, not started)."""
        if task._state != RUNNING:
            raise ValueError(f"{task!r} is not running")
        return self._back(task)

    def _back(self, task: Task) -> _Partition | None:
        """A running or settling task reported back: a running one's slot is counted back; it is
        no longer in flight. Its partition, or None if that was dropped meanwhile (the task is
        handed back)."""
        state = task._state
        if state == RUNNING:
            self._reported(task)
        elif state != SETTLING:
            raise ValueError(f"{task!r} is neither running nor settling")
        part = task._part
        if part.gone:
            self._orphan_back(task)
            return None
        part.busy.discard(task)
        return part

    def _reported(self, task: Task) -> None:
        """A running task's outcome (or `unstarted`) came back: its run's slot may be free."""
        self._in_flight -= 1
        run = task._run
        task._run = None
        if run is not None:
            run.left -= 1
            if run.left == 0:
                self._slots -= 1

    def _promote(self, now: float) -> None:
        retries = self._retries
        due: list[Task] = []
        while retries and retries[0][0] <= now:
            task = heapq.heappop(retries)[2]
            if task._state == WAITING and not task._part.closed:
                task._state = READY
                due.append(task)
        self._ready.extendleft(reversed(due))  # before fresh jobs: they hold the watermark back

    def _finish(self, task: Task, part: _Partition) -> None:
        """The task is done (succeeded, or its record settled); `_check_flow(part)` after it
        (once for a batch of one partition's tasks: it looks at the partition as it is then)."""
        task._state = FINISHED
        # Below the watermark now: this job and any finished above it up to the next unfinished
        # one (a partition being revoked counts only its busy jobs, see `revoke`).
        safe = part.offsets.finish(task.offset)
        if part.closed:
            safe = 1
        part.held -= 1
        self._held -= 1
        part.at_risk -= safe
        self._at_risk -= safe
        if task._failing:
            part.retrying -= 1
            self._flow_dirty.add(part)
        self._release_unit(task, part)

    def _check_flow(self, part: _Partition) -> None:
        """After jobs of `part` finished: whether `flow` must look at it again, and whether the
        member is no longer full."""
        above = part.at_risk - part.held  # finished above the watermark
        stuck = above >= self._risk_pause_at if not part.paused else above <= self._risk_resume_at
        if stuck or part.retrying:
            self._flow_dirty.add(part)
        if self._full and self._at_risk <= self._resume_at:
            self._set_full(False)

    def _release_unit(self, task: Task, part: _Partition) -> None:
        """`task`, its unit's head, is done: the unit's next task (if any) becomes its head."""
        unit = task._unit
        if unit is _FREE or part.closed:
            return
        follower = task._behind
        if follower is None:
            del part.units[unit]
            return
        task._behind = None
        follower._tail = task._tail
        part.units[unit] = follower
        if follower._state == PENDING:  # else it runs next in this task's run already
            follower._state = READY
            self._ready.append(follower)

    def _hold_units_of_orphans(self, part: _Partition) -> None:
        """A partition assigned afresh while calls of its previous assignment still run here:
        each of their units gets a placeholder head (a ghost, never started), so the unit's
        jobs fetched again wait behind it until those calls report back (`_orphan_back`).
        Without it a key's job could start again while its earlier call still runs."""
        for orphan in self._orphans.get(part.tp, ()):
            unit = orphan._unit
            if unit is _FREE:
                continue
            ghost = part.units.get(unit)
            if ghost is None:
                ghost = part.units[unit] = Task(part.tp, -1, orphan.key, None, part=part, unit=unit)
                ghost._state = RUNNING
                ghost.attempt = 0  # a ghost counts the orphans it waits for here
            ghost.attempt += 1
            orphan._ghost = ghost

    def _orphan_back(self, task: Task) -> None:
        """The outcome of a task handed back by a drop came back: it is over, and its unit, if
        its partition is assigned here again, may go on."""
        task._state = DROPPED
        orphans = self._orphans.get(task.tp)
        if orphans is not None:
            orphans.discard(task)
            if not orphans:
                del self._orphans[task.tp]
        ghost = task._ghost
        if ghost is None:
            return
        task._ghost = None
        ghost.attempt -= 1
        if ghost.attempt == 0:
            ghost._state = FINISHED
            self._release_unit(ghost, ghost._part)

    def _hand_back(self, task: Task, part: _Partition) -> None:
        """A task of a partition being revoked that will not finish here: left unfinished."""
        task._state = DROPPED
        part.held -= 1
        self._held -= 1
        part.at_risk -= 1
        self._at_risk -= 1
        self._check_room()

    def _check_room(self) -> None:
        if self._full and self._at_risk <= self._resume_at:
            self._set_full(False)

    def _set_full(self, full: bool) -> None:
        self._full = full
        self._full_since = None
        if not full and self._full_paused:
            self._full_paused = False
            self._flow_dirty.update(part for part in self._parts.values() if not part.closed)

    def _wants_pause(self, part: _Partition) -> bool:
        if self._full_paused:
            return True
        above = part.at_risk - part.held  # finished above its watermark: stuck behind one job
        if above > self._risk_resume_at if part.paused else above >= self._risk_pause_at:
            return True
        limit = self._retry_pause_at
        if limit is None or not part.retrying:
            return False
        if part.paused:
            return part.held > _resume_level(limit)
        return part.held >= limit
