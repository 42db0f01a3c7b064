"""The admin side (README: The admin API): a manual unblock by an authenticated operator, a user's status, the
restricted list, and ``check`` (facts and the decision, no action).

A manual unblock evaluates the same policy as the automatic path. A failed compromise guard (risk, inbox rule,
forwarding, disabled account), a deny match, a spent budget or an unloadable policy stop it unless the operator
passes ``force``, which needs its own app role (checked at the edge): a helpdesk unblocks clean users, only the
SOC overrides the signs that an attacker may hold the account. Other reasons come back as warnings. It acts
whatever the policy's ``mode`` (report-only governs the automation, not an operator's explicit request), is
recorded with the operator and the justification, counts against the budgets, and is verified like any other
unblock.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from restricted_sender.core import decide as rules
from restricted_sender.core.ledger import earlier_unblock
from restricted_sender.core.mailbox import MailboxBefore
from restricted_sender.core.policy import LoadedPolicy, effective, usable
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.errors import Conflict, MalformedPayload, NotFound, ServiceRefused
from restricted_sender.intake.alerts import parse_json
from restricted_sender.model import (
    Action,
    ActionKind,
    ActionStatus,
    Decision,
    DecisionRecord,
    DirectoryUser,
    Facts,
    Note,
    NoteCode,
    Operator,
    Outcome,
    Reason,
    RestrictionEvent,
    Source,
    UnblockEntry,
    UnblockKind,
    UnblockStatus,
    UserRef,
    stable_id,
)
from restricted_sender.ports import ClaimResult, Clock, Store
from restricted_sender.processing.actions import ALREADY_SENT, Actor
from restricted_sender.processing.facts import FactSources, gather_facts
from restricted_sender.processing.pipeline import decision_record, log_decision

MANUAL_SOURCE = "manual"  # the source of a manual unblock's event
MAX_JUSTIFICATION = 1000
MAX_HISTORY = 50
# How far back an earlier unblock counts when the block has no time of its own (no created, changed or first-seen).
EARLIER_UNBLOCK_WINDOW = timedelta(days=1)
_ADDRESS = re.compile(r"^[^@\s/\\]{1,64}@[^@\s/\\]{1,255}\.[^@\s/\\]+$")
# Reasons a manual unblock only overrides on purpose: the signs of a compromise, the admin's own deny list, the
# budgets, no usable policy.
_NEEDS_FORCE = (
    rules.ReasonCode.GUARD_RISK,
    rules.ReasonCode.GUARD_INBOX_RULE,
    rules.ReasonCode.GUARD_FORWARDING,
    rules.ReasonCode.GUARD_ACCOUNT_DISABLED,
    rules.ReasonCode.GUARD_USER_BUDGET,
    rules.ReasonCode.GUARD_TENANT_BUDGET,
    rules.ReasonCode.POLICY_INVALID,
)


@dataclass(frozen=True, slots=True)
class UnblockRequest:
    justification: str
    force: bool = False


@dataclass(frozen=True, slots=True)
class RestoreRequest:
    justification: str
    event_id: str | None = None  # which remediation to put back; default: the user's latest


RESTORE_OWNER = "restore"  # the owner of every restore claim: a second try finds it RESUMED and only reads
_EVENT_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_restore_request(body: bytes) -> RestoreRequest:
    data = _request_object(body, {"justification": '"..."', "event_id": '"..."'})
    justification = _justification(data, "why the mailbox may be put back")
    event_id = data.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or not _EVENT_ID.match(event_id)):
        raise MalformedPayload("event_id must be the 32 hex characters of a decision record's event_id")
    return RestoreRequest(justification=justification, event_id=event_id)


def restore_claim_key(event_id: str) -> str:
    return f"restore|{event_id}"


def parse_address(upn: str) -> str:
    address = upn.strip().lower()
    if not _ADDRESS.match(address):
        raise MalformedPayload(f"{upn[:100]!r} is not a user principal name or mail address")
    return address


def parse_unblock_request(body: bytes) -> UnblockRequest:
    data = _request_object(body, {"justification": '"..."', "force": "false"})
    justification = _justification(data, "why this user may send again")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise MalformedPayload("force must be true or false")
    return UnblockRequest(justification=justification, force=force)


def _request_object(body: bytes, fields: Mapping[str, str]) -> dict[str, Any]:
    """An admin request's JSON object (an empty body is ``{}``), refusing fields other than ``fields`` (name ->
    example value, shown in the error)."""
    data = parse_json(body or b"{}")
    if not isinstance(data, dict):
        example = ", ".join(f'"{name}": {value}' for name, value in fields.items())
        raise MalformedPayload(f"the body must be a JSON object: {{{example}}}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MalformedPayload(f"unknown fields: {', '.join(unknown)} (expected {', '.join(fields)})")
    return data


def _justification(data: Mapping[str, Any], why: str) -> str:
    justification = data.get("justification")
    if not isinstance(justification, str) or len(justification.strip()) < 3:
        raise MalformedPayload(f"justification is required: say {why} (3 characters or more)")
    if len(justification) > MAX_JUSTIFICATION:
        raise MalformedPayload(f"justification is longer than {MAX_JUSTIFICATION} characters")
    return justification.strip()


def warnings_of(decision: Decision) -> tuple[Reason, ...]:
    """What the policy says against unblocking: everything but the allow rule that matched."""
    return tuple(r for r in decision.reasons if not r.code.startswith(rules.ReasonPrefix.ALLOW))


def needs_force(reason: Reason) -> bool:
    return reason.code.startswith(rules.ReasonPrefix.DENY) or reason.code in _NEEDS_FORCE


@dataclass
class Admin:
    sources: FactSources
    actor: Actor
    store: Store
    clock: Clock
    policy: LoadedPolicy

    def _event(self, address: str, now: datetime, source: str) -> RestrictionEvent:
        policy = effective(self.policy)
        delivery = uuid.uuid4().hex
        return RestrictionEvent(
            event_id=stable_id(source, delivery),
            delivery_id=delivery,
            source=source,
            alert_id=f"{source}-{delivery[:12]}",
            alert_name=policy.alert_names[0],  # decide() judges it as the alert the policy acts on
            user=UserRef(address=address),
            received_at=now,
        )

    async def _facts(self, event: RestrictionEvent, now: datetime) -> Facts:
        policy = usable(self.policy)
        return await gather_facts(event, policy, self.sources, now)

    async def check(self, upn: str) -> DecisionRecord:
        """The facts and the decision the automatic path would take now; nothing is done or recorded."""
        now = self.clock.now()
        event = self._event(parse_address(upn), now, "check")
        facts = await self._facts(event, now)
        return decision_record(event, facts, rules.decide(event, facts, self.policy, now), self.policy, now)

    async def unblock(self, upn: str, request: UnblockRequest, operator: Operator) -> DecisionRecord:
        now = self.clock.now()
        event = self._event(parse_address(upn), now, MANUAL_SOURCE)
        facts = await self._facts(event, now)
        if facts.restriction is None:
            raise Conflict(f"{event.user.key} is not on the restricted list", code="not-restricted")
        warnings = warnings_of(rules.decide(event, facts, self.policy, now))
        unbound = [w for w in warnings if w.code == rules.ReasonCode.IDENTITY_UNBOUND]
        if unbound:
            # Not even force: whose account this is is unknown, so nobody may be unblocked on these facts.
            refused = self._operator_record(
                event, facts, Decision(Outcome.IGNORE, tuple(warnings)), now, operator, request
            ).with_actions(
                Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, "refused: no directory user owns the address")
            )
            await self._record_and_log(refused)
            raise Conflict(
                f"{unbound[0].text}; unblock it in the Defender portal after checking whose it is",
                code=rules.ReasonCode.IDENTITY_UNBOUND,
                details={"warnings": [w.to_dict() for w in warnings]},
            )
        since = _restriction_since(facts.restriction, now)
        earlier = await self._earlier_unblock(event.user.key, since)
        if earlier is not None and (earlier.status == UnblockStatus.PENDING or not request.force):
            await self._record_and_log(
                self._operator_record(
                    event, facts, Decision(Outcome.IGNORE, (_already(earlier), *warnings)), now, operator, request
                ).with_actions(Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, "refused: an unblock was already sent"))
            )
            raise Conflict(
                f"{_already(earlier).text}; GET /api/users/{event.user.key} shows how it ended"
                + ("" if earlier.status == UnblockStatus.PENDING else '; repeat with "force": true to send it again'),
                code=rules.ReasonCode.MANUAL_ALREADY_STARTED,
                details={
                    "unblock": {"at": earlier.at.isoformat(), "status": earlier.status, "event_id": earlier.event_id}
                },
            )
        blocking = [w for w in warnings if needs_force(w)]
        who = Reason(rules.ReasonCode.MANUAL, f"unblocked by hand by {operator.name}: {request.justification}")
        if blocking and not request.force:
            required = Reason(rules.ReasonCode.MANUAL_FORCE_REQUIRED, _codes(blocking))
            refused = self._operator_record(
                event, facts, Decision(Outcome.IGNORE, (required, *warnings)), now, operator, request,
            ).with_actions(Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, "refused: force is required"))  # fmt: skip
            await self._record_and_log(refused)
            raise Conflict(
                f"the policy says not to unblock {event.user.key} ({_codes(blocking)}); "
                'repeat with "force": true to override',
                code="force-required",
                details={"warnings": [w.to_dict() for w in warnings]},
            )
        forced = (Reason(rules.ReasonCode.MANUAL_FORCED, f"forced past {_codes(blocking)}"),) if blocking else ()
        record = self._operator_record(
            event, facts, Decision(Outcome.UNBLOCK, (who, *forced, *warnings)), now, operator, request
        )
        guards = loaded.guards if (loaded := usable(self.policy)) else None
        record = await self.actor.unblock(
            record,
            facts,
            enforce=True,
            kind=UnblockKind.MANUAL,
            # Forced: the budgets are overridden, but the unblock is still counted in them.
            user_budget=None if request.force or guards is None else guards.max_unblocks_per_user,
            tenant_budget=None if request.force or guards is None else guards.max_unblocks_per_tenant,
            # A forced resend of an accepted or uncertain unblock is deliberate; otherwise the store refuses a second
            # one atomically, even against a request that passed the check above at the same moment.
            restriction_since=None if earlier is not None else since,
        )
        if any(a.kind == ActionKind.UNBLOCK and a.detail == ALREADY_SENT for a in record.actions):
            record = record.with_decision(Decision(Outcome.IGNORE, record.decision.reasons))
            await self._record_and_log(record)
            raise Conflict(
                f"an unblock of this restriction of {event.user.key} was sent at the same moment by another "
                f"request; GET /api/users/{event.user.key} shows how it ended",
                code=rules.ReasonCode.MANUAL_ALREADY_STARTED,
            )
        done = record.status_of(ActionKind.UNBLOCK) is ActionStatus.DONE
        if done:
            record = await self.actor.send_notices(record, facts, enforce=True)
        await self._record_and_log(record)
        unblock = next(a for a in record.actions if a.kind == ActionKind.UNBLOCK)
        if unblock.status is ActionStatus.FAILED:
            raise ServiceRefused("exchange", unblock.detail)
        if not done and record.decision.outcome is Outcome.TICKET:
            raise Conflict(
                f"another unblock spent the budget first: {_codes(record.decision.reasons[-1:])}; "
                'repeat with "force": true to override',
                code="force-required",
            )
        if not done:
            raise Conflict(f"{event.user.key} is no longer on the restricted list", code="not-restricted")
        return record

    async def _earlier_unblock(self, address: str, since: datetime) -> UnblockEntry | None:
        """An unblock of this very restriction that already spent Remove (a caller retrying a request that timed
        out, two operators at once, the automation a moment earlier): Remove is never sent twice for one block."""
        return earlier_unblock(await self.store.unblocks(address, since), address, since)

    def _operator_record(
        self,
        event: RestrictionEvent,
        facts: Facts,
        decision: Decision,
        now: datetime,
        operator: Operator,
        request: UnblockRequest,
    ) -> DecisionRecord:
        record = decision_record(event, facts, decision, self.policy, now)
        extra = {"operator": operator.to_dict(), "justification": request.justification, "force": request.force}
        return replace(record, evidence={**record.evidence, **extra})

    async def restore(self, upn: str, request: RestoreRequest, operator: Operator) -> DecisionRecord:
        """Put back what mailbox remediation changed for ``upn`` (its latest remediation, or ``request.event_id``'s):
        exactly the recorded before-state, at most once per remediated record. The claim is the intent record: a
        second restore of the same record is refused once the first completed, and only reads (never writes) when
        the first was interrupted. Recorded with the operator and the justification, whatever the policy's mode."""
        address = parse_address(upn)
        source = await self._remediated(address, request.event_id)
        before = MailboxBefore.from_dict(source["remediation"])
        key = restore_claim_key(str(source["event_id"]))
        now = self.clock.now()
        state = await self.store.claim_state(key)
        if state is not None and state.state == "done":
            raise Conflict(
                f"the remediation of event {source['event_id']} was already restored ({state.outcome})",
                code="already-restored",
            )
        current = await self.actor.mailbox_now(before)  # read first: a failing read leaves nothing claimed
        resumed = await self.store.claim(key, RESTORE_OWNER, now) is not ClaimResult.NEW
        who = Reason(
            rules.ReasonCode.MANUAL_RESTORE,
            f"mailbox remediation of event {source['event_id']} restored by hand by {operator.name}: "
            f"{request.justification}",
        )
        event_id = stable_id(RESTORE_OWNER, str(source["event_id"]))
        record = DecisionRecord(
            event_id=event_id,
            alert_id=str(source.get("alert_id") or ""),
            source=MANUAL_SOURCE,
            sources=(Source(MANUAL_SOURCE, event_id, now),),
            user=address,
            decision=Decision(Outcome.IGNORE, (who,)),
            actions=(),
            mode=self.policy.mode,
            policy_version=self.policy.version,
            at=now,
            evidence={
                "operator": operator.to_dict(),
                "justification": request.justification,
                "restores": {"event_id": source["event_id"], "before": before.to_dict()},
            },
        )
        record = await self.actor.restore_mailbox(record, before, current, resumed=resumed)
        await self._record_and_log(record)
        failed = sum(1 for a in record.actions if a.status is ActionStatus.FAILED)
        await self.store.complete(key, RESTORE_OWNER, f"by {operator.name} at {now.isoformat()}", now)
        if failed:
            said = "; ".join(a.detail for a in record.actions if a.status is ActionStatus.FAILED)
            raise ServiceRefused("restore", f"{failed} restore step(s) failed (all recorded): {said}")
        return record

    async def _remediated(self, address: str, event_id: str | None) -> Mapping[str, Any]:
        """The audit row with the before-state to put back: ``event_id``'s, else the user's latest remediation."""
        rows = [
            r
            for r in await self.store.audit(address)
            if isinstance(r.get("remediation"), Mapping) and (event_id is None or r.get("event_id") == event_id)
        ]
        if not rows:
            which = f"event {event_id}" if event_id else address
            raise NotFound(f"no mailbox remediation is recorded for {which}")
        return rows[-1]

    async def _record_and_log(self, record: DecisionRecord) -> None:
        await self.store.append_audit({**record.to_dict(), "evidence": dict(record.evidence)})
        log_decision(record)

    async def status(self, upn: str) -> dict[str, Any]:
        """Live restriction status (parsed reason), the directory user, our decisions and unblocks."""
        address = parse_address(upn)
        now = self.clock.now()
        exchange, directory = self.sources.exchange, self.sources.directory
        rows, user, history, unblocks = await asyncio.gather(
            exchange.blocked_senders(address),
            directory.user(address),
            self.store.audit(address),
            self.store.unblocks(address, now - timedelta(days=365)),
        )
        row = next((r for r in rows if r.address.lower() == address), None)
        if row is None and user is None and not history:
            raise NotFound(f"no user, restriction or history for {address}")
        # Only a user who owns the address is shown as its directory user: Graph's look-up by mail is not proof.
        owner = user if user is not None and user.owns(address) else None
        notes = [] if owner else [Note(NoteCode.USER_NOT_IN_DIRECTORY, f"no directory user owns {address}")]
        return {
            "user": address,
            "restricted": row is not None,
            "restriction": row.to_evidence() if row else None,
            "directory": None if owner is None else _directory_summary(owner),
            "notes": [n.to_dict() for n in notes],
            "decisions": [_summary(r) for r in list(history)[-MAX_HISTORY:][::-1]],
            "unblocks": [
                {"at": u.at.isoformat(), "kind": u.kind.value, "status": u.status, "event_id": u.event_id}
                for u in unblocks
            ][::-1],
        }

    async def restricted(self) -> dict[str, Any]:
        """Every restricted user with the parsed reason and our last decision about them."""
        rows = await self.sources.exchange.blocked_senders()
        gate = asyncio.Semaphore(8)

        async def last(address: str) -> Mapping[str, Any] | None:
            async with gate:
                history = await self.store.audit(address)
            return _summary(history[-1]) if history else None

        lasts: Sequence[Mapping[str, Any] | None] = await asyncio.gather(*(last(r.address.lower()) for r in rows))
        return {
            "count": len(rows),
            "restricted": [
                {"user": r.address.lower(), "restriction": r.to_evidence(), "last_decision": d}
                for r, d in zip(rows, lasts, strict=True)
            ],
        }


def _restriction_since(restriction: BlockedSender | None, now: datetime) -> datetime:
    """When this restriction began: the block's anchor (its creation, else its change, else when it was first
    seen); an unblock before it belonged to an earlier block of the same user."""
    anchored = restriction.anchor[1] if restriction is not None else None
    return anchored if anchored is not None else now - EARLIER_UNBLOCK_WINDOW


def _already(earlier: UnblockEntry) -> Reason:
    state = {
        UnblockStatus.PENDING: "was sent and its answer is not recorded yet",
        UnblockStatus.UNCERTAIN: "was sent and its outcome is uncertain (a ticket asks a person to check)",
    }.get(UnblockStatus(earlier.status), "was accepted; the list may take a while to drop it, and its check follows")
    return Reason(
        rules.ReasonCode.MANUAL_ALREADY_STARTED,
        f"an unblock of this restriction ({earlier.kind.value}, at {earlier.at.isoformat()}) {state}",
    )


def _directory_summary(user: DirectoryUser) -> dict[str, Any]:
    return {"id": user.id, "user_principal_name": user.user_principal_name, "account_enabled": user.account_enabled}


def _codes(reasons: Sequence[Reason]) -> str:
    return ", ".join(r.code for r in reasons)


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("event_id", "alert_id", "source", "decision", "reasons", "actions", "mode", "policy_version", "at")
    summary = {k: row[k] for k in keep if k in row}
    found = row.get("evidence")
    if isinstance(found, Mapping) and "operator" in found:
        summary["operator"] = found["operator"]
        summary["justification"] = found.get("justification")
    return summary
