"""Carries a decision out: unblock (then verify), contain, open or update the one ticket, notify.

``report-only`` records what it would have done and does nothing. Each step is an :class:`Action` with its
status; a failing containment or notification step is recorded and the others go on. A ticket that could not
be filed is recorded too, and then the event fails so the queue retries it (see ``Processor``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from restricted_sender.core.decide import ReasonCode, unblock_failed, unblock_uncertain
from restricted_sender.core.mailbox import NO_FORWARDING, ForwardingSettings, MailboxBefore, RuleState, suspicious_rules
from restricted_sender.core.notices import recipients_notice, user_notice
from restricted_sender.core.policy import Budget, Containment, Notify, Remediation
from restricted_sender.core.restriction import BlockedSender, BlockReason
from restricted_sender.core.teams_card import notice_card
from restricted_sender.core.ticket_body import (
    RESTRICTED_ENTITIES_URL as RESTRICTED_ENTITIES_URL,  # re-exported: pipeline imports it here
)
from restricted_sender.core.ticket_body import render_ticket
from restricted_sender.core.untrusted import guard_logger
from restricted_sender.core.verify import DEFAULT_VERIFY_AFTER, VerifyTask, check_at
from restricted_sender.errors import (
    ConfigurationError,
    OutcomeUnknown,
    SenderNotBlocked,
    ServiceError,
    ServiceRefused,
    TransientServiceError,
    UnblockLimitReached,
)
from restricted_sender.model import (
    MAX_UNBLOCK_DETAIL,
    Action,
    ActionKind,
    ActionStatus,
    Decision,
    DecisionRecord,
    Facts,
    Mail,
    Outcome,
    Reason,
    TicketContent,
    TicketRef,
    UnblockEntry,
    UnblockKind,
    UnblockStatus,
    stable_id,
)
from restricted_sender.ports import (
    ChatChannel,
    ClaimResult,
    Clock,
    DelayedQueue,
    Directory,
    Exchange,
    Store,
    TicketSystem,
)
from restricted_sender.processing.facts import clear_first_seen
from restricted_sender.timeutil import iso

# The unblock action's detail when another event already sent Remove for the same restriction.
ALREADY_SENT = "already sent: another event unblocked this restriction (the user's unblock history says when)"
log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)

MAX_RULES = 50  # the evidence stays bounded; the total says how many there were
MAX_RULE_NAME = 200  # characters of a rule's name kept in a remediation's before-state (it is only shown)
MAX_INTENT_REASON = 2000  # characters of each reason kept with a remediation intent
NOTICE_OWNER = "notice"  # the owner of every notice claim: a second try of the same mail finds it RESUMED
UNKNOWN_OUTCOME = "unknown"  # a notice claim completed after an answer that did not say whether it was delivered
UNBLOCK_EXPECTATION = "mail should flow again within an hour, at the latest within 24 hours"


def correlation_id(tenant_id: str, restriction: BlockedSender) -> str:
    """One id per tenant, user and restriction (the block's CreatedDatetime): one ticket per incident."""
    return "rsr-" + stable_id(tenant_id, restriction.restriction_key())


def evidence(facts: Facts, record: DecisionRecord, alert_url: str | None) -> dict[str, Any]:
    user = facts.user
    return {
        "restriction": facts.restriction.to_evidence() if facts.restriction else None,
        "user": None
        if user is None
        else {
            "id": user.id,
            "user_principal_name": user.user_principal_name,
            "mail": user.mail,
            "account_enabled": user.account_enabled,
            "user_type": user.user_type,
            "created": user.created,
        },
        "member_of_policy_groups": sorted(facts.member_of),
        "risk": {"level": facts.risk_level, "known": facts.risk_level is not None},
        "directory_roles": {
            "known": facts.roles_unread is None,
            "unread": facts.roles_unread,
            "roles": [r.to_evidence() for r in facts.roles],
        },
        "mfa": facts.mfa.to_evidence() if facts.mfa else {"known": False, "unread": facts.mfa_unread},
        "inbox_rules": None
        if facts.inbox_rules is None
        else [r.to_evidence(facts.tenant_domains, facts.folder_names) for r in facts.inbox_rules[:MAX_RULES]],
        "inbox_rules_total": None if facts.inbox_rules is None else len(facts.inbox_rules),
        "forwarding": facts.forwarding.to_evidence() if facts.forwarding else None,
        "our_unblocks": [
            {"at": iso(u.at), "kind": u.kind.value, "event_id": u.event_id, "status": u.status} for u in facts.unblocks
        ],
        "links": {"alert": alert_url, "restricted_entities": RESTRICTED_ENTITIES_URL},
    }


FiledAs = Literal["created", "updated", "recovered", "already"]


@dataclass(frozen=True, slots=True)
class TicketDesk:
    """One ticket per restriction, whatever the system, also with processors racing: the store's ledger decides
    who opens it; everyone else adds an update. ``find_open`` recovers a ticket opened by a processor that
    crashed before recording it."""

    system: TicketSystem
    store: Store
    clock: Clock
    wait_seconds: float = 20.0  # for a peer that is opening the ticket right now; then the queue retries us
    poll_seconds: float = 0.2

    async def file(self, content: TicketContent, event_id: str) -> tuple[TicketRef, FiledAs]:
        cid = content.correlation_id
        give_up = time.monotonic() + self.wait_seconds
        while True:
            slot = await self.store.begin_ticket(cid, event_id, self.clock.now())
            if slot.action != "wait":
                break
            if time.monotonic() >= give_up:
                raise TransientServiceError("tickets", f"another processor is still opening the ticket {cid}")
            await asyncio.sleep(self.poll_seconds)
        if slot.action == "done":
            assert slot.ticket is not None
            return slot.ticket, "already"
        if slot.action == "update":
            assert slot.ticket is not None
            await self.system.update(slot.ticket, content)
            await self.store.ticket_noted(cid, event_id, self.clock.now())
            return slot.ticket, "updated"
        found = await self.system.find_open(cid)
        filed: FiledAs = "recovered" if found else "created"
        ticket = found or await self.system.create(content)
        await self.store.ticket_opened(cid, event_id, ticket, self.clock.now())
        return ticket, filed


@dataclass(frozen=True, slots=True)
class Actor:
    exchange: Exchange
    directory: Directory
    desk: TicketDesk
    store: Store
    tenant_id: str
    verifications: DelayedQueue | None = None
    verify_after: timedelta = DEFAULT_VERIFY_AFTER
    containment: Containment = field(default_factory=Containment)
    notify: Notify = field(default_factory=Notify)
    channel: ChatChannel | None = None  # the Teams channel (TEAMS_WEBHOOK_URL)
    remediation: Remediation = field(default_factory=Remediation)

    async def carry_out(
        self,
        record: DecisionRecord,
        facts: Facts,
        *,
        enforce: bool,
        user_budget: Budget | None = None,
        tenant_budget: Budget | None = None,
    ) -> DecisionRecord:
        if enforce and self.remediation.any and record.decision.outcome is not Outcome.TICKET:
            record = await self._still_remediated(record)
        if record.decision.outcome is Outcome.UNBLOCK:
            record = await self.unblock(
                record,
                facts,
                enforce=enforce,
                kind=UnblockKind.AUTO,
                user_budget=user_budget,
                tenant_budget=tenant_budget,
                restriction_since=facts.restriction.anchor[1] if facts.restriction else None,
            )
        ticket: TicketRef | None = None
        if record.decision.outcome is Outcome.TICKET:
            record = await self.contain(record, facts, enforce=enforce)
            record = await self.remediate(record, facts, enforce=enforce)
            record, ticket = await self.file_ticket(record, facts, enforce=enforce)
            if ticket_failed(record):
                return record  # the event is retried: notify once, when the ticket exists
        return await self.send_notices(record, facts, enforce=enforce, ticket=ticket)

    # -- unblock and verification --------------------------------------------------------------------------

    async def unblock(
        self,
        record: DecisionRecord,
        facts: Facts,
        *,
        enforce: bool,
        kind: UnblockKind,
        user_budget: Budget | None,
        tenant_budget: Budget | None,
        restriction_since: datetime | None,
    ) -> DecisionRecord:
        """Remove the user from the restricted list at most once, whatever fails and whenever the process dies.

        ``restriction_since`` is when this restriction began (its anchor): another event's unblock of the user
        since then is an unblock of this very block, and Remove is then not sent again (``None``: not checked, a
        deliberate resend).

        The budget reservation, written before Remove is sent, is the intent record. An event that finds its own
        (``facts.own_unblock``) never sends Remove again: it records what it learns from its entry or from the list.
        After an answer that does not say whether Remove took effect, the list is read, never Remove resent.
        """
        restriction = facts.restriction
        own = facts.unblock_started
        address = (restriction.address if restriction else own.user if own else "").lower()
        assert address, "only a restricted user is unblocked"
        if not enforce:
            return record.with_actions(
                Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, f"report-only: would remove {address}")
            )
        if own is not None:
            return await self._resume(record, facts, own)
        assert restriction is not None
        entry = UnblockEntry(
            user=address, at=record.at, kind=kind, event_id=record.event_id, status=UnblockStatus.PENDING
        )
        # Spent atomically before the call: a processor running beside this one cannot spend the same last unblock
        # of a window, and a crash after Exchange said yes does not leave the budget unspent.
        full = await self.store.reserve_unblock(
            entry, user_budget=user_budget, tenant_budget=tenant_budget, restriction_since=restriction_since
        )
        if full == "started":
            return record.with_actions(Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, ALREADY_SENT))
        if full is not None:
            code, scope = (
                (ReasonCode.GUARD_USER_BUDGET, "this user's")
                if full == "user"
                else (ReasonCode.GUARD_TENANT_BUDGET, "the tenant's")
            )
            spent = Reason(code, f"another unblock spent the last of {scope} budget just before this one")
            return record.with_decision(Decision(Outcome.TICKET, (*record.decision.reasons, spent))).with_actions(
                Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, f"budget spent: {full}")
            )
        try:
            warnings = await self.exchange.remove_blocked_sender(restriction.address)
        except SenderNotBlocked:
            # Lifted between our look-up and the unblock (it expired, or an admin was quicker): nothing spent.
            await self.store.record_unblock(replace(entry, status=UnblockStatus.NOT_NEEDED))
            return record.with_actions(
                Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, f"{address} was no longer restricted")
            )
        except UnblockLimitReached as refused:
            return await self._refused(record, entry, refused)
        except TransientServiceError:
            # The answer proves Remove never ran (throttled, or no token): the queue's retry may send it.
            await self.store.record_unblock(replace(entry, status=UnblockStatus.NOT_SENT))
            raise
        except OutcomeUnknown as unknown:
            return await self._settle(
                record, restriction, entry, f"Exchange's answer was ambiguous ({unknown.message})"
            )
        except ServiceRefused as refused:
            if refused.http_status is not None and refused.http_status >= 500:
                # The cmdlet said no inside a server error: believed, but the list says whether it still happened.
                return await self._settle(record, restriction, entry, refused.message, refused=refused)
            return await self._refused(record, entry, refused)
        learned = "Exchange accepted it"
        if warnings:
            learned += f" with warnings: {'; '.join(warnings)}"
        await self.store.record_unblock(replace(entry, status=UnblockStatus.DONE, detail=_cut(learned)))
        return await self._unblocked(record, restriction, learned)

    async def _refused(self, record: DecisionRecord, entry: UnblockEntry, refused: ServiceRefused) -> DecisionRecord:
        """Exchange said no: recorded in its exact words (the limit's wording is not public), never retried."""
        await self.store.record_unblock(replace(entry, status=UnblockStatus.REFUSED, detail=_cut(refused.message)))
        why = (
            f"Microsoft's unblock limit for this account is reached; only Microsoft Support can unblock it. "
            f"Exchange said: {refused.message}"
            if isinstance(refused, UnblockLimitReached)
            else f"Exchange refused the unblock: {refused.message}"
        )
        return record.with_decision(unblock_failed(record.decision, why)).with_actions(
            Action(ActionKind.UNBLOCK, ActionStatus.FAILED, refused.message)
        )

    async def _resume(self, record: DecisionRecord, facts: Facts, own: UnblockEntry) -> DecisionRecord:
        """A later try of an event whose unblock was started: record what happened, never send Remove again."""
        if own.status == UnblockStatus.NOT_NEEDED:
            return record.with_actions(
                Action(
                    ActionKind.UNBLOCK, ActionStatus.SKIPPED, f"{own.user} was no longer restricted (an earlier try)"
                )
            )
        # Lifted since the earlier try: the block is known only by its address (its row is gone).
        restriction = facts.restriction or BlockedSender(own.user, BlockReason.parse(None), False, None, None, {})
        if own.status == UnblockStatus.DONE:
            learned = f"an earlier try recorded at {iso(own.at)} that {own.detail or 'Exchange accepted it'}"
            return await self._unblocked(record, restriction, learned)
        cause = (
            f"an earlier try of this event started the unblock at {iso(own.at)} and did not record Exchange's answer"
        )
        return await self._settle(record, restriction, own, cause)

    async def _settle(
        self,
        record: DecisionRecord,
        restriction: BlockedSender,
        entry: UnblockEntry,
        cause: str,
        *,
        refused: ServiceRefused | None = None,
    ) -> DecisionRecord:
        """Whether Remove took effect, from the restricted list (a read; Remove is never sent twice).

        Not listed: it took effect. Still listed: a refusal stands; otherwise the outcome is unknown (lifting can take
        an hour) and a person decides. A failing read fails the event: its retry finds the intent and reads again.
        """
        rows = await self.exchange.blocked_senders(entry.user)
        if not any(r.address.lower() == entry.user.lower() for r in rows):
            learned = f"{cause}; the restricted list no longer lists {entry.user}: the unblock took effect"
            await self.store.record_unblock(replace(entry, status=UnblockStatus.DONE, detail=_cut(learned)))
            return await self._unblocked(record, restriction, learned)
        if refused is not None:
            return await self._refused(record, entry, refused)
        why = (
            f"{cause}, and {entry.user} is still listed: whether the unblock took effect is unknown (lifting can take "
            "up to an hour). It is not sent again, since every unblock may count against Microsoft's limit: check "
            "Restricted entities, and unblock there if it is still listed in an hour"
        )
        await self.store.record_unblock(replace(entry, status=UnblockStatus.UNCERTAIN, detail=_cut(cause)))
        record = record.with_decision(unblock_uncertain(record.decision, why)).with_actions(
            Action(ActionKind.UNBLOCK, ActionStatus.FAILED, f"outcome unknown: {cause}")
        )
        # The check still runs: when the block lifts, the ticket hears of it.
        return await self.schedule_verification(record, restriction)

    async def _unblocked(self, record: DecisionRecord, restriction: BlockedSender, learned: str) -> DecisionRecord:
        await clear_first_seen(self.store, restriction)
        record = record.with_actions(
            Action(
                ActionKind.UNBLOCK,
                ActionStatus.DONE,
                f"removed {restriction.address} from Restricted entities ({learned}); {UNBLOCK_EXPECTATION}",
            )
        )
        return await self.schedule_verification(record, restriction)

    async def schedule_verification(self, record: DecisionRecord, restriction: BlockedSender) -> DecisionRecord:
        if self.verifications is None:
            return record.with_actions(
                Action(ActionKind.VERIFY, ActionStatus.SKIPPED, "no verification queue configured")
            )
        task = VerifyTask(
            event_id=record.event_id,
            address=restriction.address,
            restriction_created=restriction.created,
            unblocked_at=record.at,
            attempt=1,
            source=record.source,
            alert_id=record.alert_id,
            correlation_id=correlation_id(self.tenant_id, restriction),
        )
        first = check_at(record.at, 1, self.verify_after)
        assert first is not None
        try:
            await self.verifications.send_later(task.to_message(), first - record.at)
        except ServiceError as error:
            # The unblock happened; losing its check is logged loudly rather than undoing or repeating the unblock.
            log.error("could not schedule the verification of %s: %s", restriction.address, error)
            return record.with_actions(
                Action(ActionKind.VERIFY, ActionStatus.FAILED, f"not scheduled: {error.message}")
            )
        return record.with_actions(
            Action(ActionKind.VERIFY, ActionStatus.DONE, f"first check scheduled for {iso(first)}")
        )

    # -- containment -----------------------------------------------------------------------------------------

    async def contain(self, record: DecisionRecord, facts: Facts, *, enforce: bool) -> DecisionRecord:
        steps = [
            (name, on)
            for name, on in (
                (ActionKind.REVOKE_SESSIONS, self.containment.revoke_sessions),
                (ActionKind.CONFIRM_COMPROMISED, self.containment.confirm_compromised),
                (ActionKind.DISABLE_ACCOUNT, self.containment.disable_account),
            )
            if on
        ]
        if not steps:
            return record
        user = facts.user
        if not enforce:
            return record.with_actions(*(Action(n, ActionStatus.SKIPPED, "report-only: would run") for n, _ in steps))
        if user is None:
            return record.with_actions(
                *(Action(n, ActionStatus.SKIPPED, "the directory has no such user") for n, _ in steps)
            )
        # One at a time, in this order: sessions are revoked before the account is disabled, as the runbook says.
        actions = [await self._contain_step(name, user.id) for name, _ in steps]
        return record.with_actions(*actions)

    async def _contain_step(self, name: ActionKind, object_id: str) -> Action:
        try:
            if name is ActionKind.REVOKE_SESSIONS:
                await self.directory.revoke_sessions(object_id)
                return Action(name, ActionStatus.DONE, "sign-in sessions and refresh tokens revoked")
            if name is ActionKind.CONFIRM_COMPROMISED:
                if await self.directory.confirm_compromised(object_id):
                    return Action(name, ActionStatus.DONE, "confirmed compromised in Identity Protection (risk high)")
                return Action(name, ActionStatus.SKIPPED, "Identity Protection needs Entra ID P2; not confirmed")
            await self.directory.disable_account(object_id)
            return Action(name, ActionStatus.DONE, "account disabled (sign-in blocked)")
        except ServiceError as error:
            log.warning("containment step %s failed: %s", name, error)
            return Action(name, ActionStatus.FAILED, error.message)

    # -- mailbox remediation ---------------------------------------------------------------------------------

    async def remediate(self, record: DecisionRecord, facts: Facts, *, enforce: bool) -> DecisionRecord:
        """Disable the inbox rules the inbox-rule guard named and clear the forwarding the forwarding guard named,
        as the policy's ``remediation`` says; record each step, and the before-state in ``record.remediation``.

        The before-state is written first, once per event (the intent record): a retry of the event (its ticket
        failed) sees a mailbox that no longer looks compromised, so it works from, and records, the first try's
        before-state, never what it changed itself.
        """
        earlier = await self._remediation_intent(record.event_id) if enforce and self.remediation.any else None
        plan = earlier.before if earlier is not None else self._remediation_plan(record, facts)
        if plan is None:
            return record
        if not enforce:
            return record.with_actions(
                *(
                    Action(
                        ActionKind.DISABLE_INBOX_RULE, ActionStatus.SKIPPED, f"report-only: would disable {_rule(r)}"
                    )
                    for r in plan.rules
                ),
                *(
                    [Action(ActionKind.REMOVE_FORWARDING, ActionStatus.SKIPPED, "report-only: would clear " + _fwd(f))]
                    if (f := plan.forwarding) is not None
                    else []
                ),
            )
        if earlier is None:
            await self._write_remediation_intent(record, plan)
        actions: list[Action] = []
        refused: set[str] = set()
        for rule in plan.rules:
            action, maybe_changed = await self._disable_rule(plan.user_id, rule)
            actions.append(action)
            if not maybe_changed:
                refused.add(rule.id)  # not changed: not part of what a restore puts back
        if plan.forwarding is not None:
            actions.append(await self._clear_forwarding(plan.mailbox))
        changed = replace(plan, rules=tuple(r for r in plan.rules if r.id not in refused))
        return replace(record.with_actions(*actions), remediation=None if changed.empty else changed)

    def _remediation_plan(self, record: DecisionRecord, facts: Facts) -> MailboxBefore | None:
        """What the policy's remediation changes for this decision: only on a ticket, only what a guard named."""
        codes = record.decision.codes
        if record.decision.outcome is not Outcome.TICKET or facts.user is None or facts.restriction is None:
            return None
        rules: tuple[RuleState, ...] = ()
        if self.remediation.disable_inbox_rules and ReasonCode.GUARD_INBOX_RULE in codes:
            found = suspicious_rules(facts.inbox_rules or (), facts.tenant_domains, facts.folder_names)
            # Bounded, like the evidence: the intent must fit one stored value (a person handles the rest).
            rules = tuple(RuleState(r.id, r.name[:MAX_RULE_NAME], r.enabled) for r in found if r.id)[:MAX_RULES]
        forwarding: ForwardingSettings | None = None
        fwd = facts.forwarding
        if self.remediation.remove_forwarding and ReasonCode.GUARD_FORWARDING in codes and fwd is not None:
            forwarding = fwd.settings if fwd.settings is not None and fwd.settings.forwards else None
        plan = MailboxBefore(facts.restriction.address.lower(), facts.user.id, rules, forwarding)
        return None if plan.empty else plan

    async def _remediation_intent(self, event_id: str) -> _Remediated | None:
        cursor = await self.store.read_cursor(remediation_key(event_id))
        return _Remediated.from_text(cursor.value) if cursor is not None and cursor.value else None

    async def _write_remediation_intent(self, record: DecisionRecord, plan: MailboxBefore) -> None:
        reasons = tuple(Reason(r.code, r.text[:MAX_INTENT_REASON]) for r in record.decision.reasons)
        text = _Remediated(plan, reasons).to_text()
        if not await self.store.write_cursor(remediation_key(record.event_id), text, None):
            log.warning("the remediation intent of %s was written by another try first", record.event_id)

    async def _still_remediated(self, record: DecisionRecord) -> DecisionRecord:
        """An earlier try of this event remediated the mailbox, so this try sees it clean: it stays a ticket, for the
        reasons the earlier try found (never an unblock of a user whose rules we hid ourselves)."""
        earlier = await self._remediation_intent(record.event_id)
        if earlier is None:
            return record
        return record.with_decision(Decision(Outcome.TICKET, earlier.reasons))

    async def _disable_rule(self, user_id: str, rule: RuleState) -> tuple[Action, bool]:
        """The step's action, and whether the rule may have changed (it is then part of the before-state)."""
        kind = ActionKind.DISABLE_INBOX_RULE
        try:
            await self.directory.set_inbox_rule_enabled(user_id, rule.id, False)
        except TransientServiceError as error:
            # It may have happened: kept in the before-state (a restore reads before it writes).
            return Action(kind, ActionStatus.FAILED, f"outcome unknown for {_rule(rule)}: {error.message}"), True
        except ServiceError as error:
            log.warning("disabling an inbox rule failed: %s", error)
            return Action(kind, ActionStatus.FAILED, f"refused for {_rule(rule)}: {error.message}"), False
        return Action(kind, ActionStatus.DONE, f"{_rule(rule)} disabled (isEnabled false; not deleted)"), True

    async def _clear_forwarding(self, mailbox: str) -> Action:
        kind = ActionKind.REMOVE_FORWARDING
        try:
            await self.exchange.set_forwarding(mailbox, NO_FORWARDING)
        except OutcomeUnknown as unknown:
            now = await self._forwarding_now(mailbox)
            if now is not None and not now.forwards:
                return Action(kind, ActionStatus.DONE, f"forwarding of {mailbox} cleared (read back after: {unknown})")
            return Action(kind, ActionStatus.FAILED, f"outcome unknown, and {mailbox} still forwards: {unknown}")
        except ServiceError as error:
            log.warning("clearing forwarding failed: %s", error)
            return Action(kind, ActionStatus.FAILED, error.message)
        return Action(kind, ActionStatus.DONE, f"forwarding of {mailbox} cleared (Set-Mailbox)")

    async def _forwarding_now(self, mailbox: str) -> ForwardingSettings | None:
        """The mailbox's forwarding as Get-Mailbox reads it now; ``None`` when it cannot be read."""
        try:
            found = await self.exchange.mailbox_forwarding(mailbox)
        except ServiceError as error:
            log.warning("reading the forwarding of %s failed: %s", mailbox, error)
            return None
        return NO_FORWARDING if found is None or found.settings is None else found.settings

    async def mailbox_now(self, before: MailboxBefore) -> MailboxNow:
        """Read what a restore of ``before`` compares with. A failing read raises: the caller has claimed and written
        nothing yet, so the restore can simply be asked for again."""
        rules = await self._rules_now(before.user_id) if before.rules else None
        forwarding: ForwardingSettings | None = None
        if before.forwarding is not None:
            found = await self.exchange.mailbox_forwarding(before.mailbox)
            forwarding = NO_FORWARDING if found is None or found.settings is None else found.settings
        return MailboxNow(rules, forwarding)

    async def restore_mailbox(
        self, record: DecisionRecord, before: MailboxBefore, now: MailboxNow, *, resumed: bool
    ) -> DecisionRecord:
        """Put back exactly ``before``, given the mailbox as it is ``now``: re-enable only the rules remediation
        disabled that still exist and differ, and set the forwarding fields back when they differ. Each write at most
        once: ``resumed`` (an earlier restore of the same record was interrupted) and an ambiguous answer only read
        and report, never write again."""
        actions = [await self._restore_rule_step(before.user_id, rule, now, resumed=resumed) for rule in before.rules]
        if before.forwarding is not None:
            assert now.forwarding is not None, "read by mailbox_now"
            actions.append(
                await self._restore_forwarding(before.mailbox, before.forwarding, now.forwarding, resumed=resumed)
            )
        return record.with_actions(*actions)

    async def _rules_now(self, user_id: str) -> dict[str, bool] | None:
        rules = await self.directory.inbox_rules(user_id)
        return None if rules is None else {r.id: r.enabled for r in rules}

    async def _restore_rule_step(self, user_id: str, rule: RuleState, now: MailboxNow, *, resumed: bool) -> Action:
        kind = ActionKind.RESTORE_INBOX_RULE
        current = None if now.rules is None else now.rules.get(rule.id)
        if current is None:
            return Action(kind, ActionStatus.SKIPPED, f"{_rule(rule)} no longer exists: not recreated")
        if current == rule.enabled:
            return Action(kind, ActionStatus.SKIPPED, f"{_rule(rule)} is already as before")
        if resumed:
            return Action(kind, ActionStatus.FAILED, f"{_rule(rule)} is not as before, and an earlier restore was "
                          "interrupted: not written again; set it by hand")  # fmt: skip
        return await self._restore_rule(user_id, rule)

    async def _restore_rule(self, user_id: str, rule: RuleState) -> Action:
        kind = ActionKind.RESTORE_INBOX_RULE
        state = "enabled" if rule.enabled else "disabled"
        try:
            await self.directory.set_inbox_rule_enabled(user_id, rule.id, rule.enabled)
        except TransientServiceError as error:
            now = await self._rules_now(user_id)
            if now is not None and now.get(rule.id) == rule.enabled:
                return Action(kind, ActionStatus.DONE, f"{_rule(rule)} {state} again (read back after: {error})")
            return Action(kind, ActionStatus.FAILED, f"outcome unknown for {_rule(rule)}, not sent again: {error}")
        except ServiceError as error:
            return Action(kind, ActionStatus.FAILED, f"refused for {_rule(rule)}: {error.message}")
        return Action(kind, ActionStatus.DONE, f"{_rule(rule)} {state} again")

    async def _restore_forwarding(
        self, mailbox: str, before: ForwardingSettings, now: ForwardingSettings, *, resumed: bool
    ) -> Action:
        kind = ActionKind.RESTORE_FORWARDING
        if now.same_as(before):
            return Action(kind, ActionStatus.SKIPPED, f"the forwarding of {mailbox} is already as before")
        if resumed:
            return Action(kind, ActionStatus.FAILED, f"the forwarding of {mailbox} is not as before, and an earlier "
                          "restore was interrupted: not written again; set it by hand")  # fmt: skip
        try:
            await self.exchange.set_forwarding(mailbox, before)
        except OutcomeUnknown as unknown:
            after = await self._forwarding_now(mailbox)
            if after is not None and after.same_as(before):
                return Action(kind, ActionStatus.DONE, f"restored {_fwd(before)} (read back after: {unknown})")
            return Action(kind, ActionStatus.FAILED, f"outcome unknown, not sent again: {unknown}")
        except ServiceError as error:
            return Action(kind, ActionStatus.FAILED, error.message)
        return Action(kind, ActionStatus.DONE, f"restored {_fwd(before)} (Set-Mailbox)")

    # -- the ticket ------------------------------------------------------------------------------------------

    async def file_ticket(
        self,
        record: DecisionRecord,
        facts: Facts,
        *,
        enforce: bool,
        correlation: str | None = None,
        ledger_id: str | None = None,
    ) -> tuple[DecisionRecord, TicketRef | None]:
        """Open or update the restriction's ticket; ``ledger_id`` (default: the event id) is what the ledger notes
        on it, so one event is added once."""
        restriction = facts.restriction
        if correlation is None:
            assert restriction is not None, "only a restricted user is ticketed"
            correlation = correlation_id(self.tenant_id, restriction)
        if not enforce:
            return record.with_actions(
                Action(ActionKind.TICKET, ActionStatus.SKIPPED, f"report-only: would open a ticket ({correlation})")
            ), None
        content = render_ticket(correlation, record, record.evidence)
        try:
            ticket, filed = await self.desk.file(content, ledger_id or record.event_id)
        except (ServiceError, ConfigurationError) as error:
            return record.with_actions(
                Action(
                    ActionKind.TICKET, ActionStatus.FAILED, f"{self.desk.system.name}: {error.message} ({correlation})"
                )
            ), None
        return record.with_actions(
            Action(
                ActionKind.TICKET, ActionStatus.DONE, f"{filed} {self.desk.system.name} ticket {ticket} ({correlation})"
            )
        ), ticket

    # -- notifications ---------------------------------------------------------------------------------------

    async def send_notices(
        self,
        record: DecisionRecord,
        facts: Facts,
        *,
        enforce: bool,
        ticket: TicketRef | None = None,
        ledger_id: str | None = None,
    ) -> DecisionRecord:
        """Mail the user and the recipients and post the Teams card, each at most once per ``ledger_id`` (default:
        the event), also when the process dies after sending: a claim written before each is its intent record."""
        outcome = record.decision.outcome
        notify = self.notify
        if outcome is Outcome.IGNORE:
            return record
        mails: list[tuple[str, Mail]] = []
        # The user hears of a wait, or of an unblock that happened (or would have, in report-only).
        lifted = outcome is Outcome.WAIT or record.status_of(ActionKind.UNBLOCK) is ActionStatus.DONE or not enforce
        restricted = facts.restriction.address if facts.restriction else None
        if facts.unblock_started is not None:
            restricted = restricted or facts.unblock_started.user  # lifted since an earlier try sent the unblock
        if notify.sender is not None and notify.user and restricted is not None and lifted:
            address = facts.user.mail if facts.user and facts.user.mail else restricted
            mail = user_notice(outcome, address, at=record.at, release_at=record.decision.release_at)
            if mail is not None:
                mails.append(("user", mail))
        if notify.sender is not None and notify.recipients:
            reference = str(ticket) if ticket else None
            mails.append(("recipients", recipients_notice(notify.recipients, record, ticket=reference)))
        # A ticket decision's card is already in the channel when Teams is the ticket system.
        card = (
            notice_card(record, ticket=ticket)
            if notify.teams and not (outcome is Outcome.TICKET and self.desk.system.name == "teams")
            else None
        )
        if not enforce:
            skipped = [
                Action(ActionKind.NOTIFY, ActionStatus.SKIPPED, f"report-only: would mail the {who}")
                for who, _ in mails
            ]
            if card is not None:
                skipped.append(Action(ActionKind.NOTIFY, ActionStatus.SKIPPED, "report-only: would post to Teams"))
            return record.with_actions(*skipped)
        key = f"notice|{ledger_id or record.event_id}"
        actions = [await self._mail_once(f"{key}|{who}", who, mail) for who, mail in mails]
        if card is not None:
            actions.append(await self._post_once(f"{key}|teams", card))
        return record.with_actions(*actions)

    async def _mail_once(self, key: str, who: str, mail: Mail) -> Action:
        sender = self.notify.sender
        assert sender is not None
        return await self._notify_once(
            key,
            lambda: self.directory.send_mail(sender, mail),
            who=who,
            done=f"mailed the {who}: {', '.join(mail.to)}",
            verbs=("mailed them", "mailed", "mailing failed", "sent"),
        )

    async def _post_once(self, key: str, card: Mapping[str, Any]) -> Action:
        channel = self.channel
        if channel is None:
            return Action(ActionKind.NOTIFY, ActionStatus.FAILED, "Teams: TEAMS_WEBHOOK_URL is not set")
        return await self._notify_once(
            key,
            lambda: channel.post(card),
            who="Teams",
            done="posted the card to the Teams channel",
            verbs=("posted the card", "posted", "posting failed", "posted"),
        )

    async def _notify_once(
        self,
        key: str,
        deliver: Callable[[], Awaitable[None]],
        *,
        who: str,
        done: str,
        verbs: tuple[str, str, str, str],
    ) -> Action:
        """``deliver`` at most once per ``key``: claimed first, so a retry (or a crash after sending) never repeats
        it. ``verbs``: what an earlier try may have done, did, failed at, and the word for it in the claim."""
        may_have, did, failed, sent = verbs
        now = self.desk.clock.now()
        claim = await self.store.claim(key, NOTICE_OWNER, now)
        if claim is ClaimResult.RESUMED:
            return Action(
                ActionKind.NOTIFY, ActionStatus.SKIPPED, f"{who}: an earlier try may have {may_have}; not sent again"
            )
        if claim is ClaimResult.DUPLICATE:
            state = await self.store.claim_state(key)
            outcome = state.outcome if state is not None else None
            if outcome == UNKNOWN_OUTCOME:
                return Action(
                    ActionKind.NOTIFY,
                    ActionStatus.FAILED,
                    f"{who}: an earlier try got no clear answer and may have {may_have}; not sent again",
                )
            ok = outcome == sent
            return Action(
                ActionKind.NOTIFY,
                ActionStatus.DONE if ok else ActionStatus.FAILED,
                f"{who}: {did if ok else failed} in an earlier try; not sent again",
            )
        try:
            await deliver()
        except ServiceError as error:
            log.warning("notifying the %s failed: %s", who, error)
            lost = isinstance(error, OutcomeUnknown)
            await self.store.complete(key, NOTICE_OWNER, UNKNOWN_OUTCOME if lost else "failed", now)
            return Action(ActionKind.NOTIFY, ActionStatus.FAILED, f"{who}: {error.message}")
        await self.store.complete(key, NOTICE_OWNER, sent, now)
        return Action(ActionKind.NOTIFY, ActionStatus.DONE, done)


