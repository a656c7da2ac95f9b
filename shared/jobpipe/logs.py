"""Logging set-up (loguru) and the one way services emit events.

Every line is an *event*: a name such as `job.processed`, a message for a person and
fields for a program. LOG_FORMAT=json writes one JSON object per line with `time`,
`level`, `service`, `event`, `message` and the fields at top level; `text` writes the
message only, readable like the seed's output. librdkafka's own log lines are routed
here too, as `kafka.client` events.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from datetime import UTC
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

RESERVED = ("time", "level", "service", "event", "message")
# loguru's level numbers, read once: `enabled()` runs per job and must be a dict lookup.
LEVELS = {name: logger.level(name).no
          for name in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")}
_configured = {"threshold": LEVELS["INFO"]}  # LOG_LEVEL as a number, set by configure_logging
TEXT_FORMAT = ("<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
               "<cyan>{extra[service]}</cyan> | {message}")


def event(name: str, message: str, *, level: str = "INFO", **fields: Any) -> None:
    """Log event `name` with a human `message` and machine-readable `fields`."""
    if LEVELS.get(level, 100) >= _configured["threshold"]:
        logger.bind(event=name, fields=fields).log(level, message)


def enabled(level: str) -> bool:
    """Whether events at `level` are written: per-job events check it before building their
    message (at LOG_LEVEL=WARNING that was a tenth of a job's cost, issue 6)."""
    return LEVELS.get(level, 100) >= _configured["threshold"]


def _json_line(record: Record) -> str:
    extra = record["extra"]
    line: dict[str, Any] = {
        "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": record["level"].name,
        "service": extra.get("service", ""),
        "event": extra.get("event", "log"),
        "message": record["message"],
    }
    for key, value in extra.get("fields", {}).items():
        line[key if key not in RESERVED else f"field_{key}"] = value
    if record["exception"] is not None:
        line["exception"] = repr(record["exception"].value)
    return json.dumps(line, default=str)


class _Output:
    """stdout for log lines, flushed per line; a closed pipe (`| head`) silently ends output."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> None:
        if self._closed:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except BrokenPipeError:
            self._closed = True


class _JsonSink:
    def __init__(self, output: _Output) -> None:
        self._output = output

    def __call__(self, message: Message) -> None:
        self._output.write(_json_line(message.record) + "\n")


def configure_logging(service: str, level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send every log line of this process to `stream` (stdout) in format `fmt`."""
    _configured["threshold"] = LEVELS[level]
    out = stream or sys.stdout
    output = _Output(out)
    logger.remove()
    logger.configure(extra={"service": service, "event": "log", "fields": {}})
    if fmt == "json":
        logger.add(_JsonSink(output), level=level, format="{message}", backtrace=False, diagnose=False)
    else:
        logger.add(output.write, level=level, format=TEXT_FORMAT, colorize=out.isatty(),
                   backtrace=False, diagnose=False)


REPEAT_INTERVAL_S = 30.0  # a Kafka client problem that keeps happening is logged once per this
# librdkafka's line prefix ("FAIL [rdkafka#consumer-1] [thrd:host:9092/1]: ") and the timing it
# appends ("(after 0ms in state CONNECT)"): what differs between two reports of one cause.
_CLIENT_PREFIX = re.compile(r"^[A-Z0-9_]+ \[[^\]]*\] (\[thrd:[^\]]*\]: )?")
_TIMING = re.compile(r"\s*\(after \d+ms in state [^)]*\)")


def client_problem(text: str) -> str:
    """What two reports of one Kafka client problem have in common, whoever reported it
    (librdkafka's log line or the client's error callback)."""
    return " ".join(_TIMING.sub("", _CLIENT_PREFIX.sub("", text)).split())


class Repeats:
    """Which reports of a problem to write: the first of each cause, then at most one every
    `interval_s`, which says how many were held back since. While a broker is away librdkafka
    reports every failed connection, a thousand lines in 25 s (issue 22, defect 8).
    A pure decision (the time is an argument); `admit` is safe from any thread."""

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S, causes: int = 1000) -> None:
        self._interval_s = interval_s
        self._causes = causes  # most causes remembered (old ones are forgotten first)
        self._seen: dict[str, tuple[float, int]] = {}  # cause -> (last written, held back since)
        self._lock = threading.Lock()

    def admit(self, cause: str, now: float) -> int | None:
        """None: hold this report back; else write it, with the count held back before it."""
        with self._lock:
            seen = self._seen.get(cause)
            if seen is not None and now - seen[0] < self._interval_s:
                self._seen[cause] = (seen[0], seen[1] + 1)
                return None
            if seen is None and len(self._seen) >= self._causes:
                del self._seen[next(iter(self._seen))]
            self._seen.pop(cause, None)
            self._seen[cause] = (now, 0)
            return seen[1] if seen is not None else 0


CLIENT_REPEATS = Repeats()  # shared by every Kafka client of the process: one line per cause


def client_event(name: str, message: str, cause: str, *, level: str, always: bool = False,
                 **fields: Any) -> None:
    """Log a Kafka client's report, unless the same `cause` was written less than
    REPEAT_INTERVAL_S ago (`always`: a fatal error, never held back)."""
    held = CLIENT_REPEATS.admit(client_problem(cause), time.monotonic())
    if held is None and not always:
        return
    if held:
        message = f"{message} ({held} more like this in the last {REPEAT_INTERVAL_S:g} s)"
    event(name, message, level=level, repeated=held or 0, **fields)


class _ToLoguru(logging.Handler):
    """Forwards librdkafka log lines (given to confluent-kafka as a stdlib logger) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"
        if not enabled(level):
            return
        text = record.getMessage()
        client_event("kafka.client", text, text, level=level, client=record.name)


def kafka_client_logger(name: str) -> logging.Logger:
    """A stdlib logger for confluent-kafka's `logger=` option that writes through loguru."""
    client_logger = logging.getLogger(f"kafka.{name}")
    if not client_logger.handlers:
        client_logger.addHandler(_ToLoguru())
        client_logger.propagate = False
        client_logger.setLevel(logging.INFO)
    return client_logger
