"""The two halves of the product: ``Intake.accept`` (webhook -> queue) and ``Processor.process``
(queue -> claim, facts, decide, act, record). The function app and the CLI both call exactly these.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from restricted_sender.core import decide as rules
from restricted_sender.core.ledger import CLAIM_LEASE
from restricted_sender.core.policy import LoadedPolicy, Policy, effective, usable
from restricted_sender.core.restriction import Anchor, BlockedSender
from restricted_sender.core.untrusted import guard_logger
from restricted_sender.core.verify import Verdict, VerifyTask, judge
from restricted_sender.errors import (
    ConfigurationError,
    PayloadTooLarge,
    StillDeciding,
    TicketNotFiled,
)
from restricted_sender.intake.alerts import MAX_BODY_BYTES, MAX_EVENTS_PER_REQUEST, parse_json
from restricted_sender.intake.defender import DefenderBatch, compact, is_defender_batch, parse_records
from restricted_sender.intake.o365 import parse_notifications
from restricted_sender.intake.payloads import parse_alert_payload
from restricted_sender.intake.relay import MAX_MESSAGE_CHARS, defender_messages, o365_message
from restricted_sender.model import (
    Action,
    ActionKind,
    ActionStatus,
    AlertReport,
    Decision,
    DecisionRecord,
    Facts,
    Outcome,
    RestrictionEvent,
    Source,
    stable_id,
)
from restricted_sender.ports import ClaimResult, ClaimState, Clock, EventQueue, Exchange, Store
from restricted_sender.processing.actions import RESTRICTED_ENTITIES_URL, Actor, correlation_id, evidence, ticket_failed
from restricted_sender.processing.facts import FactSources, gather_facts
from restricted_sender.settings import O365_API_ROOT
from restricted_sender.timeutil import iso

decision_log = logging.getLogger("restricted_sender.decision")
log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)


# Where each anchor's instant sits in the restriction's evidence (BlockedSender.to_evidence).
_ANCHOR_FIELDS = {
    Anchor.CREATED.value: "created",
    Anchor.CHANGED.value: "changed",
    Anchor.FIRST_SEEN.value: "first_seen",
}


def log_decision(record: DecisionRecord) -> None:
    """The one structured log line per decision: the audit row without its evidence, plus the block's own time
    (``restriction_at``, "" when unknown, and which of the row's times it is, ``restriction_anchor``) so that the
    dashboard can time a decision from the block's creation."""
    found = record.evidence.get("restriction")
    restriction = found if isinstance(found, Mapping) else {}
    anchor = str(restriction.get("anchor") or "none")
    at = restriction.get(_ANCHOR_FIELDS.get(anchor, ""))
    line = {**record.to_dict(), "restriction_at": at if isinstance(at, str) else "", "restriction_anchor": anchor}
    decision_log.info(json.dumps(line, separators=(",", ":"), sort_keys=True))


@dataclass(frozen=True, slots=True)
class IntakeResult:
    accepted: tuple[RestrictionEvent, ...]
    ignored: tuple[DecisionRecord, ...]
    deferred: int = 0  # Defender rows queued to be joined with rows of other batches

    def to_body(self) -> dict[str, Any]:
        return {
            "deferred": self.deferred,
            "accepted": [{"event_id": e.event_id, "alert_id": e.alert_id, "user": e.user.key} for e in self.accepted],
            "ignored": [
                {
                    "alert_id": r.alert_id,
                    "user": r.user,
                    "reasons": [reason.to_dict() for reason in r.decision.reasons],
                }
                for r in self.ignored
            ],
        }


@dataclass
class Intake:
    """Parses a POSTed body, queues one event per (target alert, user), and only then says what it did.

    One request queues all of its events or, for any fault of the body (shape, a field's bound, a cap), none:
    every message is built and measured before the first is sent. Only the queue itself can fail midway: the
    answer is then 503, what was sent stays queued, and the sender's retry sends every event again under the same
    event ids, which the processor claims once each.
    """

    queue: EventQueue
    clock: Clock
    policy: LoadedPolicy
    new_delivery_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)
    content_queue: EventQueue | None = None  # Management Activity pointers and Defender rows, expanded later
    tenant_id: str | None = None  # a Management Activity notification must be for this tenant
    o365_api_root: str = O365_API_ROOT  # and point at content on this API

    def accept(self, body: bytes) -> IntakeResult:
        payload = _parse_body(body)
        if is_defender_batch(payload):
            return self._relay_defender(payload)
        reports = parse_alert_payload(payload, is_target=self.target_policy.is_target_alert)
        return self.queue_reports(reports, limit=MAX_EVENTS_PER_REQUEST)

    def _relay_defender(self, payload: object) -> IntakeResult:
        """Defender rows are joined with rows of earlier batches, which needs the store: checked here, joined
        by the content expander. Rows that can never matter are dropped first."""
        batch = compact(parse_records(payload), self.target_policy.is_target_alert)
        self.relay_defender(batch)
        return IntakeResult(accepted=(), ignored=(), deferred=len(batch.infos) + len(batch.evidence))

    def relay_defender(self, batch: DefenderBatch) -> None:
        _send_all(self._content_queue(), defender_messages(batch), "a Defender relay message")

    def accept_o365(self, body: bytes) -> int:
        """A Management Activity API notification: every content pointer queued (or none, on any bad item)."""
        if not self.tenant_id:
            raise ConfigurationError("TENANT_ID is not set: notifications cannot be checked against the tenant")
        pointers = parse_notifications(_parse_body(body), tenant_id=self.tenant_id, api_root=self.o365_api_root)
        _send_all(self._content_queue(), [o365_message(p) for p in pointers], "a content pointer")
        return len(pointers)

    def close(self) -> None:
        """Close the queue clients that can be closed (the storage queues; the fakes have nothing to close)."""
        for queue in (self.queue, self.content_queue):
            close = getattr(queue, "close", None)
            if close is not None:
                close()

    def _content_queue(self) -> EventQueue:
        if self.content_queue is None:
            raise ConfigurationError("no content queue is configured for Defender rows and Management Activity content")
        return self.content_queue

    @property
    def target_policy(self) -> Policy:
        # An unloadable policy still names the default alert: a restricted user is never dropped.
        return effective(self.policy)

    def queue_reports(self, reports: Iterable[AlertReport], *, limit: int | None = None) -> IntakeResult:
        """One event per (target report, user), all queued before this returns; the rest recorded as ignored.
        More than ``limit`` events is :class:`PayloadTooLarge`, before anything is queued."""
        now = self.clock.now()
        policy = self.target_policy
        delivery_id = self.new_delivery_id()
        events: dict[str, RestrictionEvent] = {}
        ignored: list[DecisionRecord] = []
        for report in reports:
            if not report.direct and not policy.is_target_alert(report.title):
                ignored.append(self._ignored(report, rules.not_target_alert(report.title, policy), now))
            elif not report.users:
                log.warning("target alert %s names no user or mailbox: nothing to process", report.alert_id)
                ignored.append(
                    self._ignored(
                        report,
                        rules.ignore(rules.ReasonCode.NO_USER_EVIDENCE, "the alert names no user or mailbox evidence"),
                        now,
                    )
                )
            else:
                for user in report.users:
                    event = RestrictionEvent.for_alert(report, user, delivery_id=delivery_id, received_at=now)
                    events.setdefault(event.event_id, event)
        if limit is not None and len(events) > limit:
            raise PayloadTooLarge(f"the body names {len(events)} events; the limit is {limit} events per request")
        _send_all(self.queue, [event.to_message() for event in events.values()], "an event")
        for record in ignored:
            log_decision(record)
        return IntakeResult(accepted=tuple(events.values()), ignored=tuple(ignored))

    def _ignored(self, report: AlertReport, decision: Decision, now: datetime) -> DecisionRecord:
        version = self.policy.version
        return DecisionRecord(
            event_id=stable_id(report.source, report.alert_id),
            alert_id=report.alert_id,
            source=report.source,
            sources=(Source(report.source, report.alert_id, now),),
            user=", ".join(u.key for u in report.users),
            decision=decision,
            actions=(),
            mode=self.policy.mode,
            policy_version=version,
            at=now,
        )


