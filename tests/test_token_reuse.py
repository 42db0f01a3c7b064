"""The process's credential: one fetch per scope, and a kept token handed out without queueing behind a lock; an
identity endpoint given explicitly (the simulator's) is asked exactly as azure-identity asks App Service's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from restricted_sender.adapters.identity import IdentityEndpoint, OneFetchPerScope
from simulator import Simulator
from tests.conftest import tenant, user

SCOPE = "https://graph.microsoft.com/.default"


class CountingCredential:
    """A credential whose fetch takes a while and is counted (what the token endpoint would see)."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.fetches: list[dict[str, Any]] = []
        self.lifetime = lifetime

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.fetches.append(kwargs)
        await asyncio.sleep(0.01)
        return AccessToken(f"token-{len(self.fetches)}", int(time.time() + self.lifetime))

    async def close(self) -> None:
        return None


def test_concurrent_requests_share_one_fetch_and_later_ones_get_the_kept_token_without_waiting() -> None:
    inner = CountingCredential()
    credential = OneFetchPerScope(inner)  # type: ignore[arg-type]

    async def story() -> tuple[set[str], str, bool]:
        first = await asyncio.gather(*(credential.get_token(SCOPE) for _ in range(20)))
        lock = credential._locks[(SCOPE,)]
        async with lock:  # a fetch in flight for the scope does not hold up a request a kept token answers
            kept = await asyncio.wait_for(credential.get_token(SCOPE, claims=None, enable_cae=True), 1)
        challenged = await credential.get_token(SCOPE, claims='{"access_token": {}}')
        return {t.token for t in first}, kept.token, challenged.token != kept.token

    tokens, kept, renewed = asyncio.run(story())
    assert (tokens, kept, renewed) == ({"token-1"}, "token-1", True)
    assert len(inner.fetches) == 2  # the first, and the claims challenge


def test_a_token_close_to_its_expiry_is_fetched_again() -> None:
    inner = CountingCredential(lifetime=60)
    credential = OneFetchPerScope(inner)  # type: ignore[arg-type]

    async def story() -> list[str]:
        return [(await credential.get_token(SCOPE)).token for _ in range(2)]

    assert asyncio.run(story()) == ["token-1", "token-2"]


def test_an_identity_endpoint_given_explicitly_is_asked_as_app_service_is_and_a_wrong_header_gets_no_token(
    simulator_factory: Callable[..., Simulator],
) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    sim = simulator_factory(tenant([user("alice")], []))

    async def story() -> tuple[AccessToken, str]:
        async with (
            IdentityEndpoint(sim.identity_endpoint, sim.identity_header) as good,
            IdentityEndpoint(sim.identity_endpoint, "not-the-header") as bad,
        ):
            token = await good.get_token(SCOPE)
            with pytest.raises(ClientAuthenticationError) as refused:
                await bad.get_token(SCOPE)
            return token, str(refused.value.message)

    token, refusal = asyncio.run(story())
    assert token.token
    assert refusal == "the identity endpoint answered HTTP 401"
    [asked, _] = [r for r in sim.requests if r["route"] == "identity.token"]
    assert (asked["method"], asked["query"]) == (
        "GET",
        {"api-version": "2019-08-01", "resource": "https://graph.microsoft.com"},
    )
