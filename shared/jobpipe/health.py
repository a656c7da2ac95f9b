"""/metrics, /healthz and /readyz over HTTP on METRICS_PORT (prometheus-client + wsgiref).

/healthz answers 200 while the service's loop is alive; /readyz answers 200 while the
service can do its work (a consumer: it has joined its group and a broker answers; its
members clear the readiness when their client's statistics show no broker up). Both 503
otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from jobpipe import metrics  # importing registers the pipeline metrics served here
from jobpipe.logs import event

Check = Callable[[], bool]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        """Probes every few seconds would flood the log; requests are not logged."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class HealthServer:
    """Serves metrics and probes from a daemon thread until `close()`."""

    def __init__(self, port: int, live: Check, ready: Check, host: str = "0.0.0.0",
                 service: str = "") -> None:
        """`service`: whose metrics /metrics serves (jobpipe.metrics.SERVED_BY)."""
        self._live, self._ready = live, ready
        metrics.SERVICE_READY.set_function(lambda: 1.0 if self._ready() else 0.0)
        self._metrics = make_wsgi_app(metrics.ServedMetrics(service))
        self._server = make_server(host, port, self._app, server_class=_ThreadingServer,
                                   handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        event("health.listening", f"metrics and probes on port {self.port}", port=self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        checks = {"/healthz": self._live, "/readyz": self._ready}
        if path not in checks:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        ok = checks[path]()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"ok\n" if ok else b"not ready\n"]
