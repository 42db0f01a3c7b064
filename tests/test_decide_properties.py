"""Properties of the pure decision (README: Decisions) over random policies, facts, events and instants.

The policies are built as the admin would write them (plain dicts through ``parse_policy``), and sometimes
as a ``PolicyError``; the facts cover what Exchange, Graph and our own store may really return, including the
odd parts (no directory user, no restriction, unknown or garbage reasons, missing or unparsable dates).
The oracles below are written from the README's "The policy file" and "Decisions", not from ``decide.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from restricted_sender.core.decide import decide, unblock_failed
from restricted_sender.core.mailbox import Forwarding, parse_rules
from restricted_sender.core.policy import DEFAULT_ALERT_NAMES, Policy, parse_policy
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.errors import PolicyError
from restricted_sender.fakes import FakeDirectory, FakeExchange, FakeTickets, MemoryStore
from restricted_sender.model import (
    ActionStatus,
    Decision,
    DirectoryUser,
    Facts,
    Outcome,
    Reason,
    RestrictionEvent,
    UnblockEntry,
    UnblockKind,
    UserRef,
)
from restricted_sender.testing import Fakes
from restricted_sender.timeutil import FixedClock, iso

# Fast enough for CI (the whole file runs in a few seconds on 2 cores) and the same examples on every run.
PROPERTY = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SIMPLE = settings(PROPERTY, max_examples=80)  # properties with one short path through decide()
PIPELINE = settings(PROPERTY, max_examples=80)

TARGET = DEFAULT_ALERT_NAMES[0]  # "User restricted from sending email"
TENANT = "Tenant restricted from sending email"
CUSTOM_NAMES = ("Outbound spam restriction", "Mail flow issue")
OTHER_TITLES = (TENANT, "Suspicious email sending patterns detected", "Email sending limit exceeded", "", "User")
ADDRESSES = (
    "alice@contoso.com",
    "ceo@contoso.com",
    "bob@fabrikam.com",
    "x@hr.contoso.com",
    "y@payroll.hr.contoso.com",
    "grace.h@contoso.onmicrosoft.com",
    "eve@contoso.com.evil.org",
    "mallory@notcontoso.com",
    "z@other.org",
)
DOMAINS = ("contoso.com", "fabrikam.com", "hr.contoso.com", "*.hr.contoso.com", "*.contoso.com", "*.onmicrosoft.com")
GROUPS = ("3F1C9A7E-2B4D-4E8F-9A6B-7C5D1E2F3A4B", "99999999-0000-0000-0000-000000000000", "g-bulk", "g-vip")
OTHER_GROUPS = ("11111111-2222-3333-4444-555555555555", "g-unrelated")
RULE_NAMES = ("staff", "bulk", "Bulk", "vendors", "newsletter senders")
SPAM = "OutboundSpamLast24Hours=212;OutboundMailLast24Hours=240;OutboundSpamPercent=88"
LIMIT = (
    "EmailSendingLimitExceeded;InternalRecipientCountToday=4;ExternalRecipientCountToday=396;"
    "ExceedingLimitType=External"
)
OBJECT_ID = "0b4e2c1a-0000-4000-8000-000000000001"

FIXED_CODES = {
    "not-target-alert",
    "duplicate",
    "not-restricted",
    "deny:user",
    "deny:domain",
    "deny:group",
    "no-allow-rule",
    "identity-unbound",
    "guard:user-budget",
    "guard:tenant-budget",
    "guard:risk",
    "guard:inbox-rule",
    "guard:forwarding",
    "guard:account-disabled",
    "policy-invalid",
    "limit-block",
    "auto-release-soon",
}
ACTING = (Outcome.UNBLOCK, Outcome.WAIT)

_CASINGS = (str, str.lower, str.upper, str.title, str.swapcase)


CASINGS = st.sampled_from(_CASINGS)
BOOLS = st.booleans()


def cased(values: tuple[str, ...]) -> st.SearchStrategy[str]:
    """One of ``values`` in some letter case: the policy and the services do not agree on case."""
    return st.builds(lambda value, casing: casing(value), st.sampled_from(values), CASINGS)


def pick(draw: st.DrawFn, values: tuple[str, ...] | list[str]) -> str:
    """``cased`` for values known only inside a draw (strategies are built once: building them is slow)."""
    return draw(CASINGS)(draw(st.sampled_from(values)))


ADDRESS = cased(ADDRESSES)
ADDRESS_LISTS = st.lists(ADDRESS, max_size=2)
DOMAIN_LISTS = st.lists(cased(DOMAINS), max_size=2)
GROUP_LISTS = st.lists(cased(GROUPS), max_size=2)
ALERT_NAME_LISTS = st.lists(cased((TARGET, *CUSTOM_NAMES)), min_size=1, max_size=3)
RULE_NAME = st.sampled_from(RULE_NAMES)
BUDGET_DAYS = st.one_of(st.integers(1, 30), st.floats(0.25, 30))
BUDGET_COUNT = st.integers(0, 3)
RELEASE_HOURS = st.one_of(st.integers(0, 24), st.floats(0, 24))  # the loader refuses more (a day block: 24 h)


# --- policies -------------------------------------------------------------------------------------------------


@st.composite
def allow_rules(draw: st.DrawFn) -> dict[str, Any]:
    rule: dict[str, Any] = {"name": draw(RULE_NAME)}
    users = draw(ADDRESS_LISTS)
    domains = draw(DOMAIN_LISTS)
    groups = draw(GROUP_LISTS)
    if not (users or domains or groups):
        users = [draw(ADDRESS)]
    rule.update({key: value for key, value in (("users", users), ("domains", domains), ("groups", groups)) if value})
    return rule


ALLOW_RULE_LISTS = st.lists(allow_rules(), max_size=3, unique_by=lambda r: r["name"])


@st.composite
def policy_dicts(draw: st.DrawFn, modes: tuple[str | None, ...] = (None, "report-only", "enforce")) -> dict[str, Any]:
    data: dict[str, Any] = {}
    mode = draw(st.sampled_from(modes))
    if mode is not None:
        data["mode"] = mode
    if draw(BOOLS):
        names = draw(ALERT_NAME_LISTS)
        data["alert_names"] = [f" {n} " if draw(BOOLS) else n for n in names]
    rules = draw(ALLOW_RULE_LISTS)
    if rules:
        data["allow"] = rules
    deny = {
        "users": draw(ADDRESS_LISTS),
        "domains": draw(DOMAIN_LISTS),
        "groups": draw(GROUP_LISTS),
    }
    if any(deny.values()) and draw(st.integers(0, 2)) == 0:  # a deny list in a third of the policies
        data["deny"] = {key: value for key, value in deny.items() if value}
    guards: dict[str, Any] = {}
    if draw(BOOLS):
        guards["max_unblocks_per_user"] = {"count": draw(BUDGET_COUNT), "days": draw(BUDGET_DAYS)}
    if draw(BOOLS):
        guards["account_enabled"] = draw(BOOLS)
    if draw(BOOLS):
        guards["min_hours_to_auto_release"] = draw(RELEASE_HOURS)
    if guards:
        data["guards"] = guards
    return data


def _parsed(data: dict[str, Any]) -> tuple[dict[str, Any] | None, Policy | PolicyError]:
    try:
        return data, parse_policy(data)
    except PolicyError as error:
        return data, error


# Each breaks a policy that is otherwise valid: parse_policy must refuse it.
BREAKAGES: tuple[dict[str, Any], ...] = (
    {"alert_names": [TENANT]},
    {"allow": [{"name": "empty"}]},
    {"allow": [{"name": "staff", "domains": ["@contoso.com"]}]},
    {"guards": {"max_unblocks_per_user": {"count": -1, "days": 7}}},
    {"guards": {"max_unblocks_per_user": {"count": 1}}},
    {"mode": "enforcing"},
    {"ticket": {"system": "jira"}},
    {"deny": {"users": "ceo@contoso.com"}},
)


def valid_policies(modes: tuple[str | None, ...] = (None, "report-only", "enforce")) -> st.SearchStrategy[Any]:
    return policy_dicts(modes).map(_parsed)


def broken_policies(modes: tuple[str, ...] = ("report-only", "enforce")) -> st.SearchStrategy[Any]:
    built = st.builds(
        lambda problems, mode: (None, PolicyError(problems, mode=mode)),
        st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=2),
        st.sampled_from(modes),
    )
    mutated = st.builds(
        lambda data, breakage: _parsed({**data, **breakage}),
        policy_dicts(tuple(modes)),
        st.sampled_from(BREAKAGES),
    )
    return st.one_of(built, mutated)


@st.composite
def any_policies(draw: st.DrawFn) -> Any:
    """Mostly valid policies, sometimes a PolicyError (built, or from a broken file)."""
    return draw(BROKEN_POLICY if draw(st.integers(0, 5)) == 0 else VALID_POLICY)


# --- facts, events, instants ----------------------------------------------------------------------------------

NOWS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC))


@dataclass(frozen=True)
class Scenario:
    """One call of ``decide``; ``policy_data`` is the dict the admin wrote (``None`` for a bare PolicyError)."""

    policy_data: dict[str, Any] | None
    policy: Policy | PolicyError
    event: RestrictionEvent
    facts: Facts
    now: datetime
    rows: tuple[dict[str, Any], ...] = field(default=())  # the Get-BlockedSenderAddress rows behind the facts

    def decide(self) -> Decision:
        return decide(self.event, self.facts, self.policy, self.now)

    @property
    def valid(self) -> bool:
        return isinstance(self.policy, Policy)


def _alert_names(policy: Policy | PolicyError) -> tuple[str, ...]:
    return policy.alert_names if isinstance(policy, Policy) else DEFAULT_ALERT_NAMES


def is_target(title: str, policy: Policy | PolicyError) -> bool:
    wanted = title.strip().casefold()
    return any(wanted == name.strip().casefold() for name in _alert_names(policy))


CREATED_OFFSET_HOURS = st.one_of(st.floats(-72, 72), st.floats(-3, 0.5))  # often: placed just now
CREATED_FORM = st.integers(0, 6)
PADDING = st.sampled_from(("", " ", "  "))
OTHER_TITLE = st.one_of(cased(OTHER_TITLES), cased(CUSTOM_NAMES), st.text(max_size=20))
TITLE_KIND = st.sampled_from(("target", "target", "other"))
MAYBE_ADDRESS = st.one_of(ADDRESS, ADDRESS, ADDRESS, st.none())
ENABLED = st.sampled_from((True, False, None))
RESTRICTED = st.integers(0, 3)
REASON = st.one_of(st.sampled_from((SPAM, LIMIT, "", "garbage; ==; ;", None)), st.text(max_size=40))
TEMPORARY = st.sampled_from((True, False, "True", "false", "yes", 1, None))
UNBLOCK_LISTS = st.lists(
    st.tuples(st.floats(-48, 24 * 40), st.sampled_from(UnblockKind), st.sampled_from(("done", "pending", "failed"))),
    max_size=4,
)
VALID_POLICY = valid_policies()
BROKEN_POLICY = broken_policies()
ANY_POLICY = any_policies()


def created_value(draw: st.DrawFn, now: datetime) -> Any:
    """CreatedDatetime as Exchange may send it: before or after now, in several forms, or garbage."""
    instant = now + timedelta(hours=draw(CREATED_OFFSET_HOURS))
    forms = (
        iso(instant),
        instant.isoformat(),
        instant.replace(tzinfo=None).isoformat(),  # no offset: taken as UTC
        f"/Date({int(instant.timestamp() * 1000)})/",
        "",
        "not a date",
        None,  # the column is missing
    )
    return forms[draw(CREATED_FORM)]


@st.composite
def scenarios(
    draw: st.DrawFn, policies: st.SearchStrategy[Any] = ANY_POLICY, titles: str = "any", live: bool = False
) -> Scenario:
    """``live``: a first report of a target alert about a restricted user, i.e. past every ``ignore``."""
    policy_data, policy = draw(policies)
    titles = "target" if live else titles
    now = draw(NOWS)

    kind = draw(TITLE_KIND) if titles == "any" else titles
    if kind == "target":
        pad = draw(PADDING)
        title = f"{pad}{pick(draw, _alert_names(policy))}{pad}"
    else:
        title = draw(OTHER_TITLE)
        if titles == "other":
            assume(not is_target(title, policy))

    address = draw(MAYBE_ADDRESS)
    event = RestrictionEvent(
        event_id="e-1",
        delivery_id="d-1",
        source="alerts_v2",
        alert_id="a-1",
        alert_name=title,
        user=UserRef(address=address, object_id=None if address else OBJECT_ID),
        received_at=now,
    )

    user: DirectoryUser | None = None
    if draw(BOOLS):
        upn = address if address and draw(BOOLS) else draw(ADDRESS)
        mail = draw(st.sampled_from((None, upn, draw(ADDRESS))))
        user = DirectoryUser(id=OBJECT_ID, user_principal_name=upn, mail=mail, account_enabled=draw(ENABLED))

    rows: tuple[dict[str, Any], ...] = ()
    restriction: BlockedSender | None = None
    if live or draw(RESTRICTED):  # mostly restricted: that is where the interesting decisions are
        known = [a for a in (address, user and user.mail, user and user.user_principal_name) if a]
        sender = pick(draw, known) if known and draw(BOOLS) else draw(ADDRESS)
        row: dict[str, Any] = {"SenderAddress": sender}
        for column, value in (
            ("Reason", draw(REASON)),
            ("TemporaryBlock", draw(TEMPORARY)),
            ("CreatedDatetime", created_value(draw, now)),
        ):
            if value is not None:
                row[column] = value
        rows = (row,)
        restriction = BlockedSender.from_row(row)

    policy_groups = policy.group_ids() if isinstance(policy, Policy) else frozenset(GROUPS)
    # gather_facts lower-cases what Graph returns: the facts carry lower-case group ids.
    member_of = frozenset(g for g in sorted({g.lower() for g in policy_groups} | set(OTHER_GROUPS)) if draw(BOOLS))

    owner = (restriction.address if restriction else address or OBJECT_ID).lower()
    unblocks = tuple(
        UnblockEntry(user=owner, at=now - timedelta(hours=age), kind=kind, event_id=f"old-{i}", status=status)
        for i, (age, kind, status) in enumerate(draw(UNBLOCK_LISTS))
    )
    first_report = live or draw(st.integers(0, 3)) > 0  # mostly a first report: duplicates stop at the first check
    tenant_unblocks = tuple(
        UnblockEntry(user=f"other{i}@contoso.com", at=now - timedelta(minutes=draw(st.integers(1, 120))),
                     kind=UnblockKind.AUTO, event_id=f"t-{i}")
        for i in range(draw(st.integers(0, 12)))
    )  # fmt: skip
    rules = draw(st.none() | st.lists(RULE, max_size=3)) if not live or draw(BOOLS) else []
    forwarding = draw(st.none() | FORWARDING) if not live or draw(BOOLS) else None
    facts = Facts(
        restriction=restriction,
        user=user,
        member_of=member_of,
        unblocks=unblocks,
        first_report=first_report,
        tenant_unblocks=tenant_unblocks,
        risk_level=draw(st.none() | st.sampled_from(("none", "low", "medium", "high"))),
        inbox_rules=None if rules is None else parse_rules(rules),
        folder_names=draw(st.sampled_from(({}, {"f1": "Deleted Items"}, {"f1": "Projects"}))),
        forwarding=None if forwarding is None else Forwarding.from_mailbox(forwarding),
        tenant_domains=frozenset(d.lower() for d in DOMAINS),
    )
    return Scenario(policy_data, policy, event, facts, now, rows)


RECIPIENTS = st.lists(
    st.builds(lambda a: {"emailAddress": {"address": a}}, st.sampled_from(("x@evil.example", "boss@contoso.com"))),
    max_size=2,
)
RULE = st.builds(
    lambda enabled, forward, delete, folder: {
        "id": "r", "displayName": "r", "isEnabled": enabled,
        "actions": {"forwardTo": forward, "delete": delete, **({"moveToFolder": folder} if folder else {})},
    },
    BOOLS, RECIPIENTS, BOOLS, st.sampled_from((None, "f1", "junkemail", "inbox")),
)  # fmt: skip
FORWARDING = st.builds(
    lambda smtp: {"ForwardingSmtpAddress": smtp},
    st.sampled_from((None, "smtp:x@evil.example", "smtp:team@contoso.com")),
)


def identities(scenario: Scenario) -> set[str]:
    """Every address of the one identity decided on: the bound directory user's UPN and mail, and the restricted
    address. Not the alert's own address: an alert may pair one user's address with another's object id."""
    found: set[str] = set()
    if scenario.facts.user:
        found |= {a for a in (scenario.facts.user.user_principal_name, scenario.facts.user.mail) if a}
    if scenario.facts.restriction:
        found.add(scenario.facts.restriction.address)
    return {a.lower() for a in found}


