"""The function app's handlers, called with real ``func.HttpRequest`` / ``func.QueueMessage`` objects, against
Azurite (queue + tables) and the simulator (Graph, Exchange, identity, ticket webhook) — the end-to-end path."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient

from restricted_sender.entrypoints.edge import runtime
from restricted_sender.settings import EVENTS_QUEUE
from simulator import Simulator
from simulator.azurite import Azurite, free_port
from tests.conftest import WIRE_SAMPLES, alert_v2, audit_rows, blocked, tenant, user

pytestmark = pytest.mark.azurite

POLICY = """
mode: {mode}
allow:
  - name: staff
    domains: [contoso.com]
"""
TICKET_SECRET = "ticket-signing-secret"


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(
        tenant(
            [user("alice"), user("bob", domain="fabrikam.com"), user("ivan")],
            [blocked("alice@contoso.com"), blocked("bob@fabrikam.com")],
        )
    )


@pytest.fixture
def configure(app_runtime: Callable[..., dict[str, str]], sim: Simulator) -> Callable[..., None]:
    def apply(*, mode: str = "enforce", secret: str | None = None, storage: str | None = None) -> None:
        app_runtime(
            sim,
            POLICY_YAML=POLICY.format(mode=mode),
            TICKET_WEBHOOK_SECRET=TICKET_SECRET,
            **({"AzureWebJobsStorage": storage} if storage else {}),
            **({"ALERTS_SHARED_SECRET": secret} if secret is not None else {}),
            unset=() if secret is not None else ("ALERTS_SHARED_SECRET",),
        )

    apply()
    return apply


@dataclass(frozen=True)
class App:
    """The configured function app with what the end-to-end tests look at: the queue, the simulator, the audit."""

    handlers: dict[str, Callable[..., Any]]
    configure: Callable[..., None]
    queue: QueueClient
    sim: Simulator
    azurite: Azurite
    table_prefix: str

    def audit(self) -> list[dict[str, Any]]:
        return audit_rows(self.azurite, self.table_prefix)


@pytest.fixture
def app(
    handlers: dict[str, Callable[..., Any]],
    configure: Callable[..., None],
    queue: QueueClient,
    sim: Simulator,
    azurite: Azurite,
    table_prefix: str,
) -> App:
    return App(handlers, configure, queue, sim, azurite, table_prefix)


def post(
    handlers: dict[str, Callable[..., Any]],
    body: bytes | dict[str, Any] | list[Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = func.HttpRequest(method="POST", url="/api/alerts", body=raw, headers=headers or {})
    response = handlers["alerts"](request)
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def queued(queue: QueueClient) -> list[str]:
    return [m.content for m in queue.receive_messages(messages_per_page=32, visibility_timeout=1)]


def process(handlers: dict[str, Callable[..., Any]], messages: list[str]) -> None:
    """Run the queue trigger for each message, as the host would, and close the clients on the same loop."""

    async def main() -> None:
        try:
            for text in messages:
                await handlers["process_event"](func.QueueMessage(body=text.encode()))
        finally:
            await runtime.aclose()

    asyncio.run(main())


def test_a_valid_alert_is_queued_before_the_202(
    handlers: dict[str, Callable[..., Any]], configure: Any, queue: QueueClient
) -> None:
    status, body = post(handlers, alert_v2("alice@contoso.com", "bob@fabrikam.com"))
    assert status == 202
    assert [a["user"] for a in body["accepted"]] == ["alice@contoso.com", "bob@fabrikam.com"]
    assert body["ignored"] == []
    messages = queued(queue)
    assert sorted(json.loads(m)["user"]["address"] for m in messages) == ["alice@contoso.com", "bob@fabrikam.com"]


def test_a_value_list_is_split_into_target_events_and_ignored_alerts(
    handlers: dict[str, Callable[..., Any]], configure: Any, queue: QueueClient
) -> None:
    body = {
        "value": [
            alert_v2("alice@contoso.com", alert_id="a1"),
            alert_v2("ivan@contoso.com", alert_id="a2", title="Tenant restricted from sending email"),
            alert_v2("ivan@contoso.com", alert_id="a3", title="Suspicious email sending patterns detected"),
        ]
    }
    status, answer = post(handlers, body)
    assert status == 202
    assert [a["alert_id"] for a in answer["accepted"]] == ["a1"]
    assert [(i["alert_id"], i["reasons"][0]["code"]) for i in answer["ignored"]] == [
        ("a2", "not-target-alert"),
        ("a3", "not-target-alert"),
    ]
    assert len(queued(queue)) == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed-payload"),
        (b"\xff\xfe", 400, "malformed-payload"),
        (b'["a list"]', 400, "malformed-payload"),
        (b'{"value": "not a list"}', 400, "malformed-payload"),
        (b'{"id": "x"}', 400, "malformed-payload"),
        (b'{"@odata.type": "#microsoft.graph.user", "id": "x", "title": "t"}', 400, "malformed-payload"),
        (b"{" + b" " * (1024 * 1024) + b"}", 413, "payload-too-large"),
    ],
    ids=["broken json", "not utf-8", "a bare list", "value not a list", "no title", "another graph type", "over 1 MiB"],
)
def test_bad_input_gets_a_clear_4xx_and_queues_nothing(
    handlers: dict[str, Callable[..., Any]], configure: Any, queue: QueueClient, body: bytes, status: int, code: str
) -> None:
    got_status, answer = post(handlers, body)
    assert (got_status, answer["error"]["code"]) == (status, code)
    assert answer["error"]["message"]
    assert queued(queue) == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"X-Webhook-Secret": "wrong"}, 401), ({"x-webhook-secret": "s3cret"}, 202)],
    ids=["missing", "wrong", "right (any case)"],
)
def test_the_optional_shared_secret_is_required_when_configured(
    handlers: dict[str, Callable[..., Any]], configure: Any, queue: QueueClient, headers: dict[str, str], status: int
) -> None:
    configure(secret="s3cret")
    got, _ = post(handlers, alert_v2("alice@contoso.com"), headers)
    assert got == status
    assert len(queued(queue)) == (1 if status == 202 else 0)


def test_an_unreachable_queue_answers_503_so_the_sender_retries(
    handlers: dict[str, Callable[..., Any]], configure: Any, azurite: Azurite
) -> None:
    configure(storage=azurite.connection_string.replace(str(azurite.queue_port), str(free_port())))
    status, answer = post(handlers, alert_v2("alice@contoso.com"))
    assert status == 503
    assert answer["error"]["code"] == "queue-unavailable"


@pytest.mark.parametrize(
    ("sample", "status"),
    [
        ("alerts_v2_endpoint_alert.json", 202),
        ("alerts_v2_office_alert.json", 202),
        ("graph_change_notification.json", 400),
        ("mgmt_activity_notification.json", 400),
    ],
)
def test_documented_payloads_of_other_alerts_and_feeds_are_ignored_cleanly(
    handlers: dict[str, Callable[..., Any]], configure: Any, queue: QueueClient, sample: str, status: int
) -> None:
    got, answer = post(handlers, (WIRE_SAMPLES / sample).read_bytes())
    assert got == status
    if status == 202:
        assert answer["accepted"] == []
        assert [i["reasons"][0]["code"] for i in answer["ignored"]] == ["not-target-alert"]
    assert queued(queue) == []


def test_end_to_end_an_allowed_user_is_unblocked_and_audited(app: App) -> None:
    assert post(app.handlers, alert_v2("alice@contoso.com"))[0] == 202
    process(app.handlers, queued(app.queue))
    assert "alice@contoso.com" not in [r["SenderAddress"] for r in app.sim.blocked_senders]
    [row] = app.audit()
    assert (row["user"], row["decision"], row["mode"]) == ("alice@contoso.com", "unblock", "enforce")
    assert [(a["kind"], a["status"]) for a in row["actions"]] == [("unblock", "done"), ("verify", "done")]
    assert row["evidence"]["restriction"]["parsed_reason"]["values"]["OutboundSpamPercent"] == "88"


def test_end_to_end_report_only_decides_and_records_but_changes_nothing(app: App) -> None:
    app.configure(mode="report-only")
    post(app.handlers, alert_v2("alice@contoso.com", "bob@fabrikam.com"))
    process(app.handlers, queued(app.queue))
    assert {r["SenderAddress"] for r in app.sim.blocked_senders} == {"alice@contoso.com", "bob@fabrikam.com"}
    assert app.sim.tickets == []
    assert not [r for r in app.sim.requests if r["route"] == "exchange.Remove-BlockedSenderAddress"]
    rows = {r["user"]: r for r in app.audit()}
    assert rows["alice@contoso.com"]["decision"] == "unblock"
    assert rows["bob@fabrikam.com"]["decision"] == "ticket"
    assert all(a["status"] == "skipped" for r in rows.values() for a in r["actions"])


def test_end_to_end_a_user_without_an_allow_rule_gets_one_signed_ticket_and_one_update(app: App) -> None:
    post(app.handlers, alert_v2("bob@fabrikam.com", alert_id="a1"))
    post(app.handlers, alert_v2("bob@fabrikam.com", alert_id="a2"))  # another alert about the same restriction
    process(app.handlers, queued(app.queue))
    [ticket] = app.sim.tickets
    [update] = ticket["updates"]
    assert "a2" in update["body"]["note"]
    body = json.dumps(ticket["body"], separators=(",", ":"), sort_keys=True).encode()
    expected = "sha256=" + hmac.new(TICKET_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert ticket["signature"] == expected
    assert ticket["body"]["record"]["reasons"][0]["code"] == "no-allow-rule"
    assert ticket["idempotency_key"] == ticket["body"]["correlation_id"]


def test_a_redelivered_message_is_a_duplicate_and_acts_once(app: App) -> None:
    post(app.handlers, alert_v2("alice@contoso.com"))
    [message] = queued(app.queue)
    process(app.handlers, [message, message])
    assert len([r for r in app.sim.requests if r["route"] == "exchange.Remove-BlockedSenderAddress"]) == 1
    assert [r["decision"] for r in app.audit()] == ["unblock", "ignore"]


def test_an_exchange_outage_fails_the_message_and_its_retry_completes_the_unblock(app: App) -> None:
    post(app.handlers, alert_v2("alice@contoso.com"))
    [message] = queued(app.queue)
    app.sim.inject_fault("exchange.Remove-BlockedSenderAddress", status=503, retry_after=0, times=None)
    with pytest.raises(Exception, match="Remove-BlockedSenderAddress: HTTP 503"):
        process(app.handlers, [message])
    assert app.audit() == []  # nothing recorded as final: the queue will retry it
    app.sim.clear_faults()
    process(app.handlers, [message])  # the host's retry of the same message
    assert "alice@contoso.com" not in [r["SenderAddress"] for r in app.sim.blocked_senders]
    assert [r["decision"] for r in app.audit()] == ["unblock"]


def test_queue_messages_are_base64_as_the_trigger_expects(
    handlers: dict[str, Callable[..., Any]], configure: Any, azurite: Azurite, queue: QueueClient
) -> None:
    post(handlers, alert_v2("alice@contoso.com"))
    with QueueClient.from_connection_string(azurite.connection_string, EVENTS_QUEUE) as raw:
        [message] = list(raw.receive_messages(visibility_timeout=1))
    assert json.loads(base64.b64decode(message.content))["user"]["address"] == "alice@contoso.com"


def test_a_batch_of_messages_shares_one_set_of_clients_and_one_token_per_service(
    handlers: dict[str, Callable[..., Any]], configure: Any, queue: QueueClient, sim: Simulator
) -> None:
    post(handlers, alert_v2("alice@contoso.com", "bob@fabrikam.com", "ivan@contoso.com"))
    messages = queued(queue)

    async def batch() -> None:
        try:
            await asyncio.gather(*(handlers["process_event"](func.QueueMessage(body=m.encode())) for m in messages))
        finally:
            await runtime.aclose()

    asyncio.run(batch())
    resources = sorted(r["query"]["resource"] for r in sim.requests if r["route"] == "identity.token")
    assert resources == ["https://graph.microsoft.com", "https://outlook.office365.com"]
