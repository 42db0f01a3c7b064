"""The pure decision, table-driven: for every reason code a case that produces it and a near miss that does not."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from restricted_sender.core.decide import ReasonCode, ReasonPrefix, decide, unblock_failed
from restricted_sender.core.mailbox import Forwarding, Recipient, parse_rules
from restricted_sender.core.policy import parse_policy
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.errors import PolicyError
from restricted_sender.model import (
    DirectoryUser,
    Facts,
    Outcome,
    UnblockEntry,
    UnblockKind,
)
from tests.conftest import EVENT_AT, restriction_event

NOW = EVENT_AT
GROUP = "3f1c9a7e-2b4d-4e8f-9a6b-7c5d1e2f3a4b"
SPAM = "OutboundSpamLast24Hours=212;OutboundMailLast24Hours=240;OutboundSpamPercent=88"
LIMIT = (
    "EmailSendingLimitExceeded;InternalRecipientCountToday=4;ExternalRecipientCountToday=396;"
    "ExceedingLimitType=External"
)

BASE_POLICY: dict[str, Any] = {
    "mode": "enforce",
    "allow": [{"name": "staff", "domains": ["contoso.com"]}, {"name": "bulk", "groups": [GROUP]}],
    "deny": {
        "users": ["ceo@contoso.com"],
        "domains": ["*.hr.contoso.com"],
        "groups": ["99999999-0000-0000-0000-000000000000"],
    },
    "guards": {
        "max_unblocks_per_user": {"count": 1, "days": 7},
        "account_enabled": True,
        "min_hours_to_auto_release": 2,
    },
}


TEAM_MAILBOX = {
    "Name": "Team Mailbox", "RecipientType": "UserMailbox", "RecipientTypeDetails": "SharedMailbox",
    "PrimarySmtpAddress": "team@contoso.com", "ExternalEmailAddress": None,
}  # fmt: skip
EXTERNAL_CONTACT = {
    "Name": "Travel Desk", "RecipientType": "MailContact", "RecipientTypeDetails": "MailContact",
    "PrimarySmtpAddress": "traveldesk@contoso.com", "ExternalEmailAddress": "SMTP:m.travel@freemail.example",
}  # fmt: skip


@dataclass
class Case:
    """One scenario: the defaults are an allowed, restricted, enabled user with a spam block -> unblock."""

    address: str = "alice@contoso.com"
    title: str = "User restricted from sending email"
    reason: str = SPAM
    temporary: bool = False
    created: datetime = NOW - timedelta(hours=1)
    restricted: bool = True
    enabled: bool | None = True
    in_directory: bool = True
    member_of: frozenset[str] = frozenset()
    unblocks: tuple[tuple[timedelta, str], ...] = ()  # (age, status)
    first_report: bool = True
    policy: dict[str, Any] = field(default_factory=lambda: BASE_POLICY)
    now: datetime = NOW
    tenant_unblocks: int = 0  # other users unblocked 10 minutes ago
    risk: str | None = None
    rules: tuple[dict[str, Any], ...] | None = ()
    folders: dict[str, str] = field(default_factory=dict)
    forwarding: dict[str, Any] | None = None
    forwarding_target: dict[str, Any] | None = None  # the Get-Recipient row its ForwardingAddress resolves to
    owner: str | None = None  # the directory user's UPN and mail, when not the restricted address
    proxies: tuple[str, ...] = ()

    def run(self) -> Any:
        event = restriction_event(self.address, alert_name=self.title, at=self.now)
        row = {
            "SenderAddress": self.address,
            "Reason": self.reason,
            "TemporaryBlock": self.temporary,
            "CreatedDatetime": self.created.isoformat(),
        }
        owner = self.owner or self.address
        user = DirectoryUser(
            id="u1", user_principal_name=owner, mail=owner, account_enabled=self.enabled, proxy_addresses=self.proxies
        )
        facts = Facts(
            restriction=BlockedSender.from_row(row) if self.restricted else None,
            user=user if self.in_directory else None,
            member_of=self.member_of,
            unblocks=tuple(
                UnblockEntry(user=self.address, at=self.now - age, kind=UnblockKind.AUTO, event_id=f"old{i}", status=s)
                for i, (age, s) in enumerate(self.unblocks)
            ),
            first_report=self.first_report,
            tenant_unblocks=tuple(
                UnblockEntry(f"u{i}@contoso.com", self.now - timedelta(minutes=10), UnblockKind.AUTO, f"t{i}")
                for i in range(self.tenant_unblocks)
            ),
            risk_level=self.risk,
            inbox_rules=None if self.rules is None else parse_rules(self.rules),
            folder_names=self.folders,
            forwarding=None
            if self.forwarding is None
            else Forwarding.from_mailbox(self.forwarding).resolved(
                None if self.forwarding_target is None else Recipient.from_row(self.forwarding_target)
            ),
            tenant_domains=frozenset({"contoso.com", "fabrikam.com"}),
        )
        return decide(event, facts, parse_policy(self.policy), self.now)


def rule(name: str = "r", enabled: bool = True, **actions: Any) -> dict[str, Any]:
    return {"id": name, "displayName": name, "isEnabled": enabled, "actions": actions}


def to(*addresses: str) -> list[dict[str, Any]]:
    return [{"emailAddress": {"address": a}} for a in addresses]


def with_guards(**guards: Any) -> dict[str, Any]:
    return {**BASE_POLICY, "guards": {**BASE_POLICY["guards"], **guards}}


CASES: list[tuple[str, Case, str, tuple[str, ...]]] = [
    # (name, case, expected decision, expected reason codes in order)
    ("an allowed user with a spam block is unblocked", Case(), "unblock", ("allow:staff",)),
    (
        "every matching allow rule is named",
        Case(member_of=frozenset({GROUP})),
        "unblock",
        ("allow:staff", "allow:bulk"),
    ),
    (
        "another alert is not ours",
        Case(title="Suspicious email sending patterns detected"),
        "ignore",
        ("not-target-alert",),
    ),
    (
        "the tenant-level alert is never ours",
        Case(title="Tenant restricted from sending email"),
        "ignore",
        ("not-target-alert",),
    ),
    (
        "the alert name matches case-insensitively",
        Case(title="user RESTRICTED from sending email"),
        "unblock",
        ("allow:staff",),
    ),
    ("a second report of the same alert and user is a duplicate", Case(first_report=False), "ignore", ("duplicate",)),
    ("a user no longer on the list is not acted on", Case(restricted=False), "ignore", ("not-restricted",)),
    ("a denied user is escalated whatever allow says", Case(address="ceo@contoso.com"), "ticket", ("deny:user",)),
    ("a denied subdomain is escalated", Case(address="x@payroll.hr.contoso.com"), "ticket", ("deny:domain",)),
    (
        "*.domain does not cover the domain itself",
        Case(
            address="x@hr.contoso.com", policy={**BASE_POLICY, "allow": [{"name": "hr", "domains": ["hr.contoso.com"]}]}
        ),
        "unblock",
        ("allow:hr",),
    ),
    (
        "a member of a denied group is escalated",
        Case(member_of=frozenset({"99999999-0000-0000-0000-000000000000"})),
        "ticket",
        ("deny:group",),
    ),
    (
        "a restricted address no directory user owns is escalated, never unblocked",
        Case(in_directory=False),
        "ticket",
        ("identity-unbound",),
    ),
    (
        "without deny groups a restricted address no directory user owns is still escalated",
        Case(in_directory=False, policy={**BASE_POLICY, "deny": {"users": ["ceo@contoso.com"]}}),
        "ticket",
        ("identity-unbound",),
    ),
    (
        "a directory user who does not own the restricted address is not whose facts decide",
        Case(owner="bob@contoso.com"),
        "ticket",
        ("identity-unbound",),
    ),
    (
        "an unbound address on the deny list names the deny match too",
        Case(address="ceo@contoso.com", in_directory=False),
        "ticket",
        ("deny:user", "identity-unbound"),
    ),
    (
        "a user owning the restricted address through an SMTP proxy address is bound",
        Case(owner="alice.smith@contoso.com", proxies=("SMTP:alice.smith@contoso.com", "smtp:Alice@Contoso.com")),
        "unblock",
        ("allow:staff",),
    ),
    ("a user no rule allows is escalated", Case(address="bob@fabrikam.com"), "ticket", ("no-allow-rule",)),
    (
        "an allow domain does not match a look-alike domain",
        Case(address="eve@contoso.com.evil.net"),
        "ticket",
        ("no-allow-rule",),
    ),
    (
        "an unblock inside the budget window spends the budget",
        Case(unblocks=((timedelta(days=6), "done"),)),
        "ticket",
        ("allow:staff", "guard:user-budget"),
    ),
    (
        "an in-flight unblock counts against the budget too",
        Case(unblocks=((timedelta(hours=1), "pending"),)),
        "ticket",
        ("allow:staff", "guard:user-budget"),
    ),
    (
        "an unblock older than the window does not count",
        Case(unblocks=((timedelta(days=8), "done"),)),
        "unblock",
        ("allow:staff",),
    ),
    ("a refused unblock does not count", Case(unblocks=((timedelta(days=1), "failed"),)), "unblock", ("allow:staff",)),
    (
        "a budget of two allows a second unblock",
        Case(
            unblocks=((timedelta(days=1), "done"),), policy=with_guards(max_unblocks_per_user={"count": 2, "days": 7})
        ),
        "unblock",
        ("allow:staff",),
    ),
    ("a disabled account is escalated", Case(enabled=False), "ticket", ("allow:staff", "guard:account-disabled")),
    (
        "a disabled account is not a failure when the guard is off",
        Case(enabled=False, policy=with_guards(account_enabled=False)),
        "unblock",
        ("allow:staff",),
    ),
    (
        "every failing guard is reported, not just the first",
        Case(enabled=False, unblocks=((timedelta(days=1), "done"),)),
        "ticket",
        ("allow:staff", "guard:user-budget", "guard:account-disabled"),
    ),
    (
        "guards are reported for a user who is not eligible either",
        Case(address="bob@fabrikam.com", enabled=False),
        "ticket",
        ("no-allow-rule", "guard:account-disabled"),
    ),
    ("a sending-limit block lifts by itself", Case(reason=LIMIT), "wait", ("allow:staff", "limit-block")),
    (
        "a sending-limit block of a suspicious user is still escalated",
        Case(reason=LIMIT, enabled=False),
        "ticket",
        ("allow:staff", "guard:account-disabled"),
    ),
    (
        "a sending-limit block of a user no rule allows is escalated",
        Case(reason=LIMIT, address="bob@fabrikam.com"),
        "ticket",
        ("no-allow-rule",),
    ),
    (
        "a day block lifting within min_hours_to_auto_release is waited out",
        Case(temporary=True, created=NOW - timedelta(minutes=30), now=datetime(2026, 11, 27, 22, 30, tzinfo=UTC)),
        "wait",
        ("allow:staff", "auto-release-soon"),
    ),
    (
        "a day block lifting later than min_hours_to_auto_release is unblocked",
        Case(temporary=True, created=NOW - timedelta(hours=1), now=datetime(2026, 11, 27, 21, 30, tzinfo=UTC)),
        "unblock",
        ("allow:staff",),
    ),
    (
        "a day block that should already have lifted is unblocked",
        Case(temporary=True, created=NOW - timedelta(days=2)),
        "unblock",
        ("allow:staff",),
    ),
    ("a user rated above max_risk_level is escalated", Case(risk="medium"), "ticket", ("allow:staff", "guard:risk")),
    ("a user at max_risk_level passes", Case(risk="low"), "unblock", ("allow:staff",)),
    ("unknown risk (no Entra ID P2) passes", Case(risk=None), "unblock", ("allow:staff",)),
    (
        "max_risk_level high lets every risk level through",
        Case(risk="high", policy=with_guards(max_risk_level="high")),
        "unblock",
        ("allow:staff",),
    ),
    (
        "an enabled rule forwarding outside the tenant is suspicious",
        Case(rules=(rule(forwardTo=to("evil@example.net")),)),
        "ticket",
        ("allow:staff", "guard:inbox-rule"),
    ),
    (
        "redirects and attachments count like forwards",
        Case(rules=(rule(redirectTo=to("x@evil.net")), rule("b", forwardAsAttachmentTo=to("y@evil.net")))),
        "ticket",
        ("allow:staff", "guard:inbox-rule"),
    ),
    (
        "a disabled forwarding rule never counts",
        Case(rules=(rule(enabled=False, forwardTo=to("evil@example.net")),)),
        "unblock",
        ("allow:staff",),
    ),
    (
        "forwarding inside the tenant's domains never counts",
        Case(rules=(rule(forwardTo=to("boss@Fabrikam.com")),)),
        "unblock",
        ("allow:staff",),
    ),
    (
        "a rule that deletes mail is suspicious",
        Case(rules=(rule(delete=True),)),
        "ticket",
        ("allow:staff", "guard:inbox-rule"),
    ),
    (
        "a rule that permanently deletes is suspicious",
        Case(rules=(rule(permanentDelete=True),)),
        "ticket",
        ("allow:staff", "guard:inbox-rule"),
    ),
    (
        "a rule moving mail to RSS Feeds is suspicious",
        Case(rules=(rule(moveToFolder="AAMkRSS"),), folders={"AAMkRSS": "RSS Feeds"}),
        "ticket",
        ("allow:staff", "guard:inbox-rule"),
    ),
    (
        "a rule moving mail to a well-known hiding folder by name is suspicious",
        Case(rules=(rule(moveToFolder="deleteditems"),)),
        "ticket",
        ("allow:staff", "guard:inbox-rule"),
    ),
    (
        "a rule filing mail into an ordinary folder is fine",
        Case(rules=(rule(moveToFolder="AAMkProj"),), folders={"AAMkProj": "Projects"}),
        "unblock",
        ("allow:staff",),
    ),
    (
        "rules are not judged when the guard is off",
        Case(rules=(rule(delete=True),), policy=with_guards(suspicious_inbox_rules=False)),
        "unblock",
        ("allow:staff",),
    ),
    (
        "mailbox forwarding outside the tenant is escalated",
        Case(forwarding={"ForwardingSmtpAddress": "smtp:drop@evil.net", "DeliverToMailboxAndForward": True}),
        "ticket",
        ("allow:staff", "guard:forwarding"),
    ),
    (
        "mailbox forwarding inside the tenant is fine",
        Case(
            forwarding={"ForwardingSmtpAddress": "smtp:team@contoso.com", "ForwardingAddress": "Team Mailbox"},
            forwarding_target=TEAM_MAILBOX,
        ),
        "unblock",
        ("allow:staff",),
    ),
    (
        "forwarding through ForwardingAddress to an external mail contact is escalated",
        Case(forwarding={"ForwardingAddress": "Travel Desk"}, forwarding_target=EXTERNAL_CONTACT),
        "ticket",
        ("allow:staff", "guard:forwarding"),
    ),
    (
        "a ForwardingAddress that cannot be resolved fails the forwarding guard",
        Case(forwarding={"ForwardingAddress": "Gone Contact"}),
        "ticket",
        ("allow:staff", "guard:forwarding"),
    ),
    (
        "forwarding is not judged when the guard is off",
        Case(forwarding={"ForwardingSmtpAddress": "smtp:drop@evil.net"}, policy=with_guards(external_forwarding=False)),
        "unblock",
        ("allow:staff",),
    ),
    (
        "the circuit breaker trips at the tenant budget",
        Case(tenant_unblocks=10),
        "ticket",
        ("allow:staff", "guard:tenant-budget"),
    ),
    ("the circuit breaker holds below the tenant budget", Case(tenant_unblocks=9), "unblock", ("allow:staff",)),
    (
        "several failing guards are all reported in design order",
        Case(
            unblocks=((timedelta(days=1), "done"),),
            tenant_unblocks=10,
            risk="high",
            enabled=False,
            rules=(rule(delete=True),),
            forwarding={"ForwardingSmtpAddress": "smtp:drop@evil.net"},
        ),
        "ticket",
        (
            "allow:staff",
            "guard:user-budget",
            "guard:tenant-budget",
            "guard:risk",
            "guard:inbox-rule",
            "guard:forwarding",
            "guard:account-disabled",
        ),
    ),
    (
        "a suspicious user with a sending-limit block is ticketed, not left to wait",
        Case(reason=LIMIT, rules=(rule(forwardTo=to("evil@example.net")),)),
        "ticket",
        ("allow:staff", "guard:inbox-rule"),
    ),
    (
        "a permanent block close to midnight is not waited out",
        Case(temporary=False, now=datetime(2026, 11, 27, 23, 30, tzinfo=UTC)),
        "unblock",
        ("allow:staff",),
    ),
]


@pytest.mark.parametrize(("case", "decision", "codes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_and_reason_codes(case: Case, decision: str, codes: tuple[str, ...]) -> None:
    result = case.run()
    assert (result.outcome.value, result.codes) == (decision, codes)
    assert all(reason.text for reason in result.reasons), "every reason explains itself"


def test_a_wait_says_when_the_block_lifts() -> None:
    result = Case(
        temporary=True, created=NOW - timedelta(minutes=30), now=datetime(2026, 11, 27, 22, 30, tzinfo=UTC)
    ).run()
    assert result.release_at == datetime(2026, 11, 28, tzinfo=UTC)
    assert "2026-11-28T00:00:00Z" in result.reasons[-1].text


def test_the_inbox_rule_reason_names_the_rule_and_the_address() -> None:
    result = Case(rules=(rule("x", forwardTo=to("evil@example.net")),)).run()
    assert result.reasons[-1].text == 'inbox rule "x" forwards to evil@example.net (outside the tenant)'


def test_the_budget_reason_names_the_unblocks_it_counted() -> None:
    result = Case(unblocks=((timedelta(days=3), "done"),)).run()
    assert "2026-11-24T09:00:00Z (auto)" in result.reasons[-1].text


def test_a_refused_unblock_becomes_a_ticket_that_keeps_the_earlier_reasons() -> None:
    escalated = unblock_failed(Case().run(), "unblock limit reached")
    assert escalated.outcome is Outcome.TICKET
    assert escalated.codes == ("allow:staff", "unblock-failed")


@pytest.mark.parametrize(
    ("case", "decision", "codes"),
    [
        (Case(), "ticket", ("policy-invalid",)),
        (Case(restricted=False), "ignore", ("not-restricted",)),
        (Case(first_report=False), "ignore", ("duplicate",)),
    ],
    ids=["a restricted user is escalated", "an unrestricted user is still ignored", "a duplicate is still ignored"],
)
def test_an_invalid_policy_never_unblocks(case: Case, decision: str, codes: tuple[str, ...]) -> None:
    event = restriction_event(case.address, alert_name=case.title, at=NOW)
    row = {"SenderAddress": case.address, "Reason": SPAM, "CreatedDatetime": "2026-11-27T08:00:00Z"}
    facts = Facts(restriction=BlockedSender.from_row(row) if case.restricted else None, first_report=case.first_report)
    result = decide(event, facts, PolicyError(["mode: 'enforced' is not one of report-only, enforce"]), NOW)
    assert (result.outcome.value, result.codes) == (decision, codes)


def test_decide_is_pure_the_same_inputs_give_the_same_decision() -> None:
    case = Case(unblocks=((timedelta(days=1), "done"),), enabled=False)
    assert case.run() == replace(case).run()


@pytest.mark.parametrize("code", [*ReasonCode, *(f"{prefix}" for prefix in ReasonPrefix)])
def test_every_reason_code_is_documented_in_the_readme_as_written_in_audit_rows(code: str) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"`{code}" in readme


def test_a_loaded_policy_answers_mode_version_and_valid_whether_it_loaded_or_not() -> None:
    loaded = parse_policy({"mode": "enforce"})
    broken = PolicyError(["mode: must be report-only or enforce"], mode="enforce")
    assert (loaded.mode, bool(loaded.version), loaded.valid) == ("enforce", True, True)
    assert (broken.mode, broken.version, broken.valid) == ("enforce", "invalid", False)
