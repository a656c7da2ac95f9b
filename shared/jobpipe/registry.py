"""Job types routed to handlers: one consumer (or in-memory service) serves several kinds of job.

Why it exists: HANDLER names one function, and an application has several kinds of work
(resize an image, send a mail). A `JobRegistry` in the user's module maps each job `type` to
its function, and HANDLER names the registry (`HANDLER=myapp.jobs:registry`):

    registry = JobRegistry()

    @registry.handler("resize")
    def resize(job: Job) -> None: ...

A job whose type no handler takes fails with `UnknownJobType`, which the consumer and the
in-memory service dead-letter at once, without retries (jobpipe.handling.JobHandler); a job
without a type goes to the `default` handler, if the registry has one. Each handler may be a
plain function or an `async def`: when all of them are `async def`, the registry is one
`async def` function (awaited on the consumer's event loop); otherwise it is a plain one, and
an `async def` handler in it runs each call on its thread's own event loop, as a lone
`async def` HANDLER does in the in-memory service.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from jobpipe.executor import is_async_handler
from jobpipe.handlers import HandlerFn, awaited
from jobpipe.job import Job

Function = TypeVar("Function", bound=Callable[[Job], object])


class UnknownJobType(Exception):
    """No handler of the registry takes the job's type: retrying cannot help."""


class JobRegistry:
    """Job type -> handler function. Filled at import of the user's module, then read-only."""

    def __init__(self, default: HandlerFn | None = None) -> None:
        """`default`: the handler of jobs without a type (without it, such a job is
        dead-lettered like one of an unknown type)."""
        self._handlers: dict[str | None, HandlerFn] = {}
        if default is not None:
            self._handlers[None] = default

    def handler(self, job_type: str) -> Callable[[Function], Function]:
        """Decorator: `@registry.handler("resize")` makes the function the handler of "resize"."""
        def register(function: Function) -> Function:
            self.add(job_type, function)
            return function
        return register

    def add(self, job_type: str, function: HandlerFn) -> None:
        if not job_type:
            raise ValueError("a job type is a non-empty string")
        if job_type in self._handlers:
            raise ValueError(f"job type {job_type!r} already has a handler: "
                             f"{_name(self._handlers[job_type])}")
        if not callable(function):
            raise TypeError(f"the handler of job type {job_type!r} is not callable: {function!r}")
        self._handlers[job_type] = function

    @property
    def types(self) -> tuple[str, ...]:
        """The job types with a handler, sorted."""
        return tuple(sorted(name for name in self._handlers if name is not None))

    def as_handler(self) -> HandlerFn:
        """One handler function for the whole registry (what HANDLER loads): it routes each job
        by its type. Takes the handlers registered so far; ValueError if there are none."""
        handlers = dict(self._handlers)
        if not handlers:
            raise ValueError("the registry has no handlers")
        known = ", ".join(self.types) or "none"

        def unknown(job: Job) -> UnknownJobType:
            what = "jobs without a type" if job.type is None else f"job type {job.type!r}"
            return UnknownJobType(f"no handler for {what} (known: {known})")

        if all(is_async_handler(function) for function in handlers.values()):
            coroutines = cast(dict[str | None, Callable[[Job], Coroutine[Any, Any, object]]], handlers)

            async def route_async(job: Job) -> object:
                function = coroutines.get(job.type)
                if function is None:
                    raise unknown(job)
                return await function(job)
            return route_async

        plain = {name: awaited(function) if is_async_handler(function) else function  # type: ignore[arg-type]
                 for name, function in handlers.items()}

        def route(job: Job) -> object:
            function = plain.get(job.type)
            if function is None:
                raise unknown(job)
            return function(job)
        return route

    def __repr__(self) -> str:
        return f"JobRegistry(types={list(self.types)}, default={None in self._handlers})"


def _name(function: object) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
