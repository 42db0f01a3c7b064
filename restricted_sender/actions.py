"""Carries a decision out: unblock, or open a ticket. ``report-only`` records what it would have done."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .decide import GUARD_TENANT_BUDGET, GUARD_USER_BUDGET, unblock_failed
from .errors import SenderNotBlocked, ServiceRefused, UnblockLimitReached
from .model import (
    Action,
    ActionStatus,
    Decision,
    DecisionRecord,
    Facts,
    Outcome,
    Reason,
    UnblockEntry,
    UnblockKind,
    stable_id,
)
from .policy import Guards
from .ports import Exchange, Store, Tickets
from .restriction import BlockedSender
from .timeutil import iso

RESTRICTED_ENTITIES_URL = "https://security.microsoft.com/restrictedentities"
MAX_RULES = 50  # the evidence stays bounded; the total says how many there were
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
        "inbox_rules": None
        if facts.inbox_rules is None
        else [r.to_evidence(facts.tenant_domains, facts.folder_names) for r in facts.inbox_rules[:MAX_RULES]],
        "inbox_rules_total": None if facts.inbox_rules is None else len(facts.inbox_rules),
        "forwarding": facts.forwarding.to_evidence() if facts.forwarding else None,
        "our_unblocks": [
            {"at": iso(u.at), "kind": u.kind.value, "event_id": u.event_id, "status": u.status} for u in facts.unblocks
        ],
        "notes": list(facts.notes),
        "links": {"alert": alert_url, "restricted_entities": RESTRICTED_ENTITIES_URL},
    }


@dataclass(frozen=True, slots=True)
class Actor:
    exchange: Exchange
    tickets: Tickets
    store: Store
    tenant_id: str

    async def carry_out(
        self, record: DecisionRecord, facts: Facts, *, enforce: bool, guards: Guards | None = None
    ) -> DecisionRecord:
        if record.decision.outcome is Outcome.UNBLOCK:
            record = await self._unblock(record, facts, enforce=enforce, guards=guards or Guards())
        if record.decision.outcome is Outcome.TICKET:
            record = await self._ticket(record, facts, enforce=enforce)
        return record

    async def _unblock(self, record: DecisionRecord, facts: Facts, *, enforce: bool, guards: Guards) -> DecisionRecord:
        restriction = facts.restriction
        assert restriction is not None, "decide only unblocks a restricted user"
        if not enforce:
            return record.with_actions(
                Action("unblock", ActionStatus.SKIPPED, f"report-only: would remove {restriction.address}")
            )
        entry = UnblockEntry(
            user=restriction.address.lower(),
            at=record.at,
            kind=UnblockKind.AUTO,
            event_id=record.event_id,
            status="pending",
        )
        # Spent atomically before the call: a processor running beside this one cannot spend the same last unblock
        # of a window, and a crash after Exchange said yes does not leave the budget unspent.
        full = await self.store.reserve_unblock(
            entry, user_budget=guards.max_unblocks_per_user, tenant_budget=guards.max_unblocks_per_tenant
        )
        if full is not None:
            code, scope = (
                (GUARD_USER_BUDGET, "this user's") if full == "user" else (GUARD_TENANT_BUDGET, "the tenant's")
            )
            spent = Reason(code, f"another unblock spent the last of {scope} budget just before this one")
            return record.with_decision(Decision(Outcome.TICKET, (*record.decision.reasons, spent))).with_actions(
                Action("unblock", ActionStatus.SKIPPED, f"budget spent: {full}")
            )
        try:
            await self.exchange.remove_blocked_sender(restriction.address)
        except SenderNotBlocked:
            # Lifted between our look-up and the unblock (it expired, or an admin was quicker): nothing spent.
            await self.store.record_unblock(replace(entry, status="failed"))
            return record.with_actions(
                Action("unblock", ActionStatus.SKIPPED, f"{restriction.address} was no longer restricted")
            )
        except ServiceRefused as refused:
            await self.store.record_unblock(replace(entry, status="failed"))
            why = (
                "Microsoft's unblock limit for this account is reached; only Microsoft Support can unblock it"
                if isinstance(refused, UnblockLimitReached)
                else f"Exchange refused the unblock: {refused.message}"
            )
            return record.with_decision(unblock_failed(record.decision, why)).with_actions(
                Action("unblock", ActionStatus.FAILED, refused.message)
            )
        await self.store.record_unblock(replace(entry, status="done"))
        return record.with_actions(
            Action(
                "unblock",
                ActionStatus.DONE,
                f"removed {restriction.address} from Restricted entities; {UNBLOCK_EXPECTATION}",
            )
        )

    async def _ticket(self, record: DecisionRecord, facts: Facts, *, enforce: bool) -> DecisionRecord:
        restriction = facts.restriction
        assert restriction is not None, "decide only tickets a restricted user"
        correlation = correlation_id(self.tenant_id, restriction)
        if not enforce:
            return record.with_actions(
                Action("ticket", ActionStatus.SKIPPED, f"report-only: would open a ticket ({correlation})")
            )
        body = {"correlation_id": correlation, "record": record.to_dict(), "evidence": dict(record.evidence)}
        reference = await self.tickets.open(correlation, body)
        return record.with_actions(Action("ticket", ActionStatus.DONE, f"{reference} ({correlation})"))
