"""Closing the loop end to end, on Azurite and the simulator with the real clients: one ticket per restriction in
every ticket system (also with two processors racing), a failing ticket system ending in the poison queue with
the decision recorded, and the verification of an unblock through the verification queue's trigger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

import function_app
from restricted_sender.entrypoints.compose import load_policy
from restricted_sender.entrypoints.edge import runtime
from restricted_sender.settings import EVENTS_QUEUE, VERIFY_QUEUE, Settings
from simulator import Simulator
from simulator.azurite import Azurite
from tests.conftest import Audit, alert_v2, audit_rows, blocked, on_separate_instances, tenant, user

pytestmark = pytest.mark.azurite

ROOT = Path(__file__).resolve().parent.parent
MAX_DEQUEUE = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]["maxDequeueCount"]
TICKETS = {
    "webhook": "",
    "servicenow": "ticket: {system: servicenow}\n",
    "jira": "ticket: {system: jira, jira: {project: SEC}}\n",
    "email": "ticket: {system: email, email: {sender: rsr@contoso.com, to: [soc@contoso.com]}}\n",
}
POLICY = "mode: enforce\nallow: [{name: staff, domains: [contoso.com]}]\n"


@pytest.fixture
def sim(simulator_factory: Callable[..., Simulator], removal_clock: list[float]) -> Simulator:
    return simulator_factory(
        tenant(
            [user("alice"), user("bob", domain="fabrikam.com"), user("rsr")],
            [blocked("alice@contoso.com"), blocked("bob@fabrikam.com")],
        ),
        delays=lambda: removal_clock[0],
    )


@pytest.fixture
def removal_clock() -> list[float]:
    """The seconds the simulator's removals have had to propagate: they pass only when a test moves them on."""
    return [0.0]


@pytest.fixture
def env(app_runtime: Callable[..., dict[str, str]], sim: Simulator) -> Callable[..., None]:
    def apply(policy: str = POLICY, **extra: str) -> None:
        app_runtime(sim, POLICY_YAML=policy, **extra)

    apply()
    return apply


def queue_client(azurite: Azurite, name: str) -> QueueClient:
    client = QueueClient.from_connection_string(
        azurite.connection_string,
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    client.clear_messages()
    return client


def events_for(*alerts: dict[str, Any]) -> list[str]:
    settings = Settings.from_env()
    from restricted_sender.entrypoints.compose import build_intake
    from restricted_sender.fakes import MemoryQueue

    queue = MemoryQueue()
    intake = build_intake(settings, load_policy(settings), queue=queue)
    for alert in alerts:
        intake.accept(json.dumps(alert).encode())
    return queue.drain()


def queued_alert(azurite: Azurite, address: str) -> tuple[QueueClient, str]:
    """The events queue, emptied, then holding the one event an alert about ``address`` makes; and that event."""
    events = queue_client(azurite, EVENTS_QUEUE)
    [message] = events_for(alert_v2(address))
    events.send_message(message)
    return events, message


def tickets_and_updates(sim: Simulator, system: str) -> tuple[int, list[str]]:
    """How many tickets the system holds, and the text of every update added to them."""
    if system == "webhook":
        return len(sim.tickets), [u["body"]["note"] for t in sim.tickets for u in t["updates"]]
    if system == "servicenow":
        records = sim.servicenow_records()
        # The first work note of a record is the JSON decision record written when it was created.
        return len(records), [n["value"] for r in records for n in r["x-work_notes"][1:]]
    if system == "jira":
        issues = sim.jira_issues()
        return len(issues), [json.dumps(c["body"]) for i in issues for c in i["x-comments"]]
    mails = [m for m in sim.sent_mail() if m["from"] == "rsr@contoso.com"]
    opened = [m for m in mails if not m["message"]["subject"].startswith("Re: ")]
    return len(opened), [m["message"]["body"]["content"] for m in mails if m not in opened]


@pytest.mark.parametrize("system", list(TICKETS))
def test_two_processors_racing_on_two_alerts_about_one_restriction_make_one_ticket_and_one_update(
    env: Callable[..., None], sim: Simulator, audit: Audit, system: str
) -> None:
    env(POLICY + TICKETS[system])
    messages = events_for(alert_v2("bob@fabrikam.com", alert_id="a1"), alert_v2("bob@fabrikam.com", alert_id="a2"))
    records = on_separate_instances(messages)  # two function instances
    # One restriction, decided once: the other alert is recorded against it and added to its ticket.
    assert sorted(r.decision.outcome.value for r in records) == ["ignore", "ticket"]
    created, updates = tickets_and_updates(sim, system)
    assert created == 1, system
    assert len(updates) == 1, updates
    filed = sorted(next(a.detail for a in r.actions if a.kind == "ticket").split()[0] for r in records)
    assert filed == ["created", "updated"]
    rows = audit()
    assert len(rows) == 2
    assert {r["alert_id"] for r in rows} == {"a1", "a2"}


@dataclass
class HostRun:
    errors: list[str]
    poisoned: list[str]


def run_like_the_host(
    client: QueueClient, handler: Callable[..., Any], azurite: Azurite, *, visibility: int = 1, rounds: int = 12
) -> HostRun:
    """The queue trigger's documented behaviour: a message whose function fails becomes visible again; after
    maxDequeueCount failed tries the host moves it to ``<queue>-poison``."""
    poison = queue_client(azurite, f"{client.queue_name}-poison")
    errors: list[str] = []

    async def one(message: Any) -> None:
        try:
            # The worker's own message type: it carries the trigger metadata (DequeueCount) to the function.
            delivered = QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=message.dequeue_count)
            await handler(delivered)
        except Exception as error:
            errors.append(str(error))
            if message.dequeue_count >= MAX_DEQUEUE:
                poison.send_message(message.content)
                client.delete_message(message)
        else:
            client.delete_message(message)

    async def main() -> None:
        try:
            for _ in range(rounds):
                batch = list(client.receive_messages(messages_per_page=16, visibility_timeout=visibility))
                for message in batch:
                    await one(message)
                if not batch and not client.peek_messages():
                    return
                await asyncio.sleep(visibility + 0.1)
        finally:
            await runtime.aclose()

    asyncio.run(main())
    poisoned = [m.content for m in poison.peek_messages(max_messages=32)]
    poison.close()
    return HostRun(errors, poisoned)


