"""What one exactly-once move of the delay tiers may commit (PROCESSING_GUARANTEE=exactly_once).

Why it exists: under exactly_once the tier mover (consumer_service.tier_mover) writes the copies
it moved in one turn and the tier offsets past them in one Kafka transaction, so a killed or
fenced mover's successor never moves a copy again (it would run, and publish a result, twice).
Which offset the transaction may commit per partition, and where a partition is read again
from when the transaction is aborted, is this pure bookkeeping: a partition commits one past the
last copy it moved in the batch, never past a head that is still waiting (not released yet, or
refused), and an aborted batch rewinds each partition to the first offset it moved.
"""

from __future__ import annotations

from consumer_service.offsets import TP


class MoveBatch:
    """The copies moved since the last transaction, by partition (offsets only). Pure."""

    def __init__(self) -> None:
        self._first: dict[TP, int] = {}
        self._next: dict[TP, int] = {}  # one past the last offset moved
        self._waiting: dict[TP, int] = {}  # a head that must stay (its partition moves no further)

    def move(self, tp: TP, offset: int) -> bool:
        """`offset` of `tp` was copied on. False (not taken) when it is not past what the batch
        has of tp, or at/after a head of tp that waits: its partition is read again from there."""
        head = self._waiting.get(tp)
        if (head is not None and offset >= head) or offset < self._next.get(tp, offset):
            return False
        self._first.setdefault(tp, offset)
        self._next[tp] = offset + 1
        return True

    def wait(self, tp: TP, offset: int) -> None:
        """`offset` is `tp`'s head and stays: nothing at or after it is committed in this batch."""
        self._waiting[tp] = min(offset, self._waiting.get(tp, offset))

    def offsets(self) -> dict[TP, int]:
        """The offset the transaction commits per partition that moved anything."""
        return dict(self._next)

    def rewind(self) -> dict[TP, int]:
        """Where each partition is read again from when the transaction is aborted."""
        return dict(self._first)

    def clear(self) -> None:
        self._first.clear()
        self._next.clear()
        self._waiting.clear()

    def __len__(self) -> int:
        return len(self._next)
