"""The one SIGTERM/SIGINT handler: it sets an Event every loop of the service watches.

The handler itself only records the signal and sets the Event. Python runs it in the main
thread between two bytecodes, possibly in the middle of a log call; loguru is not
re-entrant, so a line logged from the handler could be lost, with a traceback (issue 10).
The `service.stopping` line is logged by a small daemon thread instead, as ordinary code;
`wait_logged` lets run_service have it out before `service.stopped`.
"""

from __future__ import annotations

import queue
import signal
import threading
from types import FrameType

from jobpipe.logs import event


class _SignalLog:
    """Signals received (written by the handler: a count and a queue, no lock) and logged (by
    the daemon thread, under a Condition that `wait_logged` waits on)."""

    def __init__(self) -> None:
        self.names: queue.SimpleQueue[str] = queue.SimpleQueue()  # put() is safe in a handler
        self.received = 0
        self.logged = 0
        self.changed = threading.Condition()
        threading.Thread(target=self._log, name="signal-log", daemon=True).start()

    def _log(self) -> None:
        while True:
            name = self.names.get()
            if self.logged == 0:
                event("service.stopping", f"{name} received; stopping", signal=name)
            else:
                event("service.stopping", f"{name} received again; still stopping", level="WARNING",
                      signal=name)
            with self.changed:
                self.logged += 1
                self.changed.notify_all()


_installed: list[_SignalLog] = []  # the last one is the handler in force


def install_stop_handler() -> threading.Event:
    """Return an Event set by the first SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()
    log = _SignalLog()
    _installed.append(log)

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.received += 1
        log.names.put(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop


def wait_logged(timeout: float = 1.0) -> None:
    """Wait (at most `timeout` s) until every signal received so far has been logged."""
    if not _installed:
        return
    log = _installed[-1]
    with log.changed:
        log.changed.wait_for(lambda: log.logged >= log.received, timeout)
