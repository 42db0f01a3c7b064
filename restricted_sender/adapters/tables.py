"""Azure Table Storage store: claims (conditional insert + ETag take-over), unblock history, audit trail."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import ServiceError, TransientServiceError
from ..model import UnblockEntry, UnblockKind
from ..ports import ClaimResult, resolve_claim
from ..timeutil import parse_instant

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient, TableServiceClient

MAX_RECORD_CHARS = 30_000  # a string property holds 64 KiB of UTF-16
_CLAIM_ROW = "claim"


_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@._-+")


def table_key(value: str) -> str:
    """PartitionKey/RowKey may not hold / \\ # ? or control characters (guest UPNs carry #EXT#).

    Everything else is written as ``~XX`` per UTF-8 byte; ``%`` is avoided on purpose, since the service has
    been known to mis-handle it in point look-ups. Injective, so two users never share a key.
    """
    return "".join(c if c in _KEY_SAFE else "".join(f"~{b:02X}" for b in c.encode()) for c in value.lower())


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

    async def record_unblock(self, entry: UnblockEntry) -> None:
        from azure.data.tables import UpdateMode

        table = await self._table("unblocks")
        async with _errors("record_unblock"):
            await table.upsert_entity(
                {
                    "PartitionKey": table_key(entry.user),
                    "RowKey": table_key(entry.event_id),
                    "User": entry.user.lower(),
                    "EventId": entry.event_id,
                    "At": entry.at,
                    "Kind": entry.kind.value,
                    "Status": entry.status,
                },
                mode=UpdateMode.REPLACE,
            )

    async def unblocks(self, user: str, since: datetime) -> Sequence[UnblockEntry]:
        table = await self._table("unblocks")
        async with _errors("unblocks"):
            found = [
                UnblockEntry(
                    user=str(row["User"]),
                    event_id=str(row["EventId"]),
                    at=_instant(row["At"]),
                    kind=UnblockKind(str(row["Kind"])),
                    status=str(row["Status"]),
                )
                async for row in table.query_entities(
                    "PartitionKey eq @pk and At ge @since", parameters={"pk": table_key(user), "since": since}
                )
            ]
        return sorted(found, key=lambda e: e.at)

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


def _instant(value: object) -> datetime:
    return value if isinstance(value, datetime) else parse_instant(str(value))
