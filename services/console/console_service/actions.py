"""Re-drive from the console: topic-admin's Redriver, the same code `topic-admin redrive` and
`topic-admin dlq list` run (its transactions and ledger are what make a re-drive move each dead
letter exactly once), called from the web pages' threads.

One re-drive at a time per console: Redriver's transactional.id is one per DLQ, so a second
run would fence the first (safe, but the first would stop with an error).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from confluent_kafka.admin import AdminClient

from console_service.settings import ConsoleSettings
from jobpipe.kafka_clients import admin_config
from jobpipe.logs import event
from topic_admin_service.output import NoProgress
from topic_admin_service.redrive import Selection, Tally, Verdict
from topic_admin_service.redriver import Page, Redriver

BATCH_SIZE = 500  # dead letters per transaction, as `topic-admin redrive`'s default


class Busy(RuntimeError):
    """Another re-drive of this console is running."""


class DeadLetters:
    def __init__(self, settings: ConsoleSettings, stop: threading.Event) -> None:
        self._settings = settings
        self._stop = stop
        self._admin = AdminClient(admin_config(settings, "console"))
        self._running = threading.Lock()
        # Pages are read by one Redriver that keeps its consumer connected between pages (a
        # page then costs what it reads, not a new connection); one page at a time.
        self._browser = self._redriver(dry_run=True, keep_reader=True)
        self._browsing = threading.Lock()

    def _redriver(self, *, dry_run: bool, keep_reader: bool = False) -> Redriver:
        return Redriver(self._settings, self._admin, self._stop, dry_run=dry_run, batch_size=BATCH_SIZE,
                        progress=NoProgress(), keep_reader=keep_reader)

    def page(self, selection: Selection, limit: int, after: Mapping[int, int] | None = None) -> Page:
        with self._browsing:
            return self._browser.page(selection, limit, after)

    def close(self) -> None:
        with self._browsing:
            self._browser.close()

    def redrive(self, selection: Selection, *, dry_run: bool, who: str) -> Tally:
        """`topic-admin redrive [--dry-run]` with `selection`; Busy if one is running."""
        if not self._running.acquire(blocking=False):
            raise Busy("a re-drive is running; try again when it has finished")
        try:
            tally = self._redriver(dry_run=dry_run).run(selection)
        finally:
            self._running.release()
        event("console.redrive", ("dry run: " if dry_run else "") +
              f"{tally.moved} dead letter(s) {'would move' if dry_run else 'moved'} from the console, "
              f"{tally.counts[Verdict.FILTERED]} skipped by filter, "
              f"{tally.counts[Verdict.ALREADY]} already re-driven", who=who, **tally.as_dict())
        return tally
