"""The command line, run as a user runs it: ``python -m restricted_sender ...`` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from restricted_sender.timeutil import parse_instant
from tests.conftest import ROOT, alert_v2, blocked, tenant, user

LIMIT = "EmailSendingLimitExceeded;InternalRecipientCountToday=4;ExternalRecipientCountToday=396"


def cli(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "restricted_sender", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data) if path.suffix == ".yaml" else json.dumps(data))
    return path


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A tenant and policy the product has never seen, with one user for each decision."""
    state = tenant(
        [
            user("ok", domain="northwind.test"),
            user("outsider", domain="elsewhere.test"),
            user("limited", domain="northwind.test"),
            user("daily", domain="northwind.test"),
            user("again", domain="northwind.test"),
            user("off", domain="northwind.test", enabled=False),
            user("boss", domain="northwind.test"),
            user("spent", domain="northwind.test", **{"x-unblockLimitReached": True}),
            user("free", domain="northwind.test"),
        ],
        [
            blocked("ok@northwind.test"),
            blocked("outsider@elsewhere.test"),
            blocked("limited@northwind.test", reason=LIMIT),
            blocked("daily@northwind.test", temporary=True, created="2026-03-02T06:00:00Z"),
            blocked("again@northwind.test"),
            blocked("off@northwind.test"),
            blocked("boss@northwind.test"),
            blocked("spent@northwind.test"),
        ],
        **{"x-history": [{"user": "again@northwind.test", "at": "2026-03-01T12:00:00Z", "kind": "manual"}]},
    )
    state["tenantId"] = "11111111-2222-3333-4444-555555555555"
    policy = {
        "mode": "enforce",
        "allow": [{"name": "northwind", "domains": ["northwind.test"]}],
        "deny": {"users": ["boss@northwind.test"]},
        "guards": {"max_unblocks_per_user": {"count": 1, "days": 3}, "min_hours_to_auto_release": 3},
    }
    users = ["ok", "outsider", "limited", "daily", "again", "off", "boss", "spent", "free"]
    addresses = [f"{u}@{'elsewhere.test' if u == 'outsider' else 'northwind.test'}" for u in users]
    return {
        "tenant": write(tmp_path / "tenant.yaml", state),
        "policy": write(tmp_path / "policy.yaml", policy),
        "alerts": write(tmp_path / "alerts.json", {"value": [alert_v2(*addresses, alert_id="aggregated")]}),
        "other": write(tmp_path / "other.json", alert_v2("ok@northwind.test", alert_id="o1", title="Mail flow issue")),
    }


