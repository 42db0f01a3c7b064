"""Azure Table Storage store: claims (conditional insert + ETag take-over), unblock history, audit trail.

Unblock history lives in ONE partition (``budget``) of the unblocks table, so a reservation can check and
write it atomically: a row per user (``user:<key>``, that user's entries, kept ten years) and a ``tenant`` row
(everyone's entries, kept 30 days: the longest circuit-breaker window the policy allows). Each row holds its
entries as JSON text. Every write reads both rows, then replaces both in one entity-group transaction
conditioned on the ETags it read (or creates a missing row); a concurrent writer makes it fail with 412/409
and the loop reads again. The tenant row is therefore a serialisation point for every unblock in the tenant:
fine at the rates the budgets allow (a handful an hour).

The ticket ledger shares the claims table: one row per restriction, PartitionKey ``ledger_key(correlation id)``,
RowKey ``ticket`` (a claim's RowKey is ``claim``, so the two never meet). It holds ``Owner`` and ``StartedAt``
(who is opening the ticket, and since when: the lease), then ``TicketId``/``TicketLabel``/``TicketUrl`` once
the ticket is recorded, and ``Noted``: the events already on the ticket, a JSON list of at most
``TICKET_NOTED_KEEP`` ids. The first caller creates the row (a conditional insert: of racing callers exactly one
succeeds); every later change is a merge conditioned on the ETag read, retried on 412 after reading again.

Intake bookkeeping shares the claims table too; the RowKey tells the kinds of row apart, and every key part is
escaped by :func:`exact_key` (case-preserving, like the ledger's), whose output never holds ``:``:

* reports: PartitionKey ``exact_key(restriction key)`` (the claim row's partition when the key is lower-case),
  one row per source, RowKey ``report:<kind>:<id>`` (``Kind``, ``Id``, ``At``), plus a ``report-count`` row
  (``Count``). A report is created in one entity-group transaction with the count's conditional update, so
  ``MAX_REPORTS`` holds exactly; ``reports`` is one range query over that partition's ``report:`` rows.
* cursors: PartitionKey ``exact_key(name)``, RowKey ``cursor``, ``Value``; the ETag is the version.
* pending: PartitionKey ``pending:<exact_key(group)>``, RowKey ``exact_key(key)``, ``Data`` (JSON text) and
  ``Expires``. Expired rows are only ignored, never deleted: a clean-up would query ``Expires lt now``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from restricted_sender.core.ledger import (
    TICKET_NOTED_KEEP,
    budget_refusal,
    noted_with,
    pending_text,
    resolve_claim,
    resolve_ticket,
)
from restricted_sender.errors import ServiceError, TransientServiceError
from restricted_sender.model import MAX_UNBLOCK_DETAIL, Source, TicketRef, UnblockEntry, UnblockKind
from restricted_sender.ports import MAX_REPORTS, PENDING_TTL, BudgetRefusal, ClaimResult, ClaimState, Cursor, TicketSlot
from restricted_sender.timeutil import iso, parse_instant

if TYPE_CHECKING:
    from azure.data.tables import TableEntity
    from azure.data.tables.aio import TableClient, TableServiceClient

    from restricted_sender.core.policy import Budget

T = TypeVar("T")

MAX_RECORD_CHARS = 30_000  # a string property holds 64 KiB of UTF-16
_CLAIM_ROW = "claim"
_TICKET_ROW = "ticket"
_CURSOR_ROW = "cursor"
_REPORT_COUNT_ROW = "report-count"  # sorts before "report:", outside the report rows' range
_REPORT_ROWS = ("report:", "report;")  # the RowKey range of report rows: ";" follows ":"
_PENDING_PARTITION = "pending:"  # no other PartitionKey holds ":" (the key functions escape it)
MAX_KEY_CHARS = 400  # a longer escaped key part is hashed: a PartitionKey or RowKey holds at most 1 KiB
PENDING_READS = 16  # point reads in flight at once for one ``pending`` call

BUDGET_PARTITION = "budget"
TENANT_ROW = "tenant"
TENANT_KEEP = timedelta(days=30)  # >= the policy's longest tenant window (720 hours)
USER_KEEP = timedelta(days=3650)  # >= the policy's longest user window
# Entries are ASCII JSON split over properties of MAX_RECORD_CHARS: 8 of them is 480 KB of UTF-16, inside the
# 1 MiB entity limit (and two rows inside a transaction's 4 MiB). About 2,000 entries; the oldest go first.
MAX_ENTRY_CHUNKS = 8
MAX_WRITE_TRIES = 10


_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@._-+")


def table_key(value: str) -> str:
    """PartitionKey/RowKey may not hold / \\ # ? or control characters (guest UPNs carry #EXT#).

    Everything else is written as ``~XX`` per UTF-8 byte; ``%`` is avoided on purpose, since the service has
    been known to mis-handle it in point look-ups. Injective, so two users never share a key.
    """
    return "".join(c if c in _KEY_SAFE else "".join(f"~{b:02X}" for b in c.encode()) for c in value.lower())


def ledger_key(correlation_id: str) -> str:
    """Like :func:`table_key`, but case-preserving: a correlation id is an exact value, not an address."""
    return "".join(
        c if c in _KEY_SAFE or (c.isascii() and c.isupper()) else "".join(f"~{b:02X}" for b in c.encode())
        for c in correlation_id
    )


def exact_key(value: str) -> str:
    """:func:`ledger_key`, or, past ``MAX_KEY_CHARS``, ``~H`` and a SHA-256 of the value.

    ``ledger_key`` only writes ``~`` before two hex digits, so a hashed key never equals a plain one.
    """
    key = ledger_key(value)
    if len(key) <= MAX_KEY_CHARS:
        return key
    return "~H" + hashlib.sha256(value.encode()).hexdigest()


class TableStore:
    service = "store"

    def __init__(self, service: TableServiceClient, *, prefix: str = "rsr", credential: Any = None) -> None:
        self._service = service
        self._credential = credential  # closed with the store when the store created it
        self._names = {kind: f"{prefix}{kind}" for kind in ("claims", "unblocks", "audit")}
        self._tables: dict[str, TableClient] = {}
        self._ready = asyncio.Lock()
        self._last_append = 0

    @classmethod
    def from_connection_string(cls, connection: str, *, prefix: str = "rsr") -> TableStore:
        from azure.data.tables.aio import TableServiceClient

        return cls(TableServiceClient.from_connection_string(connection), prefix=prefix)

    async def _table(self, kind: str) -> TableClient:
        if not self._tables:
            async with self._ready:
                if not self._tables:
                    async with _errors("open tables"):  # the first call is where an unreachable account shows
                        clients = await asyncio.gather(
                            *(self._service.create_table_if_not_exists(name) for name in self._names.values())
                        )
                    self._tables.update(zip(self._names, clients, strict=True))
        return self._tables[kind]

    async def claim(self, key: str, delivery_id: str, now: datetime) -> ClaimResult:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError
        from azure.data.tables import UpdateMode

        table = await self._table("claims")
        entity = {
            "PartitionKey": table_key(key),
            "RowKey": _CLAIM_ROW,
            "Owner": delivery_id,
            "State": "claimed",
            "ClaimedAt": now,
        }
        async with _errors("claim"):
            try:
                await table.create_entity(entity)
                return ClaimResult.NEW
            except ResourceExistsError:
                pass
            existing = await table.get_entity(table_key(key), _CLAIM_ROW)
            result = resolve_claim(
                owner=str(existing.get("Owner", "")),
                state=str(existing.get("State", "")),
                claimed_at=_instant(existing.get("ClaimedAt")),
                delivery_id=delivery_id,
                now=now,
            )
            if result is not ClaimResult.RESUMED:
                return result
            try:
                await table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=existing.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except HttpResponseError as error:
                if error.status_code == 412:  # another delivery took it over first
                    return ClaimResult.DUPLICATE
                raise
            return ClaimResult.RESUMED
        raise AssertionError("unreachable")  # _errors re-raises; mypy cannot see through __aexit__

    async def complete(self, key: str, delivery_id: str, outcome: str, now: datetime) -> None:
        from azure.data.tables import UpdateMode

        table = await self._table("claims")
        async with _errors("complete"):
            await table.upsert_entity(
                {
                    "PartitionKey": table_key(key),
                    "RowKey": _CLAIM_ROW,
                    "Owner": delivery_id,
                    "State": "done",
                    "ClaimedAt": now,
                    "Outcome": outcome,
                },
                mode=UpdateMode.REPLACE,
            )

    async def claim_state(self, key: str) -> ClaimState | None:
        table = await self._table("claims")
        async with _errors("claim_state"):
            row = await _entity(table, table_key(key), _CLAIM_ROW)
        if row is None:
            return None
        outcome = row.get("Outcome")
        return ClaimState(
            owner=str(row.get("Owner", "")),
            state="done" if row.get("State") == "done" else "claimed",
            claimed_at=_utc(row.get("ClaimedAt")),
            outcome=None if outcome is None else str(outcome),
        )

    async def add_report(self, key: str, source: Source) -> None:
        """Create the report row and bump ``report-count`` in one transaction conditioned on the count's ETag.

        The cap is exact: no two writers can both take the last place. Writers of one restriction serialise on
        the count (a handful of sources per restriction); a 409 whose report row exists means "already reported".
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import UpdateMode

        table = await self._table("claims")
        partition = exact_key(key)
        row_key = f"{_REPORT_ROWS[0]}{exact_key(source.kind)}:{exact_key(source.id)}"
        report = {"PartitionKey": partition, "RowKey": row_key, "Kind": source.kind, "Id": source.id, "At": source.at}
        async with _errors("add_report"):
            for attempt in range(MAX_WRITE_TRIES):
                counter = await _entity(table, partition, _REPORT_COUNT_ROW)
                count = 0 if counter is None else int(counter.get("Count", 0))
                if count >= MAX_REPORTS:
                    return  # full: a new report is dropped, a repeated one is there already
                tally = {"PartitionKey": partition, "RowKey": _REPORT_COUNT_ROW, "Count": count + 1}
                bump: tuple[Any, ...] = (
                    ("create", tally)
                    if counter is None
                    else (
                        "update",
                        tally,
                        {
                            "mode": UpdateMode.REPLACE,
                            "etag": counter.metadata["etag"],
                            "match_condition": MatchConditions.IfNotModified,
                        },
                    )
                )
                try:
                    await table.submit_transaction([("create", report), bump])
                    return
                except HttpResponseError as error:
                    if error.status_code not in (409, 412):  # 409: the report or the count exists; 412: count moved
                        raise
                if await _entity(table, partition, row_key) is not None:
                    return  # already reported: its first ``at`` stays
                await asyncio.sleep(random.uniform(0.0, 0.02 * 2 ** min(attempt, 5)))
        raise _contended("add_report", "report count")

    async def reports(self, key: str) -> tuple[Source, ...]:
        table = await self._table("claims")
        first, after = _REPORT_ROWS
        async with _errors("reports"):
            rows = [
                row
                async for row in table.query_entities(
                    "PartitionKey eq @pk and RowKey ge @first and RowKey lt @after",
                    parameters={"pk": exact_key(key), "first": first, "after": after},
                )
            ]
        found = (Source(str(row["Kind"]), str(row["Id"]), _utc(row["At"])) for row in rows)
        return tuple(sorted(found, key=lambda s: (s.at, s.kind, s.id)))

    async def read_cursor(self, name: str) -> Cursor | None:
        table = await self._table("claims")
        async with _errors("read_cursor"):
            row = await _entity(table, exact_key(name), _CURSOR_ROW)
        return None if row is None else Cursor(str(row["Value"]), str(row.metadata["etag"]))

    async def write_cursor(self, name: str, value: str, version: str | None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import UpdateMode

        if len(value.encode("utf-16-le")) > 2 * MAX_RECORD_CHARS:
            raise ValueError(f"cursor {name!r}: a value of {len(value)} characters does not fit in a string property")
        if version is not None and not _weak_etag(version):
            return False  # not a version this store hands out, so not the cursor's ("*" would match any)
        table = await self._table("claims")
        entity = {"PartitionKey": exact_key(name), "RowKey": _CURSOR_ROW, "Value": value}
        async with _errors("write_cursor"):
            try:
                if version is None:
                    await table.create_entity(entity)
                else:
                    await table.update_entity(
                        entity, mode=UpdateMode.REPLACE, etag=version, match_condition=MatchConditions.IfNotModified
                    )
            except HttpResponseError as error:
                # 409: created meanwhile; 412: moved meanwhile; 404: a version of a cursor that does not exist.
                if error.status_code in (404, 409, 412):
                    return False
                raise
        return True

    async def keep_pending(self, group: str, key: str, data: Mapping[str, Any], now: datetime) -> None:
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": _PENDING_PARTITION + exact_key(group),
            "RowKey": exact_key(key),
            "Data": pending_text(group, key, data),  # refused here, not as a service error retried for ever
            "Expires": now + PENDING_TTL,
        }
        table = await self._table("claims")
        async with _errors("keep_pending"):
            await table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def pending(self, group: str, keys: Collection[str], now: datetime) -> dict[str, Mapping[str, Any]]:
        """Point reads, a few at a time, rather than one filtered query: for the ~50 keys asked, a point read
        costs the same whatever the partition holds, while a filter may hold only 15 comparisons (4 queries
        for 50 keys), each scanning the group's whole partition (expired rows too) and maybe paging."""
        table = await self._table("claims")
        partition = _PENDING_PARTITION + exact_key(group)
        in_flight = asyncio.Semaphore(PENDING_READS)

        async def read(key: str) -> tuple[str, TableEntity | None]:
            async with in_flight:
                return key, await _entity(table, partition, exact_key(key))

        async with _errors("pending"):
            rows = await _all(read(key) for key in dict.fromkeys(keys))
        return {
            key: json.loads(str(row["Data"])) for key, row in rows if row is not None and _utc(row["Expires"]) > now
        }

    async def record_unblock(self, entry: UnblockEntry) -> None:
        await self._write_unblock(entry, "record_unblock", user_budget=None, tenant_budget=None)

    async def reserve_unblock(
        self,
        entry: UnblockEntry,
        *,
        user_budget: Budget | None,
        tenant_budget: Budget | None,
        restriction_since: datetime | None = None,
    ) -> BudgetRefusal | None:
        return await self._write_unblock(
            entry,
            "reserve_unblock",
            user_budget=user_budget,
            tenant_budget=tenant_budget,
            restriction_since=restriction_since,
        )

    async def unblocks(self, user: str, since: datetime) -> Sequence[UnblockEntry]:
        table = await self._table("unblocks")
        async with _errors("unblocks"):
            found, _ = await _read_row(table, _user_row(user))
        return sorted((e for e in found if e.at >= since), key=lambda e: e.at)

    async def tenant_unblocks(self, since: datetime) -> Sequence[UnblockEntry]:
        table = await self._table("unblocks")
        async with _errors("tenant_unblocks"):
            found, _ = await _read_row(table, TENANT_ROW)
        return sorted((e for e in found if e.at >= since), key=lambda e: e.at)

    async def _write_unblock(
        self,
        entry: UnblockEntry,
        operation: str,
        *,
        user_budget: Budget | None,
        tenant_budget: Budget | None,
        restriction_since: datetime | None = None,
    ) -> BudgetRefusal | None:
        """Read both rows, check the budgets, write both rows in one transaction on the ETags read; retry."""
        from azure.core.exceptions import HttpResponseError

        table = await self._table("unblocks")
        user_row = _user_row(entry.user)
        for attempt in range(MAX_WRITE_TRIES):
            async with _errors(operation):
                # One after the other, not gathered: a failed read must not leave the other one running.
                mine, user_etag = await _read_row(table, user_row)
                everyone, tenant_etag = await _read_row(table, TENANT_ROW)
                history = {(e.user, e.event_id): e for e in (*everyone, *mine)}
                refusal = budget_refusal(
                    entry,
                    history.values(),
                    user_budget=user_budget,
                    tenant_budget=tenant_budget,
                    restriction_since=restriction_since,
                )
                if refusal is not None:
                    return refusal
                operations = [
                    _row_operation(user_row, _merged(mine, entry), USER_KEEP, user_etag, user=entry.user.lower()),
                    _row_operation(TENANT_ROW, _merged(everyone, entry), TENANT_KEEP, tenant_etag),
                ]
                try:
                    await table.submit_transaction(operations)
                    return None
                except HttpResponseError as error:  # TableTransactionError, ResourceExistsError, ...
                    if error.status_code not in (409, 412):  # 412: a row changed; 409: a missing row appeared
                        raise
            await asyncio.sleep(random.uniform(0.0, 0.02 * 2 ** min(attempt, 5)))
        raise _contended(operation, "unblock history")

    async def begin_ticket(self, correlation_id: str, event_id: str, now: datetime) -> TicketSlot:
        from azure.core.exceptions import ResourceExistsError

        table = await self._table("claims")
        key = ledger_key(correlation_id)
        async with _errors("begin_ticket"):
            try:
                await table.create_entity(
                    {"PartitionKey": key, "RowKey": _TICKET_ROW, "Owner": event_id, "StartedAt": now, "UpdatedAt": now}
                )
                return TicketSlot("create")
            except ResourceExistsError:
                pass
            for _ in range(MAX_WRITE_TRIES):
                row = await _ledger_row(table, key)
                if row is None:  # rows are never deleted; only a wiped table gets here
                    raise TransientServiceError("store", "begin_ticket: the ledger row vanished", http_status=404)
                slot = resolve_ticket(
                    owner=str(row.get("Owner", "")),
                    started_at=_instant(row.get("StartedAt")),
                    ticket=_ticket_of(row),
                    noted=_noted_of(row),
                    event_id=event_id,
                    now=now,
                )
                if slot.action != "create":
                    return slot
                # The owner's retry renews its lease; a taker writes itself in. One of several wins the ETag.
                changes = {"Owner": event_id, "StartedAt": now, "UpdatedAt": now}
                if await _merge_if_unchanged(table, key, row, changes):
                    return slot
        raise _contended("begin_ticket", "ledger row")

    async def ticket_opened(self, correlation_id: str, event_id: str, ticket: TicketRef, now: datetime) -> None:
        from azure.core.exceptions import ResourceExistsError

        table = await self._table("claims")
        key = ledger_key(correlation_id)
        async with _errors("ticket_opened"):
            for _ in range(MAX_WRITE_TRIES):
                row = await _ledger_row(table, key)
                if row is None:
                    try:
                        entity = {"PartitionKey": key, "RowKey": _TICKET_ROW, "Owner": event_id, "StartedAt": now}
                        await table.create_entity({**entity, **_ticket_properties(ticket, [event_id], now)})
                        return
                    except ResourceExistsError:
                        continue
                kept = _ticket_of(row) or ticket  # the first ticket recorded stays the restriction's ticket
                changes = _ticket_properties(kept, noted_with(_noted_of(row), event_id), now)
                if await _merge_if_unchanged(table, key, row, changes):
                    return
        raise _contended("ticket_opened", "ledger row")

    async def ticket_noted(self, correlation_id: str, event_id: str, now: datetime) -> None:
        table = await self._table("claims")
        key = ledger_key(correlation_id)
        async with _errors("ticket_noted"):
            for _ in range(MAX_WRITE_TRIES):
                row = await _ledger_row(table, key)
                if row is None or _ticket_of(row) is None:  # only a recorded ticket has events on it
                    return
                noted = _noted_of(row)
                if event_id in noted:  # a retry: already there
                    return
                changes = {"Noted": _noted_text(noted_with(noted, event_id)), "UpdatedAt": now}
                if await _merge_if_unchanged(table, key, row, changes):
                    return
        raise _contended("ticket_noted", "ledger row")

    async def append_audit(self, record: Mapping[str, Any]) -> None:
        table = await self._table("audit")
        text = json.dumps(record, sort_keys=True)
        truncated = len(text) > MAX_RECORD_CHARS
        if truncated:
            text = json.dumps({k: v for k, v in record.items() if k != "evidence"}, sort_keys=True)
        at = str(record.get("at", ""))
        row_key = f"{at}|{self._append_sequence():019d}|{record.get('event_id', '')}|{uuid.uuid4().hex[:8]}"
        async with _errors("append_audit"):
            # Append-only: a fresh RowKey per row, never an update. Ordered by the record's time, then by when
            # it was written (records of the same second, e.g. a quick retry, keep their order), then unique.
            await table.create_entity(
                {
                    "PartitionKey": table_key(str(record.get("user", "")) or "-"),
                    "RowKey": row_key,
                    "EventId": str(record.get("event_id", "")),
                    "Decision": str(record.get("decision", "")),
                    "At": at,
                    "Record": text,
                    "EvidenceTruncated": truncated,
                }
            )

    def _append_sequence(self) -> int:
        """Wall-clock nanoseconds, strictly increasing within this store even when the clock is coarse."""
        self._last_append = max(self._last_append + 1, time.time_ns())
        return self._last_append

    async def audit(self, user: str | None = None) -> Sequence[Mapping[str, Any]]:
        table = await self._table("audit")
        async with _errors("audit"):
            if user is None:
                rows = [row async for row in table.list_entities()]
            else:
                rows = [
                    row async for row in table.query_entities("PartitionKey eq @pk", parameters={"pk": table_key(user)})
                ]
        rows.sort(key=lambda row: str(row["RowKey"]))
        return [json.loads(str(row["Record"])) for row in rows]

    async def close(self) -> None:
        for table in self._tables.values():
            await table.close()
        await self._service.close()
        if self._credential is not None:
            await self._credential.close()


