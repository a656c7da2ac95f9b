"""The in-memory service's queue: FIFO, bounded (a full queue blocks producers), and cheap.

queue.Queue does this with Python-level Conditions; a put and a get cost about 1.2 us
together, and with producers and consumers fighting for the GIL they were a third of the
service's time per job. Here the bound is a second queue of free slots: a put takes a slot
then queues the item, a get takes the item then gives its slot back. Both are
`queue.SimpleQueue`s (C, blocking without a Python lock), so the same 2+2 threads move about
a third more jobs per second than over queue.Queue (issue 10, closing note).
"""

from __future__ import annotations

import queue
from typing import Generic, TypeVar

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(capacity):
            self._free.put(None)

    def put(self, item: T, timeout: float | None = None) -> None:
        """Queue `item`, waiting for room; raise queue.Full if none came within `timeout`."""
        try:
            self._free.get(timeout=timeout)
        except queue.Empty:
            raise queue.Full from None
        self._items.put(item)

    def get(self) -> T:
        """The oldest item, waiting for one."""
        item = self._items.get()
        self._free.put(None)
        return item

    def qsize(self) -> int:
        return self._items.qsize()
