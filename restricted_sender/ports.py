"""The small interfaces the core talks through. Each has a real adapter and an in-memory fake."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from .model import DirectoryUser, UnblockEntry
from .restriction import BlockedSender


class Clock(Protocol):
    def now(self) -> datetime: ...


class EventQueue(Protocol):
    """Durable hand-off from the webhook to the processor. ``send`` returns only once the event is stored."""

    def send(self, message: str) -> None: ...


class Exchange(Protocol):
    """The Exchange Online admin endpoint (``InvokeCommand``)."""

    async def blocked_senders(self, address: str | None = None) -> Sequence[BlockedSender]: ...

    async def remove_blocked_sender(self, address: str) -> None:
        """Raises ``UnblockLimitReached`` for Microsoft's unblock limit, ``ServiceRefused`` for other refusals."""
        ...


class Directory(Protocol):
    """Microsoft Graph, reduced to what decisions need."""

    async def user(self, key: str) -> DirectoryUser | None:
        """The user by object id or UPN; ``None`` when the directory has no such user."""
        ...

    async def member_groups(self, key: str, group_ids: Sequence[str]) -> frozenset[str]:
        """Which of ``group_ids`` the user is a transitive member of (lower-cased ids)."""
        ...


class Tickets(Protocol):
    async def open(self, correlation_id: str, record: Mapping[str, Any]) -> str:
        """Open (or find, for a repeated ``correlation_id``) the ticket; returns its reference."""
        ...


class ClaimResult(StrEnum):
    NEW = "new"  # first delivery of this event: go on
    RESUMED = "resumed"  # this delivery claimed it before and failed, or the holder's lease ran out: go on
    DUPLICATE = "duplicate"  # handled, or being handled, by another delivery: stop


CLAIM_LEASE = timedelta(minutes=15)


def resolve_claim(*, owner: str, state: str, claimed_at: datetime, delivery_id: str, now: datetime) -> ClaimResult:
    """What an existing claim row means for ``delivery_id``; one rule shared by every store backend.

    The owner's own redelivery resumes (its earlier attempt failed before completing; every action is
    idempotent). Another delivery is a duplicate, unless the owner's lease ran out without completing:
    then it takes over, so a crashed processor never strands an event.
    """
    if state == "done":
        return ClaimResult.DUPLICATE
    if owner == delivery_id or now - claimed_at > CLAIM_LEASE:
        return ClaimResult.RESUMED
    return ClaimResult.DUPLICATE


class Store(Protocol):
    """Claims (exactly-once effects), our own unblock history, and the append-only audit trail."""

    async def claim(self, key: str, delivery_id: str, now: datetime) -> ClaimResult: ...

    async def complete(self, key: str, delivery_id: str, outcome: str, now: datetime) -> None: ...

    async def record_unblock(self, entry: UnblockEntry) -> None:
        """Insert or replace the entry for (user, event_id): retries never count twice."""
        ...

    async def unblocks(self, user: str, since: datetime) -> Sequence[UnblockEntry]: ...

    async def append_audit(self, record: Mapping[str, Any]) -> None: ...

    async def audit(self, user: str | None = None) -> Sequence[Mapping[str, Any]]: ...

    async def close(self) -> None: ...
