"""Whether a librdkafka client is stranded: left with no broker it will ever connect to again.

Read from the client's statistics (statistics.interval.ms), the only view librdkafka gives of
its brokers; the group member replaces a stranded client (`ConsumerWorker._replace_client`).

Seen after the only broker was frozen longer than its broker.session.timeout.ms (scenario 6 of
tests/integration/test_reliability.py): on waking, KRaft fences it, its metadata responses list
no broker for a moment, and librdkafka (2.16) decommissions every broker missing from metadata.
Then either the decommissioned broker is gone from the statistics (only logical brokers, the
group coordinator's, are left), or something in librdkafka still holds a reference to it and it
stays listed, in INIT, for good. librdkafka never picks a decommissioned broker to connect to, so
in both cases nothing ever reconnects the client (its group sat in query-coord for minutes).

A broker that is only down is not that: librdkafka keeps trying one it needs (TRY_CONNECT,
CONNECT, DOWN, and INIT for at most its sparse-connect interval, 1 s, between attempts), so it is
never idle in INIT for long while no broker answers. A broker a healthy client does not need
(sparse connections) may idle in INIT, but then another one, or the coordinator's, is UP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Broker = Mapping[str, object]  # one entry of the statistics' "brokers"


def idle_s(broker: Broker) -> float:
    """How long the broker has been in its current state (`stateage` is in microseconds)."""
    age = broker.get("stateage")
    return age / 1e6 if isinstance(age, int | float) else 0.0


def stranded_since(brokers: Iterable[Broker], now: float, after_s: float) -> float | None:
    """Since when (on the clock of `now`) the client has had no broker it would connect to
    again, or None when it has one.

    - only logical brokers listed: since `now` (the caller keeps the first time it saw that);
    - no broker of any kind UP, and every real broker idle in INIT for at least `after_s`:
      since the latest of their state changes;
    - otherwise None.
    """
    listed = list(brokers)
    real = [broker for broker in listed if broker.get("source") != "logical"]
    if not real:
        return now
    if any(broker.get("state") == "UP" for broker in listed):
        return None
    if any(broker.get("state") != "INIT" for broker in real):
        return None
    idle = min(idle_s(broker) for broker in real)
    return now - idle if idle >= after_s else None
