"""The pure decision (README: Decisions): event + facts + policy + now -> Decision. No I/O, no clock, no logging.

Order: ignore (``not-target-alert``, ``duplicate``, ``not-restricted``) -> eligibility (``deny:*``, else
``identity-unbound`` when no directory user owns the restricted address, else ``allow:<rule>`` or
``no-allow-rule``) -> guards (all evaluated, all failures reported) -> ``ticket`` when not
eligible or any guard failed; otherwise ``wait`` (``limit-block``, ``auto-release-soon``) or ``unblock``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from restricted_sender.core.policy import RISK_LEVELS, Budget, LoadedPolicy, Policy, Selector
from restricted_sender.core.restriction import BlockedSender, BlockKind
from restricted_sender.errors import PolicyError
from restricted_sender.model import Decision, Facts, Outcome, Reason, RestrictionEvent, UnblockEntry, UnblockStatus
from restricted_sender.timeutil import iso


class ReasonCode(StrEnum):
    """The stable codes of a decision's reasons (README: Decisions): audit rows, replay output and queries match on
    them. Two more codes are patterns, built from :class:`ReasonPrefix`: ``allow:<rule>`` and ``deny:<kind>``."""

    NOT_TARGET_ALERT = "not-target-alert"
    NOT_RESTRICTED = "not-restricted"
    DUPLICATE = "duplicate"
    NO_ALLOW_RULE = "no-allow-rule"
    IDENTITY_UNBOUND = "identity-unbound"
    POLICY_INVALID = "policy-invalid"
    GUARD_USER_BUDGET = "guard:user-budget"
    GUARD_ACCOUNT_DISABLED = "guard:account-disabled"
    GUARD_TENANT_BUDGET = "guard:tenant-budget"
    GUARD_RISK = "guard:risk"
    GUARD_INBOX_RULE = "guard:inbox-rule"
    GUARD_FORWARDING = "guard:forwarding"
    GUARD_PRIVILEGED = "guard:privileged"
    GUARD_NO_MFA = "guard:no-mfa"
    LIMIT_BLOCK = "limit-block"
    AUTO_RELEASE_SOON = "auto-release-soon"
    UNBLOCK_FAILED = "unblock-failed"
    UNBLOCK_UNCERTAIN = "unblock-uncertain"
    UNBLOCK_RESUMED = "unblock-resumed"
    NO_USER_EVIDENCE = "no-user-evidence"
    RELEASE_OVERDUE = "release-overdue"
    # A scheduled check of an unblock (core.verify): the verdict's kind is its reason's code.
    VERIFIED = "verified"
    NOT_LIFTED = "not-lifted"
    VERIFY_PENDING = "verify-pending"
    # A manual unblock (processing.admin).
    MANUAL = "manual"
    MANUAL_FORCED = "manual:forced"
    MANUAL_FORCE_REQUIRED = "manual:force-required"
    MANUAL_ALREADY_STARTED = "manual:already-started"
    MANUAL_RESTORE = "manual:restore"  # a mailbox remediation put back by hand (processing.admin)


class ReasonPrefix(StrEnum):
    """How the codes of a family start: ``allow:<rule name>`` and ``deny:<user|domain|group>`` are patterns; every
    guard's code starts with ``guard:``."""

    ALLOW = "allow:"
    DENY = "deny:"
    GUARD = "guard:"


RELEASE_GRACE = timedelta(hours=1)  # a block that lifts by itself is given this long past its expected release


def ignore(code: str, text: str) -> Decision:
    return Decision(Outcome.IGNORE, (Reason(code, text),))


def not_target_alert(title: str, policy: Policy) -> Decision:
    names = ", ".join(repr(n) for n in policy.alert_names)
    return ignore(ReasonCode.NOT_TARGET_ALERT, f"alert {title!r} is not one of the policy's alert_names ({names})")


