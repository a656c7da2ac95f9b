"""The executor: plain and async handlers really run, at most `concurrency` at once, and
every outcome (errors included) comes back as a completion; close() is never held up by a
stuck handler. Every wait here has a deadline; nothing sleeps to synchronise."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from jobpipe.executor import AsyncExecutor, Completion, Executor, ThreadExecutor, is_async_handler

DEADLINE_S = 30.0  # generous: the suite must pass on a loaded 2-core machine


def collect_all(executor: Executor, count: int) -> list[Completion]:
    """Wait (bounded) for `count` completions."""
    deadline = time.monotonic() + DEADLINE_S
    done: list[Completion] = []
    while len(done) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(done)} of {count} completions within {DEADLINE_S} s"
        done += executor.collect(timeout=min(left, 1.0))
    assert len(done) == count
    return done


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    event = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        event.wait(0.001)


@pytest.fixture
def executors() -> Iterator[list[Executor]]:
    """Executors made by a test, closed at its end."""
    made: list[Executor] = []
    yield made
    for executor in made:
        executor.close(1.0)


def make(executors: list[Executor], function: Callable[[Any], Any], concurrency: int) -> Executor:
    executor = Executor.for_function(function, concurrency, "test")
    executors.append(executor)
    return executor


# ---- picking threads or an event loop ---------------------------------------------------


async def async_handler(job: object) -> None:
    return None


class AsyncCallable:
    async def __call__(self, job: object) -> None:
        return None


def test_async_handlers_are_told_from_plain_ones() -> None:
    assert is_async_handler(async_handler)
    assert is_async_handler(functools.partial(async_handler))
    assert is_async_handler(AsyncCallable())
    assert not is_async_handler(print)
    assert not is_async_handler(lambda job: None)


def test_for_function_picks_an_event_loop_for_async_def(executors: list[Executor]) -> None:
    assert isinstance(make(executors, async_handler, 1), AsyncExecutor)
    assert isinstance(make(executors, lambda job: None, 1), ThreadExecutor)
    with pytest.raises(ValueError, match="concurrency"):
        Executor.for_function(async_handler, 0)


# ---- the work is done -------------------------------------------------------------------


def test_a_plain_handler_runs_on_a_daemon_thread_and_returns_its_value(executors: list[Executor]) -> None:
    seen: list[tuple[int, str, bool]] = []

    def handler(job: int) -> int:
        thread = threading.current_thread()
        seen.append((job, thread.name, thread.daemon))
        return job * 10

    executor = make(executors, handler, 3)
    for job in range(20):
        executor.submit(("token", job), job)
    done = collect_all(executor, 20)
    assert sorted(c.token for c in done) == [("token", job) for job in range(20)]
    assert all(c.error is None and c.value == c.token[1] * 10 and c.duration_s >= 0 for c in done)
    assert sorted(job for job, _, _ in seen) == list(range(20))
    assert all(daemon and name.startswith("test-") for _, name, daemon in seen)
    assert threading.current_thread().name not in {name for _, name, _ in seen}
    assert executor.outstanding == 0


def test_an_async_handler_is_awaited_so_its_work_is_done(executors: list[Executor]) -> None:
    """Not just a coroutine created: the code after its awaits runs too."""
    done_jobs: list[int] = []

    async def handler(job: int) -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        done_jobs.append(job)
        return f"did {job}"

    executor = make(executors, handler, 4)
    assert executor.is_async
    for job in range(50):
        executor.submit(job, job)
    done = collect_all(executor, 50)
    assert sorted(done_jobs) == list(range(50))
    assert {c.token: c.value for c in done} == {job: f"did {job}" for job in range(50)}
    assert all(c.error is None for c in done)


def test_async_calls_all_run_on_one_event_loop_thread(executors: list[Executor]) -> None:
    threads: set[int] = set()

    async def handler(job: int) -> None:
        asyncio.get_running_loop()  # raises if there is none
        threads.add(threading.get_ident())

    executor = make(executors, handler, 8)
    for job in range(40):
        executor.submit(job, job)
    collect_all(executor, 40)
    assert len(threads) == 1
    assert threading.get_ident() not in threads


def test_collect_without_a_timeout_never_blocks(executors: list[Executor]) -> None:
    executor = make(executors, lambda job: None, 1)
    started = time.monotonic()
    assert executor.collect() == []
    assert executor.collect(timeout=0.0) == []
    assert time.monotonic() - started < DEADLINE_S
    assert executor.collect(timeout=0.01) == []  # waits for the first, then gives up


def test_wake_ends_a_waiting_collect_from_another_thread_without_a_completion(
        executors: list[Executor]) -> None:
    """The consumer's loop waits on outcomes and is woken by dead-letter answers this way."""
    release = threading.Event()
    executor = make(executors, lambda job: release.wait(60), 1)
    executor.submit("slow", 1)
    threading.Thread(target=executor.wake).start()
    try:
        assert executor.collect(timeout=60) == [], "woken, with nothing collected"
        assert executor.outstanding == 1
    finally:
        release.set()
    assert [c.token for c in executor.collect(timeout=60)] == ["slow"]
    executor.wake()
    assert executor.collect() == [] and executor.outstanding == 0