def _send_all(queue: EventQueue, messages: list[str], what: str) -> None:
    """Every message, once all of them are known to fit a queue message: a body is never queued in part for
    something the body itself holds. (The parsers bound every field, so this only holds if one was missed.)"""
    for message in messages:
        if len(message) > MAX_MESSAGE_CHARS:
            raise PayloadTooLarge(
                f"{what} would be {len(message)} characters; a queue message holds {MAX_MESSAGE_CHARS}"
            )
    for message in messages:
        queue.send(message)


def _parse_body(body: bytes) -> Any:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
    return parse_json(body)


def decision_record(
    event: RestrictionEvent, facts: Facts, decision: Decision, policy: LoadedPolicy, now: datetime
) -> DecisionRecord:
    """The record of one decision about ``event``, with its evidence, before anything is done."""
    record = DecisionRecord(
        event_id=event.event_id,
        alert_id=event.alert_id,
        source=event.source,
        sources=(Source(event.source, event.alert_id, event.received_at),),
        user=(facts.restriction.address if facts.restriction else event.user.key).lower(),
        decision=decision,
        actions=(),
        mode=policy.mode,
        policy_version=policy.version,
        at=now,
        notes=facts.notes,
    )
    return replace(record, evidence=evidence(facts, record, event.alert_url))


