"""Verification of an unblock (README: Containment, verification ...): is the user really off Restricted entities?

Microsoft says a removal takes effect within an hour, at the latest within 24 hours. Every unblock schedules a
check ``VERIFY_AFTER`` minutes later (a queue message made visible then); a check that still finds the user
schedules the next one, backing off (doubling) until 24 h after the unblock. The verdict is pure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from restricted_sender.core.decide import ReasonCode
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.model import Reason
from restricted_sender.timeutil import iso, parse_instant

VERIFY_SCHEMA = 1
# A verdict's kind is the code of its reason.
VerdictKind = Literal[ReasonCode.VERIFIED, ReasonCode.NOT_LIFTED, ReasonCode.VERIFY_PENDING]
LIFT_DEADLINE = timedelta(hours=24)  # "the total wait should be no longer than 24 hours"
DEFAULT_VERIFY_AFTER = timedelta(minutes=60)


@dataclass(frozen=True, slots=True)
class VerifyTask:
    """One scheduled check. This is the verification queue's message."""

    event_id: str  # the event whose unblock is checked: the check's records carry it
    address: str
    restriction_created: datetime | None  # the block we removed (its CreatedDatetime)
    unblocked_at: datetime
    attempt: int  # 1 for the first check
    source: str
    alert_id: str
    correlation_id: str

    @property
    def claim_key(self) -> str:
        return f"verify-{self.event_id}-{self.attempt}"

    def to_message(self) -> str:
        return json.dumps(
            {
                "schema": VERIFY_SCHEMA,
                "kind": "verify",
                "event_id": self.event_id,
                "address": self.address,
                "restriction_created": iso(self.restriction_created) if self.restriction_created else None,
                "unblocked_at": iso(self.unblocked_at),
                "attempt": self.attempt,
                "source": self.source,
                "alert_id": self.alert_id,
                "correlation_id": self.correlation_id,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_message(cls, text: str) -> VerifyTask:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != VERIFY_SCHEMA or data.get("kind") != "verify":
            raise ValueError("not a verification message of a known schema")
        created = data.get("restriction_created")
        return cls(
            event_id=str(data["event_id"]),
            address=str(data["address"]),
            restriction_created=parse_instant(created) if created else None,
            unblocked_at=parse_instant(str(data["unblocked_at"])),
            attempt=int(data["attempt"]),
            source=str(data["source"]),
            alert_id=str(data["alert_id"]),
            correlation_id=str(data["correlation_id"]),
        )


def check_at(unblocked_at: datetime, attempt: int, verify_after: timedelta) -> datetime | None:
    """When check number ``attempt`` runs: ``verify_after`` doubling each time, the last one exactly 24 h after
    the unblock; ``None`` when there is no such check (the previous one was the 24 h check)."""
    deadline = unblocked_at + LIFT_DEADLINE
    previous = unblocked_at + verify_after * (2 ** (attempt - 2)) if attempt > 1 else None
    if previous is not None and previous >= deadline:
        return None
    due: datetime = min(unblocked_at + verify_after * (2 ** (attempt - 1)), deadline)
    return due


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: Reason
    next_check: datetime | None = None
    restriction: BlockedSender | None = None  # the row still (or again) on the list


def judge(task: VerifyTask, rows: Sequence[BlockedSender], now: datetime, verify_after: timedelta) -> Verdict:
    """What one check found: gone (``verified``), still there past 24 h or restricted again (``not-lifted``),
    or still there within 24 h (``verify-pending``, with the next check's time)."""
    address = task.address.lower()
    row = next((r for r in rows if r.address.lower() == address), None)
    waited = now - task.unblocked_at
    if row is None:
        return Verdict(
            ReasonCode.VERIFIED,
            Reason(
                ReasonCode.VERIFIED,
                f"{task.address} is off Restricted entities, checked {_minutes(waited)} after the unblock",
            ),
        )
    created = row.created
    again = created is not None and (
        (task.restriction_created is not None and created > task.restriction_created)
        or (task.restriction_created is None and created > task.unblocked_at)
    )
    if again and created is not None:
        return Verdict(
            ReasonCode.NOT_LIFTED,
            Reason(ReasonCode.NOT_LIFTED, f"{task.address} was restricted again at {iso(created)}, after our unblock"),
            restriction=row,
        )
    following = check_at(task.unblocked_at, task.attempt + 1, verify_after)
    if waited >= LIFT_DEADLINE or following is None:
        return Verdict(
            ReasonCode.NOT_LIFTED,
            Reason(
                ReasonCode.NOT_LIFTED,
                f"{task.address} is still on Restricted entities {_minutes(waited)} after the unblock "
                "(Microsoft: at the latest within 24 hours)",
            ),
            restriction=row,
        )
    still = (
        f"{task.address} is still on Restricted entities {_minutes(waited)} after the unblock; "
        f"next check {iso(following)}"
    )
    return Verdict(
        ReasonCode.VERIFY_PENDING, Reason(ReasonCode.VERIFY_PENDING, still), next_check=following, restriction=row
    )


def _minutes(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