@dataclass(frozen=True, slots=True)
class MailboxNow:
    """The mailbox as a restore reads it before writing: rule id -> ``isEnabled`` (``None``: no rules asked, or no
    mailbox), and the forwarding fields (``None``: not asked)."""

    rules: Mapping[str, bool] | None
    forwarding: ForwardingSettings | None


def remediation_key(event_id: str) -> str:
    """The cursor holding an event's remediation intent: its before-state, written once before the first change."""
    return f"remediation|{event_id}"


@dataclass(frozen=True, slots=True)
class _Remediated:
    """What an event's first remediating try recorded before changing anything: the before-state and its reasons."""

    before: MailboxBefore
    reasons: tuple[Reason, ...]

    def to_text(self) -> str:
        body = {"before": self.before.to_dict(), "reasons": [r.to_dict() for r in self.reasons]}
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> _Remediated:
        data = json.loads(text)
        reasons = tuple(Reason(str(r["code"]), str(r["text"])) for r in data["reasons"])
        return cls(MailboxBefore.from_dict(data["before"]), reasons)


def _rule(rule: RuleState) -> str:
    return f'inbox rule "{rule.name}" ({rule.id})'


def _fwd(settings: ForwardingSettings) -> str:
    parts = [
        f"ForwardingSmtpAddress {settings.forwarding_smtp_address or '$null'}",
        f"ForwardingAddress {settings.forwarding_address or '$null'}",
        f"DeliverToMailboxAndForward {'$true' if settings.deliver_to_mailbox_and_forward else '$false'}",
    ]
    return ", ".join(parts)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_UNBLOCK_DETAIL else text[: MAX_UNBLOCK_DETAIL - 1] + "…"


def ticket_failed(record: DecisionRecord) -> bool:
    return record.status_of(ActionKind.TICKET) is ActionStatus.FAILED
