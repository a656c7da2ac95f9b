"""The console against the session's real Kafka, over HTTP (the browser tests are in
test_console_browser.py): dead letters paged and filtered, one letter, the re-drive with its
dry run (the same code as `topic-admin redrive`), and the banner while the broker is away. The
access rules need no broker: tests/unit/test_console_pure.py checks them."""

from __future__ import annotations

import re

import httpx

from tests.integration.conftest import Pipeline
from tests.integration.console_helpers import (
    ERRORS,
    TOKEN,
    csrf_of,
    dead_letters,
    jobs_in,
    redriven_ids,
    running_console,
    sign_in,
)
from tests.service_runner import ServiceProcess, free_port, wait_until

LETTER_LINK = re.compile(r'href="/dead-letters/(\d+)/(\d+)"')


def test_dead_letters_are_paged_filtered_and_shown_one_by_one(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(3)
    kinds = ["timeout" if n % 3 == 0 else "malformed" for n in range(90)]  # 30 timeouts
    jobs = dead_letters(pipeline, kinds)
    with running_console(pipeline, console_page_size=20) as (_service, url), \
            httpx.Client(base_url=url, timeout=30) as client:
        seen: list[tuple[int, int]] = []
        page = client.get("/dead-letters", params={"error": "TIMEOUT"})
        while True:
            assert page.status_code == 200, page.text
            found = [(int(p), int(o)) for p, o in LETTER_LINK.findall(page.text)]
            assert len(found) <= 20
            assert ERRORS["malformed"] not in page.text
            seen += found
            following = re.search(r'href="/dead-letters\?([^"]+)" id="next-page"', page.text)
            if following is None:
                break
            page = client.get("/dead-letters?" + following.group(1).replace("&amp;", "&"))
        assert len(seen) == len(set(seen)) == 30, "every timeout once, over pages"

        by_key = client.get("/dead-letters", params={"key": "malformed-1*"}).text  # 1, 10..19, 100..
        assert sorted(LETTER_LINK.findall(by_key)) == sorted(LETTER_LINK.findall(by_key))
        keys = set(re.findall(r"<td>(malformed-\d+)</td>", by_key))
        assert keys == {f"malformed-{n}" for n in range(90) if str(n).startswith("1") and n % 3}
        assert client.get("/dead-letters", params={"attempts": "4"}).text.count('href="/dead-letters/') == 0
        assert client.get("/dead-letters", params={"attempts": "x"}).status_code == 400
        assert client.get("/dead-letters", params={"since": "yesterday"}).status_code == 400

        partition, offset = seen[0]
        letter = client.get(f"/dead-letters/{partition}/{offset}")
        assert letter.status_code == 200
        for header in ("dlq.error", "dlq.attempts", "dlq.original.partition", "trace-id"):
            assert f"<code>{header}</code>" in letter.text
        assert ERRORS["timeout"] in letter.text
        assert any(job.id in letter.text for job in jobs), "the body"
        assert client.get("/dead-letters/0/99999").status_code == 404


def test_a_redrive_moves_exactly_the_filtered_letters_after_its_dry_run(pipeline: Pipeline) -> None:
    pipeline.ensure_topics(3)
    jobs = dead_letters(pipeline, ["timeout", "malformed"] * 10)
    timeouts = {job.id for job in jobs if job.payload["error"] == "timeout"}  # type: ignore[index]
    with running_console(pipeline) as (service, url), httpx.Client(base_url=url, timeout=60) as client:
        csrf = sign_in(client)
        form = {"csrf_token": csrf, "error": "timed out"}
        dry = client.post("/dead-letters/preview", data=form)
        assert dry.status_code == 200, dry.text
        assert 'data-moved="10" data-dry-run="true"' in dry.text
        assert jobs_in(pipeline) == 0, "a dry run moves nothing"
        done = client.post("/dead-letters/redrive", data={**form, "csrf_token": csrf_of(dry.text)})
        assert 'data-moved="10" data-dry-run="false"' in done.text, done.text
        assert sorted(redriven_ids(pipeline, 10)) == sorted(timeouts), "exactly the filtered ones"
        again = client.post("/dead-letters/redrive", data={**form, "csrf_token": csrf_of(done.text)})
        assert 'data-moved="0"' in again.text and re.search(r"already re-driven</th><td[^>]*>10<", again.text)
        one = client.post("/dead-letters/redrive", data={"csrf_token": csrf_of(again.text), "at": "1:0"})
        assert 'data-moved="1"' in one.text
        assert len(redriven_ids(pipeline, 11)) == 11
        logged = service.output + service.stderr
    assert TOKEN not in logged, "the token is never logged"
    assert any(e["dry_run"] is False and e["moved"] == 10 for e in service.events("console.redrive"))


def test_the_console_serves_with_a_banner_while_the_broker_is_away(pipeline: Pipeline) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    port = free_port()
    with ServiceProcess("console", kafka_bootstrap_servers=nowhere, console_port=port,
                        console_refresh_s=0.5, jobs_topic=pipeline.topic) as service:
        service.wait_for("console.listening", timeout=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            def banner() -> str | None:
                page = client.get("/overview/live")
                return page.text if 'id="broker-banner"' in page.text else None
            text = wait_until(banner, 30, "the broker banner")
            assert "Kafka does not answer" in text
            assert client.get("/healthz").status_code == 200
            assert client.get("/dead-letters").status_code == 503
        assert service.stop() == 0
