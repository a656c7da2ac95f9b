"""What one handler slot does with a run of tasks the scheduler handed out.

Why it exists: a run (consumer_service.scheduler.Run) is several jobs for one slot, run one
after another, so that a fast handler costs one thread hand-off per run instead of one per
job (7 us a round trip, more than the rest of a job's path). The slot keeps the scheduler's
promises while it works through the run, without touching the scheduler (it runs on the
executor's threads, or its event loop): it starts nothing of a partition being given up
(`Task.cancelled`), nothing after a stop, and, after a job failed or turned out not to be a
job, nothing more of that job's ordering unit (`Task.same_unit`): those come back as not
started, in their place, for the poll loop to report.

A job not due yet (its `not_before`, or a parked retry's due time: jobpipe.delays) is not
run: its result is a `NotDue`, and the run's later tasks of its unit wait behind it, as behind a
failure. A job back from a delay tier after failed attempts (its `retry.attempts` header) runs
with its attempt numbered after them.

Each task's result goes into the run as soon as the task ends (`Run.results`, then
`Run.done`), so the poll loop reports, logs and stores a finished job while a slower job of
its run is still running: one entry per task, in the run's order: the `Attempt` (the
handler's outcome), the `InvalidJob` a message that is not a job raised, a `NotDue`, or None
for a task not started. The executor's completion for the run (its token is the run) says it ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from time import time
from typing import Any

from consumer_service.scheduler import Block, Run, Task
from jobpipe import metrics
from jobpipe.delays import ATTEMPTS_HEADER, due_of
from jobpipe.handling import Attempt, JobHandler
from jobpipe.job import InvalidJob, Job


@dataclass(frozen=True)
class NotDue:
    """A job whose time has not come: due at `due` (epoch seconds); `attempts` made so far."""

    job: Job
    due: float
    attempts: int


Result = Attempt | InvalidJob | NotDue | None


def attempts_before(headers: Mapping[str, bytes | None]) -> int:
    """Handler attempts a job made before it was parked (its `retry.attempts` header), or 0."""
    try:
        return max(0, int(headers.get(ATTEMPTS_HEADER) or 0))
    except ValueError:
        return 0


class TaskRunner:
    """Runs the tasks of a run: `run` for a plain handler, `run_async` for an `async def` one."""

    def __init__(self, handler: JobHandler, stop: threading.Event) -> None:
        self._handler = handler
        self._stop = stop

    @property
    def function(self) -> Callable[[Any], Any]:
        """What the executor calls with each run (or block: plain handlers only)."""
        return self.run_async if self._handler.is_async else self.run

    def run_block(self, block: Block) -> None:
        """The lane (see consumer_service.scheduler.Block): the block's messages in fetch order,
        a plain handler, each a fresh job's first attempt; leaves at the first that is not a
        plain success (a failed call, a message that is no job, a job with a time to wait for
        or attempts made before it was parked), or at a stop. The order of the writes is
        `Block`'s."""
        stopping = self._stop.is_set
        decode = Job.from_message
        attempt = self._handler.attempt
        payloads = block.payloads
        results = block.results
        try:
            for number, (part, start, end) in enumerate(block.segments):
                for index in range(start, end):  # `block.done` is `index` here
                    if stopping():
                        return
                    if part.closed:
                        block.stops[number] = index
                        block.done = end
                        break
                    message = payloads[index]
                    try:
                        job = decode(message.value(), message.headers())
                    except InvalidJob:
                        return  # the scheduler's path finds it again (and dead-letters it)
                    if (job.not_before is not None or job.headers) and (
                            due_of(job.not_before, job.headers) is not None or attempts_before(job.headers)):
                        return  # a job that waits or waited: the scheduler's path
                    outcome = attempt(job, 1)
                    if outcome.error is not None:
                        block.failure = outcome
                        return
                    results[index] = outcome
                    block.done = index + 1
        finally:
            block.over = True

    def run(self, run: Run | Block) -> None:
        if type(run) is Block:
            self.run_block(run)
            return
        steps = self._steps(run)  # type: ignore[arg-type]
        attempt = self._handler.attempt
        try:
            call = next(steps)
            while True:
                call = steps.send(attempt(*call))
        except StopIteration:
            return

    async def run_async(self, run: Run) -> None:
        steps = self._steps(run)
        attempt = self._handler.attempt_async
        try:
            call = next(steps)
            while True:
                call = steps.send(await attempt(*call))
        except StopIteration:
            return

    def _steps(self, run: Run) -> Generator[tuple[Job, int], Attempt, None]:
        """The run's rules, once for both kinds of handler: yields (job, attempt number) for
        each handler call to make, is sent its Attempt; each result goes into the run as the
        task ends (see `Run` for the order of the writes, which the poll loop relies on)."""
        results: list[Result] = run.results
        failed: list[Task] = []
        stopping = self._stop.is_set
        decode = Job.from_message
        for index, task in enumerate(run.tasks):  # `run.done` is `index` here: see `Run`
            if stopping():
                break
            if task.cancelled or (failed and _behind(task, failed)):
                run.done = index + 1
                continue
            try:
                message = task.payload
                job = decode(message.value(), message.headers())
            except InvalidJob as error:
                results[index] = error
                run.done = index + 1
                failed.append(task)
                continue
            number = task.attempt
            if job.not_before is not None or job.headers:  # the rare path: a job that waited
                earlier = attempts_before(job.headers)
                due = due_of(job.not_before, job.headers)
                if due is not None:
                    late = time() - due
                    if late < 0:
                        results[index] = NotDue(job, due, earlier + number - 1)
                        run.done = index + 1
                        failed.append(task)
                        continue
                    if number == 1:
                        metrics.DELAY_LATE.observe(late)
                number += earlier
            outcome = results[index] = yield job, number
            run.done = index + 1
            if outcome.error is not None:
                failed.append(task)


def _behind(task: Task, failed: list[Task]) -> bool:
    """`task` is of the unit of a task that failed earlier in the run: it must not start."""
    return any(earlier.same_unit(task) for earlier in failed)
