"""The console against the session's real Kafka, over HTTP (the browser tests are in
test_console_browser.py, which also re-drives): dead letters paged and filtered, one letter,
and the banner while the broker is away. The access rules need no broker:
tests/unit/test_console_pure.py checks them."""

from __future__ import annotations

import re

import httpx

from tests.integration.conftest import Pipeline
from tests.integration.console_helpers import (
    ERRORS,
    dead_letters,
    running_console,
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
