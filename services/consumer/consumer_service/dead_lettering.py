"""A group member's dead letters while they are out: published, answered, published again.

Why it exists: a job given up here (its last attempt failed, or the message is not a job)
stays unfinished, holding its ordering unit and the committed offset, until the broker has
acknowledged its dead letter; a publish that fails is tried again after the job's backoff.
This module is the one owner of that state (what is out, the answers that came back, and
the thread that serves the dead-letter producer's delivery reports, so that the member's
loop waits for them as for handler outcomes instead of polling on a short timer). It tells
the scheduler each step; the worker hands jobs in (`give_up`, `publish_due`) and has the
answers reported (`report`) when `answered`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message

from consumer_service.dead_letters import DeadLetterPublisher
from consumer_service.scheduler import Scheduler, Task
from consumer_service.transactions import OutRecord
from jobpipe.handling import label_of, log_dead_lettered
from jobpipe.job import InvalidJob, Job
from jobpipe.logs import event
from jobpipe.retry import RetryPolicy

ANSWER_WAIT_S = 0.2  # the answer thread's longest poll (and a fifth of its idle check)


@dataclass(frozen=True)
class DeadLetter:
    """Why a job is being dead-lettered (kept on its task, `Task.note`, while it is out);
    `also`: records published with it (its failure result, RESULTS_TOPIC set)."""

    reason: str
    attempts: int
    job: Job | None
    also: tuple[OutRecord, ...] = ()


@dataclass(frozen=True)
class Publication:
    """A succeeded job's records (its result, RESULTS_TOPIC set), kept on its task while out:
    at-least-once commits the job's offset only once the broker acknowledged them."""

    records: tuple[OutRecord, ...]
    attempts: int
    job: Job

    @property
    def reason(self) -> str:  # for the log line of a publish that failed
        return "its result"


Note = DeadLetter | Publication


class DeadLetterCount(Protocol):
    dead_lettered: int


def identify(task: Task, job: Job | None) -> tuple[str | None, str | None]:
    """(key, id) for log lines: the job's (decoded again if need be: off the hot path), or the
    raw key of a message that is not a job."""
    if job is None:
        try:
            job = Job.from_bytes(task.payload.value())
        except InvalidJob:
            return (task.key or b"").decode(errors="replace") or None, None
    return job.key, job.id


class DeadLettering:
    """The dead letters of one member. `give_up`, `publish_due`, `report` and `poll` are for
    the member's loop thread; the answers arrive on any thread that polls the producer."""

    def __init__(self, publisher: DeadLetterPublisher, scheduler: Scheduler, *, policy: RetryPolicy,
                 member: str, counts: DeadLetterCount, hand_back: Callable[[Task, Job | None, str], None],
                 wake: Callable[[], None], stop: threading.Event, name: str) -> None:
        """`hand_back(task, job, why)`: a job that will not be committed here; `wake()`: ends
        the loop's wait for outcomes (an answer came); `stop`: the answer thread ends."""
        self._publisher = publisher
        self._scheduler = scheduler
        self._policy = policy
        self._member = member
        self._counts = counts
        self._hand_back = hand_back
        self._wake = wake
        self._stop = stop
        self.out = 0  # published, not answered yet
        self._answers: deque[tuple[Task, KafkaError | None]] = deque()
        self._answers_due = threading.Event()  # set while dead letters are out
        threading.Thread(target=self._serve_answers, name=name, daemon=True).start()

    @property
    def answered(self) -> bool:
        """Answers came back and wait for `report`."""
        return bool(self._answers)

    def give_up(self, task: Task, why: Note) -> None:
        """Publish a running task's job to the DLQ (or, a `Publication`, a succeeded job's
        result); it stays unfinished (holding its unit and the watermark) until the broker
        acknowledged it."""
        if not self._scheduler.dead_lettering(task):
            return  # its partition was dropped: handed back (and counted) then
        task.note = why
        self._publish(task)

    def publish_due(self, tasks: list[Task]) -> list[Task]:
        """A run's tasks whose dead-letter publish failed before are published again (not run);
        the run's later tasks of their units wait behind them. Returns what is left to run."""
        left: list[Task] = []
        publishing: list[Task] = []
        for task in tasks:
            if task.note is not None:
                publishing.append(task)
                if self._scheduler.dead_lettering(task):
                    self._publish(task)
            elif any(earlier.same_unit(task) for earlier in publishing):
                self._scheduler.unstarted(task)
            else:
                left.append(task)
        return left

    def report(self) -> None:
        """Tell the scheduler (and the log) what the broker answered."""
        answers = self._answers
        while answers:
            task, error = answers.popleft()
            self.out -= 1
            if not self.out:
                self._answers_due.clear()
            if error is not None:
                self._failed(task, error.str())
                continue
            why: Note = task.note
            if self._scheduler.dead_lettered(task) and isinstance(why, DeadLetter):
                self._counts.dead_lettered += 1
                key, job_id = identify(task, why.job)
                log_dead_lettered(key, job_id, reason=why.reason, attempts=why.attempts,
                                  consumer=self._member, destination=self._publisher.topic,
                                  partition=task.tp[1], offset=task.offset)
            # else its partition was dropped meanwhile: handed back (and counted) then

    def poll(self, timeout: float) -> None:
        """Serve the producer's delivery reports on the calling thread (up to `timeout`)."""
        self._publisher.poll(timeout)

    def _publish(self, task: Task) -> None:
        why: Note = task.note
        try:
            if isinstance(why, Publication):
                self._publisher.send(why.records, partial(self._on_answer, task))
            else:
                self._publisher.publish(task.payload, why.reason, why.attempts, self._member,
                                        partial(self._on_answer, task), also=why.also)
        except (BufferError, KafkaException) as error:
            self._failed(task, str(error))
            return
        self.out += 1
        self._answers_due.set()

    def _serve_answers(self) -> None:
        """On a thread of its own: serve the producer's delivery reports while dead letters
        are out; each answer wakes the member's loop."""
        while not self._stop.is_set():
            if self._answers_due.wait(ANSWER_WAIT_S * 5):
                self._publisher.poll(ANSWER_WAIT_S)

    def _on_answer(self, task: Task, error: KafkaError | None, _message: Message) -> None:
        """librdkafka's delivery report (on the thread that polled): noted, and the loop woken."""
        self._answers.append((task, error))
        self._wake()

    def _failed(self, task: Task, error: str) -> None:
        why: Note = task.note
        key, job_id = identify(task, why.job)
        delay = self._policy.delay_s(max(1, why.attempts))
        again = self._scheduler.failed(task, time.monotonic() + delay)
        what = f"trying again in {delay * 1000:.0f} ms" if again else "handed back uncommitted"
        event("job.dead_letter_failed",
              f"{self._member} could not publish {label_of(key, job_id)} "
              f"{'result' if isinstance(why, Publication) else 'to ' + self._publisher.topic} "
              f"({error}); {what}",
              level="ERROR", id=job_id, key=key, error=error, partition=task.tp[1],
              offset=task.offset, consumer=self._member)
        if not again and not task.orphaned:  # an orphan was handed back when its partition was dropped
            self._hand_back(task, why.job, "its dead letter was not acknowledged before its partition went")