def _contended(operation: str, what: str) -> TransientServiceError:
    """Every try lost the ETag race: give up for now, the queue retries the event."""
    return TransientServiceError(
        "store", f"{operation}: the {what} stayed contended for {MAX_WRITE_TRIES} tries", http_status=412
    )


class _errors:
    """Storage faults become typed errors: unreachable or throttled storage is worth a later retry."""

    def __init__(self, operation: str) -> None:
        self.operation = operation

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        from azure.core.exceptions import AzureError, HttpResponseError

        if error is None or isinstance(error, ServiceError) or not isinstance(error, AzureError):
            return False
        status = error.status_code if isinstance(error, HttpResponseError) else None
        raise TransientServiceError("store", f"{self.operation}: {error.message}", http_status=status) from error


def _user_row(user: str) -> str:
    return f"user:{table_key(user)}"


def _stamp(at: datetime) -> str:
    """``iso()``, keeping a fraction of a second when there is one (the budget window compares instants)."""
    if at.microsecond == 0:
        return iso(at)
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _merged(entries: Iterable[UnblockEntry], entry: UnblockEntry) -> list[UnblockEntry]:
    """``entries`` with ``entry`` inserted or replacing the one of the same (user, event_id)."""
    user = entry.user.lower()
    kept = [e for e in entries if (e.user, e.event_id) != (user, entry.event_id)]
    return [*kept, replace(entry, user=user)]