MIDNIGHT = datetime.min.time()
MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount: after this try the host poisons the message


@dataclass
class Processor:
    """Handles one queued event end to end. Safe to run again for the same event (a queue retry)."""

    sources: FactSources
    actor: Actor
    store: Store
    clock: Clock
    policy: LoadedPolicy
    decided_wait: float = 20.0  # for the event deciding the same restriction right now; then the queue retries
    decided_poll: float = 0.2

    async def process(self, event: RestrictionEvent, *, attempt: int = 1) -> DecisionRecord:
        """claim -> (settled already?) -> facts -> claim the restriction (or record another report) -> decide and
        act -> record and complete: each stage once, in this order."""
        now = self.clock.now()
        if not self.policy.valid:
            log.error("policy is invalid, every restricted user is escalated: %s", self.policy)
        claim = await self.store.claim(event.claim_key, event.delivery_id, now)
        if (settled := await self._settled(event, claim, event.user.key, now)) is not None:
            return settled
        facts = await self._facts(event, claim, now)
        restriction = await self._claim_restriction(event, claim, facts, now, attempt)
        if isinstance(restriction, DecisionRecord):
            return restriction  # another event decides it, or this one did before a crash
        record = await self._decide_and_act(event, facts, restriction, now)
        return await self._finish(record, event, claim, restriction, now, attempt)

    def _targeted(self, event: RestrictionEvent) -> bool:
        policy = usable(self.policy)
        return policy is None or event.direct or policy.is_target_alert(event.alert_name)

    async def _settled(
        self, event: RestrictionEvent, claim: ClaimResult, user: str, now: datetime
    ) -> DecisionRecord | None:
        """Resume: this delivery recorded its decision in full and crashed before completing its claim. Finish it,
        change nothing."""
        if claim is not ClaimResult.RESUMED or (earlier := await self._recorded(event, user)) is None:
            return None
        await self.store.complete(event.claim_key, event.delivery_id, earlier.decision.outcome.value, now)
        return earlier

    async def _facts(self, event: RestrictionEvent, claim: ClaimResult, now: datetime) -> Facts:
        if claim is ClaimResult.DUPLICATE:
            return Facts(first_report=False)
        if not self._targeted(event):
            return Facts()  # queued under another policy; decide() ignores it, nothing to look up
        return await gather_facts(event, usable(self.policy), self.sources, now)

    async def _claim_restriction(
        self, event: RestrictionEvent, claim: ClaimResult, facts: Facts, now: datetime, attempt: int
    ) -> str | DecisionRecord | None:
        """One restriction, decided once: every report is remembered, the first to claim it decides. The key of the
        restriction this event decides (``None`` when there is none to claim), or the record of a report that does
        not decide it."""
        if claim is ClaimResult.DUPLICATE or not self._targeted(event) or facts.restriction is None:
            return None
        key, _ = await current_restriction_claim(self.store, facts.restriction, self.policy.mode, now)
        await self.store.add_report(key, Source(event.source, event.alert_id, event.received_at))
        if await self.store.claim(key, event.event_id, now) is not ClaimResult.DUPLICATE:
            return key
        # This event itself may have decided it and crashed before completing its claim (its user was then an object
        # id, so the first look could not find the record under the address).
        if (settled := await self._settled(event, claim, facts.restriction.address, now)) is not None:
            return settled
        return await self._another_report(event, facts, key, attempt)

    async def _decide_and_act(
        self, event: RestrictionEvent, facts: Facts, key: str | None, now: datetime
    ) -> DecisionRecord:
        decision = rules.decide(event, facts, self.policy, now)
        record = decision_record(event, facts, decision, self.policy, now)
        if key is not None and decision.outcome is Outcome.TICKET:
            record = replace(record, sources=await self.store.reports(key))  # the ticket names every source
        # With an invalid policy decide() never unblocks; tickets still go out unless the file asked for report-only.
        guards = loaded.guards if (loaded := usable(self.policy)) else None
        return await self.actor.carry_out(
            record,
            facts,
            enforce=self.policy.mode == "enforce",
            user_budget=guards.max_unblocks_per_user if guards else None,
            tenant_budget=guards.max_unblocks_per_tenant if guards else None,
        )

    async def _finish(
        self,
        record: DecisionRecord,
        event: RestrictionEvent,
        claim: ClaimResult,
        key: str | None,
        now: datetime,
        attempt: int,
    ) -> DecisionRecord:
        if key is not None:
            record = replace(record, sources=await self.store.reports(key))  # reports that came in meanwhile
        record = await self._record(record, event, attempt)
        # Only after the audit row exists: a retry after a failed audit write must not see "done". The restriction
        # first: a crash between the two leaves the event to retry, and it then finds its restriction decided.
        if key is not None:
            await self.store.complete(key, event.event_id, record.decision.outcome.value, now)
        if claim is not ClaimResult.DUPLICATE:
            await self.store.complete(event.claim_key, event.delivery_id, record.decision.outcome.value, now)
        return record

    async def _another_report(self, event: RestrictionEvent, facts: Facts, key: str, attempt: int) -> DecisionRecord:
        """A restriction another event claimed: recorded with every source so far, and added to its ticket."""
        assert facts.restriction is not None
        state = await self._decided(key)
        if state.state != "done":
            raise StillDeciding(
                "store", f"event {state.owner} is still deciding the restriction of {facts.restriction.address}"
            )
        now = self.clock.now()
        decision = rules.already_decided(event, facts.restriction, state.owner, state.outcome)
        record = decision_record(event, facts, decision, self.policy, now)
        record = replace(record, sources=await self.store.reports(key))
        if state.outcome == Outcome.TICKET.value:
            # The same ticket hears of the new report (the ledger adds each event once).
            record, _ = await self.actor.file_ticket(record, facts, enforce=self.policy.mode == "enforce")
        record = await self._record(record, event, attempt)
        await self.store.complete(event.claim_key, event.delivery_id, record.decision.outcome.value, now)
        return record

    async def _recorded(self, event: RestrictionEvent, user: str) -> DecisionRecord | None:
        """The complete record this delivery already wrote under ``user`` (a failed ticket is not complete: it is to
        be retried). A record belongs to the delivery that wrote it: a re-post of the alert shares the event id, and
        its "duplicate" record must not end the first delivery's retry undecided."""
        for row in reversed(await self.store.audit(user)):
            if row.get("event_id") == event.event_id and row.get("delivery_id") == event.delivery_id:
                record = DecisionRecord.from_dict(row)
                return None if ticket_failed(record) else record
        return None

    async def _decided(self, key: str) -> ClaimState:
        """The restriction's claim once its decider completed; after ``decided_wait``, as it stands then."""
        give_up = time.monotonic() + self.decided_wait
        while True:
            state = await self.store.claim_state(key)
            assert state is not None, "claimed just before"
            if state.state == "done" or time.monotonic() >= give_up:
                return state
            await asyncio.sleep(self.decided_poll)

    async def _record(self, record: DecisionRecord, event: RestrictionEvent, attempt: int) -> DecisionRecord:
        if ticket_failed(record):
            record = _with_retry_note(record, attempt)
        row = {**record.to_dict(), "evidence": dict(record.evidence), "delivery_id": event.delivery_id}
        await self.store.append_audit(row)
        log_decision(record)
        if ticket_failed(record):
            # Recorded, not completed: the queue delivers the event again and the ticket is tried again.
            raise TicketNotFiled("tickets", f"the ticket for {record.user} was not filed (try {attempt})")
        return record


