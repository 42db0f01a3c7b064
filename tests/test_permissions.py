"""The identity's permissions: one list (restricted_sender/entrypoints/permissions.py) behind the README table and
scripts/grant-permissions, checked against the README, the script and the Graph calls the code makes."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from restricted_sender.adapters.email_tickets import EmailTickets
from restricted_sender.adapters.graph import GraphDirectory
from restricted_sender.core.policy import Policy, default_policy, load_policy_text, parse_policy
from restricted_sender.entrypoints.cli import main
from restricted_sender.entrypoints.permissions import (
    ACTIVITY_FEED_READ_ID,
    EXCHANGE_ADMINISTRATOR_TEMPLATE_ID,
    EXCHANGE_APP_ID,
    EXCHANGE_MANAGE_AS_APP_ID,
    GRAPH_APP_ID,
    GRAPH_CALLS,
    MANAGEMENT_APP_ID,
    PERMISSIONS,
    IntakePaths,
    markdown_table,
    plan_json,
    required,
)
from restricted_sender.errors import PolicyError
from restricted_sender.fakes import FakeDirectory, FakeExchange
from restricted_sender.model import DirectoryUser, RestrictionEvent
from restricted_sender.testing import Fakes
from restricted_sender.timeutil import FixedClock
from tests.conftest import ROOT, alert_v2, blocked

SCRIPT = ROOT / "scripts" / "grant-permissions"
FAKE_AZ = ROOT / "tests" / "fixtures" / "fake_az.py"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
BULK = "3f1c9a7e-2b4d-4e8f-9a6b-7c5d1e2f3a4b"
FINANCE = "9d2e4c1a-0000-4b5c-8d7e-6f5a4b3c2d1e"
MI = "11111111-2222-3333-4444-555555555555"  # the identity's service principal object id
MI_APP = "aaaaaaaa-1111-2222-3333-444444444444"  # and its client id

MINIMAL = """
mode: report-only
guards:
  max_risk_level: high
  suspicious_inbox_rules: false
  external_forwarding: false
  privileged_roles: []
"""
EVERYTHING = f"""
mode: enforce
allow:
  - {{name: staff, domains: [contoso.com], groups: [{BULK}]}}
deny: {{groups: [{FINANCE}]}}
guards:
  max_risk_level: low
  suspicious_inbox_rules: true
  external_forwarding: true
containment: {{revoke_sessions: true, confirm_compromised: true, disable_account: true}}
remediation: {{disable_inbox_rules: true, remove_forwarding: true}}
notify: {{user: true, recipients: [helpdesk@contoso.com], sender: noreply@contoso.com}}
ticket:
  system: email
  email: {{sender: soc-tickets@contoso.com, to: [soc@contoso.com]}}
