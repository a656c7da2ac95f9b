"""tests/observing.py reads /metrics with a line scan (cheap enough for the benchmarks' 50 ms
reads): it must read what prometheus_client's own parser reads."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobpipe import metrics
from tests.observing import metric, owned_by_member, samples, split_among


def test_samples_read_every_series_as_prometheus_clients_parser_does() -> None:
    metrics.CONSUMER_LAG.labels("jobs", "0").set(5)
    metrics.CONSUMER_LAG.labels("jobs", "1").set(7)
    try:
        body = generate_latest(REGISTRY).decode()
    finally:
        metrics.CONSUMER_LAG.remove("jobs", "0")
        metrics.CONSUMER_LAG.remove("jobs", "1")
    parsed = [s for family in text_string_to_metric_families(body) for s in family.samples]
    for name in {s.name for s in parsed}:
        expected = sorted((sorted(s.labels.items()), s.value) for s in parsed if s.name == name)
        assert sorted((sorted(labels.items()), value) for labels, value in samples(body, name)) == expected
    assert metric(body, "consumer_lag") == 12
    assert metric(body, "consumer_lag", partition="1") == 7
    assert metric(body, "no_such_metric") is None


def test_owned_by_member_keeps_each_members_latest_change() -> None:
    def change(name: str, at: str, member: str, owned: list[int]) -> dict[str, object]:
        return {"event": name, "time": f"2026-12-07T10:00:{at}Z", "consumer": member, "owned": owned}
    events = [change("partitions.assigned", "00.000", "a", [0, 1, 2]),
              {"event": "job.processed", "time": "2026-12-07T10:00:00.500Z", "consumer": "a"},
              change("partitions.assigned", "01.000", "b", [2]),
              change("partitions.revoked", "01.000", "a", [0, 1])]
    owned = owned_by_member(events)
    assert owned == {"a": {0, 1}, "b": {2}}
    assert split_among(owned, 2, 3)
    assert not split_among(owned, 3, 3) and not split_among({"a": {0, 1, 2}, "b": set()}, 2, 3)
