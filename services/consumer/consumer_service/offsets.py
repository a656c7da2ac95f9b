"""Which fetched offsets are unfinished, per partition, and so which offset may be committed.

Why it exists: with several jobs of one partition running at once, jobs finish out of offset
order, yet Kafka keeps one committed offset per partition (the NEXT offset to read). The only
safe offset to store is the lowest unfinished one: everything below it succeeded or was
dead-lettered, so a crash re-delivers at most the jobs finished above it (at-least-once).
When nothing is unfinished it is the highest fetched offset + 1. This module keeps that
watermark per partition, with no Kafka and no I/O, at O(1) amortised cost per job (it sits on
the hot path: one `add` and one `finish` per message).

How: per partition, the offsets fetched and not yet trimmed are kept in fetch order in a deque
(Kafka hands them over in increasing order; gaps from compaction or transaction markers are
fine), and the unfinished ones in a dict. Finishing an offset deletes it from the dict; when
it is the head of the deque, the head is trimmed past every finished offset, each offset
trimmed once.

Re-fetching an offset that is still held or already finished is refused (`add` returns
False): a duplicate delivery is not work. An offset below the watermark when nothing is
unfinished means the broker moved the position back (an offset reset, a re-created topic):
the partition starts over from there, so those messages are processed again rather than
skipped. (With jobs in hand, such an offset is refused; a caller that sees a broker-side
reset should drop the partition and start it afresh.)
"""

from __future__ import annotations

from collections import deque

TP = tuple[str, int]  # (topic, partition)


class PartitionOffsets:
    """One partition: its unfinished offsets and its committable watermark."""

    __slots__ = ("_moved", "_next", "_order", "_unfinished", "tp")

    def __init__(self, tp: TP = ("", 0), moved: set[TP] | None = None) -> None:
        self.tp = tp
        self._moved = set() if moved is None else moved  # gets `tp` when the watermark moves
        self._order: deque[int] = deque()  # fetched offsets from the lowest unfinished one, ascending
        self._unfinished: set[int] = set()  # held by the caller
        self._next: int | None = None  # highest offset fetched + 1; None: nothing fetched yet

    def add(self, offset: int) -> bool:
        """A message at `offset` was fetched: True if it is work to hold, False to ignore it.

        False: the offset is held already (a duplicate delivery), or it was finished.
        """
        following = self._next
        if following is None or offset >= following:
            self._order.append(offset)
            self._unfinished.add(offset)
            self._next = offset + 1
            return True
        if not self._unfinished:
            # Below the watermark with nothing in hand: the broker moved the position back.
            self._order.clear()
            self._order.append(offset)
            self._unfinished.add(offset)
            self._next = offset + 1
            return True
        return False

    def finish(self, offset: int) -> int:
        """The job at `offset` succeeded or was dead-lettered. Returns how many fetched offsets
        went below the watermark with it (0: the watermark did not move): it and the finished
        ones above it, up to the next unfinished."""
        unfinished = self._unfinished
        if offset not in unfinished:
            return 0  # not ours (already finished, or never fetched)
        unfinished.discard(offset)
        order = self._order
        if order[0] != offset:
            return 0
        before = len(order)
        order.popleft()
        while order and order[0] not in unfinished:
            order.popleft()
        self._moved.add(self.tp)
        return before - len(order)

    def passed(self, following: int) -> None:
        """Every fetched offset below `following` finished in order, with nothing unfinished
        here (the consumer's lane: consumer_service.scheduler.Block): the watermark moves there."""
        if self._unfinished:
            raise ValueError(f"{self.tp}: offsets passed while {len(self._unfinished)} are unfinished")
        self._order.clear()
        self._next = following
        self._moved.add(self.tp)

    def reached_end(self, end: int) -> bool:
        """The partition's end was reached at `end` (the next offset to fetch). True if the
        watermark moved there: nothing fetched is unfinished, and `end` is past every fetched
        offset (what lies between is no job: a transaction marker, an aborted message)."""
        if self._unfinished or (self._next is not None and end <= self._next):
            return False
        self._order.clear()
        self._next = end
        self._moved.add(self.tp)
        return True

    def committable(self) -> int | None:
        """The offset to store/commit: the lowest unfinished one, else the highest fetched + 1."""
        if self._order:
            return self._order[0]
        return self._next

    @property
    def unfinished(self) -> int:
        """How many fetched offsets are unfinished."""
        return len(self._unfinished)


class OffsetTracker:
    """Every partition's `PartitionOffsets`, and which watermarks moved since last asked."""

    __slots__ = ("_advanced", "_partitions")

    def __init__(self) -> None:
        self._partitions: dict[TP, PartitionOffsets] = {}
        self._advanced: set[TP] = set()

    def partition(self, tp: TP) -> PartitionOffsets:
        """tp's offsets, created on first use; a hot loop can keep it and call it directly
        (its watermark moves are still reported by `advanced`)."""
        partition = self._partitions.get(tp)
        if partition is None:
            partition = self._partitions[tp] = PartitionOffsets(tp, self._advanced)
        return partition

    def committable(self, tp: TP) -> int | None:
        """tp's watermark: the next offset to commit, or None if nothing was fetched from it."""
        partition = self._partitions.get(tp)
        return None if partition is None else partition.committable()

    def drop(self, tp: TP) -> None:
        """Forget tp (revoked or lost): its unfinished offsets are the next owner's to fetch."""
        self._partitions.pop(tp, None)
        self._advanced.discard(tp)

    def advanced(self) -> list[tuple[TP, int]]:
        """(tp, watermark) for each partition whose watermark moved since the last call."""
        if not self._advanced:
            return []
        moved = [(tp, offset) for tp in self._advanced
                 if (offset := self._partitions[tp].committable()) is not None]
        self._advanced.clear()
        return moved