WAIT_GRACE = rules.RELEASE_GRACE  # a waited-on block still listed this long past its release: decide it again
MAX_ROUNDS = 8


def restriction_claim_key(restriction: BlockedSender, mode: str, round_: int = 1) -> str:
    """The claim that makes one restriction (user + the block's CreatedDatetime) decided once, whatever the source.

    The mode is part of it: what report-only decided is decided again, for real, once the policy says enforce.
    """
    key = f"restriction|{mode}|{restriction.restriction_key()}"
    return key if round_ == 1 else f"{key}|{round_}"


async def current_restriction_claim(
    store: Store, restriction: BlockedSender, mode: str, now: datetime
) -> tuple[str, ClaimState | None]:
    """The claim a report of ``restriction`` belongs to now, and its state.

    Normally the first round's. A ``wait`` decision whose block should have lifted (its expected release plus
    ``WAIT_GRACE``) but is still listed opens the next round, so the user is decided again instead of forgotten.
    """
    release = restriction.expected_release()
    for round_ in range(1, MAX_ROUNDS + 1):
        key = restriction_claim_key(restriction, mode, round_)
        state = await store.claim_state(key)
        waited_out = state is not None and state.state == "done" and state.outcome == Outcome.WAIT.value
        if not waited_out or release is None or now < release + WAIT_GRACE or round_ == MAX_ROUNDS:
            return key, state
    raise AssertionError("unreachable")


