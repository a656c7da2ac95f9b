"""One member of the consumer group: the poll loop, retries, dead letters and commits.

Design, in the order a message meets it:
- Messages are fetched in batches (up to BATCH that are already there: waiting is only ever
  for the first) and the handler works through a batch on a HandlerThread while this loop
  keeps calling poll(), so a slow job never exceeds max.poll.interval.ms; after KEEPALIVE_S
  all partitions are paused so nothing piles up meanwhile (librdkafka resumes a partition
  from the last message it handed over, so pausing loses nothing). One thread hand-off per
  batch, not per job: per job it cost more than everything else together (py-spy, issue 6).
- Within a batch, a job that fails stops its partition: the partition's later messages are
  not started and go back to the queue, behind the retry, so a partition stays in order.
  A stop or a revoke cuts a batch short after the job in hand; what was not started is
  simply not committed.
- A failed attempt is not slept on: its partition is paused and the job waits in
  `_waiting` until its backoff is due, while the other partitions keep flowing.
- A partition's offset is stored only after its job succeeded or was dead-lettered, in
  partition order; stored offsets are committed in the background, on revoke and on close.
- On revoke, the job in hand for a revoked partition is finished (bounded by
  SHUTDOWN_TIMEOUT_S) and its offset committed before the partition is given up, so a
  graceful rebalance processes nothing twice.
- On shutdown, what is finished is committed while this member is still in the group,
  waiting out a rebalance that is under way (see `_commit_before_leaving`), then the
  consumer is closed.
- A librdkafka client left with no broker to talk to is replaced (see `_replace_client`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer_service.dead_letters import DeadLetterPublisher
from consumer_service.handler_thread import HandlerThread
from consumer_service.settings import ConsumerSettings
from jobpipe import metrics
from jobpipe.handling import Attempt, JobHandler, Next, log_dead_lettered, log_processed, log_retry
from jobpipe.job import InvalidJob, Job
from jobpipe.kafka_clients import consumer_config
from jobpipe.logs import event

TP = tuple[str, int]
T = TypeVar("T")
BATCH = 500  # most messages handed to the handler thread at once
KEEPALIVE_S = 0.5  # a handler running longer than this gets the partitions paused
POLL_S = 0.2  # longest a single poll blocks, so stop and due retries are noticed quickly
# Commit refusals that only mean "the group is rebalancing": the same offsets can be committed
# once the rebalance is over (librdkafka keeps the assignment through them while rebalancing).
REBALANCING = (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION)
STATS_INTERVAL_MS = 2000  # librdkafka statistics: consumer lag metrics, and the broker watch below
# A client whose brokers have all sat idle in state INIT (not connected, not connecting) this
# long has nothing left that would ever reconnect it: it is replaced (see `_replace_client`).
STRANDED_AFTER_S = 10.0


def _within(call: Callable[[], T], until: float, name: str) -> list[T] | None:
    """Run `call` on a daemon thread and wait for it until `until` (time.monotonic()):
    [what it returned], or None if it is still running then (it is left to finish, or not,
    on its own). What it raises is raised here."""
    returned: list[T] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            returned.append(call())
        except BaseException as error:  # handed to the waiting thread
            raised.append(error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(max(0.0, until - time.monotonic()))
    if thread.is_alive():
        return None
    if raised:
        raise raised[0]
    return returned


def tp_of(message: Message) -> TP:
    return (message.topic() or "", message.partition() or 0)


@dataclass
class Waiting:
    """A message whose next attempt (or dead-letter publish) is due at `due`."""

    message: Message
    attempt: int
    due: float
    dead_letter_reason: str | None = None


@dataclass
class Batch:
    """Messages the handler thread works through in order, one attempt each.

    The handler thread fills `jobs` and `results` (an Attempt, or the InvalidJob a message
    that is not a job raised) and sets `running` to the index in hand; the poll thread sets
    `cut` to stop it after that job, and settles the batch once.
    """

    messages: list[Message]
    attempt: int = 1  # which attempt this is (a due retry is a batch of one)
    jobs: list[Job | None] = field(init=False)
    results: list[Attempt | InvalidJob | None] = field(init=False)
    running: int = -1
    cut: bool = False
    settled: bool = False
    future: futures.Future[None] = field(default_factory=futures.Future)

    def __post_init__(self) -> None:
        self.jobs = [None] * len(self.messages)
        self.results = [None] * len(self.messages)

    def touches(self, partitions: set[TP]) -> bool:
        return any(tp_of(message) in partitions for message in self.messages)


@dataclass
class Counts:
    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    handed_back: int = 0

    def add(self, other: Counts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


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
        self._config = consumer_config(self.settings, client_id, self.settings.consumer_group, instance_id)
        self._generation = 0  # which librdkafka client is current (see `_replace_client`)
        self._stranded_since: float | None = None
        self._consumer = self._new_client()
        self._dlq = DeadLetterPublisher(self.settings, f"{client_id}-dlq")
        self._runner = HandlerThread(f"handler-{self.number}")
        self._assigned: set[TP] = set()
        self._pending: deque[Message] = deque()  # fetched, not yet started, in arrival order
        self._waiting: dict[TP, Waiting] = {}  # partition -> its job waiting for a retry
        self._blocked: set[TP] = set()  # partitions paused for a retry
        self._in_flight: Batch | None = None
        self._in_callback = False
        self._stop_deadline: float | None = None
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
        sent. The consumer would sit out of its group for good (and close() would wait forever
        for a coordinator). A bare confluent-kafka consumer does the same, so the cure is here:
        the statistics show every broker idle in INIT for STRANDED_AFTER_S, and the worker
        starts over with a new client. Nothing is lost: what was finished but not committed is
        redone by the partition's next owner, as after any lost session.
        """
        event("consumer.client_replaced",
              f"{self.name}: the Kafka client has had no broker to talk to for "
              f"{STRANDED_AFTER_S:g} s; replacing it", level="WARNING", consumer=self.name)
        stranded = self._consumer
        self._forget(set(self._assigned))
        self._generation += 1
        self._stranded_since = None
        self._consumer = self._new_client()
        self._subscribe()
        # Its close() may never return: leave it to a daemon thread (it holds the last reference).
        threading.Thread(target=stranded.close, name=f"close-stranded-{self.number}", daemon=True).start()

    # ---- the loop -------------------------------------------------------------------

    def run(self) -> None:
        self._subscribe()
        try:
            while not self.stop.is_set():
                self.heartbeat = time.monotonic()
                if self._stranded_since is not None and \
                        self.heartbeat - self._stranded_since >= STRANDED_AFTER_S:
                    self._replace_client()
                self._step()
            self._commit_before_leaving()
        finally:
            self._close()

    def _step(self) -> None:
        due = self._take_due()
        if due is not None and due.dead_letter_reason is not None:
            self._dead_letter(due.message, due.dead_letter_reason, due.attempt, None)
        elif due is not None:
            self._run(Batch([due.message], attempt=due.attempt))
        elif messages := self._take_pending() or self._fetch():
            self._run(Batch(messages))

    def _fetch(self) -> list[Message]:
        """Wait (briefly) for one message, then take what else is already fetched."""
        first = self._consumer.poll(self._poll_timeout())
        if first is None:
            return []
        fetched = [first, *self._consumer.consume(BATCH - 1, 0)]
        ready = []
        for message in fetched:
            error = message.error()
            if error is not None:
                self._on_message_error(error)
            elif tp_of(message) in self._blocked:  # its partition waits for a retry: keep for later
                self._pending.append(message)
            else:
                ready.append(message)
        return ready

    def _take_due(self) -> Waiting | None:
        now = time.monotonic()
        for tp, waiting in self._waiting.items():
            if waiting.due <= now:
                del self._waiting[tp]
                return waiting
        return None

    def _take_pending(self) -> list[Message]:
        """Fetched messages not started yet whose partition is free to go, in order."""
        if not self._pending:
            return []
        ready: list[Message] = []
        kept: deque[Message] = deque()
        for message in self._pending:
            free = len(ready) < BATCH and tp_of(message) not in self._blocked
            (ready if free else kept).append(message)
        self._pending = kept
        return ready

    def _poll_timeout(self) -> float:
        if not self._waiting:
            return POLL_S
        soonest = min(waiting.due for waiting in self._waiting.values())
        return max(0.0, min(POLL_S, soonest - time.monotonic()))

    def _on_message_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        event("kafka.error", f"{self.name}: {error.str()}", level="WARNING", code=error.name())

    # ---- a batch of messages -----------------------------------------------------------

    def _run(self, batch: Batch) -> None:
        batch.future = self._runner.submit(partial(self._handle, batch))
        self._in_flight = batch

        def tick() -> None:
            if self.stop.is_set():
                batch.cut = True
            futures.wait([batch.future], timeout=0.05)

        try:
            finished = self._wait_alive(batch.future.done, tick)
        finally:
            self._in_flight = None
        if not batch.settled:  # else settled inside a rebalance callback already
            self._settle(batch, set(), finished, "still running at shutdown")

    def _handle(self, batch: Batch) -> None:
        """On the handler thread: one attempt per message, in order, until cut."""
        failed: set[TP] = set()
        for index, message in enumerate(batch.messages):
            if batch.cut:
                return
            tp = tp_of(message)
            if tp in failed:  # its partition had a failure in this batch: not started
                continue
            batch.running = index
            try:
                job = Job.from_bytes(message.value())
            except InvalidJob as error:
                batch.results[index] = error
                failed.add(tp)
                continue
            batch.jobs[index] = job
            attempt = self.handler.attempt(job, batch.attempt)
            batch.results[index] = attempt
            if attempt.error is not None:
                failed.add(tp)
        batch.running = len(batch.messages)

    def _settle(self, batch: Batch, revoking: set[TP], finished: bool, why_running: str) -> None:
        """Act on each result in order; `revoking`: partitions being given up right now.

        Not started: back to the queue (in front), unless its partition is going or the
        worker is stopping (then it is simply not committed). Started on a partition no
        longer ours (lost): handed back. The job in hand when time ran out: handed back.
        """
        batch.settled = batch.cut = True
        leftovers: list[Message] = []
        for index, message in enumerate(batch.messages):
            tp = tp_of(message)
            result = batch.results[index]
            if result is None:
                if not finished and index == batch.running:
                    self._hand_back(message, batch.jobs[index], why_running)
                elif tp in self._assigned and tp not in revoking and not self.stop.is_set():
                    leftovers.append(message)
            elif tp not in self._assigned:
                self._hand_back(message, batch.jobs[index], "partition lost (session timed out)")
            elif isinstance(result, InvalidJob):
                self._dead_letter(message, str(result), 0, None, revoking=tp in revoking)
            else:
                self._after_attempt(message, result, revoking=tp in revoking)
        self._pending.extendleft(reversed(leftovers))

    def _after_attempt(self, message: Message, result: Attempt, revoking: bool) -> None:
        origin = {"partition": message.partition(), "offset": message.offset()}
        step = self.handler.next_step(result)
        if step is Next.DONE:
            log_processed(result, self.name, **origin)
            self.counts.processed += 1
            self._finish(message, revoking)
        elif step is Next.RETRY and not revoking:
            delay = self.handler.policy.delay_s(result.number)
            log_retry(result, delay, self.name, **origin)
            self.counts.retried += 1
            self._retry_later(Waiting(message, result.number + 1, time.monotonic() + delay))
        elif step is Next.RETRY:
            self._hand_back(message, result.job, f"attempt {result.number} failed during a rebalance")
        else:
            self._dead_letter(message, result.error_text, result.number, result.job, revoking=revoking)

    def _dead_letter(self, message: Message, reason: str, attempts: int, job: Job | None,
                     revoking: bool = False) -> None:
        delivery = self._dlq.publish(message, reason, attempts, self.name)
        delivered = self._wait_alive(delivery.done, lambda: self._dlq.poll(0.05))
        origin = {"partition": message.partition(), "offset": message.offset()}
        key = job.key if job else (message.key() or b"").decode(errors="replace") or None
        if delivered and delivery.error is None:
            log_dead_lettered(key, job.id if job else None, reason=reason, attempts=attempts,
                              consumer=self.name, destination=self._dlq.topic, **origin)
            self.counts.dead_lettered += 1
            self._finish(message, revoking)
            return
        if not delivered and self.stop.is_set():
            return  # not committed: the next owner of the partition dead-letters it again
        delay = self.handler.policy.delay_s(max(1, attempts))
        event("job.dead_letter_failed",
              f"{self.name} could not publish {key} to {self._dlq.topic} "
              f"({delivery.error or 'no answer'}); trying again in {delay * 1000:.0f} ms",
              level="ERROR", key=key, error=delivery.error, **origin)
        if not self._in_callback:
            self._retry_later(Waiting(message, attempts, time.monotonic() + delay, reason))

    def _finish(self, message: Message, revoking: bool) -> None:
        """The job is done with: store its offset and let its partition flow again."""
        self._consumer.store_offsets(message=message)
        tp = tp_of(message)
        if tp in self._blocked and not revoking:
            self._blocked.discard(tp)
            self._consumer.resume([TopicPartition(*tp)])

    def _retry_later(self, waiting: Waiting) -> None:
        tp = tp_of(waiting.message)
        if tp not in self._blocked:
            self._blocked.add(tp)
            self._consumer.pause([TopicPartition(*tp)])
        self._waiting[tp] = waiting

    def _hand_back(self, message: Message, job: Job | None, why: str) -> None:
        self.counts.handed_back += 1
        key = job.key if job else (message.key() or b"").decode(errors="replace")
        event("job.handed_back",
              f"{self.name} handed back {key} from partition {message.partition()} "
              f"offset {message.offset()} uncommitted: {why}",
              level="WARNING", id=job.id if job else None, key=key, partition=message.partition(),
              offset=message.offset(), reason=why, consumer=self.name)

    # ---- staying in the group while waiting ----------------------------------------------

    def _wait_alive(self, done: Callable[[], bool], tick: Callable[[], object]) -> bool:
        """Run `tick` until `done()`, polling the consumer so the group keeps this member.

        Returns False if shutdown's budget ran out first. Inside a rebalance callback the
        consumer cannot be polled; the wait is then bounded by SHUTDOWN_TIMEOUT_S instead.
        """
        started = time.monotonic()
        paused: list[TopicPartition] = []
        try:
            while not done():
                now = time.monotonic()
                self.heartbeat = now
                if self._out_of_time(now, started):
                    return False
                tick()
                if self._in_callback or done() or now - started < KEEPALIVE_S:
                    continue
                if not paused:
                    paused = [tp for tp in self._consumer.assignment()
                              if (tp.topic, tp.partition) not in self._blocked]
                    self._consumer.pause(paused)
                message = self._consumer.poll(0)
                if message is not None and message.error() is None:
                    self._pending.append(message)
            return True
        finally:
            still_ours = [tp for tp in paused if (tp.topic, tp.partition) in self._assigned]
            if still_ours:
                self._consumer.resume(still_ours)

    def _out_of_time(self, now: float, started: float) -> bool:
        if self._in_callback:
            return now - started > self.settings.shutdown_timeout_s
        if not self.stop.is_set():
            return False
        if self._stop_deadline is None:  # leave a fifth of the budget for commit and close
            self._stop_deadline = self.settings.work_deadline(now)
        return now >= self._stop_deadline

    # ---- rebalances ---------------------------------------------------------------------

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.partitions_assigned(len({(tp.topic, tp.partition) for tp in partitions} - self._assigned))
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self.joined.set()
        event("partitions.assigned",
              f"{self.name} assigned partitions {sorted(p for _, p in self._assigned)}",
              consumer=self.name, partitions=[tp.partition for tp in partitions],
              owned=sorted(p for _, p in self._assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._in_callback = True
        try:
            batch = self._in_flight
            if batch is not None and not batch.settled and batch.touches(revoked):
                batch.cut = True  # finish the job in hand, start no other
                futures.wait([batch.future], timeout=self.settings.shutdown_timeout_s)
                self._settle(batch, revoked, batch.future.done(),
                             "partition revoked while the job was running")
            self._forget(revoked)
            self._commit()
        finally:
            self._in_callback = False
        event("partitions.revoked",
              f"{self.name} gave up partitions {sorted(p for _, p in revoked)}",
              consumer=self.name, partitions=sorted(p for _, p in revoked),
              owned=sorted(p for _, p in self._assigned))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        batch = self._in_flight
        if batch is not None and batch.touches(lost):
            batch.cut = True  # what it did on them is handed back when it is settled
        self._forget(lost)
        event("partitions.revoked",
              f"{self.name} lost partitions {sorted(p for _, p in lost)} without committing",
              level="WARNING", consumer=self.name, partitions=sorted(p for _, p in lost), lost=True,
              owned=sorted(p for _, p in self._assigned))

    def _forget(self, partitions: set[TP]) -> None:
        for tp in partitions:
            self._waiting.pop(tp, None)
            self._blocked.discard(tp)
        self._pending = deque(m for m in self._pending if tp_of(m) not in partitions)
        metrics.partitions_forgotten(partitions, len(partitions & self._assigned))  # drops their lag
        self._assigned -= partitions

    def _commit(self, quiet: tuple[int, ...] = ()) -> KafkaError | None:
        """Commit the stored offsets now; return the error (logged unless its code is `quiet`)."""
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
        now = time.monotonic()
        if self._stop_deadline is None:  # leave a fifth of the budget for close()
            self._stop_deadline = self.settings.work_deadline(now)
        refused = 0
        while True:
            # A commit waits for the coordinator: bounded like close() (see `_close`).
            until = max(self._stop_deadline, time.monotonic() + self.settings.shutdown_timeout_s * 0.05)
            answered = _within(lambda: self._commit(quiet=REBALANCING), until, f"commit-{self.number}")
            if answered is None:
                event("commit.failed",
                      f"{self.name} could not commit before leaving: the group coordinator did not "
                      "answer in time", level="WARNING", consumer=self.name)
                return
            error = answered[0]
            if error is None or error.code() not in REBALANCING:
                break
            refused += 1
            if time.monotonic() >= self._stop_deadline:
                event("commit.failed",
                      f"{self.name} could not commit before leaving: the group was still "
                      f"rebalancing after {refused} attempt(s) ({error.str()})",
                      level="WARNING", error=error.str(), code=error.name())
                return
            self.heartbeat = time.monotonic()
            self._consumer.poll(POLL_S / 2)  # serves the rebalance; a message returned is not started
        if refused:
            event("commit.retried",
                  f"{self.name} committed before leaving after waiting out a rebalance "
                  f"({refused} refusal(s))", consumer=self.name, refusals=refused)

    # ---- metrics and shutdown -----------------------------------------------------------

    def _on_stats(self, generation: int, stats_json: str) -> None:
        if generation != self._generation:
            return  # a replaced client's statistics
        stats = json.loads(stats_json)
        brokers = [b for b in stats.get("brokers", {}).values() if b.get("source") != "logical"]
        if any(b.get("state") != "INIT" for b in brokers):
            self._stranded_since = None
        elif self._stranded_since is None:
            self._stranded_since = time.monotonic()
        if not self.metrics_on:
            return
        for topic, topic_stats in stats.get("topics", {}).items():
            for partition, partition_stats in topic_stats.get("partitions", {}).items():
                lag = partition_stats.get("consumer_lag", -1)
                if lag >= 0 and (topic, int(partition)) in self._assigned:  # not one given up
                    metrics.CONSUMER_LAG.labels(topic, partition).set(lag)

    def _close(self) -> None:
        """Commit what is finished and leave the group; hand back the rest.

        close() (the revoke callback's commit, then LeaveGroup) waits for the group
        coordinator. Seen in test_broker_frozen: after a broker froze with a request in flight
        on that connection, close() blocked for the request's timeout (60 s) and the service
        overran SHUTDOWN_TIMEOUT_S. So it runs on a daemon thread and is waited for only while
        the shutdown budget lasts; what it had not committed is redone by the next owner.
        """
        self._runner.close()
        timeout = self.settings.shutdown_timeout_s
        now = time.monotonic()
        until = (max(self._stop_deadline, now) + timeout * 0.05 if self._stop_deadline is not None
                 else now + timeout * 0.9)
        try:
            if _within(self._consumer.close, until, f"close-{self.number}") is None:
                event("consumer.close_timeout",
                      f"{self.name}: the group coordinator did not answer in time; leaving without a "
                      "clean LeaveGroup (the group drops this member at its session timeout)",
                      level="WARNING", consumer=self.name)
        finally:
            left = self._dlq.close(max(0.5, timeout * 0.1))
            if left:
                event("dead_letters.unflushed", f"{self.name}: {left} dead letter(s) unacknowledged",
                      level="WARNING", unflushed=left)
