"""Every source end to end, through the function app's handlers, on Azurite and the simulator with the real
clients: four sources reporting one restriction at the same moment, and the sweep finding a restricted user
when no alert source is wired at all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from restricted_sender.entrypoints.edge import runtime
from restricted_sender.model import RestrictionEvent
from restricted_sender.settings import CONTENT_QUEUE, EVENTS_QUEUE
from restricted_sender.timeutil import iso
from simulator import Simulator
from simulator.azurite import Azurite
from tests.conftest import Audit, alert_v2, blocked, on_separate_instances, tenant, user

pytestmark = pytest.mark.azurite

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "alerts"
AUTH_ID = "o365-auth-id-for-tests"
TARGET = "User restricted from sending email"
UNBLOCKING = "mode: enforce\nallow: [{name: staff, domains: [contoso.com]}]\n"
TICKETING = "mode: enforce\nallow: []\n"


def judy_restricted(now: datetime) -> dict[str, Any]:
    """judy is restricted; an alerts_v2 alert and an audit record about her wait in the simulated tenant."""
    alert = {**alert_v2("judy@contoso.com", alert_id="da637f-judy"), "serviceSource": "microsoftDefenderForOffice365",
             "lastUpdateDateTime": iso(now - timedelta(minutes=2))}  # fmt: skip
    return tenant(
        [user("judy"), user("rsr")],
        [blocked("judy@contoso.com", created=iso(now - timedelta(minutes=20)))],
        alerts=[alert],
        **{"x-auditSubscriptions": ["Audit.General"]},
    )


@pytest.fixture
def queues(azurite: Azurite) -> Iterator[dict[str, QueueClient]]:
    clients = {}
    for name in (EVENTS_QUEUE, CONTENT_QUEUE):
        client = QueueClient.from_connection_string(
            azurite.connection_string, name, message_decode_policy=TextBase64DecodePolicy()
        )
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        client.clear_messages()
        clients[name] = client
    yield clients
    for client in clients.values():
        client.close()


def take(queue: QueueClient) -> list[str]:
    messages = list(queue.receive_messages(messages_per_page=32, visibility_timeout=30))
    for message in messages:
        queue.delete_message(message)
    return [m.content for m in messages]


def configure(app_runtime: Callable[..., dict[str, str]], sim: Simulator, **extra: str) -> None:
    app_runtime(sim, O365_API_ROOT=sim.url, O365_WEBHOOK_AUTH_ID=AUTH_ID, **extra)


def post(handlers: dict[str, Any], name: str, body: Any, headers: dict[str, str] | None = None) -> int:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    route = "/api/alerts/o365" if name == "alerts_o365" else "/api/alerts"
    response = handlers[name](func.HttpRequest(method="POST", url=route, body=raw, headers=headers or {}))
    return int(response.status_code)


def on_the_host(*calls: Callable[[], Any]) -> None:
    """Await handler calls one after another on one loop, then close the clients on it (as the host would)."""

    async def main() -> None:
        try:
            for call in calls:
                await call()
        finally:
            await runtime.aclose()

    asyncio.run(main())


def sentinel_incident_about(address: str) -> dict[str, Any]:
    incident = json.loads((SAMPLES / "07-sentinel-incident-wrapped.json").read_text())
    for entity in incident["Body"]["object"]["properties"]["relatedEntities"]:
        if entity.get("kind") == "Account":
            name, _, suffix = address.partition("@")
            entity["properties"].update(accountName=name, upnSuffix=suffix)
            entity["properties"].pop("aadUserId", None)
    return incident


def defender_records_about(address: str) -> dict[str, Any]:
    text = (SAMPLES / "09-defender-records.json").read_text()
    name = address.split("@")[0]
    return json.loads(text.replace("mallory@contoso.com", address).replace('"mallory"', f'"{name}"'))


@pytest.mark.parametrize(("policy", "outcome"), [(UNBLOCKING, "unblock"), (TICKETING, "ticket")])
def test_four_sources_reporting_one_restriction_at_once_make_one_decision_one_action_and_one_ticket_at_most(
    app_runtime: Callable[..., dict[str, str]],
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    audit: Audit,
    handlers: dict[str, Any],
    queues: dict[str, QueueClient],
    policy: str,
    outcome: str,
) -> None:
    sim = simulator_factory(judy_restricted(datetime.now(UTC)))
    configure(app_runtime, sim, POLICY_YAML=policy)
    sim.add_audit_content(
        [{"Id": "0d9e-rec-1", "RecordType": 40, "CreationTime": iso(datetime.now(UTC))[:19],
          "Operation": "AlertTriggered", "AlertId": "3b1c-o365-judy", "Name": TARGET,
          "Data": json.dumps({"f3u": "judy@contoso.com"})}],
        content_id="content-judy",
    )  # fmt: skip

    # Each source through its own entry point: Sentinel and Defender POST /api/alerts, the Management Activity
    # API POST /api/alerts/o365 (then the content fetch), and the alerts_v2 poller's timer.
    assert post(handlers, "alerts", sentinel_incident_about("judy@contoso.com")) == 202
    assert post(handlers, "alerts", defender_records_about("judy@contoso.com")) == 202
    assert post(handlers, "alerts_o365", sim.notification(["content-judy"]), {"Webhook-AuthID": AUTH_ID}) == 200
    content = take(queues[CONTENT_QUEUE])
    assert len(content) == 2
    on_the_host(
        lambda: handlers["poll_alerts"](TimerRequest()),
        *(lambda m=m: handlers["expand_content"](func.QueueMessage(body=m.encode())) for m in content),
    )
    messages = take(queues[EVENTS_QUEUE])
    assert sorted(RestrictionEvent.from_message(m).source for m in messages) == ["defender", "o365", "poll", "sentinel"]
    records = on_separate_instances(messages)  # four function instances at once
    decided = [r for r in records if r.decision.outcome.value != "ignore"]
    assert [r.decision.outcome.value for r in decided] == [outcome]
    removals = [r for r in sim.requests if "Remove-BlockedSenderAddress" in json.dumps(r.get("body"))]
    assert len(removals) == (1 if outcome == "unblock" else 0)
    assert len(sim.tickets) == (1 if outcome == "ticket" else 0)
    if outcome == "ticket":  # every other report is a note on the one ticket
        assert len(sim.tickets[0]["updates"]) == 3
    rows = audit()
    assert len(rows) == 4
    every_source = {s["kind"] for r in rows for s in r["sources"]}
    assert every_source == {"sentinel", "defender", "o365", "poll"}
    assert all(row["decision"] == "ignore" for row in rows if row["event_id"] != decided[0].event_id)


def test_with_no_alert_source_wired_the_sweep_finds_a_restricted_user_and_it_is_decided_within_one_interval(
    monkeypatch: pytest.MonkeyPatch,
    app_runtime: Callable[..., dict[str, str]],
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    audit: Audit,
    handlers: dict[str, Any],
    queues: dict[str, QueueClient],
) -> None:
    sim = simulator_factory(tenant([user("alice")], [blocked("alice@contoso.com")]))
    configure(app_runtime, sim, POLICY_YAML=UNBLOCKING, POLL_ALERTS_MINUTES="0", SWEEP_MINUTES="5")
    monkeypatch.delenv("O365_WEBHOOK_AUTH_ID")
    started = time.monotonic()
    on_the_host(lambda: handlers["sweep_restricted"](TimerRequest()))
    [message] = take(queues[EVENTS_QUEUE])
    on_the_host(lambda: handlers["process_event"](func.QueueMessage(body=message.encode())))
    elapsed = time.monotonic() - started

    [row] = audit()
    assert (row["decision"], row["source"], [s["kind"] for s in row["sources"]]) == ("unblock", "sweep", ["sweep"])
    assert sim.blocked_senders == []
    assert elapsed < 5 * 60  # one sweep interval; measured at well under a second here
    # Another tick within the interval does nothing.
    on_the_host(lambda: handlers["sweep_restricted"](TimerRequest()))
    assert take(queues[EVENTS_QUEUE]) == []
