"""The embedded store (SQLite) for the CLI and the demo. Same contract as the Table Storage store.

The ticket ledger is the ``tickets`` table: one row per correlation id (its owner and lease start while the
ticket is being opened, then the ticket), with the events already on the ticket as a JSON list of at most
``TICKET_NOTED_KEEP`` ids. Every ledger write is one ``BEGIN IMMEDIATE`` transaction: read, decide, write.

Intake bookkeeping: ``reports`` (one row per restriction key and source, at most ``MAX_REPORTS`` per key, counted
and inserted in one ``BEGIN IMMEDIATE`` transaction, so the cap is exact across processes), ``cursors`` (value and
a version counter, compared and bumped in one transaction) and ``pending`` (JSON text with its expiry).
Instants are stored as ``_micro`` text: fixed width, so text order is time order and SQL can compare them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from restricted_sender.core.ledger import budget_refusal, noted_with, pending_text, resolve_claim, resolve_ticket
from restricted_sender.model import Source, TicketRef, UnblockEntry, UnblockKind
from restricted_sender.ports import MAX_REPORTS, PENDING_TTL, BudgetRefusal, ClaimResult, ClaimState, Cursor, TicketSlot
from restricted_sender.timeutil import iso, parse_instant

if TYPE_CHECKING:
    from restricted_sender.core.policy import Budget

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, claimed_at TEXT NOT NULL, outcome TEXT
);
CREATE TABLE IF NOT EXISTS unblocks (
    user TEXT NOT NULL, event_id TEXT NOT NULL, at TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '', PRIMARY KEY (user, event_id)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, at TEXT NOT NULL, event_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tickets (
    correlation_id TEXT PRIMARY KEY, owner TEXT NOT NULL, started_at TEXT NOT NULL,
    ticket_id TEXT, ticket_label TEXT, ticket_url TEXT, noted TEXT NOT NULL DEFAULT '[]', updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    key TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (key, kind, id)
);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    grp TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, expires TEXT NOT NULL, PRIMARY KEY (grp, key)
);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user, seq);
CREATE INDEX IF NOT EXISTS unblocks_at ON unblocks (at);
CREATE INDEX IF NOT EXISTS pending_expires ON pending (expires);
"""


@lru_cache(maxsize=65536)
def _unblock_entry(user: str, event_id: str, at: str, kind: str, status: str, detail: str) -> UnblockEntry:
    """A row as its (frozen) entry, kept: the tenant budget reads every unblock of its window for each event, and
    parsing the same rows again made a burst quadratic in its unblocks (~1 s of CPU over 1,000 events)."""
    return UnblockEntry(
        user=user, event_id=event_id, at=parse_instant(at), kind=UnblockKind(kind), status=status, detail=detail
    )


