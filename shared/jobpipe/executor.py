"""Runs handler calls off the caller's thread; completions come back through one queue.

Why it exists: the consumer's poll loop must keep polling Kafka while handlers run (or the
member is thrown out of the group), and with CONSUMER_CONCURRENCY > 1 it runs several handler
calls at once. The in-memory service needs the same, and both must honour the one handler
contract: a plain function runs on a thread, an `async def` function is awaited on an event
loop (calling it and dropping the coroutine, as before this module, does no work at all).

- A plain function runs on a pool of `concurrency` daemon threads. Not a ThreadPoolExecutor:
  its threads are joined at interpreter exit, so a handler stuck past SHUTDOWN_TIMEOUT_S would
  keep the process alive.
- An `async def` function (inspect.iscoroutinefunction, also through functools.partial or an
  object whose `__call__` is async) runs on ONE event loop (uvloop's: `handler_loop`), on one
  daemon thread, with up to `concurrency` calls awaited at once: `concurrency` long-lived
  worker coroutines take calls from a deque, so a call costs no Task of its own, and the poll
  thread wakes the loop at most once per burst of submissions, not once per call.
- Every call's outcome is a `Completion` (the caller's token, the error or None, the duration
  and the return value) on one thread-safe queue, which the caller drains with `collect`
  (without blocking, or waiting up to a timeout for the first).
- `wake()` ends a `collect` that waits, from any thread, without a completion: the caller's
  loop can wait for outcomes and for another event source (say, a producer's delivery
  reports, served on a thread of its own) at once.
- A plain function that returns an awaitable (an `async def` hidden behind a lambda, say) is a
  failed call with a TypeError, never a silently skipped job.

Nothing here knows about Kafka or jobs: `submit(token, argument)` calls `function(argument)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast


class Completion(NamedTuple):
    """The outcome of one call: what `collect` returns."""

    token: Any  # what the caller passed to `submit`
    error: BaseException | None  # what the call raised; None: it returned
    duration_s: float  # how long the call ran (from its start, not its submission)
    value: Any = None  # what it returned


def is_async_handler(function: Callable[..., Any]) -> bool:
    """True for an `async def` function (also through functools.partial, or a callable
    object whose `__call__` is `async def`)."""
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 (the attribute, not callable())
    return call is not None and inspect.iscoroutinefunction(call)


_WAKE = Completion(None, None, 0.0)  # put by `wake`, never returned by `collect`


class Executor:
    """Runs `function(argument)` for each `submit`, `concurrency` calls at most at once.

    `submit`, `collect` and `close` are for one thread (the caller's loop).
    Build one with `Executor.for_function`, which picks threads or an event loop.
    """

    def __init__(self, function: Callable[[Any], Any], concurrency: int, name: str) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.function = function
        self.concurrency = concurrency
        self.name = name
        self._done: queue.SimpleQueue[Completion] = queue.SimpleQueue()
        self._submitted = 0
        self._collected = 0
        self._closed = False
        self._stopping = False  # read by the workers: start nothing more

    @staticmethod
    def for_function(function: Callable[[Any], Any], concurrency: int,
                     name: str = "handler") -> Executor:
        """An executor for `function`: an event loop for `async def`, else daemon threads."""
        if is_async_handler(function):
            return AsyncExecutor(function, concurrency, name)
        return ThreadExecutor(function, concurrency, name)

    @property
    def is_async(self) -> bool:
        return isinstance(self, AsyncExecutor)

    def submit(self, token: Any, argument: Any) -> None:
        """Call `function(argument)` as soon as fewer than `concurrency` calls run."""
        raise NotImplementedError

    def collect(self, timeout: float | None = 0.0) -> list[Completion]:
        """The completions that arrived, oldest first. Never blocks with `timeout=0`; else
        waits up to `timeout` seconds (None: for ever) for the first one, or a `wake`."""
        done = self._done
        collected: list[Completion] = []
        if timeout != 0.0 and done.empty():
            try:
                first = done.get(timeout=timeout)
            except queue.Empty:
                return collected
            if first is not _WAKE:
                collected.append(first)
        while not done.empty():
            completion = done.get_nowait()
            if completion is not _WAKE:
                collected.append(completion)
        self._collected += len(collected)
        return collected

    def wake(self) -> None:
        """End a `collect` that waits now, or the next one (any thread may call this)."""
        self._done.put(_WAKE)

    @property
    def outstanding(self) -> int:
        """Calls submitted whose completion has not been collected yet."""
        return self._submitted - self._collected

    def close(self, timeout: float) -> bool:
        """Stop: calls not started yet never start; wait up to `timeout` seconds for the
        running ones. True if every worker stopped; False if a call is still running (its
        daemon thread is left behind and cannot hold the process's exit)."""
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"executor {self.name} is closed")


class ThreadExecutor(Executor):
    """A plain function on `concurrency` daemon threads."""

    def __init__(self, function: Callable[[Any], Any], concurrency: int, name: str = "handler") -> None:
        super().__init__(function, concurrency, name)
        self._calls: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True)
                         for number in range(1, concurrency + 1)]
        for thread in self._threads:
            thread.start()

    def submit(self, token: Any, argument: Any) -> None:
        self._check_open()
        self._submitted += 1
        self._calls.put((token, argument))

    def close(self, timeout: float) -> bool:
        if not self._closed:
            self._closed = self._stopping = True
            for _ in self._threads:
                self._calls.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        take = self._calls.get
        report = self._done.put
        function = self.function
        clock = time.perf_counter
        while (call := take()) is not None and not self._stopping:
            token, argument = call
            started = clock()
            try:
                value = function(argument)
            except BaseException as error:  # the caller decides; a worker thread never dies
                report(Completion(token, error, clock() - started))
                continue
            elapsed = clock() - started
            if value is not None and inspect.isawaitable(value):
                report(Completion(token, not_awaited(function, value), elapsed))
            else:
                report(Completion(token, None, elapsed, value))


