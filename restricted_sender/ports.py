"""The small interfaces the core talks through. Each has a real adapter and an in-memory fake."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from restricted_sender.core.mailbox import Forwarding, ForwardingSettings, InboxRule, Recipient
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.model import (
    DirectoryRole,
    DirectoryUser,
    Mail,
    MfaRegistration,
    Source,
    TicketContent,
    TicketRef,
    UnblockEntry,
)

if TYPE_CHECKING:
    from restricted_sender.core.policy import Budget

# Why ``Store.reserve_unblock`` wrote nothing: the user's or the tenant's budget is spent, or an unblock of the same
# restriction was already sent ("started").
BudgetRefusal = Literal["user", "tenant", "started"]


class Clock(Protocol):
    def now(self) -> datetime: ...


class EventQueue(Protocol):
    """Durable hand-off from the webhook to the processor. ``send`` returns only once the event is stored."""

    def send(self, message: str) -> None: ...


class DelayedQueue(Protocol):
    """A queue whose messages become visible later (the verification checks)."""

    async def send_later(self, message: str, delay: timedelta) -> None: ...


class Exchange(Protocol):
    """The Exchange Online admin endpoint (``InvokeCommand``)."""

    async def blocked_senders(self, address: str | None = None) -> Sequence[BlockedSender]: ...

    async def remove_blocked_sender(self, address: str) -> tuple[str, ...]:
        """Sent at most once; returns the service's warnings. Raises ``UnblockLimitReached`` for Microsoft's unblock
        limit, ``SenderNotBlocked``, ``ServiceRefused`` for other refusals, ``OutcomeUnknown`` when the answer does not
        tell whether it happened (the caller reads the restricted list then, and never sends it again), and
        ``TransientServiceError`` only when the answer proves the cmdlet never ran (429, 503 with Retry-After)."""
        ...

    async def mailbox_forwarding(self, address: str) -> Forwarding | None:
        """The mailbox's forwarding (``Get-Mailbox``), its ``ForwardingAddress`` resolved (``Get-Recipient``);
        ``None`` when there is no such mailbox."""
        ...

    async def recipient(self, identity: str) -> Recipient | None:
        """``Get-Recipient -Identity``: a mailbox, mail user or mail contact; ``None`` when there is none."""
        ...

    async def set_forwarding(self, address: str, settings: ForwardingSettings) -> None:
        """``Set-Mailbox -Identity address`` with the three forwarding parameters (``None`` sent as ``$null``).
        Raises ``ServiceRefused`` when the cmdlet said no, ``OutcomeUnknown`` when the answer does not say whether
        it happened (the caller reads ``Get-Mailbox`` then), ``TransientServiceError`` when it never ran."""
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

    async def active_roles(self, object_id: str) -> tuple[DirectoryRole, ...]:
        """The user's active directory role assignments. Raises when they cannot be read (the caller fails closed)."""
        ...

    async def eligible_roles(self, object_id: str) -> tuple[DirectoryRole, ...] | None:
        """The directory roles the user is eligible for (PIM); ``None`` when the tenant has no Entra ID P2."""
        ...

    async def mfa_registration(self, object_id: str) -> MfaRegistration | None:
        """Whether the user registered a strong method; ``None`` when unknown (no Entra ID P1/P2, no record)."""
        ...

    # -- containment and mail (Graph writes) ------------------------------------------------------------

    async def revoke_sessions(self, object_id: str) -> None:
        """``POST /users/{id}/revokeSignInSessions``: every refresh token and session cookie stops working."""
        ...

    async def confirm_compromised(self, object_id: str) -> bool:
        """``POST /identityProtection/riskyUsers/confirmCompromised``; ``False`` (nothing done) without Entra ID P2."""
        ...

    async def disable_account(self, object_id: str) -> None:
        """``PATCH /users/{id}`` ``{"accountEnabled": false}``: blocks sign-in."""
        ...

    async def send_mail(self, sender: str, mail: Mail) -> None:
        """``POST /users/{sender}/sendMail`` (saved to the sender's Sent Items)."""
        ...

    async def set_inbox_rule_enabled(self, key: str, rule_id: str, enabled: bool) -> None:
        """``PATCH /users/{key}/mailFolders/inbox/messageRules/{rule_id}`` ``{"isEnabled": enabled}``; a rule is
        never deleted. ``ServiceRefused`` (404) when there is no such rule."""
        ...


