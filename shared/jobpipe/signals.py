"""The one SIGTERM/SIGINT handler: it sets an Event every loop of the service watches."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from jobpipe.logs import event


def install_stop_handler() -> threading.Event:
    """Return an Event set by the first SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            event("service.stopping", f"{name} received again; still stopping", level="WARNING",
                  signal=name)
            return
        event("service.stopping", f"{name} received; stopping", signal=name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return stop
