"""How every service starts and ends: settings, logging, signals, metrics, exit codes.

`run_service` is the single place where errors become exit codes (see errors.ExitCode):
a bad setting (including a librdkafka property that librdkafka or jobpipe.client_check
refuses) prints one line on stderr and exits 2 before anything is sent; an
unreachable broker exits 3; anything unexpected is logged with its traceback and exits 1.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TextIO

from jobpipe.client_check import check_client_configs
from jobpipe.errors import ConfigError, ExitCode, ServiceError, StopRequested, exit_code_for
from jobpipe.health import Check, HealthServer
from jobpipe.logs import configure_logging, event
from jobpipe.settings import BaseServiceSettings, KafkaSettings, Settings, load_settings
from jobpipe.signals import install_stop_handler, wait_logged


@dataclass
class Outcome:
    """What a service's body returns: its exit code and the counts for `service.stopped`."""

    exit_code: ExitCode = ExitCode.OK
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Probes:
    """Liveness and readiness, flipped by the service's loops and read by /healthz, /readyz."""

    ready: threading.Event = field(default_factory=threading.Event)
    alive: Check = lambda: True


Body = Callable[[Settings, threading.Event, Probes], Outcome]


def run_service(name: str, settings_class: type[Settings], body: Body[Settings],
                *, serve_probes: bool = True, log_stream: TextIO | None = None) -> NoReturn:
    """Load settings, set up logging and signals, run `body`, exit with the mapped code."""
    try:
        settings = load_settings(settings_class)
        assert isinstance(settings, BaseServiceSettings)
        if isinstance(settings, KafkaSettings):  # every librdkafka client configuration
            check_client_configs(settings)
    except ConfigError as error:
        print(f"{name}: configuration error: {error}", file=sys.stderr)
        sys.exit(ExitCode.CONFIG)
    configure_logging(name, settings.log_level, settings.log_format, log_stream)
    stop = install_stop_handler()
    probes = Probes()
    started = time.monotonic()
    server: HealthServer | None = None
    try:
        if serve_probes and settings.metrics_port:
            server = HealthServer(settings.metrics_port, live=lambda: probes.alive(),  # noqa: PLW0108 (alive is replaced later)
                                  ready=probes.ready.is_set, service=name).start()
        event("service.started", f"{name} started", config=settings.effective())
        outcome = body(settings, stop, probes)
    except ConfigError as error:
        print(f"{name}: configuration error: {error}", file=sys.stderr)
        sys.exit(ExitCode.CONFIG)
    except StopRequested:
        outcome = Outcome(ExitCode.OK)
    except ServiceError as error:
        event("service.failed", f"{name} failed: {error}", level="ERROR", error=str(error))
        outcome = Outcome(exit_code_for(error))
    except Exception as error:
        from loguru import logger

        logger.opt(exception=error).bind(event="service.failed").error(f"{name} failed: {error!r}")
        outcome = Outcome(ExitCode.FAILURE)
    finally:
        if server is not None:
            server.close()
    seconds = round(time.monotonic() - started, 3)
    summary = "".join(f", {k}={v}" for k, v in outcome.counts.items())
    wait_logged()  # `service.stopping` before `service.stopped`
    event("service.stopped", f"{name} stopped (exit {int(outcome.exit_code)}) after {seconds} s{summary}",
          exit_code=int(outcome.exit_code), seconds=seconds, **dict[str, Any](outcome.counts))
    sys.exit(outcome.exit_code)