def deny_hits(scenario: Scenario) -> list[str]:
    """What the admin's deny list (as written) says about this user, computed from the policy dict."""
    deny = (scenario.policy_data or {}).get("deny", {})
    users = {u.strip().lower() for u in deny.get("users", [])}
    domains = [d.strip().lower() for d in deny.get("domains", [])]
    groups = {g.strip().lower() for g in deny.get("groups", [])}
    hits: list[str] = []
    for address in identities(scenario):
        domain = address.rpartition("@")[2]
        if address in users:
            hits.append(f"user {address}")
        for pattern in domains:
            if domain == pattern or (pattern.startswith("*.") and domain.endswith(pattern[1:])):
                hits.append(f"domain {pattern} ({address})")
    hits.extend(f"group {g}" for g in sorted(groups & scenario.facts.member_of))
    return hits


# --- properties -----------------------------------------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_decide_never_raises_and_equal_inputs_give_equal_decisions(scenario: Scenario) -> None:
    first = scenario.decide()
    assert isinstance(first, Decision)
    assert first.outcome in Outcome
    assert scenario.decide() == first


@PROPERTY
@given(scenarios())
def test_every_decision_gives_at_least_one_known_reason_with_a_code_and_a_text(scenario: Scenario) -> None:
    decision = scenario.decide()
    assert decision.reasons
    rule_codes = {f"allow:{r.name}" for r in scenario.policy.allow} if isinstance(scenario.policy, Policy) else set()
    for reason in decision.reasons:
        assert isinstance(reason, Reason)
        assert reason.code.strip()
        assert reason.text.strip()
        assert reason.code in FIXED_CODES | rule_codes, reason


