"""The console in a real browser (headless chromium under Selenium; tests/browser.py installs
it where missing): the overview shows a running pipeline's live numbers, a dead letter opens
with its headers, a re-drive from the browser moves exactly the filtered letters (read back from
the topics), and an action without the token is refused.

JOBPIPE_SCREENSHOTS=<folder> (e.g. docs/img) saves the overview and a dead letter there, as
README and docs/console.md show them; otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser import chromium
from tests.integration.conftest import Pipeline
from tests.integration.console_helpers import TOKEN, dead_letters, jobs_in, redriven_ids, running_console
from tests.service_runner import wait_until


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fresh(browser: WebDriver) -> WebDriver:
    """The browser with no cookie of an earlier test (signed out)."""
    browser.delete_all_cookies()
    return browser


def screenshot(driver: WebDriver, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("JOBPIPE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path)), path
    return path


def text_of(driver: WebDriver, element_id: str) -> str:
    """An element's text, read in one script (htmx replaces the live part while we look)."""
    text = driver.execute_script("const e = document.getElementById(arguments[0]); "
                                 "return e ? e.textContent.trim() : '';", element_id)
    return str(text)


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def sign_in(driver: WebDriver, url: str) -> None:
    driver.get(f"{url}/login")
    driver.find_element(By.NAME, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_until(lambda: driver.current_url.endswith("/dead-letters"), 30, "signed in")


def test_the_overview_shows_the_live_numbers_of_a_running_pipeline(
        pipeline: Pipeline, fresh: WebDriver, tmp_path: Path) -> None:
    pipeline.ensure_topics(3)
    dead_letters(pipeline, ["timeout", "malformed"] * 3)
    producer = pipeline.start("producer", messages_per_worker=0, produce_rate=40)
    consumer = pipeline.start("consumer", handler="tests.handlers:noop")
    with running_console(pipeline) as (_service, url):
        fresh.get(url)

        def live() -> bool:  # the numbers change by themselves (htmx), no reload
            rates = [number(text_of(fresh, name)) for name in ("rate-produced", "rate-processed")]
            return min(rates) > 0 and "0, 1, 2" in text_of(fresh, "members")

        wait_until(live, 60, "produced/s, processed/s and a member on the overview", poll=0.5)
        # the one member owns the three partitions (waited for above)
        assert fresh.find_elements(By.CSS_SELECTOR, "#lag-chart canvas"), "the lag chart is drawn"
        assert text_of(fresh, "rate-dead-lettered") != ""
        if os.environ.get("JOBPIPE_SCREENSHOTS"):  # for the docs: a chart of some seconds
            wait_until(lambda: len(json.loads(text_of(fresh, "lag-data") or "{}").get("times", [])) >= 20,
                       60, "20 samples in the chart", poll=0.5)
        fresh.set_window_size(1280, 1350)  # the chart too
        wait_until(lambda: len(fresh.find_elements(By.CSS_SELECTOR, "#lag-chart canvas")) == 1, 30, "chart")
        screenshot(fresh, "console-overview.png", tmp_path)
        fresh.set_window_size(1280, 900)
    assert producer.stop() == 0 and consumer.stop() == 0


def test_a_dead_letter_opens_with_its_headers_and_an_action_without_credentials_is_refused(
        pipeline: Pipeline, fresh: WebDriver, tmp_path: Path) -> None:
    pipeline.ensure_topics(3)
    jobs = dead_letters(pipeline, ["timeout", "malformed"] * 5)
    with running_console(pipeline) as (_service, url):
        fresh.get(f"{url}/dead-letters")
        assert not fresh.find_elements(By.ID, "redrive-filtered"), "no re-drive button signed out"
        rows = fresh.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")
        assert len(rows) == 10
        fresh.find_element(By.CSS_SELECTOR, "#dead-letters tbody tr a").click()
        wait_until(lambda: fresh.find_elements(By.ID, "headers"), 30, "the letter's page")
        headers = fresh.find_element(By.ID, "headers").text
        for name in ("dlq.error", "dlq.attempts", "dlq.original.topic", "dlq.failed_at", "trace-id"):
            assert name in headers, headers
        assert any(job.id in fresh.find_element(By.ID, "body").text for job in jobs)
        screenshot(fresh, "console-dead-letter.png", tmp_path)

        fresh.get(f"{url}/login")  # a form of this session's page, sent without signing in
        fresh.execute_script("""
            const form = document.createElement('form');
            form.method = 'post'; form.action = '/dead-letters/redrive';
            form.appendChild(document.querySelector('input[name=csrf_token]').cloneNode());
            document.body.appendChild(form); form.submit();""")
        wait_until(lambda: fresh.find_elements(By.ID, "refused"), 30, "the refusal")
        assert "sign in first" in fresh.find_element(By.ID, "refused").text
    assert jobs_in(pipeline) == 0, "nothing moved"


def outcome(driver: WebDriver) -> tuple[str, str]:
    """What the re-drive page says, once it is there: (letters moved or that would move,
    whether a dry run)."""
    script = ("const e = document.getElementById('outcome'); "
              "return e ? [e.dataset.moved, e.dataset.dryRun] : null;")
    found = wait_until(lambda: driver.execute_script(script), 60, "the re-drive's outcome", poll=0.2)
    return str(found[0]), str(found[1])


def test_a_redrive_from_the_browser_moves_exactly_the_filtered_letters(
        pipeline: Pipeline, fresh: WebDriver) -> None:
    """The filtered set, after its dry run; then again (the ledger: nothing moves twice); then
    one letter from its own page. Read back from the jobs topic: exactly those, once each."""
    pipeline.ensure_topics(3)
    jobs = dead_letters(pipeline, ["timeout", "malformed", "malformed"] * 4)
    wanted = {job.id for job in jobs if job.key and job.key.startswith("timeout-")}
    with running_console(pipeline) as (service, url):
        sign_in(fresh, url)
        fresh.find_element(By.NAME, "key").send_keys("timeout-*")
        fresh.find_element(By.CSS_SELECTOR, "#filters button").click()
        wait_until(lambda: len(fresh.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr a")) == 4, 30,
                   "the 4 filtered letters")
        filtered = fresh.current_url
        fresh.find_element(By.CSS_SELECTOR, "#redrive-filtered button").click()
        assert outcome(fresh) == ("4", "true")
        assert jobs_in(pipeline) == 0, "a dry run moves nothing"
        fresh.find_element(By.CSS_SELECTOR, "#confirm-redrive button").click()
        assert outcome(fresh) == ("4", "false")

        fresh.get(filtered)  # the same again: the ledger says they were moved
        fresh.find_element(By.CSS_SELECTOR, "#redrive-filtered button").click()
        assert outcome(fresh) == ("0", "true")
        assert "already re-driven" in fresh.find_element(By.ID, "tally").text

        one = next(job for job in jobs if job.key == "malformed-1")  # DLQ partition 1, offset 0
        fresh.get(f"{url}/dead-letters/1/0")
        fresh.find_element(By.CSS_SELECTOR, "#redrive-one button").click()
        assert outcome(fresh) == ("1", "true")
        fresh.find_element(By.CSS_SELECTOR, "#confirm-redrive button").click()
        assert outcome(fresh) == ("1", "false")
        logged = service.output + service.stderr
    # exactly the filtered letters and the one, once each (an extra message fails the read)
    assert sorted(redriven_ids(pipeline, 5)) == sorted([*wanted, one.id])
    assert TOKEN not in logged, "the token is never logged"
    assert [e["moved"] for e in service.events("console.redrive") if not e["dry_run"]] == [4, 1]
