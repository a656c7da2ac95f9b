"""The console's pure parts: rates from offsets, member progress, the lag chart's series, the
dead-letter filters and page cursor, its settings, and the vendored browser libraries."""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from console_service.app import Console, overview_model
from console_service.filters import BadFilter, format_cursor, parse_cursor, parse_filters
from console_service.rates import Sample, lag_series, member_rows, progress_times, rates
from console_service.sampler import Sampler, request_timeout_s
from console_service.settings import ConsoleSettings
from jobpipe.errors import ConfigError
from jobpipe.group_offsets import Member, PartitionState
from jobpipe.settings import load_settings
from topic_admin_service.redrive import DeadLetter

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
VENDOR = Path(__file__).resolve().parents[2] / "services/console/console_service/static/vendor"


def sample(at: float, ends: list[int], committed: list[int | None], dlq_end: int | None = 0,
           members: tuple[Member, ...] = ()) -> Sample:
    jobs = tuple(PartitionState(partition=p, start=0, end=end, committed=done)
                 for p, (end, done) in enumerate(zip(ends, committed, strict=True)))
    return Sample(at=at, wall=NOW + timedelta(seconds=at), jobs=jobs, dlq_end=dlq_end, members=members)


# ---- rates ------------------------------------------------------------------------------------

@settings(max_examples=60)
@given(produce=st.integers(0, 5000), share=st.floats(0, 1), dead=st.integers(0, 100),
       step=st.floats(0.2, 5.0), count=st.integers(2, 30))
def test_rates_are_the_offsets_growth_per_second(produce: int, share: float, dead: int, step: float,
                                                 count: int) -> None:
    """Offsets growing at steady rates give those rates back, whatever the sampling."""
    process = int(produce * share)  # the group is behind the producers (or caught up)
    history = [sample(i * step, [produce * i, 0], [process * i, None], dlq_end=dead * i)
               for i in range(count)]
    found = rates(history)
    assert found.seconds > 0
    assert found.produced == pytest.approx(produce / step)
    assert found.processed == pytest.approx(process / step)
    assert found.dead_lettered == pytest.approx(dead / step)


def test_rates_use_a_window_of_samples_and_say_nothing_they_cannot_know() -> None:
    assert rates([sample(0, [5], [5])]).produced is None, "one sample: no rate"
    # committed offsets jump once a second: 20 samples 0.5 s apart average over 10 s
    history = [sample(i * 0.5, [10 * i], [10 * i if i % 2 == 0 else 10 * (i - 1)]) for i in range(21)]
    found = rates(history)
    assert found.seconds == pytest.approx(10.0)
    assert found.processed == pytest.approx(20.0) and found.produced == pytest.approx(20.0)
    moved_back = [sample(0, [100], [100]), sample(1, [100], [0])]  # `topic-admin offsets --to-earliest`
    assert rates(moved_back).processed is None
    assert rates([sample(0, [1], [1], dlq_end=None), sample(1, [2], [2], dlq_end=3)]).dead_lettered is None
    # a partition added between the samples is not counted as a burst of jobs
    grown = [sample(0, [10], [10]), sample(1, [12, 500], [12, 0])]
    assert rates(grown).produced == pytest.approx(2.0)


def test_a_partitions_progress_is_when_its_committed_offset_last_moved() -> None:
    first, second = sample(0, [10, 10], [5, 5]), sample(1, [12, 10], [7, 5])
    known = progress_times({}, None, first)
    assert known == {}
    known = progress_times(known, first, second)
    assert known == {0: second.wall}
    third = sample(2, [12, 10], [7, 5])
    assert progress_times(known, second, third) == {0: second.wall}, "no move: the time stays"
    first_commit = sample(3, [12, 10, 4], [7, 5, 2])
    assert progress_times(known, sample(2, [12, 10, 4], [7, 5, None]), first_commit)[2] == first_commit.wall


def test_member_rows_tell_progress_and_caught_up_apart() -> None:
    members = (Member("m-1", "consumer-a", "/10.0.0.1", (0, 1)),
               Member("m-2", "consumer-b", "/10.0.0.2", (2,)))
    now = sample(5, [10, 10, 10], [10, 4, 10], members=members)
    rows = member_rows(now, {0: NOW, 1: NOW + timedelta(seconds=3)})
    assert [(r.client_id, r.lag, r.caught_up) for r in rows] == [("consumer-a", 6, False),
                                                                  ("consumer-b", 0, True)]
    assert rows[0].last_progress == NOW + timedelta(seconds=3) and rows[1].last_progress is None


