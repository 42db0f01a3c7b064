"""The safety nets: timers that find a restriction when no alert source said anything (design §3).

- :class:`AlertPoller` lists Graph ``alerts_v2`` changed since a watermark kept in the store. The title is
  matched here: it is not a documented ``$filter`` property. The combined filter falls back to a
  single-property one when Graph refuses it.
- :class:`RestrictedSweep` reads the restricted list itself (``Get-BlockedSenderAddress``): a restriction
  no event has reported yet becomes one with source ``sweep``, so the product works with no alert source
  wired at all.

Both run from a one-minute timer and act only when their own interval has passed. The last run is kept
in the store, so several instances of the app do not each run them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .alerts import parse_alert_payload
from .errors import FilterRefused, MalformedPayload
from .model import SOURCE_POLL, SOURCE_SWEEP, AlertReport, RestrictionEvent, UserRef
from .pipeline import Intake, restriction_claim_key
from .ports import AlertFeed, Clock, Cursor, Exchange, Store
from .timeutil import iso, parse_instant

log = logging.getLogger("restricted_sender")

MDO_SERVICE_SOURCE = "microsoftDefenderForOffice365"
POLL_CURSOR = "poll-alerts_v2"
SWEEP_CURSOR = "sweep-restricted"
SWEEP_TITLE = "Restricted entities"  # what a sweep report is called in records: the portal page it mirrors


@dataclass(frozen=True, slots=True)
class NetRun:
    """What one timer tick did (also the CLI's and the log's summary)."""

    name: str
    ran: bool
    detail: str
    queued: int = 0
    requests: int = 0


def alerts_filter(since: datetime, *, combined: bool) -> str:
    """The documented properties only; ``combined=False`` is the single-property fallback."""
    changed = f"lastUpdateDateTime ge {iso(since)}"
    return f"serviceSource eq '{MDO_SERVICE_SOURCE}' and {changed}" if combined else changed


def _due(cursor: Cursor | None, every: timedelta, now: datetime) -> tuple[bool, dict[str, Any]]:
    state: dict[str, Any] = {}
    if cursor is not None:
        try:
            loaded = json.loads(cursor.value)
            state = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            state = {}
    ran_at = state.get("ran_at")
    # A little early is fine: a timer tick can fire a few seconds before the minute the interval ends on.
    due = not isinstance(ran_at, str) or now - parse_instant(ran_at) >= every - timedelta(seconds=30)
    return due, state


@dataclass
class AlertPoller:
    feed: AlertFeed
    intake: Intake
    store: Store
    clock: Clock
    every: timedelta
    overlap: timedelta = timedelta(minutes=10)  # alerts show up in the list late; dedupe makes re-reading free
    first_look_back: timedelta = timedelta(hours=24)
    page_size: int = 100
    max_pages: int = 20  # 20 requests a run, at most one run a minute: far below Graph's 150 a minute
    combined: bool = field(default=True)  # becomes False for the process once Graph refuses the combined filter

    async def run(self) -> NetRun:
        now = self.clock.now()
        cursor = await self.store.read_cursor(POLL_CURSOR)
        due, state = _due(cursor, self.every, now)
        if not due:
            return NetRun("poll", False, f"not due: last run {state.get('ran_at')}")
        watermark = state.get("watermark")
        since = parse_instant(watermark) - self.overlap if isinstance(watermark, str) else now - self.first_look_back
        alerts, requests, complete = await self._list(since)
        reports = self._target_reports(alerts)
        fresh = [r for r in reports if not await self._known(r)]
        result = await asyncio.to_thread(self.intake.queue_reports, fresh)  # the sync queue client blocks
        # The watermark moves only after every page is read and every event queued: a failure re-reads. The
        # overlap covers alerts that appear in the list a little after their lastUpdateDateTime.
        mark = now if complete else (parse_instant(watermark) if isinstance(watermark, str) else since)
        moved = await self.store.write_cursor(
            POLL_CURSOR, json.dumps({"watermark": iso(mark), "ran_at": iso(now)}), cursor.version if cursor else None
        )
        if not moved:
            log.info("another instance polled alerts_v2 at the same time; its watermark stands")
        detail = f"{len(alerts)} MDO alerts since {iso(since)}, {len(reports)} target, {len(fresh)} new"
        return NetRun("poll", True, detail, queued=len(result.accepted), requests=requests)

    async def _list(self, since: datetime) -> tuple[list[dict[str, Any]], int, bool]:
        combined = self.combined
        try:
            page = await self.feed.alerts_page(filter=alerts_filter(since, combined=combined), top=self.page_size)
        except FilterRefused:
            if not combined:
                raise
            log.warning("Graph refused the combined alerts_v2 filter; using lastUpdateDateTime alone")
            self.combined = combined = False
            page = await self.feed.alerts_page(filter=alerts_filter(since, combined=False), top=self.page_size)
        requests = 1
        alerts: list[dict[str, Any]] = []
        while True:
            # Without the combined filter the service source is checked here.
            alerts.extend(dict(a) for a in page.alerts if combined or a.get("serviceSource") == MDO_SERVICE_SOURCE)
            if page.next_link is None:
                return alerts, requests, True
            if requests >= self.max_pages:
                # The list has no documented order, so the watermark stays: the next run reads the window again.
                log.error("alerts_v2 poll stopped after %d pages; the watermark stays where it was", requests)
                return alerts, requests, False
            page = await self.feed.alerts_page(filter="", top=self.page_size, next_link=page.next_link)
            requests += 1

    def _target_reports(self, alerts: list[dict[str, Any]]) -> list[AlertReport]:
        policy = self.intake.target_policy
        reports: list[AlertReport] = []
        for alert in alerts:
            if not isinstance(alert.get("title"), str) or not policy.is_target_alert(alert["title"]):
                continue
            try:
                reports.extend(parse_alert_payload(alert, source=SOURCE_POLL))
            except MalformedPayload as error:
                log.warning("alerts_v2 alert %s skipped: %s", alert.get("id"), error.message)
        return reports

    async def _known(self, report: AlertReport) -> bool:
        """Every (alert, user) of the report already became an event: re-reading it must not record a duplicate."""
        for user in report.users:
            event = RestrictionEvent.for_alert(report, user, delivery_id="", received_at=self.clock.now())
            if await self.store.claim_state(event.claim_key) is None:
                return False
        return True


@dataclass
class RestrictedSweep:
    exchange: Exchange
    intake: Intake
    store: Store
    clock: Clock
    every: timedelta

    async def run(self) -> NetRun:
        now = self.clock.now()
        cursor = await self.store.read_cursor(SWEEP_CURSOR)
        due, state = _due(cursor, self.every, now)
        if not due:
            return NetRun("sweep", False, f"not due: last run {state.get('ran_at')}")
        rows = await self.exchange.blocked_senders()
        reports: list[AlertReport] = []
        for row in rows:
            key = restriction_claim_key(row)
            assert key is not None
            if await self.store.claim_state(key) is not None:
                continue  # decided, or being decided, from another report
            reports.append(
                AlertReport(
                    source=SOURCE_SWEEP,
                    alert_id=row.restriction_key(),
                    title=SWEEP_TITLE,
                    users=(UserRef(address=row.address.lower()),),
                    created=iso(row.created) if row.created else None,
                    direct=True,
                )
            )
        result = await asyncio.to_thread(self.intake.queue_reports, reports)  # the sync queue client blocks
        moved = await self.store.write_cursor(
            SWEEP_CURSOR, json.dumps({"ran_at": iso(now)}), cursor.version if cursor else None
        )
        if not moved:
            log.info("another instance swept the restricted list at the same time")
        detail = f"{len(rows)} restricted, {len(reports)} without an event yet"
        return NetRun("sweep", True, detail, queued=len(result.accepted), requests=1)
