"""Intake that needs I/O before it becomes events: Management Activity content and Defender streaming rows.

The webhooks only check and queue (``alert-content`` queue); :class:`ContentExpander` then fetches a
Management Activity content blob (only from the configured API root), or joins Defender ``AlertInfo`` and
``AlertEvidence`` rows with the rows earlier batches left pending in the store, and queues the events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from restricted_sender.core.untrusted import guard_logger
from restricted_sender.errors import ConfigurationError, ContentExpired, InputError, MalformedPayload, UnsafeContentUri
from restricted_sender.intake.alerts import parse_json
from restricted_sender.intake.defender import (
    AlertInfo,
    DefenderBatch,
    DefenderJoin,
    UserEvidence,
    compact,
    is_defender_batch,
    join,
    parse_records,
)
from restricted_sender.intake.o365 import ContentPointer, parse_content
from restricted_sender.model import SOURCE_O365, Source
from restricted_sender.ports import ClaimResult, Clock, ManagementActivity, Store
from restricted_sender.processing.pipeline import Intake, IntakeResult, delisted_key

log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)

PENDING_INFOS = "defender-info"
PENDING_EVIDENCE = "defender-evidence"
MAX_PENDING_ROWS = 50  # users kept per pending alert


@dataclass
class ContentExpander:
    intake: Intake
    store: Store
    clock: Clock
    api: ManagementActivity | None = None

    async def expand(self, text: str, *, attempt: int = 1) -> IntakeResult | None:
        """One ``alert-content`` message. ``None`` when there was nothing to do (already fetched, refused, expired)."""
        pointer: ContentPointer | None = None
        batch: DefenderBatch | None = None
        try:
            message = json.loads(text)
            kind = message["kind"]
            if kind == "o365":
                pointer = ContentPointer.from_dict(message["pointer"])
            elif kind == "defender":
                batch = DefenderBatch.from_dict(message["batch"])
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(f"unreadable content message ({error}); it goes to the poison queue") from error
        if pointer is not None:
            return await self.o365(pointer)
        if batch is not None:
            return await self.defender(batch)
        raise ConfigurationError(f"content message of unknown kind {kind!r}; it goes to the poison queue")

    async def o365(self, pointer: ContentPointer) -> IntakeResult | None:
        if self.api is None:
            raise ConfigurationError("the Management Activity API is not configured (TENANT_ID, O365_API_ROOT)")
        key = f"o365-content|{pointer.content_id}"
        now = self.clock.now()
        # The API may notify a blob twice: fetched once (events dedupe anyway). A failed fetch's retry resumes.
        if await self.store.claim(key, key, now) is ClaimResult.DUPLICATE:
            return None
        try:
            records = await self.api.content(pointer.content_uri)
        except UnsafeContentUri as refused:
            log.error("Management Activity content refused, not fetched: %s", refused.message)
            await self.store.complete(key, key, "refused", now)
            return None
        except ContentExpired as expired:
            log.error("Management Activity content %s expired before it was fetched: %s", pointer.content_id, expired)
            await self.store.complete(key, key, "expired", now)
            return None
        content = parse_content(records, is_target=self.intake.target_policy.is_target_alert)
        for problem in content.problems:
            log.error("Management Activity content %s: record skipped: %s", pointer.content_id, problem)
        for delisting in content.delisted:
            # Kept as evidence that a restriction was lifted: the verifier reads them.
            source = Source(SOURCE_O365, delisting.record_id, delisting.at)
            await self.store.add_report(delisted_key(delisting.address, delisting.at), source)
        result = await asyncio.to_thread(self.intake.queue_reports, content.reports)  # the sync queue client blocks
        await self.store.complete(key, key, f"{len(result.accepted)} events", now)
        return result

    async def defender_bodies(self, bodies: Sequence[bytes]) -> int:
        """Event Hub messages, each ``{"records": [...]}``: checked, stripped of rows that can never matter, and
        relayed to the content queue, where the join runs with the queue's retries (a failing Event Hub batch is
        checkpointed anyway, so nothing that can fail is done here). One unreadable message is logged and
        skipped; the rest go on. Returns how many rows were relayed."""
        infos: list[AlertInfo] = []
        evidence: list[UserEvidence] = []
        for body in bodies:
            try:
                payload = parse_json(body, "message")
                if not is_defender_batch(payload):
                    raise MalformedPayload("not a {'records': [...]} streaming message")
                batch = parse_records(payload)
            except InputError as error:  # malformed, or a field over its bound
                log.error("Defender streaming message skipped: %s", error)
                continue
            infos.extend(batch.infos)
            evidence.extend(batch.evidence)
        batch = compact(DefenderBatch(tuple(infos), tuple(evidence)), self.intake.target_policy.is_target_alert)
        await asyncio.to_thread(self.intake.relay_defender, batch)  # the sync queue client blocks
        return len(batch.infos) + len(batch.evidence)

    async def defender(self, batch: DefenderBatch) -> IntakeResult:
        is_target = self.intake.target_policy.is_target_alert
        batch = compact(batch, is_target)
        now = self.clock.now()
        result = await self._join(batch, now)
        # Every target alert is kept a while: evidence of another user can still come in a later batch.
        for info in batch.infos:
            await self.store.keep_pending(PENDING_INFOS, info.alert_id, info.to_dict(), now)
        waiting = {r.alert_id for r in result.keep_evidence}
        for alert_id in waiting:
            rows = [r for r in result.keep_evidence if r.alert_id == alert_id]
            earlier = await self.store.pending(PENDING_EVIDENCE, [alert_id], now)
            kept = [*_rows(earlier.get(alert_id, {})), *rows][-MAX_PENDING_ROWS:]
            await self.store.keep_pending(PENDING_EVIDENCE, alert_id, {"rows": [r.to_dict() for r in kept]}, now)
        reports = list(result.reports)
        if waiting or result.keep_infos:
            # A batch with the other half may have been joined at the same moment, before our rows were kept:
            # reading again after writing means at least one of the two sees the other (events dedupe).
            reports.extend((await self._join(batch, now)).reports)
        return await asyncio.to_thread(self.intake.queue_reports, reports)  # the sync queue client blocks

    async def _join(self, batch: DefenderBatch, now: datetime) -> DefenderJoin:
        info_ids = {i.alert_id for i in batch.infos}
        evidence_ids = {e.alert_id for e in batch.evidence}
        known = await self.store.pending(PENDING_INFOS, evidence_ids - info_ids, now)
        waiting = await self.store.pending(PENDING_EVIDENCE, info_ids | evidence_ids, now)
        return join(
            batch,
            pending_infos={k: AlertInfo.from_dict(v) for k, v in known.items()},
            pending_evidence={k: _rows(v) for k, v in waiting.items()},
            is_target=self.intake.target_policy.is_target_alert,
        )


def _rows(data: Mapping[str, Any]) -> tuple[UserEvidence, ...]:
    rows = data.get("rows")
    return tuple(UserEvidence.from_dict(r) for r in rows) if isinstance(rows, list) else ()
