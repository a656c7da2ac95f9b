"""The console's web server: uvicorn on its own thread, so the service's main thread keeps
jobpipe's SIGTERM/SIGINT handler (uvicorn installs none off the main thread) and stops the
server within SHUTDOWN_TIMEOUT_S when the stop event is set."""

from __future__ import annotations

import threading
import time

import uvicorn

from console_service.app import Console
from console_service.sampler import Sampler
from console_service.settings import ConsoleSettings
from jobpipe.logs import event


class ConsoleServer:
    def __init__(self, settings: ConsoleSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.sampler = Sampler(settings)
        self.console = Console(settings, self.sampler, stop)
        config = uvicorn.Config(self.console.app(), host=settings.console_host, port=settings.console_port,
                                access_log=False, log_config=None, log_level="warning",
                                timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout_s / 2)))
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="console-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.console_host}:{self.settings.console_port}"

    def start(self, timeout_s: float = 30.0) -> ConsoleServer:
        self.sampler.start()
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the console could not listen on {self.url}")
            time.sleep(0.05)
        event("console.listening", f"console on {self.url}", url=self.url,
              read_only=self.settings.token() is None)
        return self

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(self.settings.shutdown_timeout_s)
        self.sampler.close()
        self.console.letters.close()
