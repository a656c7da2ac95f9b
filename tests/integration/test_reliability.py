"""Reliability under faults (issue 5): no acknowledged job is ever lost, measured.

One test per scenario of tests/integration/reliability.py, against real brokers with the
real services. The profile comes from RELIABILITY_PROFILE ("short" by default, as part of
`make test`; "full" for `make reliability`). Every test books its row before asserting; at
the end the rows are written to reliability-report.json and printed as a table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from local_kafka import LocalKafkaCluster

from tests.integration import reliability, reliability_results
from tests.integration.reliability import Profile, Run
from tests.service_runner import free_port
from tests.summary_table import SummaryTable


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the last scenario: write reliability-report.json and print the table."""
    table = SummaryTable(request, f"reliability report ({reliability.REPORT_PATH.name})")
    start = len(reliability.RESULTS)
    yield
    rows = reliability.RESULTS[start:]
    if rows:
        table.text = reliability.write_report(rows)


@pytest.fixture(scope="module")
def profile() -> Profile:
    return reliability.current_profile()


@pytest.fixture
def new_run(profile: Profile, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Run]]:
    """Factory of Runs (scenario name, bootstrap); every service still running at teardown is killed."""
    runs: list[Run] = []

    def make(bootstrap: str) -> Run:
        scenario = request.node.name.removeprefix("test_")
        run = Run(scenario, bootstrap, profile)
        runs.append(run)
        return run

    yield make
    for run in runs:
        if run.row is None:  # the scenario raised before booking its row: book what happened
            try:
                run.finish("ABORTED before the end (see the test's failure)")
            except Exception as error:  # the report must not hide the original failure
                print(f"could not book {run.scenario}: {error!r}")
        run.kill_everything()


CONCURRENT = {"consumer_concurrency": 32}  # the concurrent variants (issue 11)
SHARE = {"consumer_mode": "share", "consumer_concurrency": 4}  # the share-group variants (issue 15)


def check(run: Run, row: dict[str, Any], graceful: bool, leaders_move: bool = False,
          come_back: bool = False) -> None:
    """`come_back`: the jobs return to the jobs topic from the delay tiers, so a copy moved
    again after a SIGKILL is a second record of the job (at-least-once, reported)."""
    assert not run.problems, "\n".join(run.problems)
    assert row["lost"] == 0, f"acknowledged jobs lost: {row}"
    if graceful:
        assert row["duplicates"] == 0, f"duplicates on a graceful path: {row}"
    if not (leaders_move or come_back):  # else reported: librdkafka#4953 (see reliability.py)
        assert row["in_topic_twice"] == 0, f"jobs written twice to the topic: {row}"
    assert row["acked"] > 0 and row["processed_unique"] > 0, row


# README: a consumer killed with SIGKILL re-delivers the jobs it finished since its last commit
# (auto.commit.interval.ms=1000), plus, above a partition's oldest unfinished job, the jobs
# finished there (none is held long in these scenarios: the handler takes 1 ms).
COMMIT_INTERVAL_S = 1.0
# Stated margin on top: storing the offset after the outcome, the commit's round trip, and
# the share mode's acknowledgement interval (0.1 s), on a machine whose 2 cores are busy.
KILL_MARGIN_S = 2.0


def check_sigkill_bound(run: Run) -> None:
    """Work redone after SIGKILLs is what the killed consumers did in about their last commit
    interval, and nothing else."""
    before_kill, other_causes = run.ledger.duplicate_origins()
    assert not other_causes, f"work redone that no SIGKILL explains: {dict(other_causes)}"
    bound = COMMIT_INTERVAL_S + KILL_MARGIN_S
    early = sorted(seconds for seconds in before_kill if seconds > bound)
    assert not early, (
        f"{len(early)} of {len(before_kill)} job(s) redone after a SIGKILL were first done up to "
        f"{early[-1]:.1f} s before the kill; README bounds that by one commit interval "
        f"({COMMIT_INTERVAL_S:g} s; {KILL_MARGIN_S:g} s margin)")