def pack_entries(entries: Iterable[UnblockEntry], keep: timedelta) -> dict[str, str]:
    """Row properties ``Entries0``… holding ``entries`` as one ASCII JSON list, oldest first.

    Drops entries older than ``keep`` before the newest, then the oldest until the text fits in
    ``MAX_ENTRY_CHUNKS`` properties of ``MAX_RECORD_CHARS`` characters.
    """
    ordered = sorted(entries, key=lambda e: e.at)
    if ordered:
        horizon = ordered[-1].at - keep
        ordered = [e for e in ordered if e.at >= horizon]
    encoded = [
        json.dumps(
            [
                e.user,
                e.event_id,
                _stamp(e.at),
                e.kind.value,
                e.status,
                *([e.detail[:MAX_UNBLOCK_DETAIL]] if e.detail else []),
            ],
            separators=(",", ":"),
        )
        for e in ordered
    ]
    room = MAX_ENTRY_CHUNKS * MAX_RECORD_CHARS - 2  # the brackets
    size = sum(len(text) + 1 for text in encoded) - 1
    first = 0
    while size > room:
        size -= len(encoded[first]) + 1
        first += 1
    text = "[" + ",".join(encoded[first:]) + "]"
    return {
        f"Entries{index}": text[offset : offset + MAX_RECORD_CHARS]
        for index, offset in enumerate(range(0, len(text), MAX_RECORD_CHARS))
    }