def test_the_lag_series_has_one_line_per_partition_and_a_gap_where_one_was_missing() -> None:
    series = lag_series([sample(0, [10], [4]), sample(1, [10, 3], [10, 0])])
    assert series.partitions == [0, 1]
    assert series.lags == [[6, 0], [None, 3]]
    assert len(series.times) == 2 and series.times[1] - series.times[0] == pytest.approx(1.0)


# ---- filters and paging -----------------------------------------------------------------------

def letter(error: str, key: str, attempts: int, failed: datetime, at: tuple[int, int] = (0, 0)) -> DeadLetter:
    headers = (("dlq.error", error.encode()), ("dlq.attempts", str(attempts).encode()),
               ("dlq.failed_at", failed.isoformat().encode()))
    return DeadLetter(partition=at[0], offset=at[1], key=key.encode(), headers=headers)


def test_filters_select_as_topic_admins_flags_do() -> None:
    filters = parse_filters({"error": "timed OUT", "key": "p1-*", "since": "2h", "attempts": "5",
                             "until": ""}, NOW)
    assert filters.texts == {"error": "timed OUT", "key": "p1-*", "since": "2h", "attempts": "5"}
    selection = filters.selection
    assert selection.since == NOW - timedelta(hours=2)
    good = letter("TimeoutError: upstream timed out", "p1-m3", 5, NOW - timedelta(minutes=5))
    assert selection.matches(good)
    assert not selection.matches(letter("ValueError", "p1-m3", 5, NOW))
    assert not selection.matches(letter("timed out", "p2-m3", 5, NOW))
    assert not selection.matches(letter("timed out", "p1-m3", 4, NOW))
    assert not selection.matches(letter("timed out", "p1-m3", 5, NOW - timedelta(hours=3)))
    one = parse_filters({"at": "2:41"}, NOW).selection
    assert one.matches(letter("x", "k", 1, NOW, at=(2, 41))) and not one.matches(letter("x", "k", 1, NOW))
    assert "error=timed+OUT" in filters.query(after="0:5")
    assert parse_filters({}, NOW).any is False


@pytest.mark.parametrize(("params", "named"), [
    ({"attempts": "five"}, "attempts"), ({"since": "yesterday"}, "since"),
    ({"until": "2026-12-07T10:00:00"}, "until"),
    ({"since": "1h", "until": "2h"}, "since"), ({"at": "3"}, "at"), ({"at": "1:2,3:4"}, "at"),
    ({"error": "x" * 501}, "error")])
def test_a_bad_filter_names_itself(params: dict[str, str], named: str) -> None:
    with pytest.raises(BadFilter, match=rf"^{named}"):
        parse_filters(params, NOW)


@given(st.dictionaries(st.integers(0, 10_000), st.integers(0, 2**62), max_size=20))
def test_the_page_cursor_reads_back_what_it_wrote(cursor: dict[int, int]) -> None:
    assert parse_cursor(format_cursor(cursor)) == cursor


@pytest.mark.parametrize("text", ["0", "a:1", "1:-2", "0:1;1:2"])
def test_a_bad_cursor_is_refused(text: str) -> None:
    with pytest.raises(BadFilter, match=r"^after"):
        parse_cursor(text)


# ---- settings, pages without a broker ---------------------------------------------------------

def test_settings_refuse_bad_values_naming_the_variable_and_never_show_the_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONSOLE_TOKEN", "short")
    with pytest.raises(ConfigError, match="CONSOLE_TOKEN") as refused:
        load_settings(ConsoleSettings)
    assert "short" not in str(refused.value)
    secret = tmp_path / "token"
    secret.write_text("from-a-secrets-file\n")
    monkeypatch.setenv("CONSOLE_TOKEN_FILE", str(secret))
    monkeypatch.setenv("CONSOLE_TOKEN", "also-a-long-token")
    with pytest.raises(ConfigError, match="CONSOLE_TOKEN and CONSOLE_TOKEN_FILE are both set"):
        load_settings(ConsoleSettings)
    monkeypatch.delenv("CONSOLE_TOKEN")
    settings = load_settings(ConsoleSettings)
    assert settings.token() == "from-a-secrets-file"
    secret.write_text("")
    with pytest.raises(ConfigError, match=r"CONSOLE_TOKEN_FILE.*empty"):
        load_settings(ConsoleSettings)
    monkeypatch.delenv("CONSOLE_TOKEN_FILE")
    monkeypatch.setenv("CONSOLE_TOKEN", "a-long-enough-token")
    shown = str(load_settings(ConsoleSettings).effective())
    assert "a-long-enough-token" not in shown
    monkeypatch.setenv("CONSOLE_PORT", "http")
    with pytest.raises(ConfigError, match=r"^CONSOLE_PORT='http'"):
        load_settings(ConsoleSettings)


