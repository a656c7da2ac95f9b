"""What a share-group member does with a record (CONSUMER_MODE=share): the decisions alone.

Why it exists: the broker gives up on a record silently after `share.delivery.count.limit`
deliveries, and takes it back when its lock ends. Which record runs, is retried here, is handed
back, or is dead-lettered must therefore be decided with both limits in mind, so that no job is
ever dropped by the broker without a dead letter. A job whose time has not come cannot wait in
a member for the same reason: where it is parked meanwhile is decided here too. These functions
take their inputs (and the time) as arguments; `share_worker.py` only carries the verdicts out
on librdkafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from jobpipe.delays import Park, Tier, decide

DEFAULT_LOCK_S = 30.0  # the broker's group.share.record.lock.duration.ms by default
DEFAULT_DELIVERY_LIMIT = 5  # the broker's group.share.delivery.count.limit by default
LOCK_SHARE = 2 / 3  # of a record's lock, the time a member gives itself (the rest: slack)


class Verdict(Enum):
    RUN = "run"  # call the handler (now, or at a retry's time)
    ACCEPT = "accept"  # done: acknowledge ACCEPT
    RELEASE = "release"  # hand back: the broker redelivers it, possibly to another member
    DEAD_LETTER = "dead_letter"  # publish to DLQ_TOPIC, then ACCEPT (RELEASE if that fails)
    PUBLISH = "publish"  # publish its dead letter or parked copy (again), then ACCEPT


@dataclass(frozen=True)
class GroupLimits:
    """What the broker enforces on this share group's records."""

    lock_s: float = DEFAULT_LOCK_S  # share.record.lock.duration.ms
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT  # share.delivery.count.limit: then it gives up

    @property
    def dead_letter_delivery(self) -> int:
        """The delivery on which a job goes to the DLQ without running (a handler that kills
        the process brings its job back each time, so it must not get it for ever): one before
        the broker's last, when the limit leaves room (3 or more). After its last delivery the
        broker drops a record without a word, so a dead letter that fails there (the DLQ does
        not answer, the member stops or is killed first) must get another delivery to try
        again. Every delivery counts, a release too: MAX_ATTEMPTS bounds the attempts of one
        delivery, this bounds the deliveries."""
        return self.delivery_limit - 1 if self.delivery_limit >= 3 else self.delivery_limit

    def is_last(self, deliveries: int) -> bool:
        """The broker's last delivery of a record: released or left to its lock, it is dropped."""
        return deliveries >= self.delivery_limit

    def lock_ends(self, polled_at: float) -> float:
        """When this member stops starting the records of a poll it asked for at `polled_at`."""
        return polled_at + self.lock_s * LOCK_SHARE

    def start_by(self, polled_at: float, expected_s: float) -> float:
        """The latest time a record of that poll may start (or be retried): inside this member's
        share of the lock, and early enough that an attempt of the usual length (`expected_s`)
        ends before the broker takes the record back. Never earlier than a third of the lock
        after the poll: an average pushed up by one very long job must not stop the member from
        starting anything again (nothing would run to bring the average down)."""
        expected = min(expected_s, self.lock_s * LOCK_SHARE)
        return min(self.lock_ends(polled_at), polled_at + self.lock_s - expected)

    def expired(self, polled_at: float, now: float) -> bool:
        """The broker's lock on a record of that poll has ended: it may be another member's."""
        return now >= polled_at + self.lock_s


_RUN = (Verdict.RUN, "")  # on_delivery's usual answer, made once (it is asked for every record)


def on_delivery(is_job: bool, deliveries: int, dead_letter_delivery: int) -> tuple[Verdict, str]:
    """A record just polled: run it, or dead-letter it at once (and why)."""
    if not is_job:
        return Verdict.DEAD_LETTER, ""
    if deliveries >= dead_letter_delivery:
        return Verdict.DEAD_LETTER, (f"delivered {deliveries} times and never finished (a handler "
                                     "that ends the process, or released unstarted each time?)")
    return _RUN


def parking(due: float | None, now: float, tiers: tuple[Tier, ...]) -> Park | None:
    """Where a share member parks a job whose time has not come (`due`, epoch seconds), or None:
    it is due (or has no due time), run it. A share group's record is locked to a member for
    seconds only, so a job never waits in memory (its lock would end and the broker would give
    it to another member): even a short wait is parked, and the record is accepted once the
    parked copy is in its tier. A wait of a tier's length or more goes to the longest tier that
    fits, released after that tier's time (jobpipe.delays.decide), and hops down from there; a
    shorter one goes to the shortest tier released at its due time itself, not after the tier's
    whole time (a job due in 1 s is not made 4 s late). The mover takes every record whose
    release time has come, so such a copy comes back at its due time, or a little later when one
    parked before it in its partition is released later (the partition waits for its head);
    never earlier."""
    if due is None or due <= now:
        return None
    decision = decide(now, due, tiers, 0.0)
    if isinstance(decision, Park):
        return decision
    return Park(min(tiers), due)


def before_start(now: float, start_by: float, stopping: bool) -> Verdict:
    """A record waits for a handler slot: start it while this member's share of the lock lasts,
    else release it. A poll can hold more than that (the broker hands out whole record batches):
    run past the lock, a job would be done twice (the broker gives it to another member when the
    lock ends) and its acknowledgement refused, so it would come back again and again."""
    return Verdict.RELEASE if stopping or now >= start_by else Verdict.RUN


def after_attempt(succeeded: bool, gives_up: bool, retry_at: float, start_by: float,
                  stopping: bool) -> Verdict:
    """An attempt ended: accept it, dead-letter it (the retry policy gives up), retry it here
    (RUN at `retry_at`) while the lock lasts, else release it. A success is accepted whatever
    else holds: the member's loop takes that rule without the call (a run's successes are
    acknowledged together), so it must stay first and unconditional."""
    if succeeded:
        return Verdict.ACCEPT
    if gives_up:
        return Verdict.DEAD_LETTER
    if stopping or retry_at >= start_by:
        return Verdict.RELEASE
    return Verdict.RUN


def after_publish(published: bool, retry_at: float, lock_ends: float, last: bool,
                  stopping: bool) -> Verdict:
    """A record's dead letter or parked copy was answered: accept the record only once the DLQ
    (or the delay tier) holds it. A failed one is published again at `retry_at` (PUBLISH) while
    this member's share of the lock lasts, else the record is released for another delivery
    (RELEASE), where it is dead-lettered or parked again; at once when stopping. Never on the
    broker's `last` delivery: released (or left to its lock) the record would be dropped, so the
    member keeps publishing until the broker holds the copy, past the lock if need be (the job
    then lives in this member's memory only, until it is taken or the member stops)."""
    if published:
        return Verdict.ACCEPT
    if last:
        return Verdict.PUBLISH
    if stopping or retry_at >= lock_ends:
        return Verdict.RELEASE
    return Verdict.PUBLISH
