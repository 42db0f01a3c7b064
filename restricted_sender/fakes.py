"""In-memory fakes of every port, for unit tests and quick experiments. Same contracts as the adapters."""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from restricted_sender.core.ledger import budget_refusal, noted_with, pending_text, resolve_claim, resolve_ticket
from restricted_sender.core.mailbox import Forwarding, ForwardingSettings, InboxRule, Recipient, parse_rules
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.errors import (
    ContentExpired,
    FilterRefused,
    QueueUnavailable,
    SenderNotBlocked,
    ServiceRefused,
    UnblockLimitReached,
)
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
from restricted_sender.ports import (
    MAX_REPORTS,
    PENDING_TTL,
    AlertsPage,
    BudgetRefusal,
    ClaimResult,
    ClaimState,
    Cursor,
    TicketSlot,
)

if TYPE_CHECKING:
    from restricted_sender.core.policy import Budget


class MemoryQueue:
    """Refuses what the Storage queue refuses: a message over 64 KiB once base64-encoded (the adapter's encoding),
    https://learn.microsoft.com/rest/api/storageservices/put-message"""

    MAX_ENCODED_BYTES = 64 * 1024

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.available = True

    def send(self, message: str) -> None:
        if not self.available:
            raise QueueUnavailable("queue", "queue is unavailable")
        if len(base64.b64encode(message.encode("utf-8"))) > self.MAX_ENCODED_BYTES:
            raise QueueUnavailable("queue", "could not queue the event: the request body is too large")
        self.messages.append(message)

    def drain(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken


class FakeExchange:
    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]] = (),
        *,
        limit_reached: Sequence[str] = (),
        mailboxes: Mapping[str, Mapping[str, Any]] | None = None,
        recipients: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.rows = [dict(r) for r in rows]
        self.limit_reached = {a.lower() for a in limit_reached}
        self.mailboxes = {k.lower(): dict(v) for k, v in (mailboxes or {}).items()}  # Get-Mailbox rows
        self.recipients = {k.lower(): dict(v) for k, v in (recipients or {}).items()}  # Get-Recipient rows by identity
        self.removed: list[str] = []
        self.calls = 0
        self.set_mailbox: list[tuple[str, ForwardingSettings]] = []  # every Set-Mailbox sent, in order
        self.set_failure: Exception | None = None  # raised by set_forwarding (after it is counted)

    async def mailbox_forwarding(self, address: str) -> Forwarding | None:
        self.calls += 1
        row = self.mailboxes.get(address.lower())
        if row is None:
            return None
        forwarding = Forwarding.from_mailbox(row)
        return (
            forwarding
            if forwarding.recipient is None
            else forwarding.resolved(await self.recipient(forwarding.recipient))
        )

    async def recipient(self, identity: str) -> Recipient | None:
        self.calls += 1
        row = self.recipients.get(identity.lower())
        return None if row is None else Recipient.from_row(row)

    async def set_forwarding(self, address: str, settings: ForwardingSettings) -> None:
        self.calls += 1
        self.set_mailbox.append((address.lower(), settings))
        if self.set_failure is not None:
            raise self.set_failure
        row = self.mailboxes.get(address.lower())
        if row is None:
            raise ServiceRefused("exchange", f"Set-Mailbox: HTTP 404: no mailbox {address}", http_status=404)
        row.update(settings.parameters())

    async def blocked_senders(self, address: str | None = None) -> Sequence[BlockedSender]:
        self.calls += 1
        rows = [r for r in self.rows if address is None or str(r["SenderAddress"]).lower() == address.lower()]
        return [BlockedSender.from_row(r) for r in rows]

    async def remove_blocked_sender(self, address: str) -> tuple[str, ...]:
        self.calls += 1
        self.removed.append(address.lower())  # every Remove sent, whatever it answers
        if address.lower() in self.limit_reached:
            raise UnblockLimitReached("exchange", f"unblock limit reached for {address}", http_status=400)
        before = len(self.rows)
        self.rows = [r for r in self.rows if str(r["SenderAddress"]).lower() != address.lower()]
        if len(self.rows) == before:
            raise SenderNotBlocked("exchange", f"{address} is not blocked", http_status=400)
        return ()


class FakeDirectory:
    def __init__(
        self,
        users: Sequence[DirectoryUser] = (),
        groups: Mapping[str, Sequence[str]] | None = None,
        *,
        risk: Mapping[str, str] | None = None,
        rules: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        folders: Mapping[str, str] | None = None,
        domains: Sequence[str] = ("contoso.com",),
        p2: bool = True,
        roles: Mapping[str, Sequence[DirectoryRole]] | None = None,
        mfa: Mapping[str, MfaRegistration] | None = None,
    ):
        self.users = list(users)
        self.groups = {k.lower(): {g.lower() for g in v} for k, v in (groups or {}).items()}
        self.risk = dict(risk or {})  # object id -> level; absent: unknown (no Entra ID P2)
        # user key -> Graph messageRule JSON (copies: set_inbox_rule_enabled changes them)
        self.rules = {k.lower(): [dict(r) for r in v] for k, v in (rules or {}).items()}
        self.folders = dict(folders or {})  # folder id -> display name
        self.domains = frozenset(d.lower() for d in domains)
        self.calls = 0
        # Writes, in the order they happened. ``failures`` maps a write's method name (``revoke_sessions``,
        # ``confirm_compromised``, ``disable_account``, ``send_mail``, ``set_inbox_rule_enabled``) to the error it
        # raises, on every call.
        self.p2 = p2  # Entra ID P2: without it confirm_compromised does nothing and answers False
        self.revoked: list[str] = []
        self.confirmed: list[str] = []
        self.disabled: list[str] = []
        self.sent: list[tuple[str, Mail]] = []
        self.failures: dict[str, Exception] = {}
        # object id -> its directory roles, active and eligible (eligible ones are unknown without Entra ID P2);
        # object id -> its MFA registration (absent: unknown, as in a tenant without Entra ID P1/P2). ``failures``
        # also makes ``active_roles``, ``eligible_roles`` and ``mfa_registration`` raise.
        self.roles = {k.lower(): tuple(v) for k, v in (roles or {}).items()}
        self.mfa = {k.lower(): v for k, v in (mfa or {}).items()}

    async def active_roles(self, object_id: str) -> tuple[DirectoryRole, ...]:
        self._read("active_roles")
        return tuple(r for r in self.roles.get(object_id.lower(), ()) if not r.eligible)

    async def eligible_roles(self, object_id: str) -> tuple[DirectoryRole, ...] | None:
        self._read("eligible_roles")
        if not self.p2:
            return None
        return tuple(r for r in self.roles.get(object_id.lower(), ()) if r.eligible)

    async def mfa_registration(self, object_id: str) -> MfaRegistration | None:
        self._read("mfa_registration")
        return self.mfa.get(object_id.lower())

    def _read(self, method: str) -> None:
        self.calls += 1
        failure = self.failures.get(method)
        if failure is not None:
            raise failure

    async def risk_level(self, object_id: str) -> str | None:
        self.calls += 1
        return self.risk.get(object_id)

    async def inbox_rules(self, key: str) -> tuple[InboxRule, ...] | None:
        self.calls += 1
        user = self._find(key)
        if user is None:
            return None
        return parse_rules(self.rules.get(user.user_principal_name.lower(), self.rules.get(user.id.lower(), [])))

    async def folder_name(self, key: str, folder_id: str) -> str | None:
        self.calls += 1
        return self.folders.get(folder_id)

    async def verified_domains(self) -> frozenset[str]:
        self.calls += 1
        return self.domains

    def _find(self, key: str) -> DirectoryUser | None:
        wanted = key.lower()
        for user in self.users:
            if wanted in (user.id.lower(), user.user_principal_name.lower()):
                return user
        return None

    async def user(self, key: str) -> DirectoryUser | None:
        self.calls += 1
        found = self._find(key)
        if found is None and "@" in key:
            # Like the Graph adapter: by mail or an SMTP proxy address, when exactly one user has it.
            wanted = key.lower()
            matches = [u for u in self.users if wanted == (u.mail or "").lower() or wanted in u.smtp_addresses()]
            found = matches[0] if len(matches) == 1 else None
        return found

    async def member_groups(self, key: str, group_ids: Sequence[str]) -> frozenset[str]:
        self.calls += 1
        user = self._find(key)
        if user is None:
            return frozenset()
        member = self.groups.get(user.id.lower(), set()) | self.groups.get(user.user_principal_name.lower(), set())
        return frozenset(g.lower() for g in group_ids if g.lower() in member)

    # -- containment and mail (writes) ---------------------------------------------------------------

    async def revoke_sessions(self, object_id: str) -> None:
        self._write("revoke_sessions", object_id)
        self.revoked.append(object_id)

    async def confirm_compromised(self, object_id: str) -> bool:
        user = self._write("confirm_compromised", object_id)
        if not self.p2:
            return False
        self.risk[user.id] = "high"  # what Identity Protection does on confirmCompromised
        self.confirmed.append(object_id)
        return True

    async def disable_account(self, object_id: str) -> None:
        user = self._write("disable_account", object_id)
        self.users = [replace(u, account_enabled=False) if u is user else u for u in self.users]
        self.disabled.append(object_id)

    async def send_mail(self, sender: str, mail: Mail) -> None:
        self._write("send_mail", sender)
        if not mail.to:
            raise ServiceRefused(
                "graph", "HTTP 400: ErrorInvalidRecipients: the message has no recipients", http_status=400
            )
        self.sent.append((sender, mail))

    async def set_inbox_rule_enabled(self, key: str, rule_id: str, enabled: bool) -> None:
        user = self._write("set_inbox_rule_enabled", key)
        rules = self.rules.get(user.user_principal_name.lower(), self.rules.get(user.id.lower(), []))
        rule = next((r for r in rules if r.get("id") == rule_id), None)
        if rule is None:
            raise ServiceRefused("graph", f"HTTP 404: ErrorItemNotFound: no rule {rule_id}", http_status=404)
        rule["isEnabled"] = enabled

    def _write(self, method: str, key: str) -> DirectoryUser:
        """Count the call, raise the failure set for ``method``, else the user ``key`` names (404 when none)."""
        self.calls += 1
        failure = self.failures.get(method)
        if failure is not None:
            raise failure
        user = self._find(key)
        if user is None:
            raise ServiceRefused("graph", f"HTTP 404: Request_ResourceNotFound: no user {key}", http_status=404)
        return user


class FakeTickets:
    """An in-memory ticket system (the ``TicketSystem`` port): it records what was created and every update.

    ``created`` holds each created ticket's content in order, ``updates`` each (ticket, content) update,
    ``tickets`` the machine-readable record of each correlation id's first ticket. Set ``fail_create`` or
    ``fail_update`` to an exception to make those calls raise it (nothing recorded), ``create_then_fail`` to
    create the ticket and then raise (a response lost on the way back: what ``find_open`` recovers), and
    ``searchable=False`` for a system ``find_open`` cannot search. ``close`` resolves a ticket.
    """

    def __init__(self, name: str = "fake", *, searchable: bool = True) -> None:
        self.name = name
        self.searchable = searchable
        self.created: list[TicketContent] = []
        self.updates: list[tuple[TicketRef, TicketContent]] = []
        self.tickets: dict[str, Mapping[str, Any]] = {}
        self.open_tickets: dict[str, TicketRef] = {}  # correlation id -> its open ticket
        self.fail_create: BaseException | None = None
        self.fail_update: BaseException | None = None
        self.create_then_fail: BaseException | None = None
        self.deliveries = 0  # calls that reached the system (create, update), failed ones included
        self._numbers = 0

    async def find_open(self, correlation_id: str) -> TicketRef | None:
        return self.open_tickets.get(correlation_id) if self.searchable else None

    async def create(self, content: TicketContent) -> TicketRef:
        self.deliveries += 1
        if self.fail_create is not None:
            raise self.fail_create
        ticket = self._new(content.correlation_id, content.record)
        self.created.append(content)
        if self.create_then_fail is not None:
            raise self.create_then_fail
        return ticket

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        self.deliveries += 1
        if self.fail_update is not None:
            raise self.fail_update
        self.updates.append((ticket, content))

    def close(self, correlation_id: str) -> None:
        self.open_tickets.pop(correlation_id, None)

    def _new(self, correlation_id: str, record: Mapping[str, Any]) -> TicketRef:
        self._numbers += 1
        ticket = TicketRef(id=f"FAKE-{self._numbers}", label=f"FAKE-{self._numbers}")
        self.open_tickets[correlation_id] = ticket
        self.tickets.setdefault(correlation_id, record)
        return ticket


