"""What a consumer member did with its jobs, added up for `service.stopped` (both modes).

Why it exists: the group-mode member (worker.py) and the share-group member (share_worker.py)
keep the same counts, and main.py adds them up; living here, neither member module has to
import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counts:
    processed: int = 0  # handler succeeded, and (share mode) the broker took the ACCEPT
    retried: int = 0
    dead_lettered: int = 0
    handed_back: int = 0  # given back for redelivery (released, revoked, or an acknowledgement refused)

    def add(self, other: Counts) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))