def test_consumer_sigkill(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    run = new_run(kafka_bootstrap)
    check(run, reliability.consumer_sigkill(run), graceful=False)
    check_sigkill_bound(run)


def test_consumer_sigkill_concurrent(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    """The same at CONSUMER_CONCURRENCY=32: jobs finish out of order, the watermark is committed."""
    run = new_run(kafka_bootstrap)
    run.consumer_settings = CONCURRENT
    check(run, reliability.consumer_sigkill(run), graceful=False)
    check_sigkill_bound(run)


def test_consumer_sigkill_share(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    """The same with share-group members: a killed member's records come back when their lock
    ends (5 s here) and the others process them."""
    run = new_run(kafka_bootstrap)
    run.consumer_settings = SHARE
    check(run, reliability.consumer_sigkill(run), graceful=False)
    check_sigkill_bound(run)


def test_sigterm_during_rebalance(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    run = new_run(kafka_bootstrap)
    check(run, reliability.sigterm_during_rebalance(run), graceful=True)


def test_leader_kill(new_run: Callable[[str], Run], kafka_cluster3: LocalKafkaCluster) -> None:
    run = new_run(kafka_cluster3.bootstrap_servers)
    check(run, reliability.leader_kill(run, kafka_cluster3), graceful=False, leaders_move=True)


def test_rolling_restart(new_run: Callable[[str], Run], kafka_cluster3: LocalKafkaCluster) -> None:
    run = new_run(kafka_cluster3.bootstrap_servers)
    check(run, reliability.rolling_restart(run, kafka_cluster3), graceful=True, leaders_move=True)


def test_rolling_restart_concurrent(new_run: Callable[[str], Run],
                                    kafka_cluster3: LocalKafkaCluster) -> None:
    run = new_run(kafka_cluster3.bootstrap_servers)
    run.consumer_settings = CONCURRENT
    check(run, reliability.rolling_restart(run, kafka_cluster3), graceful=True, leaders_move=True)


def test_broker_down_at_start(new_run: Callable[[str], Run],
                              make_kafka_cluster: Callable[..., LocalKafkaCluster]) -> None:
    port = free_port()
    run = new_run(f"127.0.0.1:{port}")
    row = reliability.broker_down_at_start(run, lambda: make_kafka_cluster(nodes=1, ports=[port]))
    check(run, row, graceful=True)


def test_broker_frozen(new_run: Callable[[str], Run],
                       make_kafka_cluster: Callable[..., LocalKafkaCluster]) -> None:
    cluster = make_kafka_cluster(nodes=1)
    run = new_run(cluster.bootstrap_servers)
    check(run, reliability.broker_frozen(run, cluster), graceful=False)


def test_poison_flood(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    run = new_run(kafka_bootstrap)
    check(run, reliability.poison_flood(run), graceful=True)


def test_slow_handler(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    run = new_run(kafka_bootstrap)
    check(run, reliability.slow_handler(run), graceful=True)


def test_scale_1_3_1(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    run = new_run(kafka_bootstrap)
    check(run, reliability.scale_1_3_1(run), graceful=True)


def test_scale_1_3_1_share(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    """The same with share-group members: a member stopped with SIGTERM finishes or releases
    what it holds, so nothing is processed twice."""
    run = new_run(kafka_bootstrap)
    run.consumer_settings = SHARE
    check(run, reliability.scale_1_3_1(run), graceful=True)


def test_producer_sigkill(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    run = new_run(kafka_bootstrap)
    check(run, reliability.producer_sigkill(run), graceful=True)


def test_delayed_jobs_sigkill(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    """Issue 23: kill and restart consumers while delayed jobs wait in the tiers (the short
    profile's jobs wait 15 s, the full one's a minute)."""
    run = new_run(kafka_bootstrap)
    check(run, reliability.delayed_jobs_sigkill(run), graceful=False, come_back=True)


def test_exactly_once_sigkill(new_run: Callable[[str], Run], kafka_bootstrap: str) -> None:
    """Issue 24: members SIGKILLed at random; every job's result exactly once under read_committed
    (short profile: 1,000 jobs, 2 kills; full: 20,000, 6)."""
    run = new_run(kafka_bootstrap)
    row = reliability_results.exactly_once_sigkill(run)
    assert not run.problems, "\n".join(run.problems)
    assert row["lost"] == 0 and row["duplicates"] == 0, row
