"""How tests look at a running service from outside: wait for a condition, read an HTTP
endpoint, read a Prometheus metric, see which partitions each group member owns.

One copy of each, so every test reads a service the same way (they used to be written again
in several test modules, each slightly differently).
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Event = dict[str, Any]


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.1) -> Any:
    """Return condition()'s first truthy value; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def happens_within(condition: Callable[[], object], seconds: float, poll: float = 0.1) -> bool:
    """True as soon as condition() holds; False once `seconds` passed without it. For a window
    in which a service may break a promise: the test then asserts on what it did, and a
    service that keeps the promise passes however fast or slow the machine."""
    try:
        wait_until(condition, seconds, "the window to end", poll)
    except AssertionError:
        return False
    return True


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 and "" while nothing answers (not started, stopped)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError:
        return 0, ""


# One sample line of the Prometheus text format: name, optional {labels}, value, optional time.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: -?\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(body: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples named `name` (e.g. `jobs_processed_total`) in a Prometheus text body, with
    their labels (escapes in label values left as they are). A line scan, not
    prometheus_client's parser: the benchmarks read /metrics every 50 ms on the cores they
    measure, and the parser costs about 1.4 ms a read there, this about 0.02 ms."""
    found = []
    for line in body.splitlines():
        if line.startswith(name) and (match := _SAMPLE.match(line)) and match.group(1) == name:
            found.append((dict(_LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return found


def metric(body: str, name: str, **labels: str) -> float | None:
    """The sum of `name`'s samples whose labels include `labels`; None when there is none."""
    values = [value for found, value in samples(body, name)
              if all(found.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


def scrape(port: int, name: str, **labels: str) -> float | None:
    """`metric` read from http://127.0.0.1:`port`/metrics; None while nothing answers."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    return metric(body, name, **labels) if status == 200 else None


def owned_by_member(events: Iterable[Event]) -> dict[str, set[int]]:
    """Each group member's partitions after the latest `partitions.assigned`/`revoked` event it
    logged (each event carries the member's name in `consumer` and what it owns in `owned`)."""
    changes = sorted((e for e in events if e.get("event") in ("partitions.assigned", "partitions.revoked")),
                     key=lambda e: str(e["time"]))
    return {str(e["consumer"]): set(e["owned"]) for e in changes}


def split_among(owned: Mapping[str, Iterable[int]], members: int, partitions: int) -> bool:
    """True when `members` members each own some partitions and together own each of the
    `partitions` exactly once."""
    sets = [sorted(parts) for parts in owned.values()]
    return (len(sets) == members and all(sets)
            and sorted(p for parts in sets for p in parts) == list(range(partitions)))
