"""The handler contract: HANDLER="package.module:function", a function taking a Job, or
HANDLER="package.module:registry", a jobpipe.registry.JobRegistry that routes jobs by type.

A handler succeeds by returning and fails by raising; the same function runs unchanged
in the Kafka consumer and in the in-memory service. `demo_handler` is the built-in one.
An `async def` handler is awaited (calling it without awaiting, as before, did no work at all
and counted the job as processed): the consumer awaits many jobs at once on one event loop
(jobpipe.executor, CONSUMER_CONCURRENCY); a thread that calls it as a plain function (the
in-memory service's workers) runs each call to completion on an event loop of its own
(`awaited`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, cast

from jobpipe.errors import ConfigError
from jobpipe.job import Job

HandlerFn = Callable[[Job], object]


def demo_handler(job: Job) -> None:
    """The default handler: accepts every job whose payload is a JSON object or absent."""
    if job.payload is not None and not isinstance(job.payload, dict | str):
        raise ValueError(f"demo handler expects an object payload, got {type(job.payload).__name__}")


def load_handler(spec: str) -> HandlerFn:
    """Import `module:function`; raise ConfigError naming HANDLER if that is not possible.
    An object with an `as_handler()` method (a jobpipe.registry.JobRegistry) stands for the
    function that method returns."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ConfigError(f"HANDLER={spec!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # an import can fail with anything the module raises
        raise ConfigError(f"HANDLER={spec!r}: cannot import {module_name!r}: {error}") from None
    function = getattr(module, function_name, None)
    as_handler = getattr(function, "as_handler", None)
    if callable(as_handler):
        try:
            return cast(HandlerFn, as_handler())
        except ValueError as error:
            raise ConfigError(f"HANDLER={spec!r}: {error}") from None
    if not callable(function):
        raise ConfigError(f"HANDLER={spec!r}: {module_name!r} has no function {function_name!r}")
    return cast(HandlerFn, function)


def awaited(function: Callable[[Job], Coroutine[Any, Any, object]]) -> HandlerFn:
    """`function` (an `async def` handler) as a plain one that runs each call to completion
    on the calling thread's own event loop."""
    loops = threading.local()

    @functools.wraps(function)
    def run(job: Job) -> object:
        loop = getattr(loops, "loop", None)
        if loop is None:
            loop = loops.loop = asyncio.new_event_loop()
        return cast(asyncio.AbstractEventLoop, loop).run_until_complete(function(job))

    return run