@dataclass(frozen=True, slots=True)
class AlertsPage:
    alerts: tuple[Mapping[str, Any], ...]  # alerts_v2 objects as Graph wrote them
    next_link: str | None


@runtime_checkable
class AlertFeed(Protocol):
    """Graph ``GET /security/alerts_v2`` for the poller."""

    async def alerts_page(self, *, filter: str, top: int, next_link: str | None = None) -> AlertsPage:
        """One page: the first for ``filter``/``top``, or the page ``next_link`` names. Raises ``FilterRefused``
        when Graph answers 400 to the filter."""
        ...


class ManagementActivity(Protocol):
    """The Office 365 Management Activity API (``https://manage.office.com/api/v1.0/{tenant}/activity/feed``)."""

    async def content(self, content_uri: str) -> Sequence[Mapping[str, Any]]:
        """The audit records of one content blob. Raises ``ContentExpired`` for content past its 7 days."""
        ...

    async def start(self, content_type: str, webhook: Mapping[str, Any] | None) -> Mapping[str, Any]: ...

    async def subscriptions(self) -> Sequence[Mapping[str, Any]]: ...


class TicketSystem(Protocol):
    """One ticket system (webhook, ServiceNow, Jira, email). Deduplication across processors is the caller's
    (the store's ticket ledger); ``find_open`` only recovers a ticket a crashed processor opened unrecorded."""

    name: str

    async def find_open(self, correlation_id: str) -> TicketRef | None:
        """An open ticket carrying ``correlation_id``; ``None`` when there is none or the system cannot search."""
        ...

    async def create(self, content: TicketContent) -> TicketRef: ...

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        """Add ``content.update`` (a work note, a comment, a follow-up mail) to an existing ticket."""
        ...


