"""No secret leaves the process: a real scenario (alerts posted to the function app, events processed, tickets filed,
the admin API and the CLI used) with a distinctive value in every secret setting and the real logging at DEBUG.
Nothing it produces (logs of every library, CLI output, HTTP answers, audit rows, queue messages, tickets) holds
any secret: raw, base64, URL-encoded or in HTTP Basic form."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import azure.functions as func
import pytest

import function_app
from restricted_sender.settings import EVENTS_QUEUE, Settings
from simulator import Simulator
from simulator.azurite import Azurite

from .conftest import alert_v2, audit_rows, blocked, tenant, user
from .test_admin_api import call
from .test_closing_e2e import POLICY, TICKETS, queue_client, run_like_the_host
from .test_management_activity import cli

pytestmark = pytest.mark.azurite

SNOW_USER, SNOW_PASSWORD, SNOW_TOKEN = "rsr-integration", "snowPw-5v8Qd-distinct", "snowTk-2m7Lx-distinct"
JIRA_EMAIL, JIRA_TOKEN = "responder@contoso.com", "jiraTk-4q9Rz-distinct"
SECRETS = {
    "ALERTS_SHARED_SECRET": "alertsSh-7Qe2W-distinct",
    "TICKET_WEBHOOK_SECRET": "hmacKey-3Zt8P-distinct",
    "SERVICENOW_PASSWORD": SNOW_PASSWORD,
    "JIRA_API_TOKEN": JIRA_TOKEN,
    "O365_WEBHOOK_AUTH_ID": "o365Auth-9Hk3J-distinct",
}
WEBHOOK_SIG = "logicAppSig-6Yb1N-distinct"  # a Logic App URL carries its key in sig=
FUNCTION_KEY = "fnKey/8Jw2+distinct=="


def forms(secret: str) -> set[str]:
    """Every way a secret could be written down: raw, base64 (standard and URL-safe, with and without padding),
    URL-encoded (path and form)."""
    raw = secret.encode()
    b64 = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return {secret, quote(secret, safe=""), quote_plus(secret)} | b64 | {b.rstrip("=") for b in b64}


def every_form() -> dict[str, set[str]]:
    found = {name: forms(value) for name, value in SECRETS.items()}
    found["TICKET_WEBHOOK_URL (sig)"] = forms(WEBHOOK_SIG)
    found["SERVICENOW_TOKEN"] = forms(SNOW_TOKEN)
    found["function key"] = forms(FUNCTION_KEY)
    found["ServiceNow Basic"] = forms(f"{SNOW_USER}:{SNOW_PASSWORD}")
    found["Jira Basic"] = forms(f"{JIRA_EMAIL}:{JIRA_TOKEN}")
    return found


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    users = [user("alice"), user("bob", domain="fabrikam.com")]
    itsm = {
        "x-servicenow": {"username": SNOW_USER, "password": SNOW_PASSWORD, "token": SNOW_TOKEN},
        "x-jira": {"email": JIRA_EMAIL, "apiToken": JIRA_TOKEN},
    }
    return simulator_factory(tenant(users, [blocked("alice@contoso.com"), blocked("bob@fabrikam.com")], **itsm))


def post_alert(handlers: dict[str, Callable[..., Any]], payload: Any, secret: str) -> tuple[int, str]:
    request = func.HttpRequest(
        method="POST",
        url="/api/alerts",
        body=json.dumps(payload).encode(),
        headers={"X-Webhook-Secret": secret, "Content-Type": "application/json"},
    )
    response = handlers["alerts"](request)
    return response.status_code, response.get_body().decode()


@pytest.mark.parametrize("system", ["webhook", "servicenow", "jira", "teams"])
def test_no_secret_setting_appears_in_anything_the_product_produces(
    app_runtime: Callable[..., dict[str, str]],
    handlers: dict[str, Callable[..., Any]],
    sim: Simulator,
    azurite: Azurite,
    table_prefix: str,
    debug_log: io.StringIO,
    system: str,
) -> None:
    settings = app_runtime(
        sim,
        POLICY_YAML=POLICY + {**TICKETS, "teams": "ticket: {system: teams}\n"}[system] + "notify: {teams: true}\n",
        TEAMS_WEBHOOK_URL=sim.teams_url,
        TICKET_WEBHOOK_URL=f"{sim.tickets_url}?api-version=2016-10-01&sp=%2Ftriggers%2Fmanual&sig={WEBHOOK_SIG}",
        SERVICENOW_USERNAME=SNOW_USER,
        JIRA_EMAIL=JIRA_EMAIL,
        **SECRETS,
    )
    produced: dict[str, str] = {"settings": repr(Settings.from_env()) + str(Settings.from_env())}
    events = queue_client(azurite, EVENTS_QUEUE)

    answers = [
        post_alert(handlers, alert_v2("alice@contoso.com", "bob@fabrikam.com"), SECRETS["ALERTS_SHARED_SECRET"]),
        post_alert(handlers, alert_v2("alice@contoso.com"), "a wrong secret"),
    ]
    assert [status for status, _ in answers] == [202, 401]
    produced["answers"] = json.dumps(answers)
    queued = [m.content for m in events.peek_messages(max_messages=32)]
    assert len(queued) == 2
    produced["queue"] = json.dumps(queued)

    run = run_like_the_host(events, function_app.process_event, azurite)
    assert run.poisoned == []
    produced["errors"] = json.dumps(run.errors)

    token = sim.mint_token()
    for answer in (
        call(handlers, "user_status", route={"upn": "bob@fabrikam.com"}, token=token),
        call(handlers, "restricted_users", token=token),
    ):
        produced["answers"] += json.dumps(answer)
    rows = audit_rows(azurite, table_prefix)
    assert {r["decision"] for r in rows} == {"unblock", "ticket"}
    produced["audit"] = json.dumps(rows, default=str)
    produced["tickets"] = json.dumps(
        {"webhook": sim.tickets, "servicenow": sim.servicenow_records(), "jira": sim.jira_issues()}.get(system, [])
    )
    assert produced["tickets"] != "[]" or system == "teams"
    produced["teams"] = json.dumps(sim.teams_posts())
    assert sim.teams_posts() != []

    subscribe = cli("o365", "subscribe", "--webhook", f"{sim.url}/api/alerts/o365?code={FUNCTION_KEY}", env=settings)
    status = cli("o365", "status", env=settings)
    produced["cli"] = subscribe.stdout + subscribe.stderr + status.stdout + status.stderr
    produced["debug log"] = debug_log.getvalue()
    assert "DEBUG" in produced["debug log"]

    found = {**every_form(), "TEAMS_WEBHOOK_URL (sig)": forms(sim.teams_url.rsplit("sig=", 1)[1])}
    leaks = [
        f"{name} in the {where}"
        for name, shapes in found.items()
        for where, text in produced.items()
        if any(shape in text for shape in shapes)
    ]
    assert leaks == []