@st.composite
def denied_scenarios(draw: st.DrawFn) -> Scenario:
    """A live scenario whose policy also denies the user by one of its addresses, domains or groups, and often
    allows the user by the very same entry: deny must win over allow."""
    scenario = draw(scenarios(policies=VALID_POLICY, live=True))
    assert scenario.policy_data is not None
    known = sorted(identities(scenario))
    candidates: list[tuple[str, str]] = [("users", a) for a in known]
    for address in known:
        domain = address.rpartition("@")[2]
        candidates.append(("domains", domain))
        parent = domain.partition(".")[2]
        if "." in parent:
            candidates.append(("domains", f"*.{parent}"))
    candidates += [("groups", g) for g in sorted(scenario.facts.member_of)]
    kind, value = draw(st.sampled_from(candidates))
    data = dict(scenario.policy_data)
    deny = {key: list(values) for key, values in data.get("deny", {}).items()}
    deny[kind] = [*deny.get(kind, []), draw(CASINGS)(value)]
    data["deny"] = deny
    if draw(BOOLS):
        data["allow"] = [*data.get("allow", []), {"name": "the same", kind: [draw(CASINGS)(value)]}]
    return Scenario(data, parse_policy(data), scenario.event, scenario.facts, scenario.now, scenario.rows)


