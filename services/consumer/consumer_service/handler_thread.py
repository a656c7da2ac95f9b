"""A daemon thread that runs handler calls, so the poll loop never waits on a job.

A plain ThreadPoolExecutor would do, except that its threads are joined at interpreter
exit: a handler stuck past SHUTDOWN_TIMEOUT_S would then keep the process alive. This
thread is a daemon, so a job that is handed back on shutdown cannot hold the exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class HandlerThread:
    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[object], Callable[[], object]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, call))  # type: ignore[arg-type]
        return future

    def close(self) -> None:
        self._calls.put(None)

    def _loop(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as error:  # delivered to the poll thread through the future
                future.set_exception(error)
