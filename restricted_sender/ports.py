"""The small interfaces the core talks through. Each has a real adapter and an in-memory fake."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .mailbox import Forwarding, InboxRule
from .model import DirectoryUser, UnblockEntry
from .restriction import BlockedSender

if TYPE_CHECKING:
    from .policy import Budget

BudgetRefusal = Literal["user", "tenant"]  # which budget ``Store.reserve_unblock`` found spent


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

    async def mailbox_forwarding(self, address: str) -> Forwarding | None:
        """The mailbox's forwarding (``Get-Mailbox``); ``None`` when there is no such mailbox."""
        ...


class Directory(Protocol):
    """Microsoft Graph, reduced to what decisions need."""

    async def user(self, key: str) -> DirectoryUser | None:
        """The user by object id or UPN; ``None`` when the directory has no such user."""
        ...

    async def member_groups(self, key: str, group_ids: Sequence[str]) -> frozenset[str]:
        """Which of ``group_ids`` the user is a transitive member of (lower-cased ids)."""
        ...

    async def risk_level(self, object_id: str) -> str | None:
        """Identity Protection's risk level; ``None`` when unknown (no Entra ID P2, or no such risky user)."""
        ...

    async def inbox_rules(self, key: str) -> tuple[InboxRule, ...] | None:
        """The Inbox rules; ``None`` when the user has no mailbox to read."""
        ...

    async def folder_name(self, key: str, folder_id: str) -> str | None:
        """A mail folder's display name (to judge ``moveToFolder``); ``None`` when there is no such folder."""
        ...

    async def verified_domains(self) -> frozenset[str]:
        """The tenant's verified domains, lower-cased: what "inside the tenant" means."""
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


def budget_refusal(
    entry: UnblockEntry,
    history: Iterable[UnblockEntry],
    *,
    user_budget: Budget | None,
    tenant_budget: Budget | None,
) -> BudgetRefusal | None:
    """Which budget recording ``entry`` would exceed, given the tenant's ``history``; one rule for every store.

    Counts with :meth:`Budget.spent_by`, leaving out entries of ``entry.event_id`` (a retry of the same event
    never counts against itself): the user's own against ``user_budget``, checked first, then everyone's against
    ``tenant_budget``. ``None`` is unlimited. ``history`` may hold more than needed: the rule filters.
    """
    user = entry.user.lower()
    counted = [e for e in history if e.event_id != entry.event_id]

    if user_budget is not None and user_budget.is_spent((e for e in counted if e.user.lower() == user), entry.at):
        return "user"
    if tenant_budget is not None and tenant_budget.is_spent(counted, entry.at):
        return "tenant"
    return None


class Store(Protocol):
    """Claims (exactly-once effects), our own unblock history, and the append-only audit trail."""

    async def claim(self, key: str, delivery_id: str, now: datetime) -> ClaimResult: ...

    async def complete(self, key: str, delivery_id: str, outcome: str, now: datetime) -> None: ...

    async def record_unblock(self, entry: UnblockEntry) -> None:
        """Insert or replace the entry for (user, event_id): retries never count twice."""
        ...

    async def unblocks(self, user: str, since: datetime) -> Sequence[UnblockEntry]:
        """The user's entries at or after ``since``, oldest first."""
        ...

    async def tenant_unblocks(self, since: datetime) -> Sequence[UnblockEntry]:
        """Every user's entries at or after ``since``, oldest first (the circuit breaker's facts)."""
        ...

    async def reserve_unblock(
        self, entry: UnblockEntry, *, user_budget: Budget | None, tenant_budget: Budget | None
    ) -> BudgetRefusal | None:
        """Atomically record ``entry`` unless that would exceed a budget (see :func:`budget_refusal`).

        Returns "user" or "tenant" for the budget that is spent, and then writes nothing; otherwise records
        the entry exactly as :meth:`record_unblock` does and returns ``None``. Two processors racing for the
        last unblock of a window never both get ``None``. A budget of ``None`` is unlimited.
        """
        ...

    async def append_audit(self, record: Mapping[str, Any]) -> None: ...

    async def audit(self, user: str | None = None) -> Sequence[Mapping[str, Any]]: ...

    async def close(self) -> None: ...
