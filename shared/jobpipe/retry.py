"""The one retry policy: exponential backoff with jitter, capped, used for every retry.

The consumer and the in-memory service use `delay_s` to schedule a job's next attempt
without blocking; blocking waits (for the broker) hand `tenacity_wait` to tenacity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tenacity import RetryCallState


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt n waits between half and all of min(max, initial * 2**(n-1))."""

    initial_s: float = 0.1
    max_s: float = 10.0
    max_attempts: int = 5

    def delay_s(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed.

        "Equal jitter": the delay never shrinks from one attempt to the next (until the cap),
        so backoff visibly grows, yet replicas that failed together do not retry in lockstep.
        """
        ceiling = min(self.max_s, self.initial_s * 2 ** (failed_attempt - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    def gives_up_after(self, attempt: int) -> bool:
        """True when `attempt` was the last one allowed (the job is then dead-lettered)."""
        return attempt >= self.max_attempts

    def tenacity_wait(self, state: RetryCallState) -> float:
        """This policy as a tenacity `wait=` strategy."""
        return self.delay_s(state.attempt_number)
