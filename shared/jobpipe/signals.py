"""The one SIGTERM/SIGINT handler: it sets an Event every loop of the service watches.

The handler itself only records the signal and sets the Event. Python runs it in the main
thread between two bytecodes, possibly in the middle of a log call; loguru is not
re-entrant, so a line logged from the handler could be lost, with a traceback (issue 10).
The `service.stopping` line is logged by a small daemon thread instead, as ordinary code.
"""

from __future__ import annotations

import queue
import signal
import threading
from types import FrameType

from jobpipe.logs import event


def install_stop_handler() -> threading.Event:
    """Return an Event set by the first SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()
    received: queue.SimpleQueue[str] = queue.SimpleQueue()  # put() is safe in a signal handler

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        received.put(signal.Signals(signum).name)
        stop.set()

    def _log_signals() -> None:
        name = received.get()
        event("service.stopping", f"{name} received; stopping", signal=name)
        while True:
            name = received.get()
            event("service.stopping", f"{name} received again; still stopping", level="WARNING",
                  signal=name)

    threading.Thread(target=_log_signals, name="signal-log", daemon=True).start()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop
