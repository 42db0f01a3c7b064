"""In-memory fakes of every port, for unit tests and quick experiments. Same contracts as the adapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import QueueUnavailable, SenderNotBlocked, UnblockLimitReached
from .mailbox import Forwarding, InboxRule, parse_rules
from .model import DirectoryUser, UnblockEntry
from .ports import BudgetRefusal, ClaimResult, budget_refusal, resolve_claim
from .restriction import BlockedSender

if TYPE_CHECKING:
    from .policy import Budget


class MemoryQueue:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.available = True

    def send(self, message: str) -> None:
        if not self.available:
            raise QueueUnavailable("queue", "queue is unavailable")
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
    ) -> None:
        self.rows = [dict(r) for r in rows]
        self.limit_reached = {a.lower() for a in limit_reached}
        self.mailboxes = {k.lower(): dict(v) for k, v in (mailboxes or {}).items()}  # Get-Mailbox rows
        self.removed: list[str] = []
        self.calls = 0

    async def mailbox_forwarding(self, address: str) -> Forwarding | None:
        self.calls += 1
        row = self.mailboxes.get(address.lower())
        return None if row is None else Forwarding.from_mailbox(row)

    async def blocked_senders(self, address: str | None = None) -> Sequence[BlockedSender]:
        self.calls += 1
        rows = [r for r in self.rows if address is None or str(r["SenderAddress"]).lower() == address.lower()]
        return [BlockedSender.from_row(r) for r in rows]

    async def remove_blocked_sender(self, address: str) -> None:
        self.calls += 1
        if address.lower() in self.limit_reached:
            raise UnblockLimitReached("exchange", f"unblock limit reached for {address}", http_status=400)
        before = len(self.rows)
        self.rows = [r for r in self.rows if str(r["SenderAddress"]).lower() != address.lower()]
        if len(self.rows) == before:
            raise SenderNotBlocked("exchange", f"{address} is not blocked", http_status=400)
        self.removed.append(address.lower())


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
    ):
        self.users = list(users)
        self.groups = {k.lower(): {g.lower() for g in v} for k, v in (groups or {}).items()}
        self.risk = dict(risk or {})  # object id -> level; absent: unknown (no Entra ID P2)
        self.rules = {k.lower(): list(v) for k, v in (rules or {}).items()}  # user key -> Graph messageRule JSON
        self.folders = dict(folders or {})  # folder id -> display name
        self.domains = frozenset(d.lower() for d in domains)
        self.calls = 0

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
        return self._find(key)

    async def member_groups(self, key: str, group_ids: Sequence[str]) -> frozenset[str]:
        self.calls += 1
        user = self._find(key)
        if user is None:
            return frozenset()
        member = self.groups.get(user.id.lower(), set()) | self.groups.get(user.user_principal_name.lower(), set())
        return frozenset(g.lower() for g in group_ids if g.lower() in member)


class FakeTickets:
    def __init__(self) -> None:
        self.tickets: dict[str, Mapping[str, Any]] = {}
        self.deliveries = 0

    async def open(self, correlation_id: str, record: Mapping[str, Any]) -> str:
        self.deliveries += 1
        self.tickets.setdefault(correlation_id, record)
        return f"FAKE-{list(self.tickets).index(correlation_id) + 1}"


class MemoryStore:
    def __init__(self) -> None:
        self.claims: dict[str, dict[str, Any]] = {}
        self.history: dict[tuple[str, str], UnblockEntry] = {}
        self.audit_rows: list[Mapping[str, Any]] = []

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
        self, entry: UnblockEntry, *, user_budget: Budget | None, tenant_budget: Budget | None
    ) -> BudgetRefusal | None:
        # No await between the check and the write: atomic within the one event loop that owns this fake.
        refusal = budget_refusal(entry, self.history.values(), user_budget=user_budget, tenant_budget=tenant_budget)
        if refusal is None:
            self._put(entry)
        return refusal

    async def append_audit(self, record: Mapping[str, Any]) -> None:
        self.audit_rows.append(dict(record))

    async def audit(self, user: str | None = None) -> Sequence[Mapping[str, Any]]:
        return [r for r in self.audit_rows if user is None or str(r.get("user", "")).lower() == user.lower()]

    async def close(self) -> None:
        return None