def decide(event: RestrictionEvent, facts: Facts, policy: LoadedPolicy, now: datetime) -> Decision:
    if isinstance(policy, PolicyError):
        return _policy_invalid(event, facts, policy)
    if not event.direct and not policy.is_target_alert(event.alert_name):
        return not_target_alert(event.alert_name, policy)
    if not facts.first_report:
        return ignore(ReasonCode.DUPLICATE, f"alert {event.alert_id} for {event.user.key} was already handled")
    if facts.unblock_started is not None:
        return _resumed(event, facts.unblock_started)
    restriction = facts.restriction
    if restriction is None:
        return ignore(ReasonCode.NOT_RESTRICTED, f"{event.user.key} is not on the restricted list now")

    identities = facts.identities()
    reasons: list[Reason] = []
    denied = _selector_matches(policy.deny, identities, facts.member_of)
    eligible = False
    if denied:
        reasons.extend(
            Reason(f"{ReasonPrefix.DENY}{kind}", f"deny list matches {kind} {value}") for kind, value in denied
        )
    if facts.user is None or not facts.user.owns(restriction.address):
        # Whose groups, rules, risk and account state these facts are is unknown: nothing may be unblocked on them.
        reasons.append(Reason(ReasonCode.IDENTITY_UNBOUND, _unbound(restriction.address, facts)))
    elif not denied:
        for rule in policy.allow:
            matched = _selector_matches(rule.selector, identities, facts.member_of)
            if matched:
                eligible = True
                why = ", ".join(f"{kind} {value}" for kind, value in matched)
                reasons.append(Reason(f"{ReasonPrefix.ALLOW}{rule.name}", f"allow rule {rule.name!r} matches {why}"))
        if not eligible:
            reasons.append(Reason(ReasonCode.NO_ALLOW_RULE, f"no allow rule matches {', '.join(sorted(identities))}"))

    failed_guards = _guards(policy, facts, now)
    reasons.extend(failed_guards)
    if not eligible or failed_guards:
        return Decision(Outcome.TICKET, tuple(reasons))

    release = restriction.expected_release()
    if restriction.kind is BlockKind.SENDING_LIMIT and release is not None and now >= release + RELEASE_GRACE:
        # It should have lifted by itself and has not; admins cannot lift this kind: a person has to look.
        reasons.append(
            Reason(
                ReasonCode.RELEASE_OVERDUE,
                f"sending-limit block should have lifted by {iso(release)} and is still listed",
            )
        )
        return Decision(Outcome.TICKET, tuple(reasons))
    if restriction.kind is BlockKind.SENDING_LIMIT:
        when = f"; expected to lift by {iso(release)}" if release else ""
        reasons.append(
            Reason(ReasonCode.LIMIT_BLOCK, f"sending-limit block ({restriction.reason.raw}) lifts by itself{when}")
        )
        return Decision(Outcome.WAIT, tuple(reasons), release_at=release)
    horizon = timedelta(hours=policy.guards.min_hours_to_auto_release)
    if restriction.temporary and release is not None and now < release <= now + horizon:
        hours = (release - now).total_seconds() / 3600
        reasons.append(
            Reason(
                ReasonCode.AUTO_RELEASE_SOON,
                f"temporary block lifts by itself at {iso(release)} (in {hours:.1f} h, within "
                f"min_hours_to_auto_release={policy.guards.min_hours_to_auto_release:g}): not spending an unblock",
            )
        )
        return Decision(Outcome.WAIT, tuple(reasons), release_at=release)
    return Decision(Outcome.UNBLOCK, tuple(reasons))


def already_decided(event: RestrictionEvent, restriction: BlockedSender, owner: str, outcome: str | None) -> Decision:
    """Another report of a restriction some other event decided: decided and acted on once, so only recorded."""
    created = iso(restriction.created) if restriction.created else "an unknown time"
    how = f" ({outcome})" if outcome else " (still in progress)"
    return ignore(
        ReasonCode.DUPLICATE,
        f"the restriction of {restriction.address} created at {created} was already decided by event {owner}{how}; "
        f"this report ({event.source} {event.alert_id}) is added to its sources",
    )


