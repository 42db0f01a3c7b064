"""The safety nets: timers that find a restriction when no alert source said anything (README: Where alerts come from).

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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from restricted_sender.core.ledger import CLAIM_LEASE
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.core.untrusted import guard_logger
from restricted_sender.errors import FilterRefused, InputError, ServiceRefused
from restricted_sender.intake.payloads import parse_alert_payload
from restricted_sender.model import SOURCE_POLL, SOURCE_SWEEP, AlertReport, Net, RestrictionEvent, UserRef
from restricted_sender.ports import AlertFeed, AlertsPage, Clock, Cursor, Exchange, Store
from restricted_sender.processing.facts import anchored
from restricted_sender.processing.pipeline import Intake, current_restriction_claim, restriction_needs_event
from restricted_sender.timeutil import iso, parse_instant

log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)

MDO_SERVICE_SOURCE = "microsoftDefenderForOffice365"
POLL_CURSOR = "poll-alerts_v2"
SWEEP_CURSOR = "sweep-restricted"
SWEEP_TITLE = "Restricted entities"  # what a sweep report is called in records: the portal page it mirrors


@dataclass(frozen=True, slots=True)
class NetRun:
    """What one timer tick did (also the CLI's and the log's summary)."""

    name: Net | str  # the net when it ran; its cursor's name when it did not (not due, or another instance's turn)
    ran: bool
    detail: str
    queued: int = 0
    requests: int = 0


def alerts_filter(since: datetime, *, combined: bool) -> str:
    """The documented properties only; ``combined=False`` is the single-property fallback."""
    changed = f"lastUpdateDateTime ge {iso(since)}"
    return f"serviceSource eq '{MDO_SERVICE_SOURCE}' and {changed}" if combined else changed


async def _start_run(store: Store, name: str, every: timedelta, now: datetime) -> NetRun | tuple[dict[str, Any], str]:
    """The run's state and cursor version, the run already marked as started; a ``NetRun`` when not to run.

    Marking it first means a second instance skips this tick, and a failing run waits out its interval instead of
    failing again every minute.
    """
    cursor = await store.read_cursor(name)
    due, state = _due(cursor, every, now)
    if not due:
        return NetRun(name, False, f"not due: last run {state.get('ran_at')}")
    if not await store.write_cursor(
        name, json.dumps({**state, "ran_at": iso(now)}), cursor.version if cursor else None
    ):
        return NetRun(name, False, "another instance started this run")
    marked = await store.read_cursor(name)
    assert marked is not None
    return state, marked.version


def _due(cursor: Cursor | None, every: timedelta, now: datetime) -> tuple[bool, dict[str, Any]]:
    state: dict[str, Any] = {}
    if cursor is not None:
        try:
            loaded = json.loads(cursor.value)
            state = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            state = {}
    ran_at = state.get("ran_at")
    if state.get("resume"):
        return True, state  # a poll that stopped at its page limit goes on at the next tick
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
        started = await _start_run(self.store, POLL_CURSOR, self.every, now)
        if isinstance(started, NetRun):
            return started
        state, version = started
        resume = state.get("resume") if isinstance(state.get("resume"), str) else None
        watermark = state.get("watermark")
        if resume is not None:
            # The previous run stopped at its page limit: go on from its next page, in the same window.
            since = parse_instant(str(state["since"]))
            window_end = str(state["window_end"])
            self.combined = state.get("combined") is not False
        else:
            since = (
                parse_instant(watermark) - self.overlap if isinstance(watermark, str) else now - self.first_look_back
            )
            window_end = iso(now)
        alerts, requests, next_link = await self._list(since, resume)
        reports = self._target_reports(alerts)
        fresh = [r for r in reports if not await self._known(r)]
        result = await asyncio.to_thread(self.intake.queue_reports, fresh)  # the sync queue client blocks
        # The watermark moves only once every page of the window is read and every event queued: a failure reads
        # the window again. The overlap covers alerts that appear in the list a little after their lastUpdateDateTime.
        if next_link is None:
            following: dict[str, Any] = {"watermark": window_end, "ran_at": iso(now)}
        else:
            following = {"watermark": watermark, "ran_at": iso(now), "resume": next_link, "since": iso(since),
                         "window_end": window_end, "combined": self.combined}  # fmt: skip
        if not await self.store.write_cursor(POLL_CURSOR, json.dumps(following), version):
            log.info("another instance moved the alerts_v2 watermark meanwhile; its position stands")
        detail = f"{len(alerts)} MDO alerts since {iso(since)}, {len(reports)} target, {len(fresh)} new"
        if next_link is not None:
            detail += f"; stopped after {requests} pages, the next run goes on from there"
        return NetRun(Net.POLL, True, detail, queued=len(result.accepted), requests=requests)

    async def _list(self, since: datetime, resume: str | None) -> tuple[list[dict[str, Any]], int, str | None]:
        """The alerts of one run, the requests it took, and where the next run goes on (``None``: at the end)."""
        combined = self.combined
        page: AlertsPage | None = None
        if resume is not None:
            try:
                page = await self.feed.alerts_page(filter="", top=self.page_size, next_link=resume)
            except ServiceRefused as refused:
                log.warning("the saved alerts_v2 page could not be read (%s); reading the window again", refused)
        if page is None:
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
            if page.next_link is None or requests >= self.max_pages:
                return alerts, requests, page.next_link
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
            except InputError as error:  # malformed, or a field over its bound: the other alerts still count
                log.warning("alerts_v2 alert %s skipped: %s", str(alert.get("id"))[:80], error.message)
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
        started = await _start_run(self.store, SWEEP_CURSOR, self.every, now)
        if isinstance(started, NetRun):
            return started
        rows = await self.exchange.blocked_senders()
        mode = self.intake.policy.mode
        reports: list[AlertReport] = []
        for listed in rows:
            row = await anchored(self.store, listed, now)
            assert row is not None
            _, state = await current_restriction_claim(self.store, row, mode, now)
            if not restriction_needs_event(state, now):
                continue  # decided, or being decided, from another report
            report = self._report(row, row.restriction_key())
            user = report.users[0]
            earlier = await self.store.claim_state(
                RestrictionEvent.for_alert(report, user, delivery_id="", received_at=now).claim_key
            )
            if earlier is not None and earlier.state != "done" and now - earlier.claimed_at <= CLAIM_LEASE:
                continue  # our own event for it is queued or being retried: not another one
            if earlier is not None and earlier.state == "done":
                # Handled once without deciding the restriction (e.g. Exchange did not list it yet): a new event.
                report = self._report(row, f"{row.restriction_key()}|{iso(now)}")
            reports.append(report)
        result = await asyncio.to_thread(self.intake.queue_reports, reports)  # the sync queue client blocks
        detail = f"{len(rows)} restricted, {len(reports)} without an event yet"
        return NetRun(Net.SWEEP, True, detail, queued=len(result.accepted), requests=1)

    @staticmethod
    def _report(row: BlockedSender, alert_id: str) -> AlertReport:
        return AlertReport(
            source=SOURCE_SWEEP,
            alert_id=alert_id,
            title=SWEEP_TITLE,
            users=(UserRef(address=row.address.lower()),),
            created=iso(row.created) if row.created else None,
            direct=True,
        )
