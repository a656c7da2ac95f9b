"""Job types routed to handlers (jobpipe.registry), as HANDLER loads them (issue 21)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from jobpipe.errors import ConfigError
from jobpipe.executor import is_async_handler
from jobpipe.handlers import demo_handler, load_handler
from jobpipe.handling import JobHandler, Next
from jobpipe.job import Job
from jobpipe.registry import JobRegistry, UnknownJobType
from jobpipe.retry import RetryPolicy

done: list[tuple[str, object]] = []

registry = JobRegistry()


@registry.handler("resize")
def resize(job: Job) -> None:
    done.append(("resize", job.payload))


@registry.handler("mail")
async def mail(job: Job) -> None:  # a mixed registry: this one runs on its thread's own loop
    await asyncio.sleep(0)
    done.append(("mail", threading.current_thread().name))


def untyped(job: Job) -> None:
    done.append(("untyped", job.payload))


with_default = JobRegistry(default=untyped)
with_default.add("resize", resize)

all_async = JobRegistry()


@all_async.handler("ping")
async def ping(job: Job) -> str:
    done.append(("ping", job.payload))
    return "pong"


empty = JobRegistry()
POLICY = RetryPolicy(0.01, 0.1, max_attempts=5)


@pytest.fixture(autouse=True)
def _forget() -> None:
    done.clear()


def test_each_job_goes_to_the_handler_of_its_type() -> None:
    handler = JobHandler(load_handler(f"{__name__}:registry"), POLICY)
    assert not handler.is_async, "a registry with a plain handler runs on threads"
    for job in (Job.create({"w": 1}, type="resize"), Job.create(None, type="mail")):
        attempt = handler.attempt(job, 1)
        assert attempt.error is None and handler.next_step(attempt) is Next.DONE
    assert done == [("resize", {"w": 1}), ("mail", threading.current_thread().name)]


def test_a_job_of_an_unknown_type_is_dead_lettered_at_once_saying_so() -> None:
    handler = JobHandler(load_handler(f"{__name__}:registry"), POLICY)
    attempt = handler.attempt(Job.create({}, type="sms"), 1)
    assert isinstance(attempt.error, UnknownJobType)
    assert handler.next_step(attempt) is Next.DEAD_LETTER, "no retries: attempt 1 of 5 is the last"
    assert attempt.error_text == "UnknownJobType: no handler for job type 'sms' (known: mail, resize)"
    untyped_job = handler.attempt(Job.new(1, 0), 1)
    assert str(untyped_job.error) == "no handler for jobs without a type (known: mail, resize)"
    assert handler.next_step(untyped_job) is Next.DEAD_LETTER
    assert done == []


def test_a_handler_that_fails_is_still_retried() -> None:
    def broken(job: Job) -> None:
        raise RuntimeError("disk full")
    failing = JobRegistry()
    failing.add("resize", broken)
    handler = JobHandler(failing.as_handler(), POLICY)
    attempt = handler.attempt(Job.create({}, type="resize"), 1)
    assert handler.next_step(attempt) is Next.RETRY


def test_the_default_handler_takes_jobs_without_a_type() -> None:
    handler = JobHandler(load_handler(f"{__name__}:with_default"), POLICY)
    assert handler.attempt(Job.create("x"), 1).error is None
    assert handler.attempt(Job.create("y", type="resize"), 1).error is None
    assert done == [("untyped", "x"), ("resize", "y")]


def test_an_all_async_registry_is_awaited_on_the_callers_loop() -> None:
    function = load_handler(f"{__name__}:all_async")
    assert is_async_handler(function)
    handler = JobHandler(function, POLICY)
    attempt = asyncio.run(handler.attempt_async(Job.create(7, type="ping"), 1))
    assert attempt.error is None and done == [("ping", 7)]
    unknown = asyncio.run(handler.attempt_async(Job.create(7, type="pong"), 1))
    assert isinstance(unknown.error, UnknownJobType) and handler.next_step(unknown) is Next.DEAD_LETTER


def test_a_plain_handler_still_takes_every_type() -> None:
    handler = JobHandler(load_handler("jobpipe.handlers:demo_handler"), POLICY)
    assert handler.attempt(Job.create({"a": 1}, type="anything"), 1).error is None
    assert load_handler("jobpipe.handlers:demo_handler") is demo_handler


def test_an_empty_registry_is_a_configuration_error_naming_handler() -> None:
    with pytest.raises(ConfigError, match=r"^HANDLER='tests\.unit\.test_job_registry:empty': "
                                          r"the registry has no handlers$"):
        load_handler(f"{__name__}:empty")


def test_a_type_has_one_handler() -> None:
    with pytest.raises(ValueError, match=r"job type 'resize' already has a handler: .*resize"):
        registry.add("resize", untyped)
    assert registry.types == ("mail", "resize")
