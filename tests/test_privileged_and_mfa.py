"""Privileged accounts are never unblocked automatically, and MFA registration is evidence and, on request, a guard:
the pure decision, the facts as gathered, the simulator's Graph shapes, and replays through the real adapters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment
from msgraph.generated.models.unified_role_eligibility_schedule_instance import (
    UnifiedRoleEligibilityScheduleInstance,
)
from msgraph.generated.models.user_registration_details import UserRegistrationDetails

from restricted_sender.core.decide import decide
from restricted_sender.core.policy import parse_policy
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.core.ticket_body import render_ticket
from restricted_sender.entrypoints.simulated import ReplayOutcome, replay
from restricted_sender.errors import ServiceRefused, TransientServiceError
from restricted_sender.fakes import FakeDirectory, FakeExchange, MemoryStore
from restricted_sender.model import (
    DecisionRecord,
    DirectoryRole,
    DirectoryUser,
    Facts,
    MfaRegistration,
)
from restricted_sender.processing.actions import evidence
from restricted_sender.processing.facts import FactSources, gather_facts
from simulator import Simulator
from tests.conftest import EVENT_AT, alert_v2, blocked, restriction_event, tenant, user
from tests.graph_models import check

ROOT = Path(__file__).parents[1]
SCENARIO = ROOT / "samples" / "scenarios" / "privileged-admin"
NOW = EVENT_AT
GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMIN = "e8611ab8-c189-46e8-94e1-60213ab1f814"
MESSAGE_CENTER_READER = "790c1fb9-7f7d-4f88-86a1-ef1f95c05c1b"
ALICE_ID = "0b1c2d3e-0001-4a5b-8c9d-000000000001"
ALICE = DirectoryUser(
    id=ALICE_ID, user_principal_name="alice@contoso.com", mail="alice@contoso.com", account_enabled=True
)
SPAM = "OutboundSpamLast24Hours=212;OutboundMailLast24Hours=240;OutboundSpamPercent=88"
ALLOW_STAFF: dict[str, Any] = {"mode": "enforce", "allow": [{"name": "staff", "domains": ["contoso.com"]}]}


def policy(**guards: Any) -> Any:
    return parse_policy({**ALLOW_STAFF, "guards": {"max_risk_level": "high", **guards}})


def clean_facts(**changes: Any) -> Facts:
    row = {"SenderAddress": "alice@contoso.com", "Reason": SPAM, "TemporaryBlock": False,
           "CreatedDatetime": (NOW - timedelta(hours=1)).isoformat()}  # fmt: skip
    return replace(Facts(restriction=BlockedSender.from_row(row), user=ALICE), **changes)


def role(role_id: str, name: str | None, *, eligible: bool = False) -> DirectoryRole:
    return DirectoryRole(role_id=role_id, name=name, eligible=eligible)


# -- the pure decision ------------------------------------------------------------------------------------------------

DECISIONS: list[tuple[str, Facts, dict[str, Any], str, tuple[str, ...]]] = [
    # (name, facts, guards, expected decision, expected reason codes in order)
    ("a clean user without roles is unblocked", clean_facts(), {}, "unblock", ("allow:staff",)),
    (
        "an active Global Administrator is ticketed",
        clean_facts(roles=(role(GLOBAL_ADMIN, "Global Administrator"),)),
        {},
        "ticket",
        ("allow:staff", "guard:privileged"),
    ),
    (
        "a role the user is only eligible for (PIM) counts as much as an active one",
        clean_facts(roles=(role(PRIVILEGED_ROLE_ADMIN, "Privileged Role Administrator", eligible=True),)),
        {},
        "ticket",
        ("allow:staff", "guard:privileged"),
    ),
    (
        "a role outside the privileged set does not stop the unblock",
        clean_facts(roles=(role(MESSAGE_CENTER_READER, "Message Center Reader"),)),
        {},
        "unblock",
        ("allow:staff",),
    ),
    (
        "the policy names a custom role by its display name, in any case",
        clean_facts(roles=(role("0a1b2c3d-0000-4000-8000-000000000001", "Mail Operators"),)),
        {"privileged_roles": ["mail operators"]},
        "ticket",
        ("allow:staff", "guard:privileged"),
    ),
    (
        "an empty privileged_roles turns the guard off",
        clean_facts(roles=(role(GLOBAL_ADMIN, "Global Administrator"),)),
        {"privileged_roles": []},
        "unblock",
        ("allow:staff",),
    ),
    (
        "roles that could not be read fail the guard closed",
        clean_facts(roles_unread="HTTP 403: Authorization_RequestDenied"),
        {},
        "ticket",
        ("allow:staff", "guard:privileged"),
    ),
    (
        "no strong method is evidence only while require_mfa_registered is off",
        clean_facts(mfa=MfaRegistration(registered=False, methods=("email",))),
        {},
        "unblock",
        ("allow:staff",),
    ),
    (
        "require_mfa_registered fails a user without a strong method",
        clean_facts(mfa=MfaRegistration(registered=False, methods=("email",))),
        {"require_mfa_registered": True},
        "ticket",
        ("allow:staff", "guard:no-mfa"),
    ),
    (
        "require_mfa_registered lets a registered user through",
        clean_facts(mfa=MfaRegistration(registered=True, methods=("fido2",))),
        {"require_mfa_registered": True},
        "unblock",
        ("allow:staff",),
    ),
    (
        "an unknown registration (no Entra ID P1/P2) is not a failure",
        clean_facts(mfa=None),
        {"require_mfa_registered": True},
        "unblock",
        ("allow:staff",),
    ),
    (
        "a refused registration read fails require_mfa_registered closed",
        clean_facts(mfa_unread="HTTP 403: Authorization_RequestDenied"),
        {"require_mfa_registered": True},
        "ticket",
        ("allow:staff", "guard:no-mfa"),
    ),
    (
        "a privileged guard failure is listed first among the guards",
        clean_facts(roles=(role(GLOBAL_ADMIN, "Global Administrator"),), user=replace(ALICE, account_enabled=False)),
        {"require_mfa_registered": True},
        "ticket",
        ("allow:staff", "guard:privileged", "guard:account-disabled"),
    ),
]


@pytest.mark.parametrize(
    ("facts", "guards", "outcome", "codes"), [c[1:] for c in DECISIONS], ids=[c[0] for c in DECISIONS]
)
def test_the_privileged_and_mfa_guards_decide(
    facts: Facts, guards: dict[str, Any], outcome: str, codes: tuple[str, ...]
) -> None:
    decision = decide(restriction_event(), facts, policy(**guards), NOW)
    assert (decision.outcome.value, decision.codes) == (outcome, codes)


def test_the_privileged_reason_names_each_role_and_whether_it_is_active_or_eligible() -> None:
    facts = clean_facts(
        roles=(
            role(GLOBAL_ADMIN, "Global Administrator"),
            role(PRIVILEGED_ROLE_ADMIN, "Privileged Role Administrator", eligible=True),
        )
    )
    [guard] = [r for r in decide(restriction_event(), facts, policy(), NOW).reasons if r.code == "guard:privileged"]
    assert "Global Administrator (active), Privileged Role Administrator (eligible)" in guard.text


def test_a_user_no_directory_user_owns_is_identity_unbound_not_privileged() -> None:
    facts = clean_facts(user=None, roles_unread="HTTP 403")
    assert decide(restriction_event(), facts, policy(), NOW).codes == ("identity-unbound",)


# -- the facts, gathered from the fakes -------------------------------------------------------------------------------


def gathered(directory: FakeDirectory, *, object_id: str | None = None, **guards: Any) -> tuple[Facts, Any]:
    sources = FactSources(FakeExchange([blocked("alice@contoso.com")]), directory, MemoryStore())
    named = restriction_event(object_id=object_id)
    facts = asyncio.run(gather_facts(named, policy(**guards), sources, NOW))
    return facts, decide(named, facts, policy(**guards), NOW)


def notes(facts: Facts) -> list[str]:
    return [str(n.code) for n in facts.notes]


@pytest.mark.parametrize("object_id", [None, ALICE_ID], ids=["address only", "address and object id"])
def test_an_eligible_only_role_is_gathered_and_makes_the_user_privileged(object_id: str | None) -> None:
    eligible = role(PRIVILEGED_ROLE_ADMIN, "Privileged Role Administrator", eligible=True)
    facts, decision = gathered(FakeDirectory([ALICE], roles={ALICE_ID: [eligible]}), object_id=object_id)
    assert facts.roles == (eligible,)
    assert decision.codes == ("allow:staff", "guard:privileged")


def test_a_forbidden_role_read_fails_closed_with_a_note() -> None:
    directory = FakeDirectory([ALICE])
    directory.failures["active_roles"] = ServiceRefused(
        "graph", "HTTP 403: Authorization_RequestDenied", http_status=403
    )
    facts, decision = gathered(directory)
    assert notes(facts) == ["roles-unread"]
    assert "Authorization_RequestDenied" in facts.notes[0].text
    assert (decision.outcome.value, decision.codes) == ("ticket", ("allow:staff", "guard:privileged"))
    assert "could not be read" in decision.reasons[-1].text


def test_a_transient_role_read_failure_is_raised_for_the_queue_to_retry() -> None:
    directory = FakeDirectory([ALICE])
    directory.failures["eligible_roles"] = TransientServiceError("graph", "HTTP 503")
    with pytest.raises(TransientServiceError):
        gathered(directory)


def test_without_entra_id_p2_only_active_roles_are_checked_and_that_is_noted() -> None:
    active = role(GLOBAL_ADMIN, "Global Administrator")
    facts, decision = gathered(FakeDirectory([ALICE], roles={ALICE_ID: [active]}, p2=False))
    assert notes(facts) == ["eligible-roles-unknown"]
    assert decision.codes == ("allow:staff", "guard:privileged")


def test_an_unlicensed_mfa_report_is_a_note_not_a_failure() -> None:
    facts, decision = gathered(FakeDirectory([ALICE]), require_mfa_registered=True)  # no record: unknown
    assert (facts.mfa, notes(facts)) == (None, ["mfa-unknown"])
    assert decision.codes == ("allow:staff",)


def test_the_privileged_guard_off_asks_no_role_and_the_mfa_evidence_is_read_anyway() -> None:
    registration = MfaRegistration(registered=True, methods=("fido2",))
    directory = FakeDirectory([ALICE], mfa={ALICE_ID: registration})
    directory.failures["active_roles"] = AssertionError("the roles were asked")
    facts, decision = gathered(directory, privileged_roles=[])
    assert (facts.mfa, facts.roles_unread, decision.codes) == (registration, None, ("allow:staff",))


# -- the ticket -------------------------------------------------------------------------------------------------------


def test_a_privileged_ticket_is_high_severity_and_shows_the_roles_and_mfa_evidence() -> None:
    facts = clean_facts(
        roles=(role(GLOBAL_ADMIN, "Global Administrator"),), mfa=MfaRegistration(False, ("email",), None)
    )
    decision = decide(restriction_event(), facts, policy(), NOW)
    record = DecisionRecord("e1", "a1", "alerts_v2", (), "alice@contoso.com", decision, (), "enforce", "v", NOW)
    content = render_ticket("rsr-1", record, evidence(facts, record, None))
    assert content.severity == "high"
    assert "privileged account" in content.title
    assert "Global Administrator (active)" in content.text
    assert "Strong (MFA) method registered: no" in content.text
    assert "Methods registered: email" in content.text


# -- the simulator's Graph --------------------------------------------------------------------------------------------


def test_the_served_role_and_registration_shapes_fit_the_msgraph_models() -> None:
    admin = user("nina", **{"x-directoryRoles": ["Global Administrator"], "x-eligibleRoles": [PRIVILEGED_ROLE_ADMIN],
                            "x-methodsRegistered": ["microsoftAuthenticatorPush", "email"]})  # fmt: skip
    with Simulator(tenant([admin], [])) as sim:
        headers = {"Authorization": f"Bearer {sim.issue_token('https://graph.microsoft.com')}"}
        where = {"$filter": f"principalId eq '{admin['id']}'", "$expand": "roleDefinition"}
        with httpx.Client(base_url=sim.graph_url, headers=headers) as graph:
            active = graph.get("/roleManagement/directory/roleAssignments", params=where).json()["value"]
            eligible = graph.get("/roleManagement/directory/roleEligibilityScheduleInstances", params=where).json()
            details = graph.get(f"/reports/authenticationMethods/userRegistrationDetails/{admin['id']}").json()

    assert [check(a, UnifiedRoleAssignment) for a in active] == [[]]
    assert [check(e, UnifiedRoleEligibilityScheduleInstance) for e in eligible["value"]] == [[]]
    assert check(details, UserRegistrationDetails) == []
    assert (active[0]["roleDefinitionId"], active[0]["roleDefinition"]["displayName"]) == (
        GLOBAL_ADMIN,
        "Global Administrator",
    )
    assert eligible["value"][0]["roleDefinition"]["templateId"] == PRIVILEGED_ROLE_ADMIN
    assert (details["isMfaRegistered"], details["methodsRegistered"]) == (True, ["microsoftAuthenticatorPush", "email"])


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/roleManagement/directory/roleEligibilityScheduleInstances", 400, "AadPremiumLicenseRequired"),
        ("/reports/authenticationMethods/userRegistrationDetails/{id}", 403,
         "Authentication_RequestFromNonPremiumTenantOrB2CTenant"),
    ],
)  # fmt: skip
def test_an_unlicensed_tenant_gets_the_services_own_refusal(path: str, status: int, code: str) -> None:
    nina = user("nina")
    with Simulator(tenant([nina], [], **{"x-entraIdP2": False, "x-entraIdP1": False})) as sim:
        headers = {"Authorization": f"Bearer {sim.issue_token('https://graph.microsoft.com')}"}
        answer = httpx.get(
            sim.graph_url + path.format(id=nina["id"]),
            params={"$filter": f"principalId eq '{nina['id']}'"},
            headers=headers,
        )
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)


# -- replays through the real adapters --------------------------------------------------------------------------------


def removes(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in requests
        if (r.get("body") or {}).get("CmdletInput", {}).get("CmdletName") == "Remove-BlockedSenderAddress"
    ]


def test_the_privileged_sample_replays_to_high_priority_tickets_and_no_remove(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "restricted_sender", "replay", str(SCENARIO / "alert.json"),
         "--tenant", str(SCENARIO / "tenant.yaml"), "--policy", str(SCENARIO / "policy.yaml"),
         "--now", "2026-11-27T09:00:00Z", "--json", "--requests-log", str(log)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    requests = [json.loads(line) for line in log.read_text().splitlines()]

    assert [(r["user"], r["decision"], [x["code"] for x in r["reasons"]]) for r in records] == [
        ("nina@contoso.com", "ticket", ["allow:contoso staff", "guard:privileged"]),
        ("oscar@contoso.com", "ticket", ["allow:contoso staff", "guard:privileged"]),
    ]
    assert removes(requests) == []
    tickets = [r["body"] for r in requests if r["path"] == "/tickets/webhook"]
    assert [(t["severity"], [x["code"] for x in t["record"]["reasons"]][-1]) for t in tickets] == [
        ("high", "guard:privileged"),
        ("high", "guard:privileged"),
    ]
    oscar = tickets[1]["evidence"]
    assert oscar["directory_roles"]["roles"] == [
        {"role_id": PRIVILEGED_ROLE_ADMIN, "name": "Privileged Role Administrator", "eligible": True}
    ]
    assert (oscar["mfa"]["registered"], oscar["mfa"]["methods"]) == (False, ["email"])


def replayed(users: list[dict[str, Any]], guards: dict[str, Any] | None = None, **extra: Any) -> ReplayOutcome:
    ticket = extra.pop("ticket", {"system": "webhook"})
    mailbox = user("soc-tickets")  # the mailbox email tickets are sent from; not restricted
    state = tenant([*users, mailbox], [blocked(u["mail"]) for u in users], **extra)
    body = json.dumps(alert_v2(*(u["mail"] for u in users))).encode()
    loaded = parse_policy({**ALLOW_STAFF, "guards": {"max_risk_level": "high", **(guards or {})}, "ticket": ticket})
    return asyncio.run(replay([body], tenant=state, policy=loaded, now=NOW))


def test_a_withheld_role_permission_tickets_every_user_with_a_note_and_no_remove() -> None:
    outcome = replayed([user("pat")], **{"x-withheldPermissions": ["RoleManagement.Read.Directory"]})
    [record] = outcome.records
    assert (record.decision.outcome.value, record.decision.codes) == ("ticket", ("allow:staff", "guard:privileged"))
    assert [str(n.code) for n in record.notes] == ["roles-unread"]
    assert "Insufficient privileges" in record.notes[0].text
    assert removes(outcome.requests) == []


def test_an_unlicensed_tenant_notes_the_unknowns_and_still_unblocks_a_clean_user() -> None:
    outcome = replayed([user("pat")], {"require_mfa_registered": True}, **{"x-entraIdP1": False, "x-entraIdP2": False})
    [record] = outcome.records
    assert (record.decision.outcome.value, record.decision.codes) == ("unblock", ("allow:staff",))
    assert [str(n.code) for n in record.notes] == ["eligible-roles-unknown", "mfa-unknown"]


def test_require_mfa_registered_tickets_a_user_with_no_strong_method_through_graph() -> None:
    outcome = replayed(
        [user("pat", **{"x-methodsRegistered": ["email"]}), user("quinn", **{"x-methodsRegistered": ["fido2"]})],
        {"require_mfa_registered": True},
    )
    assert [(r.user, r.decision.codes) for r in outcome.records] == [
        ("pat@contoso.com", ("allow:staff", "guard:no-mfa")),
        ("quinn@contoso.com", ("allow:staff",)),
    ]


HIGH_PRIORITY = [
    # (ticket options, what marks the ticket high priority in that system, as the simulator recorded it)
    ({"system": "servicenow"}, {"impact": "1", "urgency": "1", "priority": "1"}),
    ({"system": "jira", "jira": {"project": "SEC"}}, {"priority": {"name": "High"}}),
    ({"system": "email", "email": {"sender": "soc-tickets@contoso.com", "to": ["soc@contoso.com"]}},
     {"importance": "high"}),
]  # fmt: skip


def recorded(system: str, state: dict[str, Any]) -> dict[str, Any]:
    if system == "servicenow":
        return state["servicenow_records"][0]
    if system == "jira":
        return state["jira_issues"][0]["fields"]
    return state["sent_mail"][0]["message"]


@pytest.mark.parametrize(("ticket", "marks"), HIGH_PRIORITY, ids=[t["system"] for t, _ in HIGH_PRIORITY])
def test_a_privileged_ticket_is_high_priority_in_servicenow_jira_and_mail(
    ticket: dict[str, Any], marks: dict[str, Any]
) -> None:
    admin = user("nina", **{"x-directoryRoles": ["Global Administrator"]})
    outcome = replayed([admin], ticket=ticket)
    assert outcome.records[0].decision.codes == ("allow:staff", "guard:privileged")
    found = recorded(ticket["system"], outcome.simulator_state)
    assert {k: found[k] for k in marks} == marks
    if ticket["system"] == "email":
        assert "privileged account: nina@contoso.com holds Global Administrator (active)" in found["subject"]