def unpack_entries(row: Mapping[str, Any]) -> list[UnblockEntry]:
    chunks = []
    for index in range(MAX_ENTRY_CHUNKS):
        chunk = row.get(f"Entries{index}")
        if chunk is None:
            break
        chunks.append(str(chunk))
    # Entries written before details were kept have five fields.
    return [
        UnblockEntry(
            user=str(u),
            event_id=str(e),
            at=parse_instant(str(a)),
            kind=UnblockKind(str(k)),
            status=str(s),
            detail=str(rest[0]) if rest else "",
        )
        for u, e, a, k, s, *rest in json.loads("".join(chunks) or "[]")
    ]


async def _read_row(table: TableClient, row_key: str) -> tuple[list[UnblockEntry], str | None]:
    """The row's entries and ETag; a missing row is empty, with no ETag."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        row = await table.get_entity(BUDGET_PARTITION, row_key)
    except ResourceNotFoundError:
        return [], None
    return unpack_entries(row), str(row.metadata["etag"])


def _row_operation(
    row_key: str, entries: Iterable[UnblockEntry], keep: timedelta, etag: str | None, **extra: str
) -> tuple[Any, ...]:
    """Create the row when it was missing (fails if another writer created it), else replace it if unchanged."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    entity = {"PartitionKey": BUDGET_PARTITION, "RowKey": row_key, **extra, **pack_entries(entries, keep)}
    if etag is None:
        return ("create", entity)
    return (
        "update",
        entity,
        {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified},
    )


