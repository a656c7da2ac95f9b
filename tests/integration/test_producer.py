"""The producer's promise under load: SIGTERM stops it within SHUTDOWN_TIMEOUT_S, whatever it
is waiting for, and every job the broker did not acknowledge is counted as failed (exit 1).

The broker here has no `auto.create.topics.enable`, so jobs sent to a topic that was never
created wait in librdkafka's queue for its metadata (30 s) with no acknowledgement: a stand-in
for a broker that stopped answering, without touching the session's broker.
"""

from __future__ import annotations

import time

from tests.integration.conftest import Pipeline

BUDGET_S = 3.0
SLACK_S = 5.0  # process exit and a loaded machine; well under the 30 s the jobs would wait


def _stopped_in_time(pipeline: Pipeline, **settings: object) -> dict[str, object]:
    """Start a producer on the never-created topic, SIGTERM it once it waits on `wait_event`,
    and return its `service.stopped` event after checking how soon and how it exited."""
    wait_event = str(settings.pop("wait_event"))
    producer = pipeline.start("producer", shutdown_timeout_s=BUDGET_S, **settings)
    producer.wait_for(wait_event, timeout=60)
    signalled = time.monotonic()
    exit_code = producer.stop(timeout=BUDGET_S + SLACK_S + 30)
    took = time.monotonic() - signalled
    assert took <= BUDGET_S + SLACK_S, f"stopped {took:.1f} s after SIGTERM:\n{producer.tail()}"
    assert exit_code == 1, producer.tail()
    stopped = producer.events("service.stopped")[-1]
    assert stopped["failed"] > 0 and stopped["produced"] == 0, stopped
    assert stopped["failed"] == stopped["sent"], "every job sent and not acknowledged counts as failed"
    return stopped


def test_sigterm_while_the_local_queue_is_full_stops_within_the_budget_and_exits_1(
        pipeline: Pipeline) -> None:
    _stopped_in_time(pipeline, messages_per_worker=0,
                     kafka_extra_config="queue.buffering.max.messages=10",
                     wait_event="producer.queue_full")


def test_sigterm_during_the_final_flush_stops_within_the_budget_and_exits_1(pipeline: Pipeline) -> None:
    stopped = _stopped_in_time(pipeline, messages_per_worker=5, wait_event="producer.flushing")
    assert stopped["sent"] == 10
