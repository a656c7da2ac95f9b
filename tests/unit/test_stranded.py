"""consumer_service.stranded: a client left with no broker it would connect to again is told
from one whose broker is only down (test_broker_frozen, scenario 6: after a broker was fenced
on waking, librdkafka kept its decommissioned broker listed in INIT and never reconnected)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer_service import worker
from consumer_service.stranded import stranded_since
from tests.unit.consumer_stand_ins import member_parts

AFTER_S = 10.0
STATES = ["INIT", "TRY_CONNECT", "CONNECT", "SSL_HANDSHAKE", "AUTH_LEGACY", "APIVERSION_QUERY", "UP",
          "DOWN", "UPDATE", "AUTH_HANDSHAKE", "AUTH_REQ", "REAUTH"]


def broker(state: str, idle_s: float = 0.0, source: str = "learned") -> dict[str, object]:
    return {"source": source, "state": state, "stateage": int(idle_s * 1e6)}


brokers = st.lists(st.builds(broker, st.sampled_from(STATES), st.floats(0, 600),
                             st.sampled_from(["learned", "configured", "logical"])), max_size=6)


@given(brokers, st.floats(0, 1e6))
def test_stranded_means_nothing_it_would_connect_to_again_for_long_enough(listed: list[dict[str, Any]],
                                                                         now: float) -> None:
    since = stranded_since(listed, now, AFTER_S)
    real = [b for b in listed if b["source"] != "logical"]
    if not real:
        assert since == now, "no broker at all: stranded from the first time it is seen"
        return
    idle = [b["stateage"] / 1e6 for b in real if b["state"] == "INIT"]
    up = any(b["state"] == "UP" for b in listed)
    if up or len(idle) < len(real) or min(idle) < AFTER_S:
        assert since is None, "a broker UP, or one being tried (or idle only briefly), keeps the client"
    else:
        assert since == pytest.approx(now - min(idle)), "since the last of their state changes"


def test_a_broker_that_is_only_down_keeps_the_client() -> None:
    """Sampled from a real run (broker SIGSTOPped): between attempts librdkafka leaves a down
    broker in INIT for well under a second; the coordinator's connection is being tried too."""
    coordinator = broker("TRY_CONNECT", 5.0, "logical")
    for state, idle_s in [("UP", 14.0), ("CONNECT", 0.5), ("INIT", 0.4), ("TRY_CONNECT", 3.0), ("DOWN", 0.1)]:
        assert stranded_since([broker(state, idle_s), coordinator], 100.0, AFTER_S) is None


def test_a_decommissioned_broker_idle_in_init_strands_the_client() -> None:
    """What test_broker_frozen's stuck consumer showed, every 2 s until teardown: the broker
    decommissioned at the fenced metadata stays listed in INIT, the group coordinator has no
    address (TRY_CONNECT), the group sits in query-coord."""
    coordinator = broker("TRY_CONNECT", 12.0, "logical")
    assert stranded_since([broker("INIT", 12.0), coordinator], 100.0, AFTER_S) == pytest.approx(88.0)
    assert stranded_since([broker("INIT", 5.8), coordinator], 100.0, AFTER_S) is None, "not idle long enough"
    assert stranded_since([broker("INIT", 30.0), broker("UP", 30.0, "logical")], 100.0, AFTER_S) is None, \
        "the coordinator's connection still answers (and brings metadata)"


@pytest.fixture
def member() -> Iterator[Any]:
    settings, handler = member_parts(lambda job: None)
    one = worker.ConsumerWorker(1, settings, handler, threading.Event(), threading.Event())
    yield one
    one._executor.close(1.0)


def test_the_member_replaces_a_client_whose_broker_sits_decommissioned(member: Any) -> None:
    member._watch_brokers([broker("INIT", 4.0), broker("TRY_CONNECT", 4.0, "logical")], 50.0)
    assert member._stranded_since is None, "not yet: a broker between two attempts looks the same"
    member._watch_brokers([broker("INIT", 12.0), broker("TRY_CONNECT", 12.0, "logical")], 58.0)
    assert member._stranded_since == pytest.approx(46.0)
    assert 58.0 - member._stranded_since >= worker.STRANDED_AFTER_S, "the loop's next turn replaces it"
    member._watch_brokers([broker("CONNECT", 0.1), broker("TRY_CONNECT", 12.0, "logical")], 60.0)
    assert member._stranded_since is None
