"""``doctor``: read-only probes through the app's own adapters, judged as ok / missing permission / not licensed /
unreachable / unexpected shape; the whole printed table compared against the simulator with grants withheld."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from restricted_sender.adapters.graph import NotLicensed
from restricted_sender.core.policy import load_policy_text
from restricted_sender.entrypoints.edge import runtime
from restricted_sender.entrypoints.permissions import PERMISSIONS, grant_line
from restricted_sender.entrypoints.simulated import doctor_on, simulated_doctor
from restricted_sender.errors import ConfigurationError, PolicyError, ServiceRefused, TransientServiceError
from restricted_sender.processing.doctor import Probe, Report, Verdict, classify, compare_fields
from simulator import Simulator
from tests.conftest import BULK_GROUP, ROOT, blocked, tenant, user
from tests.test_admin_api import call
from tests.test_cli import cli, write

POLICY = f"""
mode: enforce
allow: [{{name: bulk, groups: [{BULK_GROUP}]}}, {{name: staff, domains: [contoso.com]}}]
guards: {{max_risk_level: low}}
"""


def world(**extra: Any) -> dict[str, Any]:
    alice = user("alice", **{"x-riskLevel": "none", "x-memberOf": [BULK_GROUP]})
    return tenant([alice, user("bob")], [blocked("bob@contoso.com")], **extra)


# -- the pure rules ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "verdict", "detail"),
    [
        (ServiceRefused("graph", "HTTP 403: denied", http_status=403), Verdict.MISSING_PERMISSION,
         "HTTP 403: needs User.Read.All"),
        (ServiceRefused("exchange", "HTTP 401", http_status=401), Verdict.MISSING_PERMISSION,
         "HTTP 401: needs User.Read.All"),
        (NotLicensed("graph", "HTTP 403: Forbidden", http_status=403), Verdict.NOT_LICENSED,
         "HTTP 403: no Entra ID P2 in the tenant: risk stays unknown, the risk guard cannot act"),
        (TransientServiceError("graph", "timed out"), Verdict.UNREACHABLE, "graph: timed out"),
        (ServiceRefused("exchange", "HTTP 400: bad", http_status=400), Verdict.UNREACHABLE,
         "refused: exchange: HTTP 400: bad"),
        (ConfigurationError("set JIRA_SITE_URL"), Verdict.MISCONFIGURED, "set JIRA_SITE_URL"),
        (OSError("boom"), Verdict.UNREACHABLE, "OSError: boom"),
    ],
)  # fmt: skip
def test_a_failure_is_classified_by_its_error_type_and_status(error: Exception, verdict: Verdict, detail: str) -> None:
    found, text, fix = classify(error, ("User.Read.All",))

    assert (found, text) == (verdict, detail)
    assert bool(fix) == (verdict is Verdict.MISSING_PERMISSION)


def test_a_missing_permission_is_fixed_by_the_line_the_grant_script_prints() -> None:
    _, _, fix = classify(ServiceRefused("graph", "x", http_status=403), ("User.Read.All", "GroupMember.Read.All"))

    assert fix == (
        "scripts/grant-permissions -> granted           Microsoft Graph              User.Read.All",
        "scripts/grant-permissions -> granted           Microsoft Graph              GroupMember.Read.All",
    )


def test_the_grant_line_is_the_layout_the_script_prints() -> None:
    plan = subprocess.run(
        [str(ROOT / "scripts/grant-permissions"), "--what-if", "--policy", str(ROOT / "samples/policy.yaml")],
        capture_output=True, text=True, check=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()  # fmt: skip

    for permission in PERMISSIONS:
        if permission.granted_by_script and permission.value in {"User.Read.All", "Exchange.ManageAsApp"}:
            assert grant_line(permission, "would grant") in plan


@pytest.mark.parametrize(
    ("seen", "verdict", "detail"),
    [
        ({"SenderAddress": "x", "Reason": "y", "CreatedDatetime": "z", "More": 1}, Verdict.OK, ""),
        ({"Sender": "alice@contoso.com", "Why": "secret"}, Verdict.UNEXPECTED_SHAPE,
         "expected SenderAddress, Reason, CreatedDatetime; seen Sender, Why"),
        ({}, Verdict.UNEXPECTED_SHAPE, "expected SenderAddress, Reason, CreatedDatetime; seen no fields"),
    ],
)  # fmt: skip
def test_a_shape_is_judged_by_field_names_and_never_shows_values(
    seen: dict[str, Any], verdict: Verdict, detail: str
) -> None:
    assert compare_fields(seen, ("SenderAddress", "Reason", "CreatedDatetime")) == (verdict, detail)


def test_only_a_required_probe_that_failed_fails_the_report() -> None:
    note = Probe("graph: riskyUsers", Verdict.NOT_LICENSED, "no P2")
    skipped = Probe("tickets: webhook", Verdict.SKIPPED, "no read", required=False)
    broken = Probe("graph: user", Verdict.MISSING_PERMISSION, "HTTP 403")

    assert Report((note, skipped)).ok
    assert not Report((note, broken)).ok
    assert Report.from_dict(Report((note, broken)).to_dict()) == Report((note, broken))
    assert json.loads(Report((note, broken)).log_line()) == {
        "doctor": "failed",
        "failed": ["graph: user"],
        "verdicts": {"graph: riskyUsers": "not-licensed", "graph: user": "missing-permission"},
    }


# -- the whole output against the simulator ------------------------------------------------------------------------

HEAD = """\
probe                               verdict             detail
policy                              ok                  mode enforce, version {version}
token: Microsoft Graph              ok
token: Exchange Online              ok
"""
EXCHANGE_OK = """\
exchange: Get-BlockedSenderAddress  ok
exchange: Get-Mailbox               ok
exchange: Get-Recipient             ok
"""
TAIL = """\
graph: messageRules                 ok
graph: mailFolders                  ok
graph: domains                      ok
graph: alerts_v2                    ok                  no alert now: no row to compare
o365: subscriptions                 skipped             not needed: only when `O365_WEBHOOK_AUTH_ID` is set
tickets: webhook                    skipped             a webhook has no read: only a POST would test it
mail sender                         skipped             not needed: only with `notify.user`, `notify.recipients` or `ticket.system: email`
store: tables                       skipped             simulated: the tables and queues are in memory
store: queues                       skipped             simulated: the tables and queues are in memory
"""  # noqa: E501
PRIVILEGE_OK = """\
graph: roleAssignments              ok                  the user holds no such role
graph: roleEligibilities (PIM)      ok                  the user holds no such role
graph: userRegistrationDetails      ok (note)
"""
GRAPH_OK = (
    """\
