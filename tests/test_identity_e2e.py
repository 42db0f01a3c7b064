"""One identity per event, end to end: ``POST /api/alerts`` on Azurite, the queue trigger, the simulator's Graph and
Exchange. An alert cannot borrow a clean user's facts for a compromised user's address, an object id must be a GUID,
and what was not checked is named in the record."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from restricted_sender.settings import CONTENT_QUEUE
from simulator import Simulator
from simulator.azurite import Azurite
from tests.conftest import Audit, alert_v2, blocked, tenant, user
from tests.test_function_app import post, process, queued

pytestmark = pytest.mark.azurite

POLICY = """
mode: enforce
allow: [{name: staff, domains: [contoso.com]}]
deny: {users: [mallory@contoso.com]}
guards: {max_risk_level: low}
"""
ALICE, MALLORY = user("alice"), user("mallory")  # neither has an x-riskLevel: a tenant without Entra ID P2
NOBODY = "7d1e0f2a-3b4c-4d5e-8f60-718293a4b5c6"  # a GUID no user has


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(tenant([ALICE, MALLORY], [blocked("alice@contoso.com"), blocked("mallory@contoso.com")]))


@pytest.fixture
def configure(app_runtime: Callable[..., dict[str, str]], sim: Simulator) -> None:
    app_runtime(sim, POLICY_YAML=POLICY, unset=("ALERTS_SHARED_SECRET",))


def removals(sim: Simulator) -> list[str]:
    return [r["route"] for r in sim.requests if r["route"] == "exchange.Remove-BlockedSenderAddress"]


@pytest.mark.parametrize("object_id", [ALICE["id"], NOBODY], ids=["a clean user's object id", "nobody's object id"])
def test_a_deny_listed_address_paired_with_another_object_id_unblocks_nobody(
    handlers: dict[str, Callable[..., Any]],
    configure: None,
    queue: QueueClient,
    sim: Simulator,
    audit: Audit,
    object_id: str,
) -> None:
    alert = alert_v2("mallory@contoso.com", object_ids={"mallory@contoso.com": object_id})
    assert post(handlers, alert)[0] == 202
    process(handlers, queued(queue))
    assert removals(sim) == []
    assert {r["SenderAddress"] for r in sim.blocked_senders} == {"alice@contoso.com", "mallory@contoso.com"}
    [row] = audit()
    assert (row["user"], row["decision"]) == ("mallory@contoso.com", "ticket")
    assert [r["code"] for r in row["reasons"]] == ["deny:user"]
    assert row["evidence"]["user"]["id"] == MALLORY["id"]  # the facts are the address owner's
    notes = {n["code"]: n["text"] for n in row["notes"]}
    assert object_id in notes["identity-mismatch"]
    assert MALLORY["id"] in notes["identity-mismatch"]
    [ticket] = sim.tickets
    assert "[identity-mismatch]" in ticket["body"]["text"]


def test_an_allowed_address_with_its_own_object_id_is_unblocked_and_names_the_unknown_risk(
    handlers: dict[str, Callable[..., Any]],
    configure: None,
    queue: QueueClient,
    sim: Simulator,
    audit: Audit,
) -> None:
    alert = alert_v2("alice@contoso.com", object_ids={"alice@contoso.com": ALICE["id"]})
    assert post(handlers, alert)[0] == 202
    process(handlers, queued(queue))
    assert "alice@contoso.com" not in [r["SenderAddress"] for r in sim.blocked_senders]
    [row] = audit()
    assert (row["decision"], [r["code"] for r in row["reasons"]]) == ("unblock", ["allow:staff"])
    assert [n["code"] for n in row["notes"]] == ["risk-unknown"]


@pytest.mark.parametrize(
    "body",
    [
        alert_v2("alice@contoso.com", object_ids={"alice@contoso.com": "alice"}),
        {
            "SystemAlertId": "s1",
            "AlertDisplayName": "User restricted from sending email",
            "Entities": [{"Type": "account", "Name": "alice", "UPNSuffix": "contoso.com", "AadUserId": "alice@x"}],
        },
        {
            "records": [
                {"category": "AdvancedHunting-AlertInfo",
                 "properties": {"AlertId": "d1", "Title": "User restricted from sending email"}},
                {
                    "category": "AdvancedHunting-AlertEvidence",
                    "properties": {"AlertId": "d1", "Title": "User restricted from sending email",
                                   "EntityType": "User", "AccountUpn": "alice@contoso.com",
                                   "AccountObjectId": "../../users/mallory"},
                },
            ]
        },
    ],
    ids=["alerts_v2", "sentinel", "defender"],
)  # fmt: skip
def test_an_object_id_that_is_not_a_guid_is_a_400_and_queues_nothing(
    handlers: dict[str, Callable[..., Any]],
    configure: None,
    queue: QueueClient,
    azurite: Azurite,
    body: dict[str, Any],
) -> None:
    content = QueueClient.from_connection_string(azurite.connection_string, CONTENT_QUEUE)
    with contextlib.suppress(ResourceExistsError):
        content.create_queue()
    content.clear_messages()
    # A valid alert (or Defender row) first in the same body: a 400 must leave none of the request queued.
    status, answer = post(handlers, {"value": [alert_v2("mallory@contoso.com"), body]} if "id" in body else body)
    assert (status, answer["error"]["code"]) == (400, "malformed-payload")
    assert "is not a GUID" in answer["error"]["message"]
    assert queued(queue) == []
    with content:
        assert content.peek_messages(max_messages=32) == []