def handler_loop() -> asyncio.AbstractEventLoop:
    """The event loop `async def` handlers run on: uvloop's (libuv). With 256 calls of
    `asyncio.sleep(0.005)` at once it took 26 us of CPU per job where asyncio's own loop took
    31 (its timers, futures and selector are most of an awaited call's cost). Imported here,
    so a process with a plain handler never loads it."""
    import uvloop

    return uvloop.new_event_loop()


class AsyncExecutor(Executor):
    """An `async def` function on one event loop thread, `concurrency` calls at once."""

    def __init__(self, function: Callable[[Any], Any], concurrency: int, name: str = "handler") -> None:
        super().__init__(function, concurrency, name)
        self._calls: deque[tuple[Any, Any]] = deque()  # appended by the caller, taken by the workers
        self._idle: deque[asyncio.Future[None]] = deque()  # parked workers (loop thread only)
        self._wake_due = False  # a _wake is scheduled on the loop and has not started yet
        self._loop = handler_loop()
        self._workers: list[asyncio.Task[None]] = []
        self._thread = threading.Thread(target=self._run, name=f"{name}-loop", daemon=True)
        self._thread.start()

    def submit(self, token: Any, argument: Any) -> None:
        self._check_open()
        self._submitted += 1
        self._calls.append((token, argument))
        # Append first, then look at the flag; `_wake` clears the flag before it counts the
        # calls: so a call is never left with every worker parked.
        if not self._wake_due:
            self._wake_due = True
            self._loop.call_soon_threadsafe(self._wake)

    def close(self, timeout: float) -> bool:
        if not self._closed:
            self._closed = self._stopping = True
            self._call_soon(self._unpark_all)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        self._call_soon(self._cancel_workers)  # best effort: a loop blocked by a call runs it late
        return False

    # ---- on the loop thread ----------------------------------------------------------------

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=lambda: self._loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"{self.name}-{number}")
                         for number in range(1, self.concurrency + 1)]
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        calls = self._calls
        idle = self._idle
        report = self._done.put
        function = cast(Callable[[Any], Awaitable[Any]], self.function)
        clock = time.perf_counter
        loop = self._loop
        while True:
            while not calls:
                if self._stopping:
                    return
                parked: asyncio.Future[None] = loop.create_future()
                idle.append(parked)
                await parked
            if self._stopping:
                return
            token, argument = calls.popleft()
            started = clock()
            try:
                value = await function(argument)
            except asyncio.CancelledError as error:
                report(Completion(token, error, clock() - started))
                if self._stopping:
                    raise  # cancelled by close(): this worker ends
            except BaseException as error:  # the caller decides; a worker never dies of a call
                report(Completion(token, error, clock() - started))
            else:
                report(Completion(token, None, clock() - started, value))

    def _wake(self) -> None:
        self._wake_due = False
        waiting = len(self._calls)
        idle = self._idle
        while waiting and idle:
            parked = idle.popleft()
            if not parked.done():
                parked.set_result(None)
                waiting -= 1

    def _unpark_all(self) -> None:
        while self._idle:
            parked = self._idle.popleft()
            if not parked.done():
                parked.set_result(None)

    def _cancel_workers(self) -> None:
        for worker in self._workers:
            worker.cancel()

    def _call_soon(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed already: nothing to stop
            self._loop.call_soon_threadsafe(callback)


def not_awaited(function: Callable[..., Any], value: Any) -> TypeError:
    """The error for a plain function that returned an awaitable instead of doing the work."""
    close = getattr(value, "close", None)
    if close is not None:
        close()  # a coroutine that will never run: no "never awaited" warning
    return TypeError(f"handler {getattr(function, '__qualname__', function)!r} returned "
                     f"{type(value).__name__} instead of doing the work: declare it `async def` "
                     "so it is awaited")