def verify_until(code: str, verify: QueueClient, azurite: Azurite, table_prefix: str, within: float = 15) -> list[str]:
    """Run the verification queue as the host does until an audit row says ``code``; the reason codes then.

    A verification message stays invisible for VERIFY_AFTER in Azurite's own (real) time, which no injected clock
    reaches: so this polls on the audit rows, bounded, instead of sleeping a guessed time."""
    deadline = time.monotonic() + within
    while True:
        run_like_the_host(verify, function_app.verify_unblock, azurite, rounds=1)
        codes = [r["reasons"][0]["code"] for r in audit_rows(azurite, table_prefix)]
        if code in codes or time.monotonic() > deadline:
            return codes
        time.sleep(0.1)  # the poll's interval, not a wait for a delay


def test_a_failing_ticket_system_leaves_the_event_queued_then_poisoned_with_the_decision_recorded(
    env: Callable[..., None], sim: Simulator, azurite: Azurite, table_prefix: str
) -> None:
    env(POLICY + TICKETS["servicenow"])
    events, message = queued_alert(azurite, "bob@fabrikam.com")
    sim.inject_fault("servicenow.*", status=503, retry_after=0, times=None)
    run = run_like_the_host(events, function_app.process_event, azurite)
    assert len(run.errors) == MAX_DEQUEUE
    assert all("not filed" in e for e in run.errors), run.errors
    assert [json.loads(m)["event_id"] for m in run.poisoned] == [json.loads(message)["event_id"]]
    assert list(events.peek_messages()) == []
    assert sim.servicenow_records() == []
    rows = audit_rows(azurite, table_prefix)
    assert len(rows) == MAX_DEQUEUE
    assert all(r["decision"] == "ticket" for r in rows)
    details = [next(a["detail"] for a in r["actions"] if a["kind"] == "ticket") for r in rows]
    assert "try 1 of 5: the queue retries the event" in details[0]
    assert "try 5 of 5: the event goes to the poison queue" in details[-1]


def test_a_ticket_system_that_recovers_before_the_last_try_gets_exactly_one_ticket(
    env: Callable[..., None], sim: Simulator, azurite: Azurite, table_prefix: str
) -> None:
    env(POLICY + TICKETS["jira"])
    events, _ = queued_alert(azurite, "bob@fabrikam.com")
    # Each processing try makes up to 4 calls (bounded retries): 8 failures span the first two tries.
    sim.inject_fault("jira.*", status=503, retry_after=0, times=8)
    run = run_like_the_host(events, function_app.process_event, azurite)
    assert len(run.errors) == 2
    assert run.poisoned == []
    assert len(sim.jira_issues()) == 1
    assert [r["decision"] for r in audit_rows(azurite, table_prefix)] == ["ticket"] * 3


def test_an_unblock_is_verified_through_the_verification_queue(
    env: Callable[..., None], sim: Simulator, azurite: Azurite, table_prefix: str, removal_clock: list[float]
) -> None:
    env(POLICY, VERIFY_AFTER="0.02")  # 1.2 s, so the test sees the backoff at work
    sim.add_blocked_sender({**blocked("alice@contoso.com"), "x-removalDelaySeconds": 2})
    events, _ = queued_alert(azurite, "alice@contoso.com")
    verify = queue_client(azurite, VERIFY_QUEUE)
    assert run_like_the_host(events, function_app.process_event, azurite).errors == []
    codes = verify_until("verify-pending", verify, azurite, table_prefix)
    assert codes == ["allow:staff", "verify-pending"]  # the first check came before the removal landed
    removal_clock[0] += 2
    codes = verify_until("verified", verify, azurite, table_prefix)
    assert codes == ["allow:staff", "verify-pending", "verified"]


def test_a_user_restricted_again_after_the_unblock_gets_a_not_lifted_ticket(
    env: Callable[..., None], sim: Simulator, azurite: Azurite, table_prefix: str
) -> None:
    env(POLICY, VERIFY_AFTER="0.02")
    events, _ = queued_alert(azurite, "alice@contoso.com")
    verify = queue_client(azurite, VERIFY_QUEUE)
    run_like_the_host(events, function_app.process_event, azurite)
    sim.add_blocked_sender(blocked("alice@contoso.com", created="2099-01-01T00:00:00Z"))
    verify_until("not-lifted", verify, azurite, table_prefix)
    rows = audit_rows(azurite, table_prefix)
    assert rows[-1]["decision"] == "ticket"
    assert rows[-1]["reasons"][0]["code"] == "not-lifted"
    [ticket] = sim.tickets
    assert "not-lifted" in ticket["body"]["text"]
