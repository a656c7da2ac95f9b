"""examples/image_jobs, the handler package a user copies: the real `consumer` service runs it
from PYTHONPATH (the development way of shipping it) and jobs of both its types, submitted
with the client, have their effect; a type it does not know is dead-lettered."""

from __future__ import annotations

import json
from pathlib import Path

from jobpipe.client import JobClient
from jobpipe.job import Job
from tests.integration.conftest import Pipeline
from tests.service_runner import REPO, wait_until

EXAMPLE = REPO / "examples" / "image_jobs"


def test_the_example_package_handles_both_its_types(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.ensure_topics()
    output = tmp_path / "out"
    consumer = pipeline.start("consumer", handler="image_jobs.jobs:registry", image_jobs_output=output,
                              pythonpath=f"{REPO}:{EXAMPLE}", max_attempts=2, retry_backoff_initial_ms=10)
    with JobClient(kafka_bootstrap_servers=pipeline.bootstrap, jobs_topic=pipeline.topic,
                   kafka_wait_timeout_s=20) as jobs:
        resized = jobs.submit({"width": 4000, "height": 3000, "max_side": 800}, type="resize", key="img-1")
        notified = jobs.submit({"to": "ops@example.com", "text": "done"}, type="notify")
        bad_address = jobs.submit({"to": "nobody", "text": "x"}, type="notify")
        unknown = jobs.submit({}, type="transcode")

    def written() -> dict[str, dict[str, object]]:
        return {path.stem: json.loads(path.read_text()) for path in output.glob("*.json")}

    results = wait_until(lambda: len(found := written()) >= 2 and found, 60, "2 results written")
    assert results[resized] == {"id": resized, "type": "resize", "key": "img-1", "width": 800, "height": 600}
    assert results[notified]["sent_to"] == "ops@example.com"
    letters = pipeline.read(pipeline.dlq, 2)
    consumer.wait_for("job.dead_lettered", 2)
    assert consumer.stop() == 0
    reasons = {Job.from_bytes(m.value()).id: dict(m.headers() or [])["dlq.error"].decode() for m in letters}
    assert reasons[bad_address] == "ValueError: not an address: 'nobody'"
    assert "no handler for job type 'transcode' (known: notify, resize)" in reasons[unknown]
    assert set(written()) == {resized, notified}