@PROPERTY
@given(st.one_of(scenarios(live=True), denied_scenarios(), denied_scenarios()))
def test_a_user_on_the_deny_list_by_any_address_domain_or_group_is_never_unblocked_or_left_to_wait(
    scenario: Scenario,
) -> None:
    hits = deny_hits(scenario)
    decision = scenario.decide()
    if hits:
        assert decision.outcome not in ACTING, (hits, decision)


@PROPERTY
@given(scenarios(live=True))
def test_a_failed_guard_always_means_a_ticket_and_acting_needs_an_allow_rule_and_nothing_against(
    scenario: Scenario,
) -> None:
    decision = scenario.decide()
    codes = decision.codes
    if any(code.startswith("guard:") for code in codes):
        assert decision.outcome is Outcome.TICKET, decision
    if decision.outcome in ACTING:
        assert not [c for c in codes if c.startswith(("guard:", "deny:")) or c == "no-allow-rule"], decision
        assert any(code.startswith("allow:") for code in codes), decision
        # Only on the facts of the user who owns the restricted address.
        user, restriction = scenario.facts.user, scenario.facts.restriction
        assert user is not None, decision
        assert restriction is not None, decision
        assert user.owns(restriction.address), decision


@SIMPLE
@given(scenarios(policies=broken_policies()))
def test_an_invalid_policy_never_unblocks_or_waits(scenario: Scenario) -> None:
    assert isinstance(scenario.policy, PolicyError)
    decision = scenario.decide()
    assert decision.outcome not in ACTING
    if decision.outcome is Outcome.TICKET:
        assert decision.codes == ("policy-invalid",)