class FakeChannel:
    """An in-memory chat channel (the ``ChatChannel`` port): ``posts`` holds every body posted, in order. Set
    ``fail`` to an exception to make ``post`` raise it; with ``posted_then_fail`` the body is recorded first (the
    answer was lost on the way back)."""

    def __init__(self, name: str = "teams") -> None:
        self.name = name
        self.posts: list[Mapping[str, Any]] = []
        self.fail: BaseException | None = None
        self.posted_then_fail: BaseException | None = None

    async def post(self, body: Mapping[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.posts.append(json.loads(json.dumps(body)))
        if self.posted_then_fail is not None:
            raise self.posted_then_fail


class MemoryStore:
    def __init__(self) -> None:
        self.claims: dict[str, dict[str, Any]] = {}
        self.history: dict[tuple[str, str], UnblockEntry] = {}
        self.audit_rows: list[Mapping[str, Any]] = []
        self.ledger: dict[str, dict[str, Any]] = {}  # correlation id -> owner, started_at, ticket, noted
        self.report_rows: dict[str, dict[tuple[str, str], Source]] = {}
        self.cursors: dict[str, Cursor] = {}
        self.pending_rows: dict[tuple[str, str], tuple[Mapping[str, Any], datetime]] = {}

    async def claim(self, key: str, delivery_id: str, now: datetime) -> ClaimResult:
        row = self.claims.get(key)
        if row is None:
            self.claims[key] = {"owner": delivery_id, "state": "claimed", "claimed_at": now}
            return ClaimResult.NEW
        result = resolve_claim(
            owner=row["owner"],
            state=row["state"],
            claimed_at=row["claimed_at"],
            delivery_id=delivery_id,
            now=now,
        )
        if result is ClaimResult.RESUMED:
            row.update(owner=delivery_id, claimed_at=now)
        return result

    async def complete(self, key: str, delivery_id: str, outcome: str, now: datetime) -> None:
        self.claims[key] = {"owner": delivery_id, "state": "done", "claimed_at": now, "outcome": outcome}

    async def claim_state(self, key: str) -> ClaimState | None:
        row = self.claims.get(key)
        if row is None:
            return None
        return ClaimState(row["owner"], row["state"], row["claimed_at"], row.get("outcome"))

    async def add_report(self, key: str, source: Source) -> None:
        rows = self.report_rows.setdefault(key, {})
        if (source.kind, source.id) not in rows and len(rows) < MAX_REPORTS:
            rows[(source.kind, source.id)] = source

    async def reports(self, key: str) -> tuple[Source, ...]:
        return tuple(sorted(self.report_rows.get(key, {}).values(), key=lambda s: (s.at, s.kind, s.id)))

    async def read_cursor(self, name: str) -> Cursor | None:
        return self.cursors.get(name)

    async def write_cursor(self, name: str, value: str, version: str | None) -> bool:
        current = self.cursors.get(name)
        if (current.version if current else None) != version:
            return False
        self.cursors[name] = Cursor(value, str(int(current.version) + 1 if current else 1))
        return True

    async def keep_pending(self, group: str, key: str, data: Mapping[str, Any], now: datetime) -> None:
        self.pending_rows[(group, key)] = (json.loads(pending_text(group, key, data)), now + PENDING_TTL)

    async def pending(self, group: str, keys: Collection[str], now: datetime) -> dict[str, Mapping[str, Any]]:
        found = {k: self.pending_rows.get((group, k)) for k in keys}
        return {k: row[0] for k, row in found.items() if row is not None and row[1] > now}

    async def record_unblock(self, entry: UnblockEntry) -> None:
        self._put(entry)

    def _put(self, entry: UnblockEntry) -> None:
        # Like the real stores: the user is kept lower-cased, so it reads back the same whatever case was sent.
        self.history[(entry.user.lower(), entry.event_id)] = replace(entry, user=entry.user.lower())

    async def unblocks(self, user: str, since: datetime) -> Sequence[UnblockEntry]:
        return sorted(
            (e for (u, _), e in self.history.items() if u == user.lower() and e.at >= since),
            key=lambda e: e.at,
        )

    async def tenant_unblocks(self, since: datetime) -> Sequence[UnblockEntry]:
        return sorted((e for e in self.history.values() if e.at >= since), key=lambda e: e.at)

    async def reserve_unblock(
        self,
        entry: UnblockEntry,
        *,
        user_budget: Budget | None,
        tenant_budget: Budget | None,
        restriction_since: datetime | None = None,
    ) -> BudgetRefusal | None:
        # No await between the check and the write: atomic within the one event loop that owns this fake.
        refusal = budget_refusal(
            entry,
            self.history.values(),
            user_budget=user_budget,
            tenant_budget=tenant_budget,
            restriction_since=restriction_since,
        )
        if refusal is None:
            self._put(entry)
        return refusal

    # No await in the ledger's methods: each is atomic within the one event loop that owns this fake.

    async def begin_ticket(self, correlation_id: str, event_id: str, now: datetime) -> TicketSlot:
        row = self.ledger.get(correlation_id)
        if row is None:
            self.ledger[correlation_id] = {"owner": event_id, "started_at": now, "ticket": None, "noted": []}
            return TicketSlot("create")
        slot = resolve_ticket(
            owner=row["owner"],
            started_at=row["started_at"],
            ticket=row["ticket"],
            noted=row["noted"],
            event_id=event_id,
            now=now,
        )
        if slot.action == "create":  # the owner's retry renews its lease; a taker writes itself in
            row.update(owner=event_id, started_at=now)
        return slot

    async def ticket_opened(self, correlation_id: str, event_id: str, ticket: TicketRef, now: datetime) -> None:
        fresh = {"owner": event_id, "started_at": now, "ticket": None, "noted": []}
        row = self.ledger.setdefault(correlation_id, fresh)
        if row["ticket"] is None:  # the first ticket recorded stays the restriction's ticket
            row["ticket"] = ticket
        row["noted"] = noted_with(row["noted"], event_id)

    async def ticket_noted(self, correlation_id: str, event_id: str, now: datetime) -> None:
        row = self.ledger.get(correlation_id)
        if row is not None and row["ticket"] is not None:
            row["noted"] = noted_with(row["noted"], event_id)

    async def append_audit(self, record: Mapping[str, Any]) -> None:
        self.audit_rows.append(dict(record))

    async def audit(self, user: str | None = None) -> Sequence[Mapping[str, Any]]:
        return [r for r in self.audit_rows if user is None or str(r.get("user", "")).lower() == user.lower()]

    async def close(self) -> None:
        return None


class MemoryDelayedQueue:
    """The verification queue in memory: ``scheduled`` holds (message, delay) in the order sent."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[str, timedelta]] = []
        self.available = True

    async def send_later(self, message: str, delay: timedelta) -> None:
        if not self.available:
            raise QueueUnavailable("queue", "the verification queue is unavailable")
        self.scheduled.append((message, delay))

    def drain(self) -> list[tuple[str, timedelta]]:
        taken, self.scheduled = self.scheduled, []
        return taken


class FakeAlertFeed:
    """alerts_v2 pages from a list; ``refuse_combined`` answers a two-clause filter like a strict Graph would."""

    def __init__(self, alerts: Sequence[Mapping[str, Any]], *, page_size: int = 2, refuse_combined: bool = False):
        self.alerts = list(alerts)
        self.page_size = page_size
        self.refuse_combined = refuse_combined
        self.requests: list[tuple[str, str | None]] = []

    async def alerts_page(self, *, filter: str, top: int, next_link: str | None = None) -> AlertsPage:
        self.requests.append((filter, next_link))
        if next_link is None and self.refuse_combined and " and " in filter:
            raise FilterRefused("graph", "HTTP 400: BadRequest: Invalid filter clause", http_status=400)
        start = int(next_link or 0)
        page = self.alerts[start : start + self.page_size]
        more = start + self.page_size < len(self.alerts)
        return AlertsPage(tuple(page), str(start + self.page_size) if more else None)


class FakeManagementActivity:
    """Content blobs by URI; ``subscriptions`` started with :meth:`start`."""

    def __init__(self, blobs: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> None:
        self.blobs = dict(blobs or {})
        self.fetched: list[str] = []
        self.started: list[dict[str, Any]] = []

    async def content(self, content_uri: str) -> Sequence[Mapping[str, Any]]:
        self.fetched.append(content_uri)
        if content_uri not in self.blobs:
            raise ContentExpired("o365", "AF20051: content expired")
        return self.blobs[content_uri]

    async def start(self, content_type: str, webhook: Mapping[str, Any] | None) -> Mapping[str, Any]:
        entry = {"contentType": content_type, "status": "enabled", "webhook": dict(webhook) if webhook else None}
        self.started.append(entry)
        return entry

    async def subscriptions(self) -> Sequence[Mapping[str, Any]]:
        return list(self.started)
