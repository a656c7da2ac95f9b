"""The consumer service with a loop the test can stall, for the /healthz test.

/healthz must answer 503 when a worker's loop stops turning (consumer_service.main.STALL_S),
which no well-behaved handler can cause: handlers run on their own threads. This runs the real
`consumer` entry point with two test settings: TEST_STALL_S replaces STALL_S (60 s) so the test
is short, and while the file TEST_STALL_FILE exists every worker's loop blocks before its next
turn, as a loop stuck in a call that never returns would.

Run as `python -m tests.stalling_consumer` with the consumer's usual settings.
"""

from __future__ import annotations

import os
import time

from consumer_service import main as consumer_main
from consumer_service.worker import ConsumerWorker


def stall_while_file_exists(path: str) -> None:
    """Make each ConsumerWorker turn wait while `path` exists."""
    turn = ConsumerWorker._turn

    def stalling_turn(worker: ConsumerWorker) -> None:
        while os.path.exists(path):
            time.sleep(0.05)
        turn(worker)

    ConsumerWorker._turn = stalling_turn  # type: ignore[method-assign]


if __name__ == "__main__":
    consumer_main.STALL_S = float(os.environ["TEST_STALL_S"])
    stall_while_file_exists(os.environ["TEST_STALL_FILE"])
    consumer_main.main()