class SqliteStore:
    def __init__(self, path: str | Path = ":memory:") -> None:
        # One connection guarded by a lock: the CLI is one process; SQLite serialises writers anyway.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    async def claim(self, key: str, delivery_id: str, now: datetime) -> ClaimResult:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO claims (key, owner, state, claimed_at) VALUES (?, ?, 'claimed', ?)",
                    (key, delivery_id, _micro(now)),
                ).rowcount
                if inserted:
                    result = ClaimResult.NEW
                else:
                    owner, state, claimed_at = self._db.execute(
                        "SELECT owner, state, claimed_at FROM claims WHERE key = ?", (key,)
                    ).fetchone()
                    result = resolve_claim(
                        owner=owner,
                        state=state,
                        claimed_at=parse_instant(claimed_at),
                        delivery_id=delivery_id,
                        now=now,
                    )
                    if result is ClaimResult.RESUMED:
                        self._db.execute(
                            "UPDATE claims SET owner = ?, claimed_at = ? WHERE key = ?",
                            (delivery_id, _micro(now), key),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result

    async def complete(self, key: str, delivery_id: str, outcome: str, now: datetime) -> None:
        # The whole row is replaced, completion time included, as the other stores do (claim_state shows it).
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO claims (key, owner, state, claimed_at, outcome) VALUES (?, ?, 'done', ?, ?)",
                (key, delivery_id, _micro(now), outcome),
            )

    async def claim_state(self, key: str) -> ClaimState | None:
        with self._lock:
            found = self._db.execute(
                "SELECT owner, state, claimed_at, outcome FROM claims WHERE key = ?", (key,)
            ).fetchone()
        if found is None:
            return None
        owner, state, claimed_at, outcome = found
        return ClaimState(owner, "done" if state == "done" else "claimed", parse_instant(claimed_at), outcome)

    # -- intake bookkeeping ---------------------------------------------------------------------------------

    async def add_report(self, key: str, source: Source) -> None:
        # Counted and inserted under the write lock: the cap holds exactly, even across processes.
        with self._immediate():
            self._db.execute(
                "INSERT OR IGNORE INTO reports (key, kind, id, at) SELECT ?, ?, ?, ? "
                "WHERE (SELECT COUNT(*) FROM reports WHERE key = ?) < ?",
                (key, source.kind, source.id, _micro(source.at), key, MAX_REPORTS),
            )

    async def reports(self, key: str) -> tuple[Source, ...]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, id, at FROM reports WHERE key = ? ORDER BY at, kind, id", (key,)
            ).fetchall()
        return tuple(Source(kind, id_, parse_instant(at)) for kind, id_, at in rows)

    async def read_cursor(self, name: str) -> Cursor | None:
        with self._lock:
            found = self._db.execute("SELECT value, version FROM cursors WHERE name = ?", (name,)).fetchone()
        return None if found is None else Cursor(found[0], str(found[1]))

    async def write_cursor(self, name: str, value: str, version: str | None) -> bool:
        with self._immediate():
            found = self._db.execute("SELECT version FROM cursors WHERE name = ?", (name,)).fetchone()
            current = None if found is None else str(found[0])
            if current != version:
                return False
            self._db.execute(
                "INSERT INTO cursors (name, value, version) VALUES (?, ?, 1) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, version = version + 1",
                (name, value),
            )
            return True

    async def keep_pending(self, group: str, key: str, data: Mapping[str, Any], now: datetime) -> None:
        text = pending_text(group, key, data)  # the Table store's size limit, so the CLI fails where Azure would
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending (grp, key, data, expires) VALUES (?, ?, ?, ?)",
                (group, key, text, _micro(now + PENDING_TTL)),
            )
            # Rows that expired a whole TTL ago are invisible to any reader whose clock is within a TTL of ours.
            self._db.execute("DELETE FROM pending WHERE expires <= ?", (_micro(now - PENDING_TTL),))

    async def pending(self, group: str, keys: Collection[str], now: datetime) -> dict[str, Mapping[str, Any]]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Mapping[str, Any]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # well inside SQLite's limit on bound parameters
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, data FROM pending WHERE grp = ? AND expires > ? AND key IN ({marks})",  # noqa: S608
                    (group, _micro(now), *chunk),
                ).fetchall()
                found.update((key, json.loads(data)) for key, data in rows)
        return found

    async def record_unblock(self, entry: UnblockEntry) -> None:
        with self._lock:
            self._put(entry)

    def _put(self, entry: UnblockEntry) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO unblocks (user, event_id, at, kind, status, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.user.lower(), entry.event_id, iso(entry.at), entry.kind.value, entry.status, entry.detail),
        )

    def _select(self, user: str | None, since: datetime) -> list[UnblockEntry]:
        """The user's entries (everyone's for ``None``) at or after ``since``, oldest first."""
        # ``at`` is always ``iso()`` text (UTC, seconds, ``Z``), so text order is time order; a second's margin
        # keeps the SQL filter conservative, and the exact one runs on the parsed instants.
        try:
            bound = iso(since - timedelta(seconds=1))
        except OverflowError:  # ``since`` at the very start of time: everything
            bound = ""
        columns = "SELECT user, event_id, at, kind, status, detail FROM unblocks"
        if user is None:
            rows = self._db.execute(f"{columns} WHERE at >= ? ORDER BY at", (bound,)).fetchall()
        else:
            rows = self._db.execute(f"{columns} WHERE user = ? AND at >= ? ORDER BY at", (user, bound)).fetchall()
        entries = [_unblock_entry(*row) for row in rows]
        return [entry for entry in entries if entry.at >= since]

    async def unblocks(self, user: str, since: datetime) -> Sequence[UnblockEntry]:
        with self._lock:
            return self._select(user.lower(), since)

    async def tenant_unblocks(self, since: datetime) -> Sequence[UnblockEntry]:
        with self._lock:
            return self._select(None, since)

    async def reserve_unblock(
        self, entry: UnblockEntry, *, user_budget: Budget | None, tenant_budget: Budget | None
    ) -> BudgetRefusal | None:
        with self._lock:
            # BEGIN IMMEDIATE takes the database's write lock before reading: another connection (another
            # process) reserving at the same time waits here, then sees this entry.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                history: dict[tuple[str, str], UnblockEntry] = {}
                if user_budget is not None:
                    start = entry.at - timedelta(hours=user_budget.window_hours)
                    for found in self._select(entry.user.lower(), start):
                        history[(found.user, found.event_id)] = found
                if tenant_budget is not None:
                    start = entry.at - timedelta(hours=tenant_budget.window_hours)
                    for found in self._select(None, start):
                        history[(found.user, found.event_id)] = found
                refusal = budget_refusal(entry, history.values(), user_budget=user_budget, tenant_budget=tenant_budget)
                if refusal is None:
                    self._put(entry)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return refusal

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """One write transaction: ``BEGIN IMMEDIATE`` takes the write lock before reading, so another process's
        read-decide-write waits for this one and then sees its result."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _ledger_row(self, correlation_id: str) -> tuple[str, str, TicketRef | None, list[str]] | None:
        found = self._db.execute(
            "SELECT owner, started_at, ticket_id, ticket_label, ticket_url, noted FROM tickets "
            "WHERE correlation_id = ?",
            (correlation_id,),
        ).fetchone()
        if found is None:
            return None
        owner, started_at, ticket_id, label, url, noted = found
        ticket = None if ticket_id is None else TicketRef(id=ticket_id, label=label, url=url)
        return owner, started_at, ticket, [str(e) for e in json.loads(noted)]

    async def begin_ticket(self, correlation_id: str, event_id: str, now: datetime) -> TicketSlot:
        with self._immediate():
            row = self._ledger_row(correlation_id)
            if row is None:
                self._db.execute(
                    "INSERT INTO tickets (correlation_id, owner, started_at, updated_at) VALUES (?, ?, ?, ?)",
                    (correlation_id, event_id, _micro(now), _micro(now)),
                )
                return TicketSlot("create")
            owner, started_at, ticket, noted = row
            slot = resolve_ticket(
                owner=owner,
                started_at=parse_instant(started_at),
                ticket=ticket,
                noted=noted,
                event_id=event_id,
                now=now,
            )
            if slot.action == "create":  # the owner's retry renews its lease; a taker writes itself in
                self._db.execute(
                    "UPDATE tickets SET owner = ?, started_at = ?, updated_at = ? WHERE correlation_id = ?",
                    (event_id, _micro(now), _micro(now), correlation_id),
                )
            return slot

    async def ticket_opened(self, correlation_id: str, event_id: str, ticket: TicketRef, now: datetime) -> None:
        with self._immediate():
            row = self._ledger_row(correlation_id)
            recorded, noted = (row[2], row[3]) if row else (None, [])
            kept = recorded or ticket  # the first ticket recorded stays the restriction's ticket
            self._db.execute(
                "INSERT INTO tickets (correlation_id, owner, started_at, ticket_id, ticket_label, ticket_url, noted, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (correlation_id) DO UPDATE SET "
                "ticket_id = excluded.ticket_id, ticket_label = excluded.ticket_label, "
                "ticket_url = excluded.ticket_url, noted = excluded.noted, updated_at = excluded.updated_at",
                (
                    correlation_id,
                    event_id,
                    _micro(now),
                    kept.id,
                    kept.label,
                    kept.url,
                    json.dumps(noted_with(noted, event_id)),
                    _micro(now),
                ),
            )

    async def ticket_noted(self, correlation_id: str, event_id: str, now: datetime) -> None:
        with self._immediate():
            row = self._ledger_row(correlation_id)
            if row is not None and row[2] is not None:  # only a recorded ticket has events on it
                self._db.execute(
                    "UPDATE tickets SET noted = ?, updated_at = ? WHERE correlation_id = ?",
                    (json.dumps(noted_with(row[3], event_id)), _micro(now), correlation_id),
                )

    async def append_audit(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (user, at, event_id, record) VALUES (?, ?, ?, ?)",
                (
                    str(record.get("user", "")).lower(),
                    str(record.get("at", "")),
                    str(record.get("event_id", "")),
                    json.dumps(record, sort_keys=True),
                ),
            )

    async def audit(self, user: str | None = None) -> Sequence[Mapping[str, Any]]:
        with self._lock:
            if user is None:
                rows = self._db.execute("SELECT record FROM audit ORDER BY seq").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT record FROM audit WHERE user = ? ORDER BY seq", (user.lower(),)
                ).fetchall()
        return [json.loads(row[0]) for row in rows]

    async def close(self) -> None:
        with self._lock:
            self._db.close()


def _micro(instant: datetime) -> str:
    """An instant to the microsecond (the lease compares instants), UTC, ``Z``."""
    return instant.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