def _resumed(event: RestrictionEvent, own: UnblockEntry) -> Decision:
    """An earlier try of this event decided to unblock and wrote its intent: what happened is recorded, nothing is
    decided again and Remove is never sent a second time (each one may count against Microsoft's unblock limit)."""
    if own.status in (UnblockStatus.REFUSED, UnblockStatus.FAILED):
        return Decision(
            Outcome.TICKET,
            (
                Reason(
                    ReasonCode.UNBLOCK_FAILED,
                    f"Exchange refused the unblock at {iso(own.at)}: {own.detail or 'no message'}",
                ),
            ),
        )
    return Decision(
        Outcome.UNBLOCK,
        (
            Reason(
                ReasonCode.UNBLOCK_RESUMED,
                f"an earlier try of event {event.event_id} decided at {iso(own.at)} to unblock {own.user} "
                f"(its unblock is {own.status}): what happened is recorded; the unblock is not sent again",
            ),
        ),
    )


def unblock_uncertain(decision: Decision, detail: str) -> Decision:
    """Whether the unblock took effect is unknown: a person looks, and Remove is not sent again."""
    return Decision(Outcome.TICKET, (*decision.reasons, Reason(ReasonCode.UNBLOCK_UNCERTAIN, detail)))


def unblock_failed(decision: Decision, detail: str) -> Decision:
    """The service refused the unblock (e.g. Microsoft's unblock limit): escalate, never retry."""
    return Decision(Outcome.TICKET, (*decision.reasons, Reason(ReasonCode.UNBLOCK_FAILED, detail)))


def _unbound(address: str, facts: Facts) -> str:
    if facts.user is None:
        return (
            f"no directory user could be bound to the restricted address {address}: account state, groups, rules "
            "and risk unknown"
        )
    return (
        f"directory user {facts.user.user_principal_name} ({facts.user.id}) does not own the restricted address "
        f"{address}"
    )


def _policy_invalid(event: RestrictionEvent, facts: Facts, error: PolicyError) -> Decision:
    # Fail closed: without a valid policy nothing is unblocked, but a restricted user is never dropped.
    if not facts.first_report:
        return ignore(ReasonCode.DUPLICATE, f"alert {event.alert_id} for {event.user.key} was already handled")
    if facts.restriction is None:
        return ignore(ReasonCode.NOT_RESTRICTED, f"{event.user.key} is not on the restricted list now")
    return Decision(
        Outcome.TICKET, (Reason(ReasonCode.POLICY_INVALID, f"the policy could not be loaded: {error.message}"),)
    )