class ChatChannel(Protocol):
    """A chat channel that takes cards (Teams, through a Workflows webhook). ``post`` raises ``OutcomeUnknown``
    when the answer does not say whether the card was posted (the caller never posts it again), ``ServiceRefused``
    when it was refused, and ``TransientServiceError`` only when it was surely not posted."""

    name: str

    async def post(self, body: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class TicketSlot:
    """What the ticket ledger says one event should do about its restriction's ticket.

    ``create``: no ticket is recorded and this event now holds the right to open it. ``update``: the ticket
    exists and this event has not been added to it. ``done``: this event is already on it. ``wait``: another
    event is opening it right now (its lease, ``TICKET_LEASE``, has not run out).
    """

    action: Literal["create", "update", "done", "wait"]
    ticket: TicketRef | None = None


class ClaimResult(StrEnum):
    NEW = "new"  # first delivery of this event: go on
    RESUMED = "resumed"  # this delivery claimed it before and failed, or the holder's lease ran out: go on
    DUPLICATE = "duplicate"  # handled, or being handled, by another delivery: stop


@dataclass(frozen=True, slots=True)
class ClaimState:
    """A claim row as it stands: who holds it, whether it is done, and the outcome it completed with."""

    owner: str
    state: Literal["claimed", "done"]
    claimed_at: datetime
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    """A named position (the alerts_v2 poller's watermark) and the version it was read at."""

    value: str
    version: str  # opaque: an ETag in Table Storage, a counter elsewhere


MAX_REPORTS = 50  # sources kept per restriction: the first 50 reports are the story, the rest is noise
PENDING_TTL = timedelta(hours=24)  # Defender rows waiting for their other half are dropped after this


class Claims(Protocol):
    """Each event, restriction and notice is acted on once: a conditional insert, a lease for a crashed holder."""

    async def claim(self, key: str, delivery_id: str, now: datetime) -> ClaimResult: ...

    async def complete(self, key: str, delivery_id: str, outcome: str, now: datetime) -> None: ...

    async def claim_state(self, key: str) -> ClaimState | None:
        """The claim row of ``key`` as :meth:`claim` and :meth:`complete` left it; ``None`` when never claimed."""
        ...


class Reports(Protocol):
    """The sources that reported each restriction."""

    async def add_report(self, key: str, source: Source) -> None:
        """Remember that ``source`` reported the restriction ``key``. Idempotent per ``(source.kind, source.id)``:
        a repeated report keeps its first ``at``. Beyond ``MAX_REPORTS`` per key, new reports are dropped."""
        ...

    async def reports(self, key: str) -> tuple[Source, ...]:
        """Every report of ``key``, oldest first (ties by kind, then id); empty when none."""
        ...


class Cursors(Protocol):
    """Named positions written with optimistic concurrency (the poller's watermark, first-seen times)."""

    async def read_cursor(self, name: str) -> Cursor | None: ...

    async def write_cursor(self, name: str, value: str, version: str | None) -> bool:
        """Write ``value`` if the cursor is still at ``version`` (``None``: only if it does not exist yet).
        ``False`` when another writer moved it first; nothing is written then."""
        ...


class PendingRows(Protocol):
    """Rows kept for a while (Defender halves waiting for each other)."""

    async def keep_pending(self, group: str, key: str, data: Mapping[str, Any], now: datetime) -> None:
        """Keep ``data`` (a JSON object) under ``(group, key)`` until :meth:`pending` stops returning it
        (``PENDING_TTL`` after ``now``). Writing the same ``(group, key)`` again replaces it."""
        ...

    async def pending(self, group: str, keys: Collection[str], now: datetime) -> dict[str, Mapping[str, Any]]:
        """The kept data of those ``keys`` in ``group`` that have not expired at ``now``."""
        ...


class UnblockLedger(Protocol):
    """Our own unblocks: the budgets' history, and the intent record written before each Remove."""

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
        self,
        entry: UnblockEntry,
        *,
        user_budget: Budget | None,
        tenant_budget: Budget | None,
        restriction_since: datetime | None = None,
    ) -> BudgetRefusal | None:
        """Atomically record ``entry`` unless another unblock of the same restriction was sent (an entry of the user
        that spent Remove at or after ``restriction_since``: "started") or a budget would be exceeded ("user",
        "tenant"); see :func:`budget_refusal`.

        A refusal writes nothing; otherwise the entry is recorded exactly as :meth:`record_unblock` does and the
        answer is ``None``. Two processors racing for the last unblock of a window, or for the same restriction,
        never both get ``None``. A budget of ``None`` is unlimited; a ``restriction_since`` of ``None`` checks none.
        """
        ...


class TicketLedger(Protocol):
    """One ticket per restriction: who opens it and which events were added to it."""

    async def begin_ticket(self, correlation_id: str, event_id: str, now: datetime) -> TicketSlot:
        """Claim the right to open, or learn the ticket to update, for ``correlation_id`` (see :class:`TicketSlot`).

        A conditional insert: of two events racing for a new correlation id exactly one gets ``create``. The
        holder's own retry gets ``create`` again; another event takes over (``create``) once the holder's lease
        ran out without a ticket being recorded.
        """
        ...

    async def ticket_opened(self, correlation_id: str, event_id: str, ticket: TicketRef, now: datetime) -> None:
        """Record the ticket opened for ``correlation_id`` and that ``event_id`` is on it."""
        ...

    async def ticket_noted(self, correlation_id: str, event_id: str, now: datetime) -> None:
        """Record that ``event_id`` was added to the ticket (so a retry does not add it twice)."""
        ...


class AuditLog(Protocol):
    """The append-only record of every decision."""

    async def append_audit(self, record: Mapping[str, Any]) -> None: ...

    async def audit(self, user: str | None = None) -> Sequence[Mapping[str, Any]]: ...


class Store(Claims, Reports, Cursors, PendingRows, UnblockLedger, TicketLedger, AuditLog, Protocol):
    """Everything the product keeps, by job; each store backend (memory, Table Storage) implements them all, and a
    component that needs one job can ask for that interface alone."""

    async def close(self) -> None: ...
