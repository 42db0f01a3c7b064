"""The Graph adapter: the real msgraph-sdk client (default middleware kept) against the simulator over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from restricted_sender.adapters.graph import GraphDirectory
from restricted_sender.errors import ServiceRefused, TransientServiceError
from simulator import Simulator
from tests.conftest import BULK_GROUP, on_graph, tenant, user

T = TypeVar("T")
OTHER_GROUPS = [f"00000000-0000-0000-0000-{i:012d}" for i in range(30)]


def state() -> dict[str, Any]:
    return tenant(
        [
            user("alice", **{"x-memberOf": [BULK_GROUP, OTHER_GROUPS[25]]}),
            user("frank", enabled=False),
            # A mailbox whose primary SMTP address is not its UPN.
            {
                **user("grace"),
                "userPrincipalName": "grace.h@contoso.onmicrosoft.com",
                "mail": "grace@contoso.com",
                "proxyAddresses": ["SMTP:grace@contoso.com", "smtp:G.Hopper@fabrikam.com", "SIP:grace@contoso.com"],
            },
        ],
        [],
    )


@pytest.fixture
def run(
    simulator_factory: Callable[[dict[str, Any]], Simulator], identity_env: Callable[[Simulator], None]
) -> Callable[..., tuple[Any, Simulator]]:
    def go(
        scenario: Callable[[GraphDirectory, Simulator], Awaitable[T]], *, retry_delay: float = 0.05
    ) -> tuple[T, Simulator]:
        sim = simulator_factory(state())
        identity_env(sim)

        return on_graph(sim, scenario, retry_delay=retry_delay), sim

    return go


def routes(sim: Simulator, route: str) -> int:
    return sum(1 for r in sim.requests if r["route"] == route)


@pytest.mark.parametrize("key", ["alice@contoso.com", "ALICE@CONTOSO.COM", "id"])
def test_finds_a_user_by_upn_or_object_id(run: Callable[..., Any], key: str) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> Any:
        alice = sim.tenant.users[0]
        return await directory.user(alice["id"] if key == "id" else key)

    found, sim = run(scenario)
    assert found.user_principal_name == "alice@contoso.com"
    assert found.account_enabled is True
    request = next(r for r in sim.requests if r["route"] == "graph.user")
    assert set(request["query"]["$select"].split(",")) >= {"accountEnabled", "userPrincipalName", "mail"}


def test_reports_a_disabled_account(run: Callable[..., Any]) -> None:
    found, _ = run(lambda d, sim: d.user("frank@contoso.com"))
    assert found.account_enabled is False


def test_finds_a_mailbox_by_its_smtp_address_when_it_is_not_the_upn(run: Callable[..., Any]) -> None:
    found, sim = run(lambda d, sim: d.user("grace@contoso.com"))
    assert found.user_principal_name == "grace.h@contoso.onmicrosoft.com"
    assert routes(sim, "graph.users") == 1


def test_finds_a_mailbox_by_an_smtp_proxy_address_and_reads_every_address_it_owns(run: Callable[..., Any]) -> None:
    found, sim = run(lambda d, sim: d.user("g.hopper@fabrikam.com"))
    assert found.user_principal_name == "grace.h@contoso.onmicrosoft.com"
    assert found.owns("G.HOPPER@fabrikam.com")
    assert found.primary_smtp() == "grace@contoso.com"
    assert not found.owns("sip:grace@contoso.com")
    [search] = [r for r in sim.requests if r["route"] == "graph.users"]
    assert "proxyAddresses" in search["query"]["$select"].split(",")


def test_an_unknown_user_is_none_not_an_error(run: Callable[..., Any]) -> None:
    found, _ = run(lambda d, sim: d.user("nobody@contoso.com"))
    assert found is None


def test_checks_membership_in_chunks_of_twenty_ids(run: Callable[..., Any]) -> None:
    groups = [BULK_GROUP, *OTHER_GROUPS]
    found, sim = run(lambda d, sim: d.member_groups("alice@contoso.com", groups))
    assert found == {BULK_GROUP, OTHER_GROUPS[25]}
    assert routes(sim, "graph.checkMemberGroups") == 2


def test_membership_of_an_unknown_user_is_empty(run: Callable[..., Any]) -> None:
    found, _ = run(lambda d, sim: d.member_groups("nobody@contoso.com", [BULK_GROUP]))
    assert found == frozenset()


def test_the_sdk_retry_middleware_waits_out_throttling(run: Callable[..., Any]) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> Any:
        sim.inject_fault("graph.user", status=429, retry_after=0.2, times=2)
        return await directory.user("alice@contoso.com")

    found, sim = run(scenario)
    assert found is not None
    assert routes(sim, "graph.user") == 3


def test_a_fractional_retry_after_is_waited_out_as_sent_not_the_sdk_backoff(run: Callable[..., Any]) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> Any:
        sim.inject_fault("graph.user", status=429, retry_after=0.2, times=1)
        return await directory.user("alice@contoso.com")

    # The production base delay (3 s): the SDK alone would wait it out (and more) instead of the 0.2 s asked for.
    found, sim = run(scenario, retry_delay=3.0)
    attempts = [r for r in sim.requests if r["route"] == "graph.user"]
    assert found is not None
    assert [r["status"] for r in attempts] == [429, 200]
    assert 0.15 <= attempts[1]["started"] - attempts[0]["ended"] < 1.0


def test_a_lasting_outage_becomes_a_transient_error_after_bounded_retries(run: Callable[..., Any]) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> None:
        sim.inject_fault("graph.user", status=503, times=None)
        with pytest.raises(TransientServiceError):
            await directory.user("alice@contoso.com")

    _, sim = run(scenario, retry_delay=0.01)
    assert routes(sim, "graph.user") == 4  # the first try and the middleware's three retries


def test_missing_permissions_are_refused_with_a_hint(run: Callable[..., Any]) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> None:
        sim.inject_fault("graph.user", status=403, times=1)
        with pytest.raises(ServiceRefused) as caught:
            await directory.user("alice@contoso.com")
        assert "User.Read.All" in caught.value.message

    run(scenario)


def test_the_simulator_serves_nothing_the_sdk_model_does_not_know(run: Callable[..., Any]) -> None:
    """A fake that drifts from Graph's shape shows up as keys in the SDK's ``additional_data``."""

    async def scenario(directory: GraphDirectory, sim: Simulator) -> dict[str, Any]:
        client: Any = directory._client
        found = await client.users.by_user_id("alice@contoso.com").get()
        return dict(found.additional_data)

    extra, _ = run(scenario)
    assert all(key.startswith("@odata") for key in extra), extra