def test_compose_s_empty_variables_are_unset_as_for_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose.yml passes every KAFKA_* and CONSOLE_TOKEN*, empty when not set."""
    for name in ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
                 "KAFKA_SSL_CA_LOCATION", "CONSOLE_TOKEN", "CONSOLE_TOKEN_FILE", "KAFKA_EXTRA_CONFIG"):
        monkeypatch.setenv(name, "")
    settings = load_settings(ConsoleSettings)
    assert settings.kafka_sasl_mechanism is None and settings.token() is None


def test_sample_requests_wait_two_refreshes_within_1_to_5_seconds() -> None:
    assert [request_timeout_s(r) for r in (0.2, 1.0, 2.0, 60)] == [1.0, 2.0, 4.0, 5.0]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_pages_answer_before_any_sample_with_security_headers_and_refuse_forged_forms() -> None:
    config = ConsoleSettings(kafka_bootstrap_servers="127.0.0.1:1", console_token="a-long-enough-token")
    from starlette.testclient import TestClient  # (imported here: it warns that httpx2 replaces httpx)

    console = Console(config, Sampler(config), threading.Event())  # never started: no samples
    with TestClient(console.app()) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="rate-produced"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "a-long-enough-token" not in page.text
        cookie = page.headers["set-cookie"].lower()
        assert "samesite=strict" in cookie and "httponly" in cookie
        assert client.post("/dead-letters/redrive", data={"csrf_token": "forged"}).status_code == 403
        assert client.post("/login", data={"token": "a-long-enough-token"}).status_code == 403, "no CSRF"
        assert client.get("/api/overview").json()["total_lag"] is None
        assert client.get("/healthz").text == "ok\n"


def test_the_overview_model_of_no_samples_shows_dashes() -> None:
    config = ConsoleSettings()
    model = overview_model(Sampler(config).status(), config, NOW)
    assert model["rates"] == {"seconds": 0.0, "produced": "-", "processed": "-", "dead_lettered": "-"}
    assert model["members"] == [] and model["broker_error"] is None


def test_the_vendored_libraries_are_the_npm_packages_files() -> None:
    table = (VENDOR / "README.md").read_text()
    rows = re.findall(r"^\| (\S+) \| \S+ \| \S+ \| .+ \| ([0-9a-f]{64}) \|$", table, re.MULTILINE)
    assert len(rows) == 3
    for name, digest in rows:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name


def csrf_in(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_actions_need_the_token_and_the_forms_csrf_token_and_a_tokenless_console_is_read_only() -> None:
    """Refusals come before anything is read from Kafka, so no broker is needed here."""
    from starlette.testclient import TestClient

    token = "the-console-token-123"
    config = ConsoleSettings(kafka_bootstrap_servers="127.0.0.1:1", console_token=token)
    console = Console(config, Sampler(config), threading.Event())
    with TestClient(console.app(), follow_redirects=False) as stranger:
        csrf = csrf_in(stranger.get("/login").text)
        refused = stranger.post("/dead-letters/redrive", data={"csrf_token": csrf})
        assert refused.status_code == 401 and "sign in first" in refused.text
        assert stranger.post("/dead-letters/preview", data={"csrf_token": csrf}).status_code == 401
        wrong = stranger.post("/login", data={"csrf_token": csrf, "token": "not-the-token"})
        assert wrong.status_code == 401 and "not the token" in wrong.text
        assert stranger.post("/dead-letters/redrive", data={"csrf_token": csrf}).status_code == 401
    with TestClient(console.app(), follow_redirects=False) as member:
        csrf = csrf_in(member.get("/login").text)
        assert member.post("/login", data={"csrf_token": "forged", "token": token}).status_code == 403
        signed = member.post("/login", data={"csrf_token": csrf, "token": token})
        assert signed.status_code == 303
        page = member.get("/")
        assert token not in page.text and "Sign out" in page.text
        fresh = csrf_in(page.text)
        assert fresh != csrf, "a new CSRF token once signed in"
        for form in ({"csrf_token": "forged"}, {}, {"csrf_token": csrf}):
            forged = member.post("/dead-letters/redrive", data=form)
            assert forged.status_code == 403 and "CSRF" in forged.text, form
        assert member.post("/logout", data={"csrf_token": fresh}).status_code == 303
        assert member.post("/dead-letters/redrive", data={"csrf_token": fresh}).status_code in (401, 403)
    tokenless = ConsoleSettings(kafka_bootstrap_servers="127.0.0.1:1")
    with TestClient(Console(tokenless, Sampler(tokenless), threading.Event()).app()) as reader:
        assert "read-only" in reader.get("/").text
        login = reader.get("/login").text
        assert "read-only" in login and 'name="token"' not in login
        refused = reader.post("/dead-letters/redrive", data={"csrf_token": "any"})
        assert refused.status_code == 403 and "read-only" in refused.text