# ---- errors are completions --------------------------------------------------------------


def test_errors_of_plain_handlers_come_back_as_completions(executors: list[Executor]) -> None:
    def handler(job: int) -> None:
        if job == 1:
            raise ValueError("bad job")
        if job == 2:
            raise SystemExit(3)  # even this fails only the call, never the worker thread

    executor = make(executors, handler, 1)
    for job in range(4):
        executor.submit(job, job)
    done = {c.token: c for c in collect_all(executor, 4)}
    assert isinstance(done[1].error, ValueError) and str(done[1].error) == "bad job"
    assert isinstance(done[2].error, SystemExit)
    assert done[0].error is None and done[3].error is None, "the one thread lived on"


def test_errors_of_async_handlers_come_back_as_completions(executors: list[Executor]) -> None:
    async def handler(job: int) -> None:
        await asyncio.sleep(0)
        if job % 2:
            raise RuntimeError(f"failed {job}")

    executor = make(executors, handler, 2)
    for job in range(6):
        executor.submit(job, job)
    done = {c.token: c for c in collect_all(executor, 6)}
    assert [str(done[job].error) for job in (1, 3, 5)] == ["failed 1", "failed 3", "failed 5"]
    assert all(done[job].error is None for job in (0, 2, 4))


def test_a_plain_function_that_returns_a_coroutine_fails_loudly(
        executors: list[Executor], recwarn: pytest.WarningsRecorder) -> None:
    """A lambda around an async def would otherwise be 'processed' without doing anything."""
    def hides_a_coroutine(job: object) -> object:
        return async_handler(job)

    executor = make(executors, hides_a_coroutine, 1)
    assert not executor.is_async
    executor.submit("t", 1)
    (done,) = collect_all(executor, 1)
    assert isinstance(done.error, TypeError)
    assert "async def" in str(done.error)
    assert not [w for w in recwarn if "never awaited" in str(w.message)], "the coroutine is closed"


# ---- the concurrency bound ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_at_most_concurrency_calls_run_at_once(kind: str, executors: list[Executor]) -> None:
    concurrency = 3
    lock = threading.Lock()
    running = 0
    peak = 0
    gate: Future[None] = Future()  # opened by the test

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    def sync_handler(job: int) -> None:
        enter()
        try:
            gate.result(timeout=DEADLINE_S)
        finally:
            leave()

    async def async_handler(job: int) -> None:
        enter()
        try:
            await asyncio.wait_for(asyncio.wrap_future(gate), DEADLINE_S)
        finally:
            leave()

    executor = make(executors, sync_handler if kind == "sync" else async_handler, concurrency)
    for job in range(4 * concurrency):
        executor.submit(job, job)
    wait_until(lambda: running == concurrency, f"{concurrency} calls running")
    # Every worker is held by the gate: nothing else can have started.
    assert executor.collect() == []
    assert peak == concurrency
    gate.set_result(None)
    done = collect_all(executor, 4 * concurrency)
    assert all(c.error is None for c in done)
    assert peak == concurrency, "never more than the concurrency, also while draining"