def _instant(value: object) -> datetime:
    return value if isinstance(value, datetime) else parse_instant(str(value))


def _weak_etag(version: str) -> bool:
    """``W/"…"``: the only form of ETag Table Storage gives out (it refuses a malformed one with a 400)."""
    inner = version.removeprefix("W/")
    return inner != version and len(inner) > 2 and inner[0] == inner[-1] == '"' and '"' not in inner[1:-1]


def _utc(value: object) -> datetime:
    """A stored instant as a plain UTC ``datetime`` (the SDK returns its own subclass)."""
    instant = _instant(value).astimezone(UTC)
    return datetime.combine(instant.date(), instant.time(), UTC)


async def _entity(table: TableClient, partition: str, row_key: str) -> TableEntity | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return await table.get_entity(partition, row_key)
    except ResourceNotFoundError:
        return None


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Every call at once; when one fails, the others are cancelled and awaited before the error goes on."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _ledger_row(table: TableClient, key: str) -> TableEntity | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return await table.get_entity(key, _TICKET_ROW)
    except ResourceNotFoundError:
        return None


async def _merge_if_unchanged(table: TableClient, key: str, row: TableEntity, changes: Mapping[str, Any]) -> bool:
    """Merge ``changes`` into the ledger row if it is still as read; ``False`` when another writer came first."""
    from azure.core import MatchConditions
    from azure.core.exceptions import HttpResponseError
    from azure.data.tables import UpdateMode

    try:
        await table.update_entity(
            {"PartitionKey": key, "RowKey": _TICKET_ROW, **changes},
            mode=UpdateMode.MERGE,
            etag=row.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    except HttpResponseError as error:
        if error.status_code == 412:
            return False
        raise
    return True


def _ticket_of(row: Mapping[str, Any]) -> TicketRef | None:
    ticket_id = row.get("TicketId")
    if not ticket_id:
        return None
    url = row.get("TicketUrl")
    return TicketRef(id=str(ticket_id), label=str(row.get("TicketLabel") or ticket_id), url=str(url) if url else None)


def _noted_of(row: Mapping[str, Any]) -> list[str]:
    return [str(e) for e in json.loads(str(row.get("Noted") or "[]"))]


def _noted_text(noted: Sequence[str]) -> str:
    """The noted ids as JSON: the newest ``TICKET_NOTED_KEEP``, fewer if they would not fit in one property."""
    kept = list(noted)[-TICKET_NOTED_KEEP:]
    text = json.dumps(kept)
    while len(text) > MAX_RECORD_CHARS:
        kept = kept[1:]
        text = json.dumps(kept)
    return text


def _ticket_properties(ticket: TicketRef, noted: Sequence[str], now: datetime) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "TicketId": ticket.id,
        "TicketLabel": ticket.label,
        "Noted": _noted_text(noted),
        "UpdatedAt": now,
    }
    if ticket.url:
        properties["TicketUrl"] = ticket.url
    return properties
