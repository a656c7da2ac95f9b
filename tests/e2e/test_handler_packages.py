"""End-to-end: a user's handler package in the consumer, the two ways docs/handlers.md gives.

(a) production: an image built FROM the consumer's with the package installed
(examples/image_jobs/Dockerfile, examples/image_jobs/compose.yml); (b) development: the package's
folder bind-mounted on PYTHONPATH (examples/image_jobs/compose.dev.yml), edited and picked up by
a restart, no rebuild. Jobs of two types are submitted from the host with jobpipe's client, each
handler's effect is read back from the consumer's container, and a job of a type no handler takes
is dead-lettered at once, saying so.
"""

from __future__ import annotations

import json
import shutil
import uuid
from typing import Any

import pytest

from jobpipe.client import JobClient
from tests.e2e.conftest import Stack
from tests.e2e.engine import COMPOSE_FILE, REPO, Engine, _base_build_args, normalize_image, run
from tests.observing import wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "image_jobs"
EXAMPLE_IMAGE = "jobpipe/consumer-image-jobs:latest"


def submit_both_types(stack: Stack) -> dict[str, list[str]]:
    """Two resize jobs, two notify jobs and one `sms` job (no handler takes it), from the host."""
    with JobClient(kafka_bootstrap_servers=f"localhost:{stack.settings['KAFKA_HOST_PORT']}",
                   jobs_topic="jobs", kafka_wait_timeout_s=60) as client:
        return {
            "resize": [client.submit({"width": 4000, "height": 3000, "max_side": 800}, type="resize"),
                       client.submit({"width": 600, "height": 900, "max_side": 300}, type="resize",
                                     key="image-2")],
            "notify": [client.submit({"to": f"ops{n}@example.com", "text": "done"}, type="notify")
                       for n in range(2)],
            "sms": [client.submit({"to": "+4912345"}, type="sms")],
        }


def effect(stack: Stack, job_id: str) -> dict[str, Any]:
    """What the handler wrote for `job_id` in the consumer's container."""
    shown = stack.compose("exec", "-T", "consumer", "cat", f"/tmp/image-jobs/{job_id}.json", timeout=60)
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def wait_done(stack: Stack, ids: dict[str, list[str]]) -> dict[str, Any]:
    """Every resize and notify job processed, the sms one dead-lettered; its event."""
    wanted = set(ids["resize"] + ids["notify"])

    def done() -> dict[str, Any] | None:
        processed = {e["id"] for events in stack.events("consumer", "job.processed").values() for e in events}
        dead = [e for events in stack.events("consumer", "job.dead_lettered").values() for e in events
                if e["id"] == ids["sms"][0]]
        return dead[0] if wanted <= processed and dead else None

    found: dict[str, Any] = wait_until(done, 120, "both types processed and the sms job dead-lettered",
                                       poll=2.0)
    return found


def check_effects(stack: Stack, ids: dict[str, list[str]], dead: dict[str, Any]) -> None:
    big, tall = (effect(stack, job_id) for job_id in ids["resize"])
    assert (big["width"], big["height"], big["type"]) == (800, 600, "resize")
    assert (tall["width"], tall["height"], tall["key"]) == (200, 300, "image-2")
    assert [effect(stack, job_id)["sent_to"] for job_id in ids["notify"]] == \
        ["ops0@example.com", "ops1@example.com"]
    assert dead["attempts"] == 1, "a job no handler takes is not retried"
    assert "no handler for job type 'sms' (known: notify, resize)" in dead["error"], dead


def test_a_handler_package_in_an_image_built_from_the_consumers(make_stack: Any, engine: Engine) -> None:
    run([*engine.cli, *_base_build_args(engine), "-f", str(EXAMPLE / "Dockerfile"),
         "-t", normalize_image(EXAMPLE_IMAGE), "--build-arg", "CONSUMER_IMAGE=jobpipe/consumer:latest",
         str(EXAMPLE)], timeout=600, env=engine.environ())
    stack = make_stack(files=(COMPOSE_FILE, EXAMPLE / "compose.yml"), CONSUMER_REPLICAS=1)
    stack.up("--scale", "producer=0", "--scale", "inmemory=0")
    [consumer] = stack.containers("consumer")
    assert normalize_image(str(consumer["Image"])) == normalize_image(EXAMPLE_IMAGE)

    ids = submit_both_types(stack)
    check_effects(stack, ids, wait_done(stack, ids))


def test_a_handler_folder_bind_mounted_is_edited_without_a_rebuild(make_stack: Any) -> None:
    # A copy the containers' user (uid 10001) can read, inside the repository (a bind mount's
    # source must be a folder of this machine; pytest's tmp_path is private to root).
    folder = REPO / "build" / f"e2e-handlers-{uuid.uuid4().hex[:8]}"
    shutil.copytree(EXAMPLE, folder)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for parent in folder.parents:
        if parent == REPO.parent:
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    try:
        stack = make_stack(files=(COMPOSE_FILE, EXAMPLE / "compose.dev.yml"), CONSUMER_REPLICAS=1,
                           HANDLERS_DIR=str(folder))
        stack.up("--scale", "producer=0", "--scale", "inmemory=0")
        ids = submit_both_types(stack)
        check_effects(stack, ids, wait_done(stack, ids))

        # The developer adds a handler for `sms`, restarts the consumer: no image is built.
        jobs = folder / "image_jobs" / "jobs.py"
        jobs.write_text(jobs.read_text() + '''

@registry.handler("sms")
def sms(job: Job) -> None:
    _output(job, {"texted": job.payload["to"]})
''')
        stack.compose("restart", "consumer", timeout=120)
        again = submit_both_types(stack)
        texted = again["sms"][0]

        def processed_sms() -> bool:
            return any(e["id"] == texted for events in stack.events("consumer", "job.processed").values()
                       for e in events)

        wait_until(processed_sms, 120, "the sms job processed by the handler added in place", poll=2.0)
        assert effect(stack, texted)["texted"] == "+4912345"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