graph: user                         ok
graph: checkMemberGroups            ok
graph: riskyUsers                   ok
"""
    + PRIVILEGE_OK
)
EXCHANGE_FIX = """\
                                                        fix: scripts/grant-permissions -> granted           Office 365 Exchange Online   Exchange.ManageAsApp
                                                        fix: scripts/grant-permissions -> granted           Entra ID                     Exchange Administrator
"""  # noqa: E501
EXPECTED = {
    "fully granted": HEAD + EXCHANGE_OK + GRAPH_OK + TAIL + "OK: everything the policy needs answered\n",
    "without Exchange.ManageAsApp": HEAD
    + "exchange: Get-BlockedSenderAddress  missing-permission  HTTP 403: needs Exchange.ManageAsApp and Exchange "
    "Administrator\n"
    + EXCHANGE_FIX
    + "exchange: Get-Mailbox               missing-permission  HTTP 403: needs Exchange.ManageAsApp and Exchange "
    "Administrator\n"
    + EXCHANGE_FIX
    + "exchange: Get-Recipient             skipped             no mailbox to ask about\n"
    + GRAPH_OK
    + TAIL
    + "FAILED: 2 probe(s) the policy needs: exchange: Get-BlockedSenderAddress, exchange: Get-Mailbox\n",
    "without User.Read.All": HEAD
    + EXCHANGE_OK
    + "graph: user                         missing-permission  HTTP 403: needs User.Read.All\n"
    "                                                        fix: scripts/grant-permissions -> granted           "
    "Microsoft Graph              User.Read.All\n"
    "graph: checkMemberGroups            missing-permission  HTTP 403: needs User.Read.All and GroupMember.Read.All\n"
    "                                                        fix: scripts/grant-permissions -> granted           "
    "Microsoft Graph              User.Read.All\n"
    "                                                        fix: scripts/grant-permissions -> granted           "
    "Microsoft Graph              GroupMember.Read.All\n"
    "graph: riskyUsers                   ok\n"
    + PRIVILEGE_OK
    + TAIL
    + "FAILED: 2 probe(s) the policy needs: graph: user, graph: checkMemberGroups\n",
    "without Entra ID P2": HEAD + EXCHANGE_OK + "graph: user                         ok\n"
    "graph: checkMemberGroups            ok\n"
    "graph: riskyUsers                   not-licensed        HTTP 403: no Entra ID P2 in the tenant: risk stays "
    "unknown, the risk guard cannot act\n"
    "graph: roleAssignments              ok                  the user holds no such role\n"
    "graph: roleEligibilities (PIM)      not-licensed        HTTP 400: no Entra ID P2 in the tenant: eligible (PIM) "
    "roles are unknown, only active roles are checked\n"
    "graph: userRegistrationDetails      ok (note)\n" + TAIL + "OK: everything the policy needs answered\n",
}
TENANTS = {
    "fully granted": {},
    "without Exchange.ManageAsApp": {"x-withheldPermissions": ["Exchange.ManageAsApp"]},
    "without User.Read.All": {"x-withheldPermissions": ["User.Read.All"]},
    "without Entra ID P2": {"x-entraIdP2": False},
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_the_doctor_prints_each_verdict_and_its_fix_against_the_simulator(case: str) -> None:
    policy = load_policy_text(POLICY, source="test")

    report = asyncio.run(simulated_doctor(world(**TENANTS[case]), policy))

    assert report.table() == EXPECTED[case].format(version=policy.version)
    assert report.ok == (case in ("fully granted", "without Entra ID P2"))


def test_the_command_exits_non_zero_when_the_policy_needs_what_is_withheld(tmp_path: Path) -> None:
    tenant_file = write(tmp_path / "tenant.yaml", world(**TENANTS["without User.Read.All"]))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)

    done = cli("doctor", "--simulated", "--tenant", tenant_file, "--policy", policy_file, check=False)
    granted = cli("doctor", "--simulated", "--tenant", write(tmp_path / "ok.yaml", world()), "--policy", policy_file)

    assert done.returncode == 1
    version = load_policy_text(POLICY, source="x").version
    assert done.stdout == EXPECTED["without User.Read.All"].format(version=version)
    assert granted.stdout == EXPECTED["fully granted"].format(version=version)


def test_a_tenant_file_naming_an_unknown_permission_is_refused() -> None:
    with pytest.raises(ValueError, match=r"x-withheldPermissions: unknown permission 'User\.ReadWrite\.Everything'"):
        Simulator(world(**{"x-withheldPermissions": ["User.ReadWrite.Everything"]}))


def test_the_simulator_answers_a_withheld_permission_with_the_services_own_refusal() -> None:
    import httpx

    with Simulator(world(**{"x-withheldPermissions": ["User.Read.All", "Exchange.ManageAsApp"]})) as sim:
        graph = httpx.get(
            f"{sim.graph_url}/users/alice@contoso.com",
            headers={"Authorization": f"Bearer {sim.issue_token('https://graph.microsoft.com')}"},
        )
        exchange = httpx.post(
            f"{sim.url}/adminapi/beta/{sim.tenant_id}/InvokeCommand",
            json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}},
            headers={"Authorization": f"Bearer {sim.issue_token('https://outlook.office365.com')}"},
        )
        anonymous = httpx.get(f"{sim.graph_url}/users/alice@contoso.com")
        sim.withhold()
        granted = httpx.get(
            f"{sim.graph_url}/users/alice@contoso.com",
            headers={"Authorization": f"Bearer {sim.issue_token('https://graph.microsoft.com')}"},
        )

    assert graph.status_code == 403
    assert {k: v for k, v in graph.json()["error"].items() if k != "innerError"} == {
        "code": "Authorization_RequestDenied",
        "message": "Insufficient privileges to complete the operation.",
    }
    assert (exchange.status_code, exchange.content) == (403, b"")
    assert anonymous.status_code == 401  # no token: the service's 401 comes first
    assert granted.status_code == 200


# -- the route and the timer, as the function app runs them ----------------------------------------------------------


@pytest.fixture
def app(
    app_runtime: Callable[..., dict[str, str]], simulator_factory: Callable[[dict[str, Any]], Simulator]
) -> Simulator:
    sim = simulator_factory(world(**{"x-withheldPermissions": ["User.Read.All"]}))
    app_runtime(sim, POLICY_YAML=POLICY)
    return sim


@pytest.mark.azurite
def test_the_admin_route_runs_the_probes_for_the_read_role_only(
    app: Simulator, handlers: dict[str, Callable[..., Any]]
) -> None:
    status, body = call(handlers, "doctor", token=app.mint_token(roles=("Sender.Read",)))
    refused, _ = call(handlers, "doctor")

    assert (status, refused) == (200, 401)
    verdicts = {p["name"]: p["verdict"] for p in body["probes"]}
    assert body["ok"] is False
    assert verdicts["graph: user"] == "missing-permission"
    assert verdicts["exchange: Get-Mailbox"] == "ok"
    assert verdicts["store: tables"] == "ok"
    assert {verdicts[f"queue: {q}"] for q in ("restriction-events", "restriction-verify", "alert-content")} == {"ok"}
    assert not any(p["name"].startswith("store: queues") for p in body["probes"])


@pytest.mark.azurite
def test_the_timer_runs_once_after_start_up_then_daily_with_one_log_line(
    app: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    start = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)

    async def ticks() -> list[bool]:
        try:
            return [
                await runtime.doctor_tick(start + timedelta(minutes=minutes)) is not None
                for minutes in (0, 10, 23 * 60, 24 * 60)
            ]
        finally:
            await runtime.aclose()

    with caplog.at_level(logging.INFO, logger="restricted_sender"):
        ran = asyncio.run(ticks())

    assert ran == [True, False, False, True]
    lines = [r for r in caplog.records if r.getMessage().startswith('{"doctor":')]
    assert len(lines) == 2
    logged = json.loads(lines[0].getMessage())
    assert (logged["doctor"], logged["failed"]) == ("failed", ["graph: user", "graph: checkMemberGroups"])
    assert lines[0].levelno == logging.ERROR


FAKE_AZ = """#!{python}
import json, sys
# A stand-in for `az account get-access-token`: the one call AzureCliCredential makes.
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
print(json.dumps({{"accessToken": {token!r}, "expiresOn": "2099-01-01 00:00:00.000000", "expires_on": 4070908800}}))
"""


@pytest.mark.azurite
def test_the_command_asks_the_app_with_the_operators_azure_cli_sign_in(
    app: Simulator, handlers: dict[str, Callable[..., Any]], tmp_path: Path
) -> None:
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import azure.functions as func

    class Host(BaseHTTPRequestHandler):
        """The Functions host's part: the function key, then the function app's own handler."""

        def do_GET(self) -> None:
            if self.path != "/api/doctor" or self.headers.get("x-functions-key") != "the-key":
                self.send_response(401)
                self.end_headers()
                return
            request = func.HttpRequest(method="GET", url=self.path, body=b"", headers=dict(self.headers))

            async def run() -> func.HttpResponse:
                try:
                    response: func.HttpResponse = await handlers["doctor"](request)
                    return response
                finally:
                    await runtime.aclose()

            response = asyncio.run(run())
            self.send_response(response.status_code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(response.get_body())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    bin_dir, log = tmp_path / "bin", tmp_path / "az.log"
    bin_dir.mkdir()
    token = app.mint_token(roles=("Sender.Read",))
    (bin_dir / "az").write_text(FAKE_AZ.format(python=sys.executable, log=str(log), token=token))
    (bin_dir / "az").chmod(0o755)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "restricted_sender", "doctor", "--app", f"http://127.0.0.1:{server.server_port}",
             "--audience", app.admin_api.audience, "--function-key", "the-key"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()

    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "FAILED: 2 probe(s) the policy needs: graph: user, graph: checkMemberGroups"
    assert "graph: user                         missing-permission  HTTP 403: needs User.Read.All" in lines
    assert "store: tables                       ok" in lines
    asked = [json.loads(line) for line in log.read_text().splitlines()]
    assert asked == [["account", "get-access-token", "--output", "json", "--resource", app.admin_api.audience]]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("ticket: {system: servicenow}", ["tickets: servicenow                 ok"]),
        ("ticket: {system: jira, jira: {project: SEC}}", ["tickets: jira                       ok"]),
        (
            "ticket: {system: email, email: {sender: alice@contoso.com, to: [soc@contoso.com]}}",
            [
                "tickets: email                      skipped             tickets are mail: see the sender probe",
                "mail sender: alice@contoso.com      ok                  exists; Mail.Send itself is proven only by "
                "sending",
            ],
        ),
        (
            "notify: {user: true, sender: nobody@contoso.com}",
            ["mail sender: nobody@contoso.com     misconfigured       no such user: the mail would fail"],
        ),
    ],
)
def test_tickets_are_searched_never_created_and_the_mail_sender_is_read(policy: str, expected: list[str]) -> None:
    with Simulator(world()) as sim:
        report = asyncio.run(doctor_on(sim, load_policy_text(policy, source="test")))
        methods = {(r["route"], r["method"]) for r in sim.requests}

    lines = report.table().splitlines()
    shown = ("tickets: servicenow", "tickets: jira", "tickets: email", "mail sender:")
    assert [line for line in lines if line.startswith(shown)] == expected
    # Reads only: the one POST is checkMemberGroups (a read with a body); no ticket, mail or unblock.
    assert {route for route, method in methods if method != "GET"} <= {"graph.checkMemberGroups"} | {
        route for route, _ in methods if route.startswith("exchange.Get-")
    }


@pytest.mark.parametrize(
    ("withheld", "expected"),
    [
        ([], [f"{'token: Management Activity API':<34}  ok", "o365: subscriptions                 ok"]),
        (
            ["ActivityFeed.Read"],
            [
                f"{'token: Management Activity API':<34}  ok",
                "o365: subscriptions                 missing-permission  HTTP 401: needs ActivityFeed.Read",
                "                                                        fix: scripts/grant-permissions -> granted  "
                "         Office 365 Management APIs   ActivityFeed.Read",
            ],
        ),
    ],
)
def test_the_management_activity_subscription_is_read_when_that_intake_is_on(
    withheld: list[str], expected: list[str]
) -> None:
    from restricted_sender.entrypoints.permissions import IntakePaths

    state = world(**{"x-auditSubscriptions": ["Audit.General"], "x-withheldPermissions": withheld})
    with Simulator(state) as sim:
        report = asyncio.run(
            doctor_on(sim, load_policy_text(POLICY, source="t"), IntakePaths(management_activity=True))
        )

    lines = report.table().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("token: Management"))
    assert [lines[start]] + [
        line for line in lines if line.startswith("o365") or "ActivityFeed.Read" in line
    ] == expected


def test_a_changed_shape_and_an_unreachable_service_are_named_without_values() -> None:
    state = world(
        **{
            "x-faults": [
                {"route": "exchange.Get-BlockedSenderAddress", "status": 200,
                 "body": {"value": [{"Sender": "bob@contoso.com", "Why": "secret"}]}},
                {"route": "graph.domains", "status": 503},
            ]
        }
    )  # fmt: skip
    report = asyncio.run(simulated_doctor(state, load_policy_text(POLICY, source="t")))

    lines = {line[:36].strip(): line[36:] for line in report.table().splitlines()}
    assert lines["exchange: Get-BlockedSenderAddress"] == (
        "unexpected-shape    expected SenderAddress, Reason, CreatedDatetime; seen Sender, Why"
    )
    assert lines["graph: domains"].startswith("unreachable         graph: HTTP 503")
    assert "bob@contoso.com" not in report.table()
    assert [p.name for p in report.failed] == ["exchange: Get-BlockedSenderAddress", "graph: domains"]


def test_a_policy_that_does_not_load_is_the_first_failure() -> None:
    report = asyncio.run(simulated_doctor(world(), PolicyError(["mode: must be report-only or enforce"], "p.yaml")))

    assert report.probes[0] == Probe("policy", Verdict.MISCONFIGURED, "p.yaml: mode: must be report-only or enforce")
    assert not report.ok


def test_settings_the_probes_cannot_be_built_from_are_the_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENANT_ID", raising=False)
    runtime.reset()
    try:
        report = asyncio.run(runtime.run_doctor())
    finally:
        runtime.reset()

    assert report.table().splitlines() == [
        "probe     verdict             detail",
        "settings  misconfigured       TENANT_ID is not set: the Exchange admin endpoint needs the tenant's id",
        "FAILED: 1 probe(s) the policy needs: settings",
    ]


def test_the_restricted_list_is_read_one_page_only() -> None:
    state = world(**{"x-exchangePageSize": 1})
    state["blockedSenders"] = [blocked("alice@contoso.com"), blocked("bob@contoso.com")]
    with Simulator(state) as sim:
        report = asyncio.run(doctor_on(sim, load_policy_text(POLICY, source="t")))
        pages = [r for r in sim.requests if r["route"] == "exchange.Get-BlockedSenderAddress"]

    assert report.ok
    assert len(pages) == 1


def test_a_tenant_file_says_p2_with_true_or_false() -> None:
    with pytest.raises(ValueError, match="x-entraIdP2 must be true or false, got 'no'"):
        Simulator(world(**{"x-entraIdP2": "no"}))
