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
import sys
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


class _ToLoguru(logging.Handler):
    """Forwards librdkafka log lines (given to confluent-kafka as a stdlib logger) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname if record.levelname in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"
        event("kafka.client", record.getMessage(), level=level, client=record.name)


def kafka_client_logger(name: str) -> logging.Logger:
    """A stdlib logger for confluent-kafka's `logger=` option that writes through loguru."""
    client_logger = logging.getLogger(f"kafka.{name}")
    if not client_logger.handlers:
        client_logger.addHandler(_ToLoguru())
        client_logger.propagate = False
        client_logger.setLevel(logging.INFO)
    return client_logger
