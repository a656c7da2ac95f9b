"""A group member's outgoing records while they are out: published, answered, published again.

Why it exists: some outcomes of a job are a record in another topic (a dead letter after its
last attempt, a parked copy in a delay tier, a result), and the job may count as finished (its
offset committable) only once the broker acknowledged that record: a job whose record is lost
must be fetched again. Until then the job stays unfinished, holding its ordering unit and the
committed offset; a publish that fails is tried again after the job's backoff. This module is
the one owner of that state, whatever the record's kind (what is out, the answers that came
back, and the thread that serves the producer's delivery reports, so that the member's loop
waits for them as for handler outcomes instead of polling on a short timer). It tells the
scheduler each step (`settling`, `settled`, `failed`); the worker hands records in (`send`,
`send_again`) and has the answers reported (`report`) when `answered`.

A kind of record is a `RecordKind`: how to publish one (`publish`) and what its acknowledgement
means beyond finishing the job (`acknowledged`: count, log). Adding a kind is writing one class
(consumer_service.dead_letters.DeadLetters is the model) and calling `send(task, Record(...))`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, KafkaException, Message

from consumer_service.scheduler import Scheduler, Task
from jobpipe.handling import label_of
from jobpipe.job import InvalidJob, Job
from jobpipe.logs import event
from jobpipe.retry import RetryPolicy

ANSWER_WAIT_S = 0.2  # the answer thread's longest poll (and a fifth of its idle check)

# Called (on the thread that polls the producer) with the broker's answer: None or the error.
DeliveryReport = Callable[[KafkaError | None, Message], None]


class RecordKind(Protocol):
    """One kind of outgoing record: dead letters, parked copies, results."""

    @property
    def name(self) -> str:
        """What log lines call a record of this kind ("dead letter")."""

    @property
    def topic(self) -> str:
        """Where a record of this kind goes (for log lines; `publish` decides per record)."""

    def publish(self, task: Task, record: Record, report: DeliveryReport) -> None:
        """Queue the task's record on the member's producer with `report` as its delivery
        callback; raise BufferError or KafkaException if it cannot even be queued."""

    def acknowledged(self, task: Task, record: Record, member: str) -> None:
        """The broker acknowledged the record and the job is finished: count it, log it."""


class Record(NamedTuple):
    """A task's record while it is out (kept on the task, `Task.note`). A tuple: one is made
    per result, on the member's hot path."""

    kind: RecordKind
    job: Job | None  # the decoded job; None: the message is not a job
    attempts: int  # handler attempts made (a failed publish waits this attempt's backoff)
    detail: Any = None  # the kind's own: a dead letter's reason, a parked copy's tier, a result


def identify(task: Task, job: Job | None) -> tuple[str | None, str | None]:
    """(key, id) for log lines: the job's (decoded again if need be: off the hot path), or the
    raw key of a message that is not a job."""
    if job is None:
        try:
            job = Job.from_bytes(task.payload.value())
        except InvalidJob:
            return (task.key or b"").decode(errors="replace") or None, None
    return job.key, job.id


def job_of(task: Task) -> Job | None:
    """The decoded job of a task whose record is (or was) out, else None."""
    return task.note.job if isinstance(task.note, Record) else None


