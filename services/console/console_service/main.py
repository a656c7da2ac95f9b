"""Entry point of the `console` service: the web console for CONSUMER_GROUP and JOBS_TOPIC.

It starts serving at once, broker or not (the pages show a banner while Kafka does not answer),
and stops on SIGTERM/SIGINT. Exit codes as every service: 2 for a bad setting, 1 otherwise.
"""

from __future__ import annotations

import threading
from typing import NoReturn

from console_service.server import ConsoleServer
from console_service.settings import ConsoleSettings
from jobpipe.service import Outcome, Probes, run_service


def body(settings: ConsoleSettings, stop: threading.Event, probes: Probes) -> Outcome:
    server = ConsoleServer(settings, stop).start()
    probes.ready.set()
    try:
        stop.wait()
    finally:
        server.close()
    return Outcome()


def main() -> NoReturn:
    run_service("console", ConsoleSettings, body)


if __name__ == "__main__":
    main()