@SIMPLE
@given(scenarios(policies=valid_policies(), titles="other"))
def test_an_alert_that_is_not_a_target_is_ignored_whatever_else_is_true(scenario: Scenario) -> None:
    decision = scenario.decide()
    assert (decision.outcome, decision.codes) == (Outcome.IGNORE, ("not-target-alert",))


@SIMPLE
@given(scenarios(titles="target"))
def test_a_repeated_report_of_a_target_alert_is_ignored_as_a_duplicate(scenario: Scenario) -> None:
    facts = Facts(
        restriction=scenario.facts.restriction,
        user=scenario.facts.user,
        member_of=scenario.facts.member_of,
        unblocks=scenario.facts.unblocks,
        first_report=False,
    )
    decision = decide(scenario.event, facts, scenario.policy, scenario.now)
    assert (decision.outcome, decision.codes) == (Outcome.IGNORE, ("duplicate",))


@SIMPLE
@given(scenarios(), st.text(max_size=60))
def test_a_refused_unblock_is_a_ticket_that_keeps_every_earlier_reason_and_ends_with_unblock_failed(
    scenario: Scenario, detail: str
) -> None:
    decision = scenario.decide()
    escalated = unblock_failed(decision, detail)
    assert escalated.outcome is Outcome.TICKET
    assert escalated.reasons[:-1] == decision.reasons
    assert escalated.reasons[-1] == Reason("unblock-failed", detail)