class Outgoing:
    """The outgoing records of one member. `send`, `send_again`, `report` and `poll` are for
    the member's loop thread; the answers arrive on any thread that polls the producer."""

    def __init__(self, poll: Callable[[float], Any], scheduler: Scheduler, *, policy: RetryPolicy,
                 member: str, hand_back: Callable[[Task, Job | None, str], None],
                 wake: Callable[[], None], stop: threading.Event, name: str) -> None:
        """`poll(timeout)`: serves the member's producer's delivery reports; `hand_back(task,
        job, why)`: a job that will not be committed here; `wake()`: ends the loop's wait for
        outcomes (an answer came); `stop`: the answer thread ends."""
        self._poll = poll
        self._scheduler = scheduler
        self._policy = policy
        self._member = member
        self._hand_back = hand_back
        self._wake = wake
        self._stop = stop
        self.out = 0  # published, not answered yet
        self._answers: deque[tuple[Task, KafkaError | None]] = deque()
        # The loop was woken for answers and has not taken them yet: later answers need no
        # wake of their own (one per burst; set by the answer thread, cleared by `report`).
        self._woken = False
        # Who serves the producer's answers: the loop itself, once a turn (`serve`), while it
        # runs; the answer thread only while the loop waits for outcomes with records out
        # (`waiting`). Two threads serving them at once take turns at the GIL once per answer:
        # at 50,000 results a second that convoy cost a fifth of the member's throughput.
        self._loop_waits = threading.Event()
        threading.Thread(target=self._serve_answers, name=name, daemon=True).start()

    @property
    def answered(self) -> bool:
        """Answers came back and wait for `report`."""
        return bool(self._answers)

    def send(self, task: Task, record: Record) -> None:
        """Publish a running task's record; the job stays unfinished (holding its unit and the
        watermark) until the broker acknowledged it."""
        if not self._scheduler.settling(task):
            return  # its partition was dropped: handed back (and counted) then
        task.note = record
        self._publish(task)

    def send_again(self, tasks: list[Task]) -> list[Task]:
        """A run's tasks whose record's publish failed before are published again (not run);
        the run's later tasks of their units wait behind them. Returns what is left to run."""
        left: list[Task] = []
        publishing: list[Task] = []
        for task in tasks:
            if task.note is not None:
                publishing.append(task)
                if self._scheduler.settling(task):
                    self._publish(task)
            elif any(earlier.same_unit(task) for earlier in publishing):
                self._scheduler.unstarted(task)
            else:
                left.append(task)
        return left

    def report(self) -> None:
        """Tell the scheduler (and the kinds: counts, log) what the broker answered."""
        answers = self._answers
        self._woken = False  # before taking: an answer appended after this wakes the loop again
        while answers:
            task, error = answers.popleft()
            self.out -= 1
            if error is not None:
                self._failed(task, error.str())
                continue
            record: Record = task.note
            if self._scheduler.settled(task):
                record.kind.acknowledged(task, record, self._member)
            # else its partition was dropped meanwhile: handed back (and counted) then

    def poll(self, timeout: float) -> None:
        """Serve the producer's delivery reports on the calling thread (up to `timeout`)."""
        self._poll(timeout)

    def serve(self) -> None:
        """The loop's turn: serve the answers that came (never waits), if records are out."""
        if self.out:
            self._poll(0)

    def waiting(self, waits: bool) -> None:
        """The loop starts (True) or ends (False) a wait for outcomes: meanwhile the answer
        thread serves the answers, and each wakes the loop."""
        if waits and self.out:
            self._loop_waits.set()
        elif self._loop_waits.is_set():
            self._loop_waits.clear()

    def _publish(self, task: Task) -> None:
        record: Record = task.note
        try:
            record.kind.publish(task, record, partial(self._on_answer, task))
        except (BufferError, KafkaException) as error:
            self._failed(task, str(error))
            return
        self.out += 1

    def _serve_answers(self) -> None:
        """On a thread of its own: serve the producer's delivery reports while the loop waits
        with records out (`waiting`); an answer wakes the loop."""
        while not self._stop.is_set():
            if self._loop_waits.wait(ANSWER_WAIT_S * 5):
                self._poll(ANSWER_WAIT_S)

    def _on_answer(self, task: Task, error: KafkaError | None, _message: Message) -> None:
        """librdkafka's delivery report (on the thread that polled): noted, and the loop woken."""
        self._answers.append((task, error))
        if not self._woken:
            self._woken = True
            self._wake()

    def _failed(self, task: Task, error: str) -> None:
        record: Record = task.note
        kind = record.kind
        key, job_id = identify(task, record.job)
        delay = self._policy.delay_s(max(1, record.attempts))
        again = self._scheduler.failed(task, time.monotonic() + delay)
        what = f"trying again in {delay * 1000:.0f} ms" if again else "handed back uncommitted"
        event(f"job.{kind.name.replace(' ', '_')}_failed",
              f"{self._member} could not publish the {kind.name} of {label_of(key, job_id)} to "
              f"{kind.topic} ({error}); {what}",
              level="ERROR", id=job_id, key=key, error=error, partition=task.tp[1],
              offset=task.offset, consumer=self._member)
        if not again and not task.orphaned:  # an orphan was handed back when its partition was dropped
            self._hand_back(task, record.job,
                            f"its {kind.name} was not acknowledged before its partition went")
