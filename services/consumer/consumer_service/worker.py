"""One member of the consumer group: the Kafka loop around the scheduler and the executor.

The decisions are made elsewhere, without Kafka: consumer_service.scheduler says which fetched
jobs start (CONSUMER_CONCURRENCY slots, ORDERING units), when a partition must pause
(MAX_IN_FLIGHT, a retry) and which offsets are safe to store (the watermark: the lowest
unfinished offset); jobpipe.executor runs the handler calls (threads, or one event loop for an
`async def` handler) and hands the outcomes back through one queue; consumer_service.runner is
what a slot does with its run of jobs; consumer_service.outgoing owns the records a job's
outcome publishes (dead letters, parked copies) while they are out. This loop only carries
those decisions out:

- poll: take the fetched messages (never more than the room left), or wait for outcomes
  (and dead-letter answers) when no fetched message could start now, whichever can move
  things on (see `_turn`: never a short timer);
- report each outcome to the scheduler as it comes back: logged (`job.processed`,
  `job.retry`), a retry scheduled with the retry policy's backoff (nothing sleeps; only the
  job's unit waits), a final failure or a message that is not a job published to the DLQ
  (the job stays unfinished until the broker acknowledged the dead letter). Each job of a
  run comes back as it ends, not when its run ends (`_report_progress`);
- start what the scheduler says; store the moved watermarks (committed in the background,
  on revoke and before leaving); pause/resume what it says.

A slow handler never costs the group membership: the loop keeps polling while handlers run.
A run is short: one job when jobs take long, as many as fit in about RUN_BUDGET_S of handler
time when they are quick; a job's outcome is stored as it ends (within a poll's wait, POLL_S,
when a slower job of its run still runs).

Rebalances: a revoke waits (bounded by SHUTDOWN_TIMEOUT_S) for the handler calls that started
on the revoked partitions (their jobs not reached yet in a run are given back at once),
stores and commits, then forgets them, so a graceful rebalance processes nothing twice; what
did not finish in time is handed back (logged and counted once, uncommitted). A lost
partition is forgotten at once, its jobs in flight handed back; should it come back to this
member while they still run, their keys wait for them (consumer_service.scheduler). On
shutdown the calls that started are finished within the budget, what is finished is
committed while this member is still in the group (see `_commit_before_leaving`), then the
consumer is closed. A librdkafka client left with no broker to talk to is replaced (see
`_replace_client`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer_service.counts import Counts
from consumer_service.dead_letters import DeadLetters
from consumer_service.member_producer import MemberProducer
from consumer_service.offsets import TP
from consumer_service.outgoing import Outgoing, Record, identify, job_of
from consumer_service.parking import ParkedCopies, Parking
from consumer_service.result_kinds import DeadLettersWithResults, Results, TransactionalKind
from consumer_service.result_records import result_record
from consumer_service.runner import NotDue, TaskRunner
from consumer_service.scheduler import Block, Run, Scheduler, Task
from consumer_service.settings import ConsumerSettings
from consumer_service.stranded import stranded_since
from consumer_service.tier_mover import TierMover
from consumer_service.transactions import Transactions
from jobpipe import metrics
from jobpipe.access import refused_by
from jobpipe.delays import Park, decide, tiers_of
from jobpipe.executor import Completion, Executor
from jobpipe.handling import Attempt, JobHandler, Next, label_of, log_processed, log_retry
from jobpipe.job import Job
from jobpipe.kafka_clients import consumer_config
from jobpipe.logs import enabled, event
from jobpipe.shutdown import ShutdownBudget

T = TypeVar("T")
FETCH = 500  # most messages taken from librdkafka at once
POLL_S = 0.2  # longest a single poll blocks, so stop and due retries are noticed quickly
RUN_BUDGET_S = 0.002  # about how much handler time one run holds (see `_run_length`)
MAX_RUN = 256  # most jobs in one run
FULL_PAUSE_S = 0.5  # a member full of jobs (MAX_IN_FLIGHT) this long pauses its partitions
# Commit refusals that only mean "the group is rebalancing": the same offsets can be committed
# once the rebalance is over (librdkafka keeps the assignment through them while rebalancing).
REBALANCING = (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION)
STATS_INTERVAL_MS = 2000  # librdkafka statistics: consumer lag metrics, and the broker watch below
# What the scheduler reads of a message (`Scheduler.fetched_many`): librdkafka's own methods,
# no Python call per message (a fetched message has an offset; its key is bytes or None).
_offset = cast(Callable[[Message], int], Message.offset)
_key = cast(Callable[[Message], "bytes | None"], Message.key)
# A client whose statistics have listed no broker it would reconnect to (none but logical ones,
# or only decommissioned ones idle in INIT) this long is replaced (see consumer_service.stranded).
STRANDED_AFTER_S = 10.0


class ClientCall(Generic[T]):
    """A call on the librdkafka client made on a daemon thread and waited for only until a
    deadline (a commit or close() waits for the group coordinator, which may never answer).
    A call still running when the wait ends is left to finish, or not, on its own; the worker
    keeps it, so that it makes no other call on that client meanwhile (close() racing a commit
    on the same client, issue 22, defect 10)."""

    def __init__(self, call: Callable[[], T], name: str) -> None:
        self._call = call
        self._returned: list[T] = []
        self._raised: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._returned.append(self._call())
        except BaseException as error:  # handed to the waiting thread
            self._raised.append(error)

    def wait(self, until: float) -> bool:
        """Wait until `until` (time.monotonic()); True if the call is over."""
        self._thread.join(max(0.0, until - time.monotonic()))
        return not self._thread.is_alive()

    def result(self) -> T:
        """What the call returned (raises what it raised); only once `wait` said it is over."""
        if self._raised:
            raise self._raised[0]
        return self._returned[0]


@dataclass
class ConsumerWorker:
    number: int
    settings: ConsumerSettings
    handler: JobHandler
    stop: threading.Event
    joined: threading.Event
    metrics_on: bool = False
    counts: Counts = field(default_factory=Counts)

    def __post_init__(self) -> None:
        host = socket.gethostname()
        self.name = f"consumer {self.number}@{host}"
        client_id = f"consumer-{self.number}-{host}"
        instance_id = f"{host}-{self.number}" if self.settings.static_membership else None
        self._config = consumer_config(self.settings, client_id, self.settings.consumer_group, instance_id,
                                       max_in_flight=self.settings.max_in_flight)
        # PROCESSING_GUARANTEE=exactly_once: offsets are committed only in the member's
        # transactions, with the records of the jobs below them (consumer_service.transactions).
        self._eos: Transactions | None = None
        if self.settings.processing_guarantee == "exactly_once":
            self._config["enable.auto.commit"] = False
            self._eos = Transactions(self.settings, f"{client_id}-tx", self.number, self.name)
        self._results_topic = self.settings.results_topic
        self._rewind: set[TP] = set()  # partitions whose transaction was aborted: read them again
        self._generation = 0  # which librdkafka client is current (see `_replace_client`)
        self._stranded_since: float | None = None
        self._broker_lost = False  # no broker answered in the last statistics: not ready
        self._consumer = self._new_client()
        self._producer = MemberProducer(self.settings, f"{client_id}-dlq")
        self._concurrency = self.settings.consumer_concurrency
        self._scheduler = Scheduler(self.settings.ordering, self._concurrency, self.settings.max_in_flight,
                                    full_pause_s=FULL_PAUSE_S)
        self._executor = Executor.for_function(TaskRunner(self.handler, self.stop).function,
                                               self._concurrency, f"handler-{self.number}")
        self._assigned: set[TP] = set()
        self._runs: set[Run] = set()  # submitted to the executor, its completion not collected yet
        # The lane (consumer_service.scheduler.Block): one slot, a plain handler, and no record
        # tied to a success (no RESULTS_TOPIC, at-least-once): a fetched batch runs as a block.
        self._lane = (self._concurrency == 1 and not self.handler.is_async
                      and self._results_topic is None and self._eos is None)
        self._block: Block | None = None  # the block out, its completion not collected yet
        self._later: list[Message] = []  # fetched while the block is out: taken after its end
        self._outgoing = Outgoing(
            self._producer.poll, self._scheduler, policy=self.handler.policy, member=self.name,
            hand_back=self._hand_back, wake=self._executor.wake, stop=self.stop,
            name=f"outgoing-{self.number}")
        self._dead_letter_kind = DeadLetters(self._producer, self.settings.dlq_topic, self.counts, self.name)
        self._parked_kind = ParkedCopies(self._producer, self.settings.jobs_topic)
        self._tiers = tiers_of(self.settings.jobs_topic)
        for tier in self._tiers:  # every tier's series from the start (0), not from its first job
            metrics.JOBS_PARKED.labels(tier.name)
        self._hold_max_s = self.settings.delay_hold_max_ms / 1000
        self._mover: TierMover | None = None  # made by `run` (its clients connect at once)
        # RESULTS_TOPIC set, at-least-once: results, and dead letters with their failure result,
        # are records the job waits for (exactly-once: they go in its transactions instead).
        results = self._results_topic
        self._result_kind = None if results is None else Results(self._producer, results)
        self._give_up_kind = DeadLettersWithResults(self._dead_letter_kind, self._producer, results,
                                                    self.name)
        self._job_s = RUN_BUDGET_S  # average handler time per job (moving), sets the run length
        self._shutdown: ShutdownBudget | None = None  # from when the stop was seen (see `_budget`)
        self._client_call: ClientCall[Any] | None = None  # a commit or close() still running
        self.heartbeat = time.monotonic()

    # ---- the librdkafka client -----------------------------------------------------------

    def _new_client(self) -> Consumer:
        generation = self._generation
        return Consumer(self._config | {"statistics.interval.ms": STATS_INTERVAL_MS,
                                        "stats_cb": partial(self._on_stats, generation)})

    def _subscribe(self) -> None:
        """Subscribe the current client; callbacks from a replaced client are ignored."""
        generation = self._generation

        def current(callback: Callable[[Consumer, list[TopicPartition]], None]) -> Callable[..., None]:
            def guarded(consumer: Consumer, partitions: list[TopicPartition]) -> None:
                if generation == self._generation:
                    callback(consumer, partitions)
            return guarded

        self._consumer.subscribe([self.settings.jobs_topic], on_assign=current(self._on_assign),
                                 on_revoke=current(self._on_revoke), on_lost=current(self._on_lost))

    def _replace_client(self) -> None:
        """Swap a stranded librdkafka client for a new one that bootstraps afresh.

        Seen with scenario 6 of tests/integration/test_reliability.py (a broker frozen longer
        than its broker.session.timeout.ms): on waking up, KRaft has fenced the broker, and its
        first metadata response lists no broker. librdkafka (2.16 here) then decommissions every
        broker missing from metadata (it dropped the bootstrap servers once it had learned the
        real brokers), so the client has no broker left: it never connects again, its
        re-bootstrap timer only runs while a metadata request is outstanding, and none can be
        sent. When something in librdkafka still holds the decommissioned broker, it stays
        listed, idle in INIT, and the client is just as stuck (seen about one run in four).
        The consumer would sit out of its group for good (and close() would wait forever
        for a coordinator). A bare confluent-kafka consumer does the same, so the cure is here:
        when the statistics have shown no broker it would reconnect to for STRANDED_AFTER_S
        (consumer_service.stranded), the worker starts over with a new client. A broker that is
        only down keeps being tried (TRY_CONNECT, CONNECT, DOWN, briefly INIT): that client is
        kept, as a new one would restart librdkafka's reconnect backoff (issue 22, defect 8).
        Nothing is lost: what was finished but not committed is redone by the partition's next
        owner, as after any lost session.
        """
        event("consumer.client_replaced",
              f"{self.name}: the Kafka client has had no broker to talk to for "
              f"{STRANDED_AFTER_S:g} s; replacing it", level="WARNING", consumer=self.name)
        stranded = self._consumer
        self._forget(set(self._assigned), "the Kafka client was replaced")
        self._generation += 1
        self._stranded_since = None
        self._consumer = self._new_client()
        self._subscribe()
        # Its close() may never return: leave it to a daemon thread (it holds the last reference).
        threading.Thread(target=stranded.close, name=f"close-stranded-{self.number}", daemon=True).start()

    # ---- the loop -------------------------------------------------------------------

    def run(self) -> None:
        self._subscribe()
        mover = self._mover = TierMover(self.settings, self.number, self.stop)
        moving = threading.Thread(target=mover.run, name=f"delay-mover-{self.number}", daemon=True)
        moving.start()
        try:
            while not self.stop.is_set():
                self.heartbeat = time.monotonic()
                if self._stranded_since is not None and \
                        self.heartbeat - self._stranded_since >= STRANDED_AFTER_S:
                    self._replace_client()
                if mover.failed is not None:
                    raise mover.failed
                self._turn()
            self._finish_in_flight()
            self._commit_before_leaving()
        finally:
            self._close()
            moving.join(max(0.0, self._budget(time.monotonic()).left("flush", time.monotonic())))

    def _turn(self) -> None:
        """One turn: wait for messages or outcomes, report, start, store, pause/resume.

        librdkafka's queue and the executor's cannot be waited on together, so the turn waits
        on the one whose event can move things on (never on a short timer): outcomes when no
        message could be started now (every slot busy, fetching paused, or jobs in hand that
        wait for a running one); otherwise Kafka, and the outcomes that came meanwhile are
        reported after the poll (within POLL_S: nothing in hand waits for them). Dead-letter
        answers wake the outcome wait (see consumer_service.outgoing)."""
        scheduler = self._scheduler
        wait = self._wait_s()
        messages: list[Message] = []
        may_fetch = scheduler.room > 0 or scheduler.fetch_paused  # paused: a fetch takes nothing
        # A block is out until its completion is collected, even once all its jobs are reported.
        out = scheduler.in_flight or self._block is not None
        # Outcomes are reported as soon as they are collected, before any poll: a revoke served
        # by a poll waits for the revoked partitions' jobs, and must find their outcomes.
        if not may_fetch or (out and (scheduler.runs >= self._concurrency
                                      or scheduler.held > scheduler.in_flight)):
            if may_fetch and self._block is not None and not self._later:
                messages = self._fetch(0)  # the next batch, while the slot runs the block
            self._outgoing.waiting(True)
            self._report(self._executor.collect(wait))
            self._outgoing.waiting(False)
            if may_fetch and not messages:
                messages = self._fetch(0)
        else:
            if out:
                self._report(self._executor.collect(0))
            messages = self._fetch(wait)
        if self._runs or self._block is not None:
            self._report_progress()
        if self._later and self._block is None:
            self._scheduler.held_back(-len(self._later))
            messages, self._later = self._later + messages, []
        if messages:
            self._take(messages)
        self._outgoing.serve()
        if self._outgoing.answered:
            self._outgoing.report()
        self._start(time.monotonic())
        self._store()
        if self._eos is not None:
            self._transaction_turn()
        self._apply_flow()

    def _wait_s(self) -> float:
        wait = POLL_S
        # A retry that is due cannot start while every slot is busy: then an outcome is what
        # the loop waits for (waiting for the retry's time would spin once it has passed).
        retry = self._scheduler.next_due() if self._scheduler.runs < self._concurrency else None
        for due in (retry, self._scheduler.pause_due()):
            if due is not None:
                wait = max(0.0, min(wait, due - time.monotonic()))
        return wait

    def _fetch(self, wait: float) -> list[Message]:
        """What librdkafka has fetched, up to the room left; waits up to `wait` for the first
        message only (consume() with a timeout would wait for a full batch)."""
        size = max(1, min(FETCH, self._scheduler.room))
        if wait <= 0:
            return self._consumer.consume(size, 0)
        first = self._consumer.poll(wait)
        if first is None:
            return []
        return [first, *self._consumer.consume(size - 1, 0)] if size > 1 else [first]

    def _take(self, messages: list[Message]) -> None:
        """Every message consume() returned goes to the scheduler (one left out would be
        committed past), in runs of one partition: one `fetched_many` call per run, or, in the
        lane, all of them as one block. While a block is out they wait for its end (nothing
        may go in ahead of what it leaves undone)."""
        if self._block is not None:
            kept = []
            for message in messages:  # errors are not held back: a refusal ends the member now
                error = message.error()
                if error is None or error.code() == KafkaError._PARTITION_EOF:
                    kept.append(message)
                else:
                    self._on_message_error(error)
            self._later += kept
            self._scheduler.held_back(len(kept))
            return
        scheduler = self._scheduler
        batches: list[tuple[TP, list[Message]]] = []
        ends: list[tuple[TP, int]] = []
        start = 0
        partition = messages[0].partition()
        for index, message in enumerate(messages):
            error = message.error()
            if error is None and message.partition() == partition:
                continue
            if start < index:  # the run of `partition` before this message
                batches.append(((messages[start].topic() or "", partition or 0), messages[start:index]))
            start = index
            partition = message.partition()
            if error is not None:
                start = index + 1
                if error.code() == KafkaError._PARTITION_EOF:
                    ends.append(((message.topic() or "", partition or 0), message.offset() or 0))
                else:
                    self._on_message_error(error)
        if start < len(messages):
            batches.append(((messages[start].topic() or "", partition or 0), messages[start:]))
        if self._lane and scheduler.lane_open:
            block = scheduler.start_block(batches, _offset, _key)
            if block is not None:
                self._block = block
                self._executor.submit(block, block)
        else:
            for tp, batch in batches:
                scheduler.fetched_many(tp, batch, _offset, _key)
        for tp, end in ends:  # after the messages: an end never moves a watermark past them
            scheduler.reached_end(tp, end)

    def _on_message_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        refused = refused_by(self.settings, error, "this consumer")
        if refused is not None:
            raise refused
        event("kafka.error", f"{self.name}: {error.str()}", level="WARNING", code=error.name())

    def _run_length(self) -> int:
        """As many jobs per run as take about RUN_BUDGET_S of handler time (one when jobs take
        longer than that): quick jobs share a thread hand-off, slow ones keep every slot busy."""
        return max(1, min(MAX_RUN, int(RUN_BUDGET_S / max(self._job_s, 1e-7))))

    def _start(self, now: float) -> None:
        scheduler = self._scheduler
        if scheduler.runs >= self._concurrency:
            return
        submit = self._executor.submit
        runs = self._runs
        for run in scheduler.start_runs(now, self._run_length()):
            if any(task.note is not None for task in run.tasks):
                tasks = self._outgoing.send_again(run.tasks)
                if not tasks:
                    continue
                run.tasks = tasks
                run.results = [None] * len(tasks)
            runs.add(run)
            submit(run, run)

    def _store(self) -> None:
        moved = self._scheduler.offsets()
        if not moved or self._eos is not None:  # exactly-once: the transactions commit the offsets
            return
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(tp[0], tp[1], offset) for tp, offset in moved])
        except KafkaException as error:  # a partition the client no longer has: its next owner redoes it
            event("commit.failed", f"{self.name} could not store offsets: {error.args[0].str()}",
                  level="WARNING", error=error.args[0].str(), consumer=self.name)

    def _apply_flow(self) -> None:
        pause, resume = self._scheduler.flow(time.monotonic())
        if pause:
            self._consumer.pause([TopicPartition(*tp) for tp in pause])
        if resume:
            self._consumer.resume([TopicPartition(*tp) for tp in resume])

    # ---- outcomes -------------------------------------------------------------------------

    def _report(self, completions: list[Completion]) -> None:
        """Runs that ended: report what of them was not reported yet (see `_report_results`)."""
        for completion in completions:
            if completion.error is not None:
                raise completion.error  # the runner itself failed: a bug, not a job's failure
            if type(completion.token) is Block:
                self._end_block(completion.token)
                continue
            run: Run = completion.token
            self._runs.discard(run)
            self._report_results(run, len(run.tasks))
            started = len(run.tasks) - run.skipped
            if started:
                self._job_s += (completion.duration_s / started - self._job_s) * 0.3

    def _report_progress(self) -> None:
        """Tasks of runs (or the block) still running that ended already: reported now, not
        when their run ends (a quick job is logged and its offset stored while a slow one of its
        run runs)."""
        block = self._block
        if block is not None:
            succeeded: list[int] | None = [] if enabled("INFO") else None
            self._block_processed(block, self._scheduler.block_progress(block, succeeded), succeeded)
        for run in self._runs:
            done = run.done
            if done > run.reported:
                self._report_results(run, done)

    def _report_results(self, run: Run, upto: int) -> None:
        """Tell the scheduler what the run's tasks up to `upto` did (each is final), in the
        run's order; successes in batches (`Scheduler.succeeded_many`: the hot path)."""
        logged = enabled("INFO")
        tasks = run.tasks
        results = run.results
        taken_back = run.taken_back
        not_started: list[Task] = []
        succeeded: list[Task] = []  # in a row, not reported yet
        processed = 0
        plain = self._results_topic is None  # a success needs no record
        for index in range(run.reported, upto):
            task = tasks[index]
            result = results[index]
            if plain and type(result) is Attempt and result.error is None:
                succeeded.append(task)
                continue
            if succeeded:
                processed += self._succeeded(succeeded, results, index - len(succeeded), logged)
                succeeded = []
            if result is None:
                run.skipped += 1
                if taken_back is None or index not in taken_back:
                    not_started.append(task)
            elif isinstance(result, Attempt):
                if result.error is not None:
                    self._after_failure(task, result)
                else:
                    processed += self._publish_result(task, result)
                    if logged:
                        log_processed(result, self.name, partition=task.tp[1], offset=task.offset)
            elif isinstance(result, NotDue):
                self._wait_for_due(task, result)
            else:
                self._give_up(task, None, 0, str(result))
        if succeeded:
            processed += self._succeeded(succeeded, results, upto - len(succeeded), logged)
        run.reported = upto
        if processed:
            self.counts.processed += processed
            metrics.count_processed(processed)
        for task in reversed(not_started):  # back in their places, in order
            self._scheduler.unstarted(task)

    def _succeeded(self, tasks: list[Task], results: list[Any], first: int, logged: bool) -> int:
        """Jobs of a run that succeeded (results[first:] theirs), reported at once; returns how
        many count as processed (a job whose partition went meanwhile was handed back, and
        counted, then: its next owner redoes it)."""
        finished = self._scheduler.succeeded_many(tasks)
        if logged:
            for offset, task in enumerate(tasks, first):
                if not task.orphaned:
                    log_processed(results[offset], self.name, partition=task.tp[1], offset=task.offset)
        return finished

    def _end_block(self, block: Block) -> None:
        """The slot left the block: its last successes are reported, what it left undone went
        into the scheduler (a failed call's outcome reported as a run's); the messages fetched
        meanwhile are taken on the next turn."""
        self._block = None
        succeeded: list[int] | None = [] if enabled("INFO") else None
        finished, failed = self._scheduler.end_block(block, succeeded)
        self._block_processed(block, finished, succeeded)
        if failed is not None:
            self._report_results(failed, 1)
        elif block.failure is not None:  # its partition is being given up (or went)
            attempt: Attempt = block.failure
            part = block.part_at(block.done)
            if not part.gone:  # else handed back (and counted) when it was dropped
                self._handed_back(part.tp[1], _offset(block.payloads[block.done]), attempt.job.key,
                                  attempt.job.id, f"attempt {attempt.number} failed while its "
                                  "partition was given up")

    def _block_processed(self, block: Block, finished: int, succeeded: list[int] | None) -> None:
        """Count (and log, at INFO) the block's successes just reported."""
        if finished:
            self.counts.processed += finished
            metrics.count_processed(finished)
        if succeeded:
            results = block.results
            payloads = block.payloads
            for index in succeeded:
                message = payloads[index]
                log_processed(results[index], self.name, partition=message.partition(),
                              offset=message.offset())

    def _take_back_unreached(self) -> None:
        """During a revoke or a stop: tasks of running runs that their slot has not reached and
        will skip (their partition is going, or the member stops) are given back now, so that
        only calls that may have started are waited for (see `Run` for why this is safe)."""
        stopping = self.stop.is_set()  # read before `run.done`, as `cancelled` is
        unstarted = self._scheduler.unstarted
        for run in self._runs:
            tasks = run.tasks
            for index in range(max(run.done + 1, run.reported), len(tasks)):
                task = tasks[index]
                if not (stopping or task.cancelled):
                    continue
                if run.taken_back is None:
                    run.taken_back = set()
                elif index in run.taken_back:
                    continue
                run.taken_back.add(index)
                unstarted(task)

    def _after_failure(self, task: Task, attempt: Attempt) -> None:
        if self.handler.next_step(attempt) is Next.DEAD_LETTER:
            self._give_up(task, attempt.job, attempt.number, attempt.error_text)
            return
        delay = self.handler.policy.delay_s(attempt.number)
        if delay > self._hold_max_s:  # a long back-off: parked, and the partition moves on
            now = time.time()
            park = decide(now, now + delay, self._tiers, self._hold_max_s)
            if isinstance(park, Park):
                self.counts.retried += 1
                log_retry(attempt, delay, self.name, partition=task.tp[1], offset=task.offset)
                self._send(task, Record(self._parked_kind, attempt.job, attempt.number,
                                        Parking(park, now + delay, attempt.error_text)))
                return
        if self._scheduler.failed(task, time.monotonic() + delay):
            self.counts.retried += 1
            log_retry(attempt, delay, self.name, partition=task.tp[1], offset=task.offset)
        elif not task.orphaned:  # else handed back (and counted) when its partition was dropped
            self._hand_back(task, attempt.job,
                            f"attempt {attempt.number} failed while its partition was given up")

    def _wait_for_due(self, task: Task, not_due: NotDue) -> None:
        """A job whose time has not come: parked in a delay tier, or held in memory until due
        (jobpipe.delays.decide)."""
        now = time.time()
        decision = decide(now, not_due.due, self._tiers, self._hold_max_s)
        if isinstance(decision, Park):
            self._send(task, Record(self._parked_kind, not_due.job, not_due.attempts,
                                    Parking(decision, not_due.due)))
            return
        if not self._scheduler.wait(task, time.monotonic() + max(0.0, not_due.due - now)) \
                and not task.orphaned:  # else handed back (and counted) when its partition was dropped
            self._hand_back(task, not_due.job, "its partition was given up while it waited for its time")

    # ---- results and transactions (issue 24) -----------------------------------------------

    def _publish_result(self, task: Task, attempt: Attempt) -> int:
        """A succeeded job's result (RESULTS_TOPIC set), sent as its record (`_send`).
        Returns 1 if the job counts as processed."""
        assert self._result_kind is not None and self._results_topic is not None
        record = result_record(self._results_topic, attempt.job, attempt.value, attempt.number)
        if task.orphaned:  # its partition went while it ran: handed back (and counted) then
            self._scheduler.succeeded(task)  # reported back: its slot is free
            return 0
        self._send(task, Record(self._result_kind, attempt.job, attempt.number, (record,)))
        return 1

    def _give_up(self, task: Task, job: Job | None, attempts: int, reason: str) -> None:
        """Dead-letter a job (and publish its failure result, RESULTS_TOPIC set)."""
        self._send(task, Record(self._give_up_kind, job, attempts, reason))

    def _send(self, task: Task, record: Record) -> bool:
        """A running task's record: at-least-once publishes it and the job finishes once the
        broker acknowledged it (consumer_service.outgoing); exactly-once finishes the job now
        and holds the kind's records for the member's next transaction. False if the task's
        partition was dropped meanwhile (handed back then)."""
        if self._eos is None:
            self._outgoing.send(task, record)
            return True
        if not self._scheduler.settled(task):
            return False
        kind: TransactionalKind = record.kind  # type: ignore[assignment]
        # Counted and logged (a dead letter, a parked copy) once its transaction committed.
        self._eos.hold(task.tp, task.offset, kind.records(task, record),
                       partial(kind.acknowledged, task, record, self.name))
        return True

    def _transaction_turn(self) -> None:
        """Exactly-once, each turn: read again what an aborted transaction covered, then commit
        once the interval has passed."""
        if self._rewind:
            self._read_again()
        assert self._eos is not None
        if self._eos.due(time.monotonic()):
            self._commit_transaction()

    def _commit_transaction(self) -> None:
        """One transaction with the watermark of every partition held here (not while a
        partition whose transaction was aborted still waits to be read again)."""
        assert self._eos is not None
        if self._rewind:
            return
        scheduler = self._scheduler
        watermarks = {tp: mark for tp in self._assigned if (mark := scheduler.committable(tp)) is not None}
        committed = self._eos.commit(self._consumer, watermarks)
        if not committed.ok:
            self._rewind |= committed.aborted & self._assigned

    def _read_again(self) -> None:
        """Partitions whose transaction was aborted: their finished jobs' records were lost with
        it, so the jobs since the committed offset are fetched and run again (as after a lost
        partition, but this member keeps it)."""
        tps, self._rewind = self._rewind & self._assigned, set()
        if not tps:
            return
        self._forget(tps, "its transaction was aborted")
        try:
            committed = self._consumer.committed([TopicPartition(*tp) for tp in sorted(tps)], timeout=10)
        except KafkaException as error:
            event("transaction.rewind_failed", f"{self.name} could not read the committed offsets "
                  f"({error.args[0].str()}); leaving the group to start over", level="ERROR",
                  consumer=self.name)
            raise
        self._assigned |= tps
        self._hand_back_all(self._scheduler.assign(sorted(tps)), "partition read again")
        self._consumer.resume([TopicPartition(*tp) for tp in sorted(tps)])
        for position in committed:
            offset = position.offset if position.offset >= 0 else OFFSET_BEGINNING
            try:
                self._consumer.seek(TopicPartition(position.topic, position.partition, offset))
            except KafkaException as error:
                event("transaction.rewind_failed", f"{self.name} could not seek partition "
                      f"{position.partition}: {error.args[0].str()}", level="WARNING", consumer=self.name)

    # ---- handing back --------------------------------------------------------------------

    def _hand_back(self, task: Task, job: Job | None, why: str) -> None:
        """A job that was started here and will not be committed: its next owner redoes it."""
        self._handed_back(task.tp[1], task.offset, *identify(task, job), why)

    def _handed_back(self, partition: int, offset: int, key: str | None, job_id: str | None,
                     why: str) -> None:
        self.counts.handed_back += 1
        event("job.handed_back",
              f"{self.name} handed back {label_of(key, job_id)} from partition {partition} "
              f"offset {offset} uncommitted: {why}", level="WARNING", id=job_id, key=key,
              partition=partition, offset=offset, reason=why, consumer=self.name)

    def _hand_back_all(self, tasks: Iterable[Task], why: str) -> None:
        for task in tasks:
            self._hand_back(task, job_of(task), why)

    # ---- waiting for jobs in flight -------------------------------------------------------

    def _wait_for(self, done: Callable[[], bool], until: float) -> bool:
        """Report outcomes and dead-letter answers until `done()` or `until` (monotonic), and
        no longer than the shutdown budget once a stop was asked for. Tasks of a run that ended
        are reported at once, and its tasks that will not start are given back at once: only
        calls that may be running are waited for."""
        while True:
            if self._runs or self._block is not None:
                self._report_progress()
                self._take_back_unreached()
            if done():
                return True
            now = time.monotonic()
            if self.stop.is_set():
                until = min(until, self._budget(now).ends("work"))
            left = until - now
            if left <= 0:
                return False
            self.heartbeat = time.monotonic()
            if self._scheduler.in_flight or self._block is not None:
                completions = self._executor.collect(min(0.05, left))
                if completions:
                    self._report(completions)
            if self._outgoing.out:
                self._outgoing.poll(0 if self._scheduler.in_flight else min(0.05, left))
            if self._outgoing.answered:
                self._outgoing.report()

    def _finish_in_flight(self) -> None:
        """On shutdown: the runs stop after the job in hand; wait for those (and for dead
        letters being published) within the budget, store what finished, hand back the rest."""
        scheduler = self._scheduler
        self._wait_for(lambda: not scheduler.in_flight_on(None), self._budget(time.monotonic()).ends("work"))
        self._store()
        still = scheduler.in_flight_on(None)
        if still:  # dropped now, so the revoke that close() serves does not hand them back again
            self._forget({task.tp for task in still}, "still running at shutdown")

    # ---- rebalances ---------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        metrics.partitions_assigned(len(tps - self._assigned))
        self._assigned |= tps
        self._hand_back_all(self._scheduler.assign(sorted(tps)), "partition assigned afresh")
        self.joined.set()
        event("partitions.assigned",
              f"{self.name} assigned partitions {sorted(p for _, p in self._assigned)}",
              consumer=self.name, partitions=[tp.partition for tp in partitions],
              owned=sorted(p for _, p in self._assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Finish the jobs in flight on the revoked partitions (bounded), commit, forget."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        scheduler = self._scheduler
        scheduler.revoke(revoked)
        until = time.monotonic() + self.settings.shutdown_timeout_s
        self._wait_for(lambda: not scheduler.in_flight_on(revoked), until)
        self._store()
        self._commit()
        self._forget(revoked, "partition revoked while the job was running")
        event("partitions.revoked",
              f"{self.name} gave up partitions {sorted(p for _, p in revoked)}",
              consumer=self.name, partitions=sorted(p for _, p in revoked),
              owned=sorted(p for _, p in self._assigned))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._forget(lost, "partition lost (session timed out)")
        event("partitions.revoked",
              f"{self.name} lost partitions {sorted(p for _, p in lost)} without committing",
              level="WARNING", consumer=self.name, partitions=sorted(p for _, p in lost), lost=True,
              owned=sorted(p for _, p in self._assigned))

    def _forget(self, partitions: set[TP], why: str) -> None:
        if self._later:  # fetched in this assignment: a new one fetches from the committed offset
            kept = [m for m in self._later if (m.topic(), m.partition()) not in partitions]
            self._scheduler.held_back(len(kept) - len(self._later))
            self._later = kept
        if self._eos is not None:
            self._eos.forget(partitions)
            self._rewind -= partitions
        self._hand_back_all(self._scheduler.drop(partitions), why)
        metrics.partitions_forgotten(partitions, len(partitions & self._assigned))  # drops their lag
        self._assigned -= partitions

    def _commit(self, quiet: tuple[int, ...] = ()) -> KafkaError | None:
        """Commit the stored offsets now; return the error (logged unless its code is `quiet`)."""
        if self._eos is not None:
            self._commit_transaction()
            return None  # an aborted transaction's partitions are read again (`_rewind`)
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as error:
            failure: KafkaError = error.args[0]
            if failure.code() == KafkaError._NO_OFFSET:
                return None
            if failure.code() not in quiet:
                event("commit.failed", f"{self.name} commit failed: {failure.str()}",
                      level="WARNING", error=failure.str(), code=failure.name())
            return failure
        return None

    def _commit_before_leaving(self) -> None:
        """On shutdown, commit what is finished while still a member of the group.

        close() commits in its revoke callback, but when a rebalance is under way at that
        moment (typically: a replica joins while this one is stopped, as in a rolling
        deploy), that commit carries the generation the group just left and the coordinator
        refuses it (ILLEGAL_GENERATION, or REBALANCE_IN_PROGRESS). The next owner of the
        partitions then redoes the jobs finished since the last background commit: duplicates
        on a graceful path, seen by tests/integration/test_reliability.py. During a rebalance
        librdkafka keeps the assignment, and the stored offsets with it, through such a
        refusal, so this keeps polling (which lets the rebalance complete; messages fetched
        meanwhile are not started and stay uncommitted) and commits again with the new
        generation, until it succeeds or the shutdown budget is spent.
        """
        budget = self._budget(time.monotonic())
        refused = 0
        while True:
            # A commit waits for the coordinator: bounded like close() (see `_close`).
            commit: ClientCall[KafkaError | None] = ClientCall(lambda: self._commit(quiet=REBALANCING),
                                                               f"commit-{self.number}")
            if not commit.wait(budget.ends("commit")):
                self._client_call = commit  # close() must not run while it does
                event("commit.failed",
                      f"{self.name} could not commit before leaving: the group coordinator did not "
                      "answer in time", level="WARNING", consumer=self.name)
                return
            error = commit.result()
            if error is None or error.code() not in REBALANCING:
                break
            refused += 1
            if time.monotonic() >= budget.ends("commit"):
                event("commit.failed",
                      f"{self.name} could not commit before leaving: the group was still "
                      f"rebalancing after {refused} attempt(s) ({error.str()})",
                      level="WARNING", error=error.str(), code=error.name())
                return
            self.heartbeat = time.monotonic()
            self._consumer.poll(min(POLL_S / 2, budget.left("commit", time.monotonic())))
        if refused:
            event("commit.retried",
                  f"{self.name} committed before leaving after waiting out a rebalance "
                  f"({refused} refusal(s))", consumer=self.name, refusals=refused)

    # ---- metrics and shutdown -----------------------------------------------------------

    def _on_stats(self, generation: int, stats_json: str) -> None:
        if generation != self._generation:
            return  # a replaced client's statistics
        stats = json.loads(stats_json)
        self._watch_brokers(stats.get("brokers", {}).values(), time.monotonic())
        if not self.metrics_on:
            return
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                lag = partition_stats.get("consumer_lag", -1)
                if lag >= 0 and (topic, int(partition)) in self._assigned:  # not one given up
                    metrics.CONSUMER_LAG.labels(topic, partition).set(lag)

    def _watch_brokers(self, brokers: Iterable[dict[str, object]], now: float) -> None:
        """From the statistics: is any broker answering (else /readyz says not ready), and is
        this client stranded (see `_replace_client`)? A broker that is merely down stays in the
        list, cycling through INIT, CONNECT and DOWN while librdkafka reconnects with its
        backoff: that client is kept. A stranded one has no broker left, or only ones librdkafka
        will never connect to again (consumer_service.stranded)."""
        brokers = list(brokers)
        real = [broker for broker in brokers if broker.get("source") != "logical"]
        since = stranded_since(brokers, now, STRANDED_AFTER_S)
        if since is None:
            self._stranded_since = None
        elif self._stranded_since is None or since < self._stranded_since:
            self._stranded_since = since
        answering = any(broker.get("state") == "UP" for broker in real)
        if not answering and not self._broker_lost and self.joined.is_set():
            self._broker_lost = True
            self.joined.clear()
            event("kafka.unreachable", f"{self.name}: no broker answers; not ready until one does",
                  level="WARNING", consumer=self.name)
        elif answering and self._broker_lost:
            self._broker_lost = False
            self.joined.set()
            event("kafka.reachable", f"{self.name}: a broker answers again", consumer=self.name)

    def _close(self) -> None:
        """Commit what is finished and leave the group; hand back the rest.

        close() (the revoke callback's commit, then LeaveGroup) waits for the group
        coordinator. Seen in test_broker_frozen: after a broker froze with a request in flight
        on that connection, close() blocked for the request's timeout (60 s) and the service
        overran SHUTDOWN_TIMEOUT_S. So it runs on a daemon thread and is waited for only while
        the shutdown budget lasts; what it had not committed is redone by the next owner.
        A commit still running (see `_commit_before_leaving`) is waited for first, within the
        same phase: close() is never called on the client while it runs.
        """
        self._executor.close(0.0)  # what still runs is on daemon threads: it cannot hold the exit
        budget = self._budget(time.monotonic())
        try:
            running = self._client_call
            if running is not None and not running.wait(budget.ends("close")):
                event("consumer.close_skipped",
                      f"{self.name}: a commit still waits for the group coordinator; leaving without "
                      "closing the client (the group drops this member at its session timeout)",
                      level="WARNING", consumer=self.name)
            elif not ClientCall(self._consumer.close, f"close-{self.number}").wait(budget.ends("close")):
                event("consumer.close_timeout",
                      f"{self.name}: the group coordinator did not answer in time; leaving without a "
                      "clean LeaveGroup (the group drops this member at its session timeout)",
                      level="WARNING", consumer=self.name)
        finally:
            if self._eos is not None:
                self._eos.close()
            left = self._producer.close(budget.left("flush", time.monotonic()))
            if left:
                event("dead_letters.unflushed", f"{self.name}: {left} dead letter(s) unacknowledged",
                      level="WARNING", unflushed=left)

    def _budget(self, now: float) -> ShutdownBudget:
        """The shutdown budget, counted from the first time the stop is seen here (a revoke
        under way when it came, the end of the loop, or `_close` after an error)."""
        if self._shutdown is None:
            self._shutdown = self.settings.shutdown_budget(now)
        return self._shutdown