"""
EVERY_PATH = IntakePaths(poll_alerts=True, management_activity=True, defender_stream=True)
ALL = {p.value for p in PERMISSIONS}
GRAPH_ROLES = {p.value for p in PERMISSIONS if p.resource_app_id == GRAPH_APP_ID}
# The Azure RBAC roles of every deployment (the Bicep template grants them; the script lists them).
IN_AZURE = {"Storage Blob Data Owner", "Storage Queue Data Contributor", "Storage Table Data Contributor",
            "Key Vault Secrets User", "Monitoring Metrics Publisher"}  # fmt: skip
LINE = re.compile(
    r"^(would grant|granted|already granted|by the template|instead)\s{2,}(.+?)\s{2,}(\S.*?)(?:\s{2,}\(.*\))?$"
)


def values(permissions: tuple[Any, ...]) -> set[str]:
    return {p.value for p in permissions}


# -- the README ----------------------------------------------------------------------------------------------------


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Permissions (least privilege)\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def readme_rows() -> list[str]:
    return [line for line in readme_section().splitlines() if line.startswith("|")]


def readme_names() -> set[str]:
    return {row.split("|")[1].strip().strip("`*") for row in readme_rows()[2:]}


def test_the_readme_table_is_the_generated_one() -> None:
    """Regenerate it with `python -m restricted_sender permissions --markdown` when this fails."""
    assert readme_rows() == markdown_table().splitlines()
    assert readme_names() == ALL
    assert "scripts/grant-permissions" in readme_section()


def test_everything_enabled_needs_every_permission_and_the_table_lists_them_all() -> None:
    policy = load_policy_text(EVERYTHING)
    assert values(required(policy, EVERY_PATH)) == ALL
    assert markdown_table(required(policy, EVERY_PATH)) == markdown_table()


# -- the rules -----------------------------------------------------------------------------------------------------


def test_a_minimal_report_only_policy_needs_the_user_the_mfa_evidence_and_exchange_only() -> None:
    off = IntakePaths(poll_alerts=False)
    assert values(required(load_policy_text(MINIMAL), off)) == {
        "User.Read.All",
        "AuditLog.Read.All",
        "Exchange.ManageAsApp",
        "Exchange Administrator",
        *IN_AZURE,
    }


def test_the_default_policy_needs_the_guards_reads_and_the_poller() -> None:
    assert values(required(default_policy(), IntakePaths())) == {
        "User.Read.All",
        "IdentityRiskyUser.Read.All",
        "MailboxSettings.Read",
        "Mail.ReadBasic.All",
        "Domain.Read.All",
        "SecurityAlert.Read.All",
        "RoleManagement.Read.Directory",
        "AuditLog.Read.All",
        "Exchange.ManageAsApp",
        "Exchange Administrator",
        *IN_AZURE,
    }


OFF = {
    "max_risk_level": "high",
    "suspicious_inbox_rules": False,
    "external_forwarding": False,
    "privileged_roles": [],
}


@pytest.mark.parametrize(
    ("policy", "added"),
    [
        ({"allow": [{"name": "bulk", "groups": [BULK]}]}, {"GroupMember.Read.All"}),
        ({"deny": {"groups": [FINANCE]}}, {"GroupMember.Read.All"}),
        ({"guards": {**OFF, "max_risk_level": "medium"}}, {"IdentityRiskyUser.Read.All"}),
        ({"guards": {**OFF, "max_risk_level": "none"}}, {"IdentityRiskyUser.Read.All"}),
        (
            {"guards": {**OFF, "suspicious_inbox_rules": True}},
            {"MailboxSettings.Read", "Mail.ReadBasic.All", "Domain.Read.All"},
        ),
        ({"guards": {**OFF, "external_forwarding": True}}, {"Domain.Read.All"}),
        ({"guards": {**OFF, "privileged_roles": ["Global Administrator"]}}, {"RoleManagement.Read.Directory"}),
        ({"containment": {"revoke_sessions": True}}, {"User.RevokeSessions.All"}),
        ({"containment": {"confirm_compromised": True}}, {"IdentityRiskyUser.ReadWrite.All"}),
        ({"containment": {"disable_account": True}}, {"User.EnableDisableAccount.All"}),
        ({"notify": {"user": True, "sender": "noreply@contoso.com"}}, {"Mail.Send"}),
        ({"notify": {"recipients": ["soc@contoso.com"], "sender": "noreply@contoso.com"}}, {"Mail.Send"}),
        ({"ticket": {"system": "email", "email": {"sender": "a@contoso.com", "to": ["b@contoso.com"]}}}, {"Mail.Send"}),
        ({"ticket": {"system": "jira", "jira": {"project": "SEC"}}}, set()),
        ({"mode": "enforce"}, set()),  # report-only and enforce need the same grants
    ],
)
def test_each_feature_adds_exactly_its_roles(policy: dict[str, Any], added: set[str]) -> None:
    off = IntakePaths(poll_alerts=False)
    baseline = values(required(parse_policy({"guards": OFF}), off))
    assert values(required(parse_policy({"guards": OFF, **policy}), off)) - baseline == added


@pytest.mark.parametrize(
    ("env", "added"),
    [
        ({"POLL_ALERTS_MINUTES": "5"}, {"SecurityAlert.Read.All"}),
        ({"POLL_ALERTS_MINUTES": "0"}, set()),
        ({"O365_WEBHOOK_AUTH_ID": "a-random-string"}, {"ActivityFeed.Read"}),
        ({"DEFENDER_EVENTHUB_NAME": "defender"}, {"Azure Event Hubs Data Receiver"}),
        ({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, set()),
    ],
)
def test_the_intake_paths_come_from_the_app_settings(env: dict[str, str], added: set[str]) -> None:
    quiet = {"POLL_ALERTS_MINUTES": "0"}
    policy = load_policy_text(MINIMAL)
    baseline = values(required(policy, IntakePaths.from_env(quiet)))
    assert values(required(policy, IntakePaths.from_env({**quiet, **env}))) - baseline == added


def test_a_policy_that_does_not_load_plans_as_the_default_policy() -> None:
    error = PolicyError(["mode: 'fast' is not one of report-only, enforce"], source="policy.yaml")
    assert required(error, IntakePaths()) == required(default_policy(), IntakePaths())


def test_the_ids_that_are_the_same_in_every_tenant() -> None:
    by_value = {p.value: p for p in PERMISSIONS}
    assert by_value["Exchange.ManageAsApp"].resource_app_id == EXCHANGE_APP_ID
    assert by_value["Exchange.ManageAsApp"].role_id == EXCHANGE_MANAGE_AS_APP_ID
    assert by_value["ActivityFeed.Read"].resource_app_id == MANAGEMENT_APP_ID
    assert by_value["ActivityFeed.Read"].role_id == ACTIVITY_FEED_READ_ID
    assert by_value["Exchange Administrator"].role_id == EXCHANGE_ADMINISTRATOR_TEMPLATE_ID
    # Graph's roles are looked up by value in the tenant: nothing to get wrong here.
    assert all(by_value[v].role_id is None for v in GRAPH_ROLES)


# -- the rules follow the code -------------------------------------------------------------------------------------


def test_every_graph_call_the_adapter_makes_is_mapped_to_roles_in_the_table() -> None:
    calls = {
        name
        for name, member in inspect.getmembers(GraphDirectory, inspect.iscoroutinefunction)
        # read: the doctor's GET, which repeats one of these calls and names its permission from GRAPH_CALLS
        if not name.startswith("_") and name not in ("close", "read")
    }
    assert calls == set(GRAPH_CALLS)
    assert {role for roles in GRAPH_CALLS.values() for role in roles} == GRAPH_ROLES
    # The permission each write names in its error message is the one the table grants for it.
    source = inspect.getsource(GraphDirectory)
    named = set(re.findall(r'permission="([^"]+)"', source))
    assert named <= GRAPH_ROLES


class Recording:
    """A directory that notes which Graph calls were made."""

    def __init__(self, inner: FakeDirectory) -> None:
        self.inner = inner
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in GRAPH_CALLS:
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.called.add(name)
            return await attribute(*args, **kwargs)

        return call


def graph_roles_used(policy: Policy) -> set[str]:
    """Run a clean user and one with a hiding, forwarding Inbox rule through the real processor (fakes behind
    the ports) and collect the Graph roles of every call made."""
    alice = DirectoryUser("alice-id", "alice@contoso.com", "alice@contoso.com", account_enabled=True)
    mallory = DirectoryUser("mallory-id", "mallory@contoso.com", "mallory@contoso.com", account_enabled=True)
    rule = {
        "id": "r1",
        "displayName": ".",
        "isEnabled": True,
        "actions": {"forwardTo": [{"emailAddress": {"address": "drop@evil.example"}}], "moveToFolder": "AAMkAD="},
    }
    senders = [
        DirectoryUser(f"{name}-id", f"{name}@contoso.com", f"{name}@contoso.com", account_enabled=True)
        for name in ("noreply", "soc-tickets")
    ]
    directory = Recording(
        FakeDirectory(
            [alice, mallory, *senders],
            {"alice-id": [BULK]},
            risk={"alice-id": "none", "mallory-id": "none"},
            rules={"mallory@contoso.com": [rule]},
            folders={"AAMkAD=": "RSS Feeds"},
        )
    )
    exchange = FakeExchange([blocked("alice@contoso.com"), blocked("mallory@contoso.com")])
    fakes = Fakes(exchange=exchange, directory=directory)
    if policy.ticket.system == "email":
        fakes.tickets = EmailTickets(directory, sender=policy.ticket.email_sender or "", to=policy.ticket.email_to)
    bundle = fakes.wire(policy, FixedClock(NOW))
    processor, queue = bundle.processor, fakes.events
    bundle.expander.intake.accept(json.dumps(alert_v2("alice@contoso.com", "mallory@contoso.com")).encode())

    async def drain() -> list[Any]:
        return [await processor.process(RestrictionEvent.from_message(m)) for m in queue.drain()]

    records = asyncio.run(drain())
    if policy.allow:  # the everything policy: alice is unblocked (and told), mallory's rule makes a ticket
        assert {r.user: r.decision.outcome.value for r in records} == {
            "alice@contoso.com": "unblock",
            "mallory@contoso.com": "ticket",
        }
    return {role for name in directory.called for role in GRAPH_CALLS[name]}


@pytest.mark.parametrize("text", [MINIMAL, "", EVERYTHING, EVERYTHING.replace("mode: enforce", "mode: report-only")])
def test_the_processor_calls_graph_only_with_the_roles_the_plan_grants(text: str) -> None:
    policy = load_policy_text(text)
    used = graph_roles_used(policy)
    planned = values(required(policy, IntakePaths(poll_alerts=False))) & GRAPH_ROLES
    assert used <= planned
    if policy.enforce:  # report-only never contains or mails, so only enforce uses every planned role
        assert used == planned


# -- the command line ----------------------------------------------------------------------------------------------


def test_the_cli_plans_from_the_environment_and_the_flags_override_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(MINIMAL)
    for name in ("POLICY_FILE", "POLICY_YAML", "AzureWebJobsStorage"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("O365_WEBHOOK_AUTH_ID", "secret")
    monkeypatch.setenv("POLL_ALERTS_MINUTES", "0")
    assert main(["permissions", "--policy", str(policy), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["policy"]["source"] == str(policy)
    assert "ActivityFeed.Read" in {p["value"] for p in plan["permissions"]}
    assert "secret" not in json.dumps(plan)
    assert main(["permissions", "--policy", str(policy), "--json", "--no-o365", "--poll-minutes", "5"]) == 0
    found = {p["value"] for p in json.loads(capsys.readouterr().out)["permissions"]}
    assert "ActivityFeed.Read" not in found
    assert "SecurityAlert.Read.All" in found
    monkeypatch.setenv("POLICY_YAML", EVERYTHING)
    assert main(["permissions", "--json", "--defender", "--poll-minutes", "5"]) == 0
    assert {p["value"] for p in json.loads(capsys.readouterr().out)["permissions"]} == ALL
    assert plan_json(load_policy_text(EVERYTHING), EVERY_PATH)["permissions"] == [p.to_dict() for p in PERMISSIONS]


def test_the_cli_refuses_to_plan_for_a_policy_that_does_not_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "policy.yaml"
    broken.write_text("mode: fast\n")
    assert main(["permissions", "--policy", str(broken), "--json"]) == 1
    assert "mode" in capsys.readouterr().err


def test_the_cli_prints_the_readme_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["permissions", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()


# -- scripts/grant-permissions -------------------------------------------------------------------------------------


@pytest.fixture
def fake_az(tmp_path: Path) -> dict[str, Any]:
    """A bin directory with a fake `az` and a small tenant: the identity, and Graph, Exchange and the Management
    APIs with their application roles (Graph's with tenant-made ids, as the script must look them up by value)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(f"#!{sys.executable}\nimport runpy, sys\nrunpy.run_path({str(FAKE_AZ)!r}, run_name='__main__')\n")
    az.chmod(0o755)
    graph_roles = [
        {"id": f"00000000-0000-0000-0000-{i:012d}", "value": v, "allowedMemberTypes": ["Application"]}
        for i, v in enumerate(sorted(GRAPH_ROLES | {"Directory.ReadWrite.All"}))
    ]
    graph_roles.append(
        {"id": "99999999-0000-0000-0000-000000000000", "value": "Mail.Send", "allowedMemberTypes": ["User"]}
    )  # a delegated twin must not be picked
    state = {
        "service_principals": [
            {
                "id": MI,
                "appId": MI_APP,
                "displayName": "id-rsr",
            },
            {"id": "graph-sp", "appId": GRAPH_APP_ID, "displayName": "Microsoft Graph", "appRoles": graph_roles},
            {
                "id": "exo-sp",
                "appId": EXCHANGE_APP_ID,
                "displayName": "Office 365 Exchange Online",
                "appRoles": [
                    {
                        "id": EXCHANGE_MANAGE_AS_APP_ID,
                        "value": "Exchange.ManageAsApp",
                        "allowedMemberTypes": ["Application"],
                    }
                ],
            },
            {
                "id": "mgmt-sp",
                "appId": MANAGEMENT_APP_ID,
                "displayName": "Office 365 Management APIs",
                "appRoles": [
                    {"id": ACTIVITY_FEED_READ_ID, "value": "ActivityFeed.Read", "allowedMemberTypes": ["Application"]}
                ],
            },
        ],
        "app_role_assignments": [],
        "role_assignments": [],
    }
    state_file, log = tmp_path / "tenant.json", tmp_path / "az.log"
    state_file.write_text(json.dumps(state))
    log.touch()
    return {"bin": bin_dir, "state": state_file, "log": log, "graph_roles": graph_roles}


def run_script(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, az: dict[str, Any] | None = None, code: int = 0
) -> str:
    environment = {
        "PATH": (f"{az['bin']}:" if az else "") + "/usr/bin:/bin",
        "PYTHON": sys.executable,
        "HOME": str(tmp_path),
        **(env or {}),
    }
    if az:
        environment.update(FAKE_AZ_STATE=str(az["state"]), FAKE_AZ_LOG=str(az["log"]))
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout + done.stderr if code else done.stdout


def printed(output: str) -> dict[str, str]:
    """Permission -> status, for every permission line of the script's output."""
    found = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            found[match.group(3)] = match.group(1)
    return found


def az_calls(az: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in az["log"].read_text().splitlines()]


@pytest.mark.parametrize(
    ("text", "args", "env", "expected"),
    [
        pytest.param(
            MINIMAL,
            ["--poll-minutes", "0"],
            {"AzureWebJobsStorage": "UseDevelopmentStorage=true"},
            {
                "User.Read.All": "would grant",
                "AuditLog.Read.All": "would grant",
                "Exchange.ManageAsApp": "would grant",
                "Exchange Administrator": "would grant",
                **dict.fromkeys(IN_AZURE, "by the template"),
            },
            id="minimal",
        ),
        pytest.param(
            EVERYTHING,
            [],
            {"POLL_ALERTS_MINUTES": "5", "O365_WEBHOOK_AUTH_ID": "x", "DEFENDER_EVENTHUB_NAME": "defender"},
            {p.value: "would grant" if p.granted_by_script else "by the template" for p in PERMISSIONS},
            id="everything-from-settings",
        ),
        pytest.param(
            EVERYTHING,
            ["--poll-minutes", "5", "--o365", "--defender"],
            {},
            {p.value: "would grant" if p.granted_by_script else "by the template" for p in PERMISSIONS},
            id="everything-from-flags",
        ),
    ],
)
def test_what_if_prints_the_plan_and_calls_nothing(
    tmp_path: Path, fake_az: dict[str, Any], text: str, args: list[str], env: dict[str, str], expected: dict[str, str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    output = run_script(tmp_path, "--what-if", "--policy", str(policy), *args, env=env, az=fake_az)
    assert printed(output) == expected
    assert set(printed(output)) <= readme_names()
    assert az_calls(fake_az) == []  # no identity given: no Azure CLI at all


def test_what_if_works_without_the_azure_cli(tmp_path: Path) -> None:
    output = run_script(tmp_path, "--what-if", "--identity", MI_APP)
    assert printed(output)["Exchange.ManageAsApp"] == "would grant"
    assert "nothing was changed" in output


def test_it_grants_what_is_missing_once_and_then_finds_everything_granted(
    tmp_path: Path, fake_az: dict[str, Any]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(EVERYTHING)
    state = json.loads(fake_az["state"].read_text())
    exo_role = {
        "principalId": MI,
        "resourceId": "exo-sp",
        "appRoleId": EXCHANGE_MANAGE_AS_APP_ID,
    }
    user_read = next(r["id"] for r in fake_az["graph_roles"] if r["value"] == "User.Read.All")
    state["app_role_assignments"] = [
        {"principalId": "someone-else", "resourceId": "graph-sp", "appRoleId": user_read},
        {"principalId": MI, "resourceId": "graph-sp", "appRoleId": user_read},
        {
            "principalId": MI,
            "resourceId": "graph-sp",
            "appRoleId": "00000000-0000-0000-0000-00000000beef",
        },
        exo_role,  # the third of the identity's assignments: on the second page
    ]
    fake_az["state"].write_text(json.dumps(state))
    args = ("--policy", str(policy), "--identity", MI_APP, "--poll-minutes", "5")
    scripted = {p.value for p in PERMISSIONS if p.granted_by_script and p.value != "ActivityFeed.Read"}

    first = printed(run_script(tmp_path, *args, az=fake_az))
    assert {v for v, s in first.items() if s == "already granted"} == {"User.Read.All", "Exchange.ManageAsApp"}
    assert {v for v, s in first.items() if s == "granted"} == scripted - {"User.Read.All", "Exchange.ManageAsApp"}
    calls = az_calls(fake_az)
    posts = [c for c in calls if c["method"] == "POST"]
    first_post = calls.index(posts[0])
    assert any("/appRoleAssignments" in (c["url"] or "") for c in calls[:first_post])  # listed before granting
    assert any("skiptoken" in (c["url"] or "") for c in calls[:first_post])  # every page of it
    assert not any("get-access-token" in c["argv"] for c in calls)
    after = json.loads(fake_az["state"].read_text())
    granted = {
        next(r["value"] for r in fake_az["graph_roles"] if r["id"] == a["appRoleId"])
        for a in after["app_role_assignments"]
        if a["principalId"] == MI and a["resourceId"] == "graph-sp" and not a["appRoleId"].endswith("beef")
    }
    assert granted == scripted & GRAPH_ROLES  # by id looked up by value; never the delegated Mail.Send twin
    assert after["role_assignments"] == [
        {
            "id": after["role_assignments"][0]["id"],
            "@odata.type": "#microsoft.graph.unifiedRoleAssignment",
            "roleDefinitionId": EXCHANGE_ADMINISTRATOR_TEMPLATE_ID,
            "principalId": MI,
            "directoryScopeId": "/",
        }
    ]

    fake_az["log"].write_text("")
    second = printed(run_script(tmp_path, *args, az=fake_az))
    assert {v for v, s in second.items() if s == "already granted"} == scripted
    assert [c for c in az_calls(fake_az) if c["method"] == "POST"] == []


def test_what_if_with_an_identity_only_reads(tmp_path: Path, fake_az: dict[str, Any]) -> None:
    output = run_script(tmp_path, "--what-if", "--identity", MI, "--o365", az=fake_az)
    assert printed(output)["ActivityFeed.Read"] == "would grant"
    assert f"identity: id-rsr (object id {MI}" in output
    methods = {c["method"] for c in az_calls(fake_az) if c["argv"][:1] == ["rest"]}
    assert methods == {"GET"}


def test_a_custom_exchange_role_group_replaces_the_entra_role(tmp_path: Path, fake_az: dict[str, Any]) -> None:
    output = run_script(
        tmp_path,
        "--identity",
        MI,
        "--exchange-role-group",
        "RSR senders' $env:x",
        "--poll-minutes",
        "0",
        az=fake_az,
    )
    assert printed(output)["RSR senders' $env:x"] == "instead"
    assert "Exchange Administrator" not in printed(output)
    # Printed for the admin to paste: single-quoted, so nothing in the name is expanded by PowerShell.
    assert "Add-RoleGroupMember -Identity 'RSR senders'' $env:x'" in output
    assert f"New-ServicePrincipal -AppId '{MI_APP}' -ObjectId '{MI}'" in output
    assert json.loads(fake_az["state"].read_text())["role_assignments"] == []


def test_when_the_azure_cli_may_not_assign_directory_roles_it_says_how_to(
    tmp_path: Path, fake_az: dict[str, Any]
) -> None:
    state = json.loads(fake_az["state"].read_text())
    fake_az["state"].write_text(json.dumps({**state, "role_management": False}))
    output = run_script(tmp_path, "--identity", MI, "--poll-minutes", "0", az=fake_az, code=1)
    assert printed(output)["User.Read.All"] == "granted"  # the rest still happens
    assert "FAILED            Entra ID                     Exchange Administrator" in output
    assert f"New-MgRoleManagementDirectoryRoleAssignment -PrincipalId {MI} -RoleDefinitionId " in output
