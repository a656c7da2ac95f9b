"""One budget for stopping: SHUTDOWN_TIMEOUT_S, counted once from when the stop was seen, from
which every phase of the stop draws.

Why it exists: the consumer's stop has phases (finish the work in hand, commit, close the
client and leave the group, flush the dead letters) that each waited for a bound of its own,
five formulas of SHUTDOWN_TIMEOUT_S (0.8 x, at least 0.05 x, + 0.05 x, max(0.5, 0.1 x), ...)
that added up past it below 5 s (issue 22, defect 10). Here each phase ends at a fixed point
before one deadline, leaving the later phases their share; time a phase does not use goes to
the phases after it. Pure: the time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["work", "commit", "close", "flush"]
PHASES: tuple[Phase, ...] = ("work", "commit", "close", "flush")
# The share of the budget kept for each phase after the work (the work gets the rest: 0.8),
# and for the process's own exit (threads joined, the last log lines).
KEPT: dict[Phase, float] = {"work": 0.0, "commit": 0.05, "close": 0.05, "flush": 0.05}
EXIT_SHARE = 0.05


@dataclass(frozen=True)
class ShutdownBudget:
    """`started`: time.monotonic() when the stop was seen; `total_s`: SHUTDOWN_TIMEOUT_S."""

    started: float
    total_s: float

    def ends(self, phase: Phase) -> float:
        """When `phase` must be over (monotonic): the deadline less what the later phases keep."""
        later = PHASES[PHASES.index(phase) + 1:]
        kept = EXIT_SHARE + sum(KEPT[name] for name in later)
        return self.started + self.total_s * (1 - kept)

    def left(self, phase: Phase, now: float) -> float:
        """Seconds `phase` may still take at `now` (0 once it is over)."""
        return max(0.0, self.ends(phase) - now)