def _guards(policy: Policy, facts: Facts, now: datetime) -> list[Reason]:
    """Every guard, in the README's (Decisions) order; each failing one is reported with the evidence that failed it."""
    guards = policy.guards
    failed: list[Reason] = []
    privileged = _privileged(guards.privileged_roles, facts)
    if privileged is not None:
        failed.append(privileged)
    budget = guards.max_unblocks_per_user
    if budget is not None:
        spent = budget.spent_by(facts.unblocks, now)
        if len(spent) >= budget.count:
            listing = ", ".join(f"{iso(u.at)} ({u.kind.value})" for u in spent) or "none"
            failed.append(
                Reason(
                    ReasonCode.GUARD_USER_BUDGET,
                    f"{len(spent)} unblock(s) of this user in the last {_window(budget)} "
                    f"(limit {budget.count}): {listing}",
                )
            )
    tenant_budget = guards.max_unblocks_per_tenant
    if tenant_budget is not None:
        spent = tenant_budget.spent_by(facts.tenant_unblocks, now)
        if len(spent) >= tenant_budget.count:
            users = ", ".join(sorted({u.user for u in spent})) or "none"
            failed.append(
                Reason(
                    ReasonCode.GUARD_TENANT_BUDGET,
                    f"circuit breaker: {len(spent)} unblock(s) in the tenant in the last {_window(tenant_budget)} "
                    f"(limit {tenant_budget.count}): {users}",
                )
            )
    level = facts.risk_level
    limit = guards.max_risk_level
    if limit is not None and level in RISK_LEVELS and RISK_LEVELS.index(level) > RISK_LEVELS.index(limit):
        failed.append(
            Reason(
                ReasonCode.GUARD_RISK,
                f"Identity Protection rates the user's risk {level!r}, above max_risk_level {limit!r}",
            )
        )
    if guards.suspicious_inbox_rules and facts.inbox_rules:
        findings = [f for rule in facts.inbox_rules for f in rule.findings(facts.tenant_domains, facts.folder_names)]
        if findings:
            failed.append(Reason(ReasonCode.GUARD_INBOX_RULE, "; ".join(findings)))
    if guards.external_forwarding and facts.forwarding is not None:
        findings = list(facts.forwarding.findings(facts.tenant_domains))
        if findings:
            failed.append(Reason(ReasonCode.GUARD_FORWARDING, "; ".join(findings)))
    if guards.require_mfa_registered and facts.user is not None:
        if facts.mfa_unread is not None:
            failed.append(Reason(ReasonCode.GUARD_NO_MFA, f"MFA registration could not be read: {facts.mfa_unread}"))
        elif facts.mfa is not None and not facts.mfa.registered:
            methods = ", ".join(facts.mfa.methods) or "none"
            failed.append(
                Reason(
                    ReasonCode.GUARD_NO_MFA,
                    f"no strong (MFA) authentication method registered (methods registered: {methods})",
                )
            )
    if policy.guards.account_enabled and facts.user is not None and facts.user.account_enabled is False:
        failed.append(
            Reason(
                ReasonCode.GUARD_ACCOUNT_DISABLED,
                f"account {facts.user.user_principal_name} is disabled: someone is already responding",
            )
        )
    return failed


def _privileged(wanted: tuple[str, ...], facts: Facts) -> Reason | None:
    """Holders of a privileged directory role, active or eligible, are never unblocked automatically; nor is a user
    whose roles could not be read (fail closed: privilege unknown)."""
    if not wanted or facts.user is None:
        return None
    if facts.roles_unread is not None:
        return Reason(
            ReasonCode.GUARD_PRIVILEGED,
            f"the directory roles of {facts.user.user_principal_name} could not be read ({facts.roles_unread}): "
            "whether the account is privileged is unknown",
        )
    names = frozenset(wanted)
    held = [role.label() for role in facts.roles if role.matches(names)]
    if not held:
        return None
    return Reason(
        ReasonCode.GUARD_PRIVILEGED,
        f"privileged account: {facts.user.user_principal_name} holds {', '.join(held)}; "
        "privileged accounts are never unblocked automatically",
    )


def _window(budget: Budget) -> str:
    hours = budget.window_hours
    return f"{hours / 24:g} day(s)" if hours >= 24 and hours % 24 == 0 else f"{hours:g} hour(s)"


def _selector_matches(
    selector: Selector, identities: frozenset[str], member_of: frozenset[str]
) -> list[tuple[str, str]]:
    matched: list[tuple[str, str]] = []
    for address in sorted(identities):
        if address in selector.users:
            matched.append(("user", address))
    for address in sorted(identities):
        domain = address.rpartition("@")[2]
        for pattern in selector.domains:
            if _domain_matches(pattern, domain) and ("domain", pattern) not in matched:
                matched.append(("domain", pattern))
    for group in sorted(selector.groups & member_of):
        matched.append(("group", group))
    return matched


def _domain_matches(pattern: str, domain: str) -> bool:
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])  # subdomains only, as the policy documents
    return domain == pattern
