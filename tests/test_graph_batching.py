"""Concurrent Graph reads go out as JSON batches (https://learn.microsoft.com/graph/json-batching), and each caller
still gets what the same read sent alone would have got: the real SDK client against the simulator over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from restricted_sender.adapters.graph import GraphDirectory
from restricted_sender.errors import ServiceRefused, TransientServiceError
from simulator import Simulator
from simulator.tokens import GRAPH_RESOURCE
from tests.test_graph_adapter import routes, run  # noqa: F401 - the fixture

UNKNOWN_ID = "00000000-0000-0000-0000-0000000000ff"


def http_requests(sim: Simulator) -> list[str]:
    """The routes of the HTTP requests Graph received (a batch's requests are not HTTP requests of their own)."""
    return [r["route"] for r in sim.requests if r["route"].startswith("graph.") and not r.get("batched")]


def alice_id(sim: Simulator) -> str:
    return str(sim.tenant.users[0]["id"])


def test_the_reads_an_event_gathers_go_out_as_one_batch_each_logged_as_its_own_request(
    run: Callable[..., Any],  # noqa: F811
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> tuple[Any, ...]:
        key, object_id = "alice@contoso.com", alice_id(sim)
        return await asyncio.gather(
            directory.user(key),
            directory.inbox_rules(key),
            directory.risk_level(object_id),
            directory.active_roles(object_id),
            directory.eligible_roles(object_id),
            directory.mfa_registration(object_id),
        )

    (found, rules, _, roles, eligible, _), sim = run(scenario)
    assert found.user_principal_name == "alice@contoso.com"
    assert (rules, roles, eligible) == ((), (), ())
    assert http_requests(sim) == ["graph.batch"]
    batched = sorted(r["route"] for r in sim.requests if r.get("batched"))
    assert batched == sorted(
        [
            "graph.user",
            "graph.messageRules",
            "graph.riskyUser",
            "graph.roleAssignments",
            "graph.roleEligibilityScheduleInstances",
            "graph.userRegistrationDetails",
        ]
    )


def test_a_read_alone_is_sent_alone(run: Callable[..., Any]) -> None:  # noqa: F811
    found, sim = run(lambda d, sim: d.user("alice@contoso.com"))
    assert found is not None
    assert http_requests(sim) == ["graph.user"]


def test_each_caller_gets_its_own_answer_though_the_batch_answers_in_another_order(
    run: Callable[..., Any],  # noqa: F811
) -> None:
    keys = ["alice@contoso.com", "frank@contoso.com", "grace.h@contoso.onmicrosoft.com"]

    async def scenario(directory: GraphDirectory, sim: Simulator) -> list[Any]:
        return list(await asyncio.gather(*(directory.user(k) for k in keys)))

    found, sim = run(scenario)
    assert [u.user_principal_name for u in found] == keys
    assert http_requests(sim) == ["graph.batch"]


def test_the_simulator_answers_a_batch_out_of_order_in_graphs_shape(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
) -> None:
    from tests.test_graph_adapter import state

    sim = simulator_factory(state())
    body = {
        "requests": [
            {"id": "a", "method": "GET", "url": "/users/alice@contoso.com?$select=id"},
            {"id": "b", "method": "GET", "url": "/users/nobody@contoso.com", "headers": {"Accept": "application/json"}},
        ]
    }
    token = sim.issue_token(GRAPH_RESOURCE)
    answer = httpx.post(f"{sim.graph_url}/$batch", json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    responses = answer.json()["responses"]
    assert [(r["id"], r["status"]) for r in responses] == [("b", 404), ("a", 200)]
    assert responses[1]["body"]["id"] == sim.tenant.users[0]["id"]
    assert responses[0]["body"]["error"]["code"] == "Request_ResourceNotFound"
    assert all(r["headers"]["Content-Type"].startswith("application/json") for r in responses)


@pytest.mark.parametrize(
    "body",
    [
        {"requests": []},
        {"requests": [{"id": str(i), "method": "GET", "url": "/domains"} for i in range(21)]},
        {"requests": [{"id": "1", "method": "GET", "url": "/domains"}, {"id": "1", "method": "GET", "url": "/x"}]},
        {"requests": [{"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/domains"}]},
        {"requests": [{"id": "1", "url": "/domains"}]},
    ],
    ids=["empty", "more than 20", "repeated id", "absolute url", "no method"],
)
def test_the_simulator_refuses_a_malformed_batch_and_routes_none_of_it(
    simulator_factory: Callable[[dict[str, Any]], Simulator], body: dict[str, Any]
) -> None:
    from tests.test_graph_adapter import state

    sim = simulator_factory(state())
    token = sim.issue_token(GRAPH_RESOURCE)
    answer = httpx.post(f"{sim.graph_url}/$batch", json=body, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "BadRequest"
    assert [r["route"] for r in sim.requests] == ["graph.batch"]


def test_a_throttled_read_in_a_batch_is_resent_alone_after_its_retry_after(
    run: Callable[..., Any],  # noqa: F811
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> tuple[Any, ...]:
        sim.inject_fault("graph.user", status=429, retry_after=0.2, times=1)
        return await asyncio.gather(directory.user("alice@contoso.com"), directory.inbox_rules("alice@contoso.com"))

    # The production base delay (3 s): the 0.2 s the sub-response asks for is what is waited.
    (found, rules), sim = run(scenario, retry_delay=3.0)
    assert found is not None
    assert rules == ()
    attempts = [r for r in sim.requests if r["route"] == "graph.user"]
    assert [(r["status"], bool(r.get("batched"))) for r in attempts] == [(429, True), (200, False)]
    assert 0.15 <= attempts[1]["started"] - attempts[0]["ended"] < 1.0
    assert routes(sim, "graph.messageRules") == 1  # the other read is not resent
    assert http_requests(sim) == ["graph.batch", "graph.user"]


def test_a_read_throttled_in_every_batch_becomes_a_transient_error_after_bounded_retries(
    run: Callable[..., Any],  # noqa: F811
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> list[Any]:
        sim.inject_fault("graph.riskyUser", status=503, times=None)
        object_id = alice_id(sim)
        return list(
            await asyncio.gather(directory.user(object_id), directory.risk_level(object_id), return_exceptions=True)
        )

    (found, risk), sim = run(scenario, retry_delay=0.01)
    assert found is not None
    assert isinstance(risk, TransientServiceError)
    assert risk.http_status == 503
    # In the batch, then resent alone, where the SDK's middleware retries it three times (alone: 1 + 3).
    assert routes(sim, "graph.riskyUser") == 1 + 1 + 3


@pytest.mark.parametrize("batched", [True, False], ids=["in a batch", "alone"])
def test_a_refused_read_names_the_permission_as_it_does_alone(
    run: Callable[..., Any],  # noqa: F811
    batched: bool,
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> str:
        sim.inject_fault("graph.userRegistrationDetails", status=403, times=1)
        reads = [directory.mfa_registration(alice_id(sim))]
        if batched:
            reads.append(directory.user("alice@contoso.com"))
        with pytest.raises(ServiceRefused) as caught:
            await asyncio.gather(*reads)
        return caught.value.message

    message, sim = run(scenario)
    assert message == (
        "graph: HTTP 403: Forbidden: Simulated failure: HTTP 403. "
        "(check the identity's Graph application permissions, e.g. AuditLog.Read.All)"
    )
    assert http_requests(sim) == (["graph.batch"] if batched else ["graph.userRegistrationDetails"])


def test_an_unlicensed_tenant_in_a_batch_is_no_mfa_record_not_an_error(run: Callable[..., Any]) -> None:  # noqa: F811
    async def scenario(directory: GraphDirectory, sim: Simulator) -> tuple[Any, ...]:
        refusal = {
            "error": {
                "code": "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                "message": "Tenant does not have a SKU required for this feature.",
            }
        }
        sim.inject_fault("graph.userRegistrationDetails", status=403, body=refusal, times=1)
        return await asyncio.gather(directory.mfa_registration(alice_id(sim)), directory.user("alice@contoso.com"))

    (mfa, found), sim = run(scenario)
    assert mfa is None
    assert found is not None
    assert http_requests(sim) == ["graph.batch"]


def test_reads_of_what_does_not_exist_are_none_in_a_batch(run: Callable[..., Any]) -> None:  # noqa: F811
    async def scenario(directory: GraphDirectory, sim: Simulator) -> tuple[Any, ...]:
        reads = (directory.user(UNKNOWN_ID), directory.risk_level(UNKNOWN_ID), directory.inbox_rules("nobody@x.com"))
        return tuple(await asyncio.gather(*reads))

    found, sim = run(scenario)
    assert found == (None, None, None)
    assert http_requests(sim) == ["graph.batch"]


@pytest.mark.parametrize(
    "fault",
    [{"status": 503, "times": None}, {"kind": "reset", "times": None}],
    ids=["the batch answers 503", "the connection drops"],
)
def test_a_failed_batch_reaches_every_read_in_it_as_a_transient_error(
    run: Callable[..., Any],  # noqa: F811
    fault: dict[str, Any],
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> list[Any]:
        sim.inject_fault("graph.batch", **fault)
        reads = (directory.user("alice@contoso.com"), directory.inbox_rules("alice@contoso.com"))
        return list(await asyncio.gather(*reads, return_exceptions=True))

    failed, sim = run(scenario, retry_delay=0.01)
    assert all(isinstance(f, TransientServiceError) for f in failed), failed
    assert not [r for r in sim.requests if r.get("batched")]  # nothing in it was served


def test_more_than_twenty_concurrent_reads_go_out_in_several_batches(run: Callable[..., Any]) -> None:  # noqa: F811
    async def scenario(directory: GraphDirectory, sim: Simulator) -> list[Any]:
        return list(await asyncio.gather(*(directory.user(alice_id(sim)) for _ in range(25))))

    found, sim = run(scenario)
    assert all(u is not None and u.user_principal_name == "alice@contoso.com" for u in found)
    assert http_requests(sim) == ["graph.batch", "graph.batch"]
    sizes = sorted(len(r["body"]["requests"]) for r in sim.requests if r["route"] == "graph.batch")
    assert sizes == [5, 20]
    assert routes(sim, "graph.user") == 25


def test_a_read_waiting_out_a_retry_after_is_cancelled_when_the_directory_closes_and_never_resent(
    run: Callable[..., Any],  # noqa: F811
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> None:
        sim.inject_fault("graph.user", status=429, retry_after=30, times=1)
        user = asyncio.ensure_future(directory.user("alice@contoso.com"))
        rules = asyncio.ensure_future(directory.inbox_rules("alice@contoso.com"))
        assert await rules == ()
        await directory._reads.aclose()
        with pytest.raises(asyncio.CancelledError):
            await user

    _, sim = run(scenario)
    assert [r["status"] for r in sim.requests if r["route"] == "graph.user"] == [429]


def test_an_endpoint_without_batching_gets_each_read_alone_and_nothing_reads_as_missing(
    run: Callable[..., Any],  # noqa: F811
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> tuple[Any, ...]:
        sim.inject_fault("graph.batch", status=404, times=None)
        return tuple(
            await asyncio.gather(directory.user("alice@contoso.com"), directory.inbox_rules("alice@contoso.com"))
        )

    (found, rules), sim = run(scenario)
    assert found is not None
    assert rules == ()
    assert sorted(http_requests(sim)) == ["graph.batch", "graph.messageRules", "graph.user"]
