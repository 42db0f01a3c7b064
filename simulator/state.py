"""The simulator's mutable state: the restricted list, tickets received, and the request log."""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from simulator.tenant import Json, Tenant, find_user, strip_private
from simulator.wire import Clock, SystemClock


class TenantState:
    """A private, mutable copy of a tenant; every method is thread-safe."""

    def __init__(
        self, tenant: Tenant, clock: Clock | None = None, *, delays: Callable[[], float] = time.monotonic
    ) -> None:
        self.tenant = tenant
        self.tenant_id = tenant.tenant_id
        self.users: list[Json] = copy.deepcopy(tenant.users)
        self.groups: list[Json] = copy.deepcopy(tenant.groups)
        self.domains: list[Json] = copy.deepcopy(tenant.domains)
        self.alerts: list[Json] = copy.deepcopy(tenant.alerts)
        self.recipients: list[Json] = copy.deepcopy(tenant.recipients)
        self._blocked: list[Json] = copy.deepcopy(tenant.blocked_senders)
        self._removal_due: dict[str, float] = {}
        self._tickets: list[Json] = []
        self.clock: Clock = clock or SystemClock()
        # A removal's propagation delay is elapsed time, not a date: it runs on ``delays`` (monotonic seconds).
        self._delays = delays
        # When the tenant was loaded: what riskyUser.riskLastUpdatedDateTime reports (stable per run).
        self.loaded_at = self.clock.now()
        self._lock = threading.RLock()

    def now(self) -> dt.datetime:
        """The tenant's "now" (the injected clock): what timestamps written by the endpoints say."""
        return self.clock.now()

    def find_user(self, key: str) -> Json | None:
        return find_user(self.users, key)

    # -- restricted list -------------------------------------------------------------------------------

    def _purge(self) -> None:
        now = self._delays()
        due = {address for address, at in self._removal_due.items() if at <= now}
        if due:
            self._blocked = [row for row in self._blocked if row["SenderAddress"].casefold() not in due]
            for address in due:
                del self._removal_due[address]

    def blocked_rows(self) -> list[Json]:
        """The rows Get-BlockedSenderAddress serves now, ``x-`` keys removed."""
        with self._lock:
            self._purge()
            rows: list[Json] = strip_private(self._blocked)
            return rows

    def find_blocked(self, address: str) -> Json | None:
        """The full stored row (``x-`` keys included) for ``address``, a copy."""
        with self._lock:
            self._purge()
            for row in self._blocked:
                if row["SenderAddress"].casefold() == address.casefold():
                    return copy.deepcopy(row)
            return None

    def schedule_removal(self, address: str) -> bool:
        """Start lifting the block on ``address``; False when it is not on the list.

        A removal already under way keeps its original due time, so repeating it changes nothing.
        """
        with self._lock:
            self._purge()
            key = address.casefold()
            row = next((r for r in self._blocked if r["SenderAddress"].casefold() == key), None)
            if row is None:
                return False
            if key in self._removal_due:
                return True
            delay = float(row.get("x-removalDelaySeconds", self.tenant.removal_delay_seconds))
            if delay <= 0:
                self._blocked.remove(row)
            else:
                self._removal_due[key] = self._delays() + delay
            return True

    def add_blocked(self, row: Mapping[str, Any]) -> None:
        """Put a row on the restricted list, replacing any row for the same address."""
        address = row.get("SenderAddress")
        if not isinstance(address, str) or not address:
            raise ValueError("a blocked sender row needs a SenderAddress")
        with self._lock:
            key = address.casefold()
            self._blocked = [r for r in self._blocked if r["SenderAddress"].casefold() != key]
            self._removal_due.pop(key, None)
            self._blocked.append(copy.deepcopy(dict(row)))

    # -- mailboxes (Set-Mailbox) -----------------------------------------------------------------------

    def set_mailbox(self, identity: str, changes: Mapping[str, Any], by_proxy: Callable[[str], Json | None]) -> bool:
        """Apply ``changes`` to the ``x-mailbox`` of the user ``identity`` names; False when there is none. The user
        is swapped for a changed copy, never changed in place (a reader sees the old one or the new one)."""
        with self._lock:
            user = self.find_user(identity) or by_proxy(identity)
            if user is None:
                return False
            for index, current in enumerate(self.users):
                if current is user:
                    self.users[index] = {**current, "x-mailbox": {**(current.get("x-mailbox") or {}), **changes}}
            return True

    # -- ticket webhook --------------------------------------------------------------------------------

    def record_ticket(
        self, key: str | None, signature: str | None, body: Any, headers: Mapping[str, str]
    ) -> tuple[Json, bool]:
        """Store a delivery; returns the ticket (a copy) and whether it is new."""
        with self._lock:
            if key is not None:
                for existing in self._tickets:
                    if existing["idempotency_key"] == key:
                        existing["deliveries"] += 1
                        return copy.deepcopy(existing), False
            ticket: Json = {
                "id": f"SIM-{len(self._tickets) + 1:04d}",
                "idempotency_key": key,
                "signature": signature,
                "body": copy.deepcopy(body),
                "headers": dict(headers),
                "deliveries": 1,
                "updates": [],
            }
            self._tickets.append(ticket)
            return copy.deepcopy(ticket), True

    def update_ticket(self, ticket_id: str, key: str | None, body: Any) -> Json | None:
        """Add an update to ticket ``ticket_id`` (an exact repeat of ``key`` is counted, not added)."""
        with self._lock:
            ticket = next((t for t in self._tickets if t["id"] == ticket_id), None)
            if ticket is None:
                return None
            ticket["deliveries"] += 1
            if key is None or all(u["idempotency_key"] != key for u in ticket["updates"]):
                ticket["updates"].append({"idempotency_key": key, "body": copy.deepcopy(body)})
            return copy.deepcopy(ticket)

    def tickets(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._tickets)


class RequestLog:
    """Every request in arrival order; the status is filled in when the answer is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Json] = []

    def add(self, entry: Json) -> Json:
        with self._lock:
            self._entries.append(entry)
        return entry

    def set_status(self, entry: Json, status: int | None) -> None:
        with self._lock:
            entry["status"] = status

    def snapshot(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._entries)

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count