def test_async_calls_overlap_while_they_wait(executors: list[Executor]) -> None:
    """Concurrency on one loop: all calls are awaiting at the same time."""
    count = 50
    arrived = 0
    all_in: asyncio.Event | None = None

    async def handler(job: int) -> None:
        nonlocal arrived, all_in
        if all_in is None:
            all_in = asyncio.Event()
        arrived += 1
        if arrived == count:
            all_in.set()
        await asyncio.wait_for(all_in.wait(), DEADLINE_S)  # only returns once all 50 are in

    executor = make(executors, handler, count)
    for job in range(count):
        executor.submit(job, job)
    assert all(c.error is None for c in collect_all(executor, count))


# ---- closing -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_close_starts_nothing_more_and_refuses_new_calls(kind: str, executors: list[Executor]) -> None:
    gate: Future[None] = Future()
    started: list[int] = []

    def sync_handler(job: int) -> None:
        started.append(job)
        gate.result(DEADLINE_S)

    async def async_handler(job: int) -> None:
        started.append(job)
        await asyncio.wait_for(asyncio.wrap_future(gate), DEADLINE_S)

    executor = make(executors, sync_handler if kind == "sync" else async_handler, 1)
    for job in range(5):
        executor.submit(job, job)
    wait_until(lambda: started == [0], "the first call")
    closing = threading.Thread(target=lambda: executor.close(DEADLINE_S), daemon=True)
    closing.start()
    wait_until(lambda: executor._stopping, "close() to begin")
    gate.set_result(None)
    closing.join(DEADLINE_S)
    assert not closing.is_alive()
    assert started == [0], "queued calls never start after close()"
    assert [c.token for c in executor.collect()] == [0], "the running one finished and said so"
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit(9, 9)


@pytest.mark.parametrize("stuck", ["thread", "await", "blocking-async"])
def test_a_stuck_handler_does_not_block_close(stuck: str) -> None:
    release = threading.Event()
    entered = threading.Event()

    def blocking(job: int) -> None:
        entered.set()
        release.wait(DEADLINE_S * 2)

    async def awaiting(job: int) -> None:
        entered.set()
        await asyncio.Event().wait()  # never set: only a cancel ends it

    async def blocking_async(job: int) -> None:
        entered.set()
        release.wait(DEADLINE_S * 2)  # blocks the event loop itself

    handler = {"thread": blocking, "await": awaiting, "blocking-async": blocking_async}[stuck]
    executor = Executor.for_function(handler, 2, "stuck")
    executor.submit("stuck", 0)
    assert entered.wait(DEADLINE_S)
    started = time.monotonic()
    stopped = executor.close(0.2)
    assert time.monotonic() - started < DEADLINE_S / 2
    if stuck == "await":
        # A call that awaits can be cancelled: the loop ends, and says why the call ended.
        (done,) = collect_all(executor, 1)
        assert isinstance(done.error, asyncio.CancelledError)
        wait_until(lambda: not executor._thread.is_alive(), "the loop thread to end")  # type: ignore[attr-defined]
    else:
        assert not stopped, "the call is still running: close() says so and returns"
    release.set()


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_stuck_handler_does_not_hold_the_process_exit(kind: str) -> None:
    """The reason for daemon threads: a process whose handler never returns still exits."""
    program = textwrap.dedent(f"""
        import threading, time
        from jobpipe.executor import Executor

        entered = threading.Event()
        {kind} handler(job):
            entered.set()
            threading.Event().wait()  # for ever

        executor = Executor.for_function(handler, 2)
        executor.submit(1, 1)
        assert entered.wait(20)
        assert executor.close(0.1) is False
        print("exiting")
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=DEADLINE_S * 2, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "exiting"


def test_close_is_quick_when_idle_and_can_be_repeated() -> None:
    for function in (lambda job: None, async_handler):
        executor = Executor.for_function(function, 4)
        executor.submit(1, 1)
        collect_all(executor, 1)
        assert executor.close(DEADLINE_S)
        assert executor.close(DEADLINE_S)