def restriction_needs_event(state: ClaimState | None, now: datetime) -> bool:
    """For the sweep: no report has claimed the restriction, or its claim was left by a crashed processor."""
    return state is None or (state.state != "done" and now - state.claimed_at > CLAIM_LEASE)


def delisted_key(address: str, at: datetime) -> str:
    """Where the Management Activity API's HygieneEvent ``Delisted`` records of a user are kept (as reports).

    One key a day: a report key holds at most ``MAX_REPORTS``, and a verification reads only the days since its unblock.
    """
    return f"delisted|{address.lower()}|{at.date().isoformat()}"


def _with_retry_note(record: DecisionRecord, attempt: int) -> DecisionRecord:
    if attempt >= MAX_DEQUEUE_COUNT:
        note = f"try {attempt} of {MAX_DEQUEUE_COUNT}: the event goes to the poison queue for an operator"
    else:
        note = f"try {attempt} of {MAX_DEQUEUE_COUNT}: the queue retries the event"
    actions = tuple(
        replace(a, detail=f"{a.detail}; {note}")
        if a.kind == ActionKind.TICKET and a.status is ActionStatus.FAILED
        else a
        for a in record.actions
    )
    return replace(record, actions=actions)


@dataclass
class Verifier:
    """Runs one scheduled check of an unblock (a verification queue message): :mod:`restricted_sender.core.verify`."""

    exchange: Exchange
    actor: Actor
    store: Store
    clock: Clock
    policy: LoadedPolicy

    async def verify(self, task: VerifyTask, *, attempt: int = 1) -> DecisionRecord | None:
        """The check's record; ``None`` when this check already ran (a repeated message)."""
        now = self.clock.now()
        # The check itself is the delivery: its own retry resumes, a repeat after it completed is dropped.
        if await self.store.claim(task.claim_key, task.claim_key, now) is ClaimResult.DUPLICATE:
            return None
        rows = await self.exchange.blocked_senders(task.address)
        verdict = judge(task, rows, now, self.actor.verify_after)
        outcome = Outcome.TICKET if verdict.kind == rules.ReasonCode.NOT_LIFTED else Outcome.UNBLOCK
        record = DecisionRecord(
            event_id=task.event_id,
            alert_id=task.alert_id,
            source=task.source,
            sources=(Source(task.source, task.alert_id, task.unblocked_at),),
            user=task.address.lower(),
            decision=Decision(outcome, (verdict.reason,)),
            actions=(),
            mode=self.policy.mode,
            policy_version=self.policy.version,
            at=now,
        )
        # The Management Activity API's HygieneEvent "Delisted" records since the unblock confirm it independently.
        first = task.unblocked_at.date()
        days = [first + timedelta(days=n) for n in range((now.date() - first).days + 1)]
        delisted = [
            s
            for day in days[:3]  # checks end 24 h after the unblock: three days cover them
            for s in await self.store.reports(
                delisted_key(task.address, datetime.combine(day, datetime.min.time(), UTC))
            )
            if s.at >= task.unblocked_at
        ]
        record = replace(
            record,
            evidence={
                "restriction": verdict.restriction.to_evidence() if verdict.restriction else None,
                "unblocked_at": iso(task.unblocked_at),
                "check": task.attempt,
                "delisted": [{"at": iso(s.at), "record_id": s.id} for s in delisted],
                "links": {"restricted_entities": RESTRICTED_ENTITIES_URL},
            },
        )
        enforce = self.policy.mode == "enforce"
        facts = Facts(restriction=verdict.restriction)
        if verdict.kind == rules.ReasonCode.VERIFY_PENDING:
            record = await self._next_check(record, task, verdict)
        elif verdict.kind == rules.ReasonCode.VERIFIED:
            confirmed = f"; the audit log's Delisted record at {iso(delisted[0].at)} agrees" if delisted else ""
            record = record.with_actions(Action(ActionKind.VERIFY, ActionStatus.DONE, verdict.reason.text + confirmed))
        else:
            record = record.with_actions(Action(ActionKind.VERIFY, ActionStatus.FAILED, verdict.reason.text))
            # Restricted again: a new restriction, so the ticket its own alert would open is the same one.
            again = verdict.restriction is not None and verdict.restriction.created != task.restriction_created
            cid = correlation_id(self.actor.tenant_id, verdict.restriction) if again and verdict.restriction else None
            record, ticket = await self.actor.file_ticket(
                record, facts, enforce=enforce, correlation=cid or task.correlation_id, ledger_id=task.claim_key
            )
            if not ticket_failed(record):
                record = await self.actor.send_notices(
                    record, facts, enforce=enforce, ticket=ticket, ledger_id=task.claim_key
                )
        if ticket_failed(record):
            record = _with_retry_note(record, attempt)
        await self.store.append_audit({**record.to_dict(), "evidence": dict(record.evidence), "check": task.attempt})
        log_decision(record)
        if ticket_failed(record):
            raise TicketNotFiled("tickets", f"the not-lifted ticket for {record.user} was not filed (try {attempt})")
        await self.store.complete(task.claim_key, task.claim_key, verdict.kind, now)
        return record

    async def _next_check(self, record: DecisionRecord, task: VerifyTask, verdict: Verdict) -> DecisionRecord:
        assert verdict.next_check is not None
        queue = self.actor.verifications
        if queue is None:
            return record.with_actions(
                Action(ActionKind.VERIFY, ActionStatus.SKIPPED, "no verification queue configured")
            )
        following = replace(task, attempt=task.attempt + 1)
        delay = max(verdict.next_check - record.at, timedelta(0))
        await queue.send_later(following.to_message(), delay)  # a failure fails the check: the queue retries it
        return record.with_actions(Action(ActionKind.VERIFY, ActionStatus.SKIPPED, verdict.reason.text))