# --- report-only through the processor ------------------------------------------------------------------------


class ReportOnlyWorld:
    """The processor wired to the in-memory fakes, seeded with exactly the scenario's facts."""

    def __init__(self, scenario: Scenario) -> None:
        facts = scenario.facts
        self.exchange = FakeExchange(scenario.rows)
        users = [facts.user] if facts.user else []
        groups = {facts.user.id: sorted(facts.member_of)} if facts.user else {}
        self.directory = FakeDirectory(users, groups)
        self.tickets = FakeTickets()
        self.store = MemoryStore()
        for entry in facts.unblocks:
            self.store.history[(entry.user.lower(), entry.event_id)] = entry
        if not facts.first_report:  # another delivery already handled this alert and user
            self.store.claims[scenario.event.claim_key] = {"owner": "d-0", "state": "done", "claimed_at": scenario.now}
        self.history_before = dict(self.store.history)
        fakes = Fakes(exchange=self.exchange, directory=self.directory, tickets=self.tickets, store=self.store)
        self.processor = fakes.wire(scenario.policy, FixedClock(scenario.now)).processor


@PIPELINE
@given(
    scenarios(
        policies=st.one_of(
            valid_policies(modes=(None, "report-only")),
            valid_policies(modes=(None, "report-only")),
            broken_policies(modes=("report-only",)),
        )
    )
)
def test_report_only_decides_and_records_but_never_unblocks_or_opens_a_ticket(scenario: Scenario) -> None:
    assert scenario.policy.mode == "report-only"
    world = ReportOnlyWorld(scenario)
    record = asyncio.run(world.processor.process(scenario.event))
    assert world.exchange.removed == []
    assert world.exchange.rows == [dict(r) for r in scenario.rows]
    assert (world.tickets.tickets, world.tickets.deliveries) == ({}, 0)
    assert world.store.history == world.history_before  # no unblock was counted against the budget
    assert all(action.status is ActionStatus.SKIPPED for action in record.actions), record.actions
    assert record.mode == "report-only"
    if record.decision.outcome in (Outcome.UNBLOCK, Outcome.TICKET):
        assert len(record.actions) == 1  # what it would have done is on the record
    [row] = world.store.audit_rows
    assert row["decision"] == record.decision.outcome.value


# --- found by this file: guard numbers that overflowed date arithmetic ---------------------------------------


@settings(PROPERTY)
@given(
    scenarios(
        policies=st.builds(
            lambda data, days, hours: _parsed(
                {
                    **data,
                    "guards": {
                        "max_unblocks_per_user": {"count": 1, "days": days},
                        "min_hours_to_auto_release": hours,
                    },
                }
            ),
            policy_dicts(),
            st.one_of(st.integers(1, 10**12), st.floats(1, 1e300), st.just(float("inf"))),
            st.one_of(st.integers(0, 10**12), st.floats(0, 1e300), st.just(float("inf"))),
        ),
        titles="target",
    )
)
def test_every_guard_number_is_either_refused_by_the_loader_or_safe_for_decide(scenario: Scenario) -> None:
    """``days: 1000000`` once overflowed ``now - timedelta(...)`` inside decide(): the processor raised for every
    restricted user and the events went to the poison queue. The loader now bounds these numbers."""
    scenario.decide()