def test_replay_reproduces_every_decision_with_its_reason_codes(world: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    result = cli(
        "replay", world["alerts"], world["other"], world["alerts"],
        "--tenant", world["tenant"], "--policy", world["policy"],
        "--now", "2026-03-02T22:00:00Z", "--json", "--requests-log", log,
    )  # fmt: skip
    records = [json.loads(line) for line in result.stdout.splitlines()]
    decisions = [(r["user"], r["decision"], [x["code"] for x in r["reasons"]]) for r in records]
    first_run = [
        ("ok@northwind.test", "unblock", ["allow:northwind"]),
        ("outsider@elsewhere.test", "ticket", ["no-allow-rule"]),
        ("limited@northwind.test", "wait", ["allow:northwind", "limit-block"]),
        ("daily@northwind.test", "wait", ["allow:northwind", "auto-release-soon"]),
        ("again@northwind.test", "ticket", ["allow:northwind", "guard:user-budget"]),
        ("off@northwind.test", "ticket", ["allow:northwind", "guard:account-disabled"]),
        ("boss@northwind.test", "ticket", ["deny:user"]),
        ("spent@northwind.test", "ticket", ["allow:northwind", "unblock-failed"]),
        ("free@northwind.test", "ignore", ["not-restricted"]),
    ]
    other_alert = [("ok@northwind.test", "ignore", ["not-target-alert"])]
    replayed_again = [(user, "ignore", ["duplicate"]) for user, _, _ in first_run]
    assert decisions == first_run + other_alert + replayed_again
    for record in records:
        assert set(record) == {
            "event_id", "alert_id", "source", "sources", "user", "decision", "reasons", "actions", "mode",
            "policy_version", "at", "notes",
        }  # fmt: skip
        assert record["at"] == "2026-03-02T22:00:00Z"
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert set(requests[0]) == {"method", "path", "query", "body"}
    cmdlets = [r["body"]["CmdletInput"] for r in requests if r["body"] and "CmdletInput" in r["body"]]
    removed = [c["Parameters"]["SenderAddress"] for c in cmdlets if c["CmdletName"] == "Remove-BlockedSenderAddress"]
    assert removed == ["ok@northwind.test", "spent@northwind.test"]


def test_replay_in_report_only_mode_changes_nothing(world: dict[str, Path], tmp_path: Path) -> None:
    policy = yaml.safe_load(world["policy"].read_text()) | {"mode": "report-only"}
    log = tmp_path / "requests.jsonl"
    result = cli(
        "replay", world["alerts"], "--tenant", world["tenant"], "--policy", write(tmp_path / "ro.yaml", policy),
        "--now", "2026-03-02T22:00:00Z", "--json", "--requests-log", log,
    )  # fmt: skip
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["decision"] == "unblock"
    assert {a["status"] for r in records for a in r["actions"]} == {"skipped"}
    methods = {json.dumps(r["body"]) for r in map(json.loads, log.read_text().splitlines())}
    assert not [m for m in methods if "Remove-BlockedSenderAddress" in m]
    assert not [r for r in map(json.loads, log.read_text().splitlines()) if r["path"] == "/tickets/webhook"]


def test_a_malformed_alert_file_stops_replay_before_anything_is_done(world: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"value": [{"id": 1}]')
    result = cli("replay", world["alerts"], bad, "--tenant", world["tenant"], "--policy", world["policy"], check=False)
    assert result.returncode == 2
    assert "bad.json" in result.stderr
    assert "not valid JSON" in result.stderr
    assert result.stdout == ""


def test_an_invalid_policy_escalates_instead_of_unblocking(world: dict[str, Path], tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.yaml", {"mode": "enforced", "allow": [{"name": "x"}]})
    result = cli("replay", world["alerts"], "--tenant", world["tenant"], "--policy", broken, "--json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["decision"] for r in records} == {"ticket", "ignore"}
    assert records[0]["reasons"][0]["code"] == "policy-invalid"
    assert "POLICY INVALID" in result.stderr


def test_the_demo_prints_a_readable_table() -> None:
    out = cli("demo").stdout
    assert "USER" in out
    assert "DECISION" in out
    for expected in ("unblock", "ticket", "wait", "ignore", "limit-block", "auto-release-soon", "unblock-failed",
                     "guard:inbox-rule", "guard:risk", "guard:forwarding"):  # fmt: skip
        assert expected in out


def test_policy_validate_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "mode: enforced\nallow:\n  - name: a\n    domains: [contoso.com]\n  - name: a\n    users: [x@y.z]\n"
        "guards:\n  max_unblocks_per_user: {count: -1, days: 7}\n  bogus: 1\n"
    )
    result = cli("policy", "validate", policy, check=False)
    assert result.returncode == 1
    for expected in (
        "mode: 'enforced' is not one of report-only, enforce",
        "allow[1].name: duplicate rule name 'a'",
        "guards.max_unblocks_per_user.count: expected a whole number >= 0",
        "guards.bogus: unknown key",
    ):
        assert expected in result.stderr
    assert cli("policy", "validate", ROOT / "samples" / "policy.yaml").returncode == 0


def forward_rule(name: str, address: str, *, enabled: bool = True) -> dict[str, Any]:
    return {
        "id": name,
        "displayName": name,
        "sequence": 1,
        "isEnabled": enabled,
        "actions": {
            "forwardTo": [{"emailAddress": {"name": address, "address": address}}],
            "stopProcessingRules": True,
        },
    }


def test_replay_reports_every_guard_with_its_own_reason_code(tmp_path: Path) -> None:
    users = [
        user("clean"),
        user("risky", **{"x-riskLevel": "high"}),
        user("lowrisk", **{"x-riskLevel": "low"}),
        user("forwarder", **{"x-inboxRules": [forward_rule("to gmail", "drop@evil.example")]}),
        user("dormant", **{"x-inboxRules": [forward_rule("old", "drop@evil.example", enabled=False)]}),
        user("internal", **{"x-inboxRules": [forward_rule("to boss", "boss@contoso.com")]}),
        user(
            "hider",
            **{
                "x-inboxRules": [
                    {"id": "h", "displayName": "hide", "isEnabled": True, "actions": {"moveToFolder": "deleteditems"}}
                ]
            },
        ),
        user(
            "deleter",
            **{
                "x-inboxRules": [
                    {"id": "d", "displayName": "purge", "isEnabled": True, "actions": {"permanentDelete": True}}
                ]
            },
        ),
        user(
            "smtpfwd",
            **{"x-mailbox": {"ForwardingSmtpAddress": "smtp:copy@evil.example", "DeliverToMailboxAndForward": True}},
        ),
        user(
            "everything",
            enabled=False,
            **{"x-riskLevel": "medium", "x-mailbox": {"ForwardingSmtpAddress": "smtp:copy@evil.example"}},
        ),
    ]
    names = [u["userPrincipalName"] for u in users]
    state = tenant(users, [blocked(n) for n in names])
    policy = {"mode": "report-only", "allow": [{"name": "staff", "domains": ["contoso.com"]}],
              "guards": {"max_risk_level": "low"}}  # fmt: skip
    result = cli(
        "replay", write(tmp_path / "alerts.json", {"value": [alert_v2(*names, alert_id="many")]}),
        "--tenant", write(tmp_path / "tenant.yaml", state), "--policy", write(tmp_path / "policy.yaml", policy),
        "--now", "2026-11-27T12:00:00Z", "--json",
    )  # fmt: skip
    codes = {r["user"]: [x["code"] for x in r["reasons"]] for r in map(json.loads, result.stdout.splitlines())}
    assert codes == {
        "clean@contoso.com": ["allow:staff"],
        "risky@contoso.com": ["allow:staff", "guard:risk"],
        "lowrisk@contoso.com": ["allow:staff"],
        "forwarder@contoso.com": ["allow:staff", "guard:inbox-rule"],
        "dormant@contoso.com": ["allow:staff"],
        "internal@contoso.com": ["allow:staff"],
        "hider@contoso.com": ["allow:staff", "guard:inbox-rule"],
        "deleter@contoso.com": ["allow:staff", "guard:inbox-rule"],
        "smtpfwd@contoso.com": ["allow:staff", "guard:forwarding"],
        "everything@contoso.com": ["allow:staff", "guard:risk", "guard:forwarding", "guard:account-disabled"],
    }


def test_replay_trips_the_circuit_breaker_after_the_tenant_budget(tmp_path: Path) -> None:
    users = [user(f"u{i}") for i in range(4)]
    names = [u["userPrincipalName"] for u in users]
    history = [{"user": "earlier@contoso.com", "at": "2026-11-27T11:30:00Z", "kind": "auto"}]
    state = tenant(users, [blocked(n) for n in names], **{"x-history": history})
    policy = {"mode": "enforce", "allow": [{"name": "staff", "domains": ["contoso.com"]}],
              "guards": {"max_unblocks_per_tenant": {"count": 3, "hours": 1}}}  # fmt: skip
    result = cli(
        "replay", write(tmp_path / "alerts.json", alert_v2(*names, alert_id="wave")),
        "--tenant", write(tmp_path / "tenant.yaml", state), "--policy", write(tmp_path / "policy.yaml", policy),
        "--now", "2026-11-27T12:00:00Z", "--json",
    )  # fmt: skip
    decided = [(r["decision"], [x["code"] for x in r["reasons"]]) for r in map(json.loads, result.stdout.splitlines())]
    assert decided == [
        ("unblock", ["allow:staff"]),
        ("unblock", ["allow:staff"]),
        ("ticket", ["allow:staff", "guard:tenant-budget"]),
        ("ticket", ["allow:staff", "guard:tenant-budget"]),
    ]


# -- actions with their status, the ITSM and mail requests, check and unblock ------------------------------------

NOW = "2026-11-27T12:00:00Z"
SOC = "soc@contoso.com"


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    """Three users: one the policy unblocks, one it tickets (no allow rule), one on the deny list, one free."""
    users = [
        user("staff"),
        user("partner", domain="fabrikam.test"),
        user("denied"),
        user("free"),
        user("mailer"),
    ]
    state = tenant(
        users, [blocked("staff@contoso.com"), blocked("partner@fabrikam.test"), blocked("denied@contoso.com")]
    )
    return {
        "tenant": write(tmp_path / "tenant.yaml", state),
        "alerts": write(tmp_path / "alerts.json", alert_v2("staff@contoso.com", "partner@fabrikam.test")),
    }


def enforce_policy(tmp_path: Path, **extra: Any) -> Path:
    policy = {
        "mode": "enforce",
        "allow": [{"name": "staff", "domains": ["contoso.com"]}],
        "deny": {"users": ["denied@contoso.com"]},
        **extra,
    }
    return write(tmp_path / "policy.yaml", policy)


def replay_json(world: dict[str, Path], policy: Path, log: Path) -> dict[str, dict[str, Any]]:
    result = cli(
        "replay", world["alerts"], "--tenant", world["tenant"], "--policy", policy,
        "--now", NOW, "--json", "--requests-log", log,
    )  # fmt: skip
    return {r["user"]: r for r in map(json.loads, result.stdout.splitlines())}


def logged(log: Path) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in map(json.loads, log.read_text().splitlines())]


def kinds(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["kind"], a["status"]) for a in record["actions"]]


@pytest.mark.parametrize(
    ("ticket", "request_line"),
    [
        ({"system": "servicenow"}, ("POST", "/api/now/table/incident")),
        ({"system": "jira", "jira": {"project": "SEC"}}, ("POST", "/rest/api/3/issue")),
        (
            {"system": "email", "email": {"sender": "mailer@contoso.com", "to": [SOC]}},
            ("POST", "/v1.0/users/mailer@contoso.com/sendMail"),
        ),
    ],
    ids=["servicenow", "jira", "email"],
)
def test_replay_reports_the_ticket_action_done_and_logs_the_ticket_systems_request(
    small: dict[str, Path], tmp_path: Path, ticket: dict[str, Any], request_line: tuple[str, str]
) -> None:
    log = tmp_path / "requests.jsonl"
    records = replay_json(small, enforce_policy(tmp_path, ticket=ticket), log)
    partner = records["partner@fabrikam.test"]
    assert partner["decision"] == "ticket"
    assert [x["code"] for x in partner["reasons"]] == ["no-allow-rule"]
    assert kinds(partner) == [("ticket", "done")]
    for record in records.values():
        for action in record["actions"]:
            assert set(action) == {"kind", "status", "detail"}
    assert request_line in logged(log)
    assert ("POST", "/tickets/webhook") not in logged(log)


def test_replay_contains_the_account_and_notifies_the_soc_on_a_ticket(small: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    policy = enforce_policy(
        tmp_path,
        containment={"revoke_sessions": True, "disable_account": True},
        notify={"recipients": [SOC], "sender": "mailer@contoso.com"},
    )
    partner = replay_json(small, policy, log)["partner@fabrikam.test"]
    assert kinds(partner) == [
        ("revoke_sessions", "done"),
        ("disable_account", "done"),
        ("ticket", "done"),
        ("notify", "done"),
    ]
    notify = next(a for a in partner["actions"] if a["kind"] == "notify")
    assert SOC in notify["detail"]
    object_id = user("partner", domain="fabrikam.test")["id"]
    requests = logged(log)
    assert ("POST", f"/v1.0/users/{object_id}/revokeSignInSessions") in requests
    assert ("PATCH", f"/v1.0/users/{object_id}") in requests
    assert ("POST", "/v1.0/users/mailer@contoso.com/sendMail") in requests
    patch = next(
        r for r in map(json.loads, log.read_text().splitlines()) if r["method"] == "PATCH" and object_id in r["path"]
    )
    assert patch["body"]["accountEnabled"] is False


def test_an_unblocked_users_record_has_the_unblock_then_its_verification(
    small: dict[str, Path], tmp_path: Path
) -> None:
    staff = replay_json(small, enforce_policy(tmp_path), tmp_path / "requests.jsonl")["staff@contoso.com"]
    assert staff["decision"] == "unblock"
    assert kinds(staff) == [("unblock", "done"), ("verify", "done")]
    assert "removed staff@contoso.com" in staff["actions"][0]["detail"]
    assert staff["actions"][1]["detail"].startswith("first check scheduled")


def test_check_prints_the_decision_and_does_nothing(small: dict[str, Path], tmp_path: Path) -> None:
    policy = enforce_policy(tmp_path)
    target = ("--tenant", small["tenant"], "--policy", policy, "--now", NOW, "--json")
    checked = [json.loads(line) for line in cli("check", "Staff@Contoso.com", *target).stdout.splitlines()]
    assert len(checked) == 1
    assert checked[0]["user"] == "staff@contoso.com"
    assert checked[0]["decision"] == "unblock"
    assert [x["code"] for x in checked[0]["reasons"]] == ["allow:staff"]
    assert checked[0]["actions"] == []
    assert checked[0]["source"] == "check"
    # Each invocation seeds a fresh simulator, so this only shows the same user is unblockable by hand; that check
    # left the tenant alone is shown in-process below.
    unblocked = json.loads(cli("unblock", "staff@contoso.com", *target, "--justification", "checked").stdout)
    assert unblocked["decision"] == "unblock"


def test_check_sends_nothing_that_changes_the_tenant(small: dict[str, Path], tmp_path: Path) -> None:
    """The very bundle ``check --tenant`` runs against, in-process, so the simulator's state can be read."""
    from restricted_sender.core.policy import load_policy_file
    from restricted_sender.entrypoints.simulated import simulated

    async def run() -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
        policy = load_policy_file(enforce_policy(tmp_path))
        async with simulated(small["tenant"], policy, parse_instant(NOW)) as (bundle, sim, verifications):
            record = await bundle.admin.check("staff@contoso.com")
            assert verifications.scheduled == []
            return record, sim.requests, sim.blocked_senders

    record, requests, still = asyncio.run(run())
    assert record.decision.outcome.value == "unblock"
    assert record.actions == ()
    assert {r["method"] for r in requests} <= {"GET", "POST"}
    cmdlets = {r["body"]["CmdletInput"]["CmdletName"] for r in requests if r["body"] and "CmdletInput" in r["body"]}
    assert "Get-BlockedSenderAddress" in cmdlets
    assert "Remove-BlockedSenderAddress" not in cmdlets
    assert not [r for r in requests if r["path"].endswith(("/sendMail", "/revokeSignInSessions"))]
    assert "staff@contoso.com" in {r["SenderAddress"] for r in still}


def test_check_prints_a_readable_table_without_json(small: dict[str, Path], tmp_path: Path) -> None:
    out = cli(
        "check", "partner@fabrikam.test", "--tenant", small["tenant"], "--policy", enforce_policy(tmp_path),
        "--now", NOW,
    ).stdout  # fmt: skip
    assert "partner@fabrikam.test" in out
    assert "no-allow-rule" in out
    assert "ticket" in out


def test_unblock_by_hand_records_the_operator_and_unblocks(small: dict[str, Path], tmp_path: Path) -> None:
    result = cli(
        "unblock", "partner@fabrikam.test", "--tenant", small["tenant"], "--policy", enforce_policy(tmp_path),
        "--now", NOW, "--justification", "called the partner, sends again", "--operator", "alex", "--json",
    )  # fmt: skip
    record = json.loads(result.stdout)
    assert record["decision"] == "unblock"
    assert record["reasons"][0]["code"] == "manual"
    assert "alex" in record["reasons"][0]["text"]
    assert "called the partner" in record["reasons"][0]["text"]
    assert [x["code"] for x in record["reasons"]] == ["manual", "no-allow-rule"]
    assert kinds(record) == [("unblock", "done"), ("verify", "done")]
    assert record["source"] == "manual"


def test_unblock_of_a_deny_listed_user_needs_force(small: dict[str, Path], tmp_path: Path) -> None:
    target = ("--tenant", small["tenant"], "--policy", enforce_policy(tmp_path), "--now", NOW, "--json")
    refused = cli("unblock", "denied@contoso.com", *target, "--justification", "trust me", check=False)
    assert refused.returncode == 2
    assert "force" in refused.stderr
    assert "deny:user" in refused.stderr
    assert refused.stdout == ""
    forced = cli("unblock", "denied@contoso.com", *target, "--justification", "trust me", "--force")
    record = json.loads(forced.stdout)
    assert record["decision"] == "unblock"
    codes = [x["code"] for x in record["reasons"]]
    assert codes[0] == "manual"
    assert "manual:forced" in codes
    assert "deny:user" in codes
    assert kinds(record)[0] == ("unblock", "done")


@pytest.mark.parametrize("upn", ["free@contoso.com", "nobody@contoso.com"])
def test_unblock_of_a_user_who_is_not_restricted_is_refused(small: dict[str, Path], tmp_path: Path, upn: str) -> None:
    result = cli(
        "unblock", upn, "--tenant", small["tenant"], "--policy", enforce_policy(tmp_path),
        "--justification", "no reason", "--json", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not on the restricted list" in result.stderr
    assert result.stdout == ""
