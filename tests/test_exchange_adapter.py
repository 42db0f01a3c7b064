"""The Exchange admin adapter over real HTTP (httpx) against the simulator, with the real identity credential."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from azure.identity.aio import ManagedIdentityCredential

from restricted_sender.adapters.exchange import ExchangeAdmin
from restricted_sender.adapters.identity import EXCHANGE_SCOPE, bearer
from restricted_sender.errors import SenderNotBlocked, ServiceRefused, TransientServiceError, UnblockLimitReached
from restricted_sender.restriction import BlockKind
from restricted_sender.retry import RetryPolicy
from simulator import Simulator
from tests.conftest import TENANT_ID, blocked, tenant, user

T = TypeVar("T")
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=1.0)
LIMIT = (
    "EmailSendingLimitExceeded;InternalRecipientCountToday=4;ExternalRecipientCountToday=396;"
    "ExceedingLimitType=External"
)


def state(**extra: Any) -> dict[str, Any]:
    return tenant(
        [user("alice"), user("bob", **{"x-unblockLimitReached": True}), user("carol")],
        [
            blocked("alice@contoso.com"),
            blocked("bob@contoso.com"),
            blocked("carol@contoso.com", reason=LIMIT, temporary=True),
        ],
        **extra,
    )


@pytest.fixture
def run(
    simulator_factory: Callable[[dict[str, Any]], Simulator], identity_env: Callable[[Simulator], None]
) -> Callable[..., Any]:
    """Run ``scenario(exchange, sim)`` in a fresh loop with a real credential and httpx client, then close them."""

    def go(
        scenario: Callable[[ExchangeAdmin, Simulator], Awaitable[T]],
        *,
        tenant_state: dict[str, Any] | None = None,
        retry: RetryPolicy = FAST,
        timeout: float = 5.0,
    ) -> tuple[T, Simulator]:
        sim = simulator_factory(tenant_state or state())
        identity_env(sim)

        async def main() -> T:
            async with ManagedIdentityCredential() as credential, httpx.AsyncClient(timeout=timeout) as http:
                exchange = ExchangeAdmin(
                    http, tenant_id=TENANT_ID, token=bearer(credential, EXCHANGE_SCOPE), base_url=sim.url, retry=retry
                )
                return await scenario(exchange, sim)

        return asyncio.run(main()), sim

    return go


def cmdlet_calls(sim: Simulator, cmdlet: str) -> int:
    return sum(1 for r in sim.requests if r["route"] == f"exchange.{cmdlet}")


def test_reads_every_restricted_sender_with_parsed_reasons(run: Callable[..., Any]) -> None:
    rows, _ = run(lambda ex, sim: ex.blocked_senders())
    assert [r.address for r in rows] == ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"]
    assert rows[0].kind is BlockKind.SPAM
    assert rows[0].reason.get("OutboundSpamPercent") == "88"
    assert rows[2].kind is BlockKind.SENDING_LIMIT
    assert rows[2].temporary is True


def test_reads_one_sender_by_address_ignoring_case(run: Callable[..., Any]) -> None:
    rows, sim = run(lambda ex, sim: ex.blocked_senders("ALICE@Contoso.com"))
    assert [r.address for r in rows] == ["alice@contoso.com"]
    body = next(r["body"] for r in sim.requests if r["route"] == "exchange.Get-BlockedSenderAddress")
    assert body == {
        "CmdletInput": {"CmdletName": "Get-BlockedSenderAddress", "Parameters": {"SenderAddress": "ALICE@Contoso.com"}}
    }


def test_follows_next_links_re_posting_the_same_body(run: Callable[..., Any]) -> None:
    many = tenant([], [blocked(f"user{i}@contoso.com") for i in range(7)], **{"x-exchangePageSize": 3})
    rows, sim = run(lambda ex, sim: ex.blocked_senders(), tenant_state=many)
    assert len(rows) == 7
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 3
    bodies = {str(r["body"]) for r in sim.requests if r["route"] == "exchange.Get-BlockedSenderAddress"}
    assert len(bodies) == 1


def test_one_token_is_fetched_and_reused_across_calls(run: Callable[..., Any]) -> None:
    async def three_calls(ex: ExchangeAdmin, sim: Simulator) -> None:
        for _ in range(3):
            await ex.blocked_senders("alice@contoso.com")

    _, sim = run(three_calls)
    token_requests = [r for r in sim.requests if r["route"] == "identity.token"]
    assert len(token_requests) == 1
    assert token_requests[0]["query"]["resource"] == EXCHANGE_SCOPE.removesuffix("/.default")


def test_removes_a_restricted_sender(run: Callable[..., Any]) -> None:
    async def remove(ex: ExchangeAdmin, sim: Simulator) -> list[str]:
        await ex.remove_blocked_sender("alice@contoso.com")
        return [r.address for r in await ex.blocked_senders()]

    remaining, _ = run(remove)
    assert "alice@contoso.com" not in remaining


def test_the_unblock_limit_is_its_own_error_and_never_retried(run: Callable[..., Any]) -> None:
    async def remove(ex: ExchangeAdmin, sim: Simulator) -> BaseException:
        with pytest.raises(UnblockLimitReached) as caught:
            await ex.remove_blocked_sender("bob@contoso.com")
        return caught.value

    error, sim = run(remove)
    assert "unblock limit" in error.message
    assert cmdlet_calls(sim, "Remove-BlockedSenderAddress") == 1


def test_removing_an_address_that_is_not_blocked_says_so_and_is_not_retried(run: Callable[..., Any]) -> None:
    async def remove(ex: ExchangeAdmin, sim: Simulator) -> None:
        with pytest.raises(SenderNotBlocked) as caught:
            await ex.remove_blocked_sender("nobody@contoso.com")
        assert "couldn't be found" in caught.value.message

    _, sim = run(remove)
    assert cmdlet_calls(sim, "Remove-BlockedSenderAddress") == 1


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_and_outages_are_retried_honouring_retry_after(run: Callable[..., Any], status: int) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> float:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=status, retry_after=0.3, times=1)
        started = time.monotonic()
        await ex.blocked_senders("alice@contoso.com")
        return time.monotonic() - started

    elapsed, sim = run(scenario, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=5))
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 2
    assert elapsed >= 0.3


def test_retries_are_bounded(run: Callable[..., Any]) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> None:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=503, times=None)
        with pytest.raises(TransientServiceError) as caught:
            await ex.blocked_senders()
        assert caught.value.http_status == 503

    _, sim = run(scenario)
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == FAST.attempts


def test_a_retry_after_longer_than_the_budget_is_left_to_the_queue(run: Callable[..., Any]) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> None:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=429, retry_after=120, times=1)
        with pytest.raises(TransientServiceError) as caught:
            await ex.blocked_senders()
        assert caught.value.retry_after == 120

    _, sim = run(scenario)
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 1


@pytest.mark.parametrize("kind", ["timeout", "malformed"])
def test_timeouts_and_malformed_answers_are_transient(run: Callable[..., Any], kind: str) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> None:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", kind=kind, seconds=1.0, times=None)
        with pytest.raises(TransientServiceError):
            await ex.blocked_senders()

    run(scenario, retry=RetryPolicy(attempts=2, base_delay=0.01), timeout=0.3)


def test_a_rejected_token_is_refused_with_a_hint_about_permissions(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
) -> None:
    sim = simulator_factory(state())

    async def main() -> None:
        async def wrong_audience(*, fresh: bool = False) -> str:
            return sim.issue_token("https://graph.microsoft.com")

        async with httpx.AsyncClient() as http:
            ex = ExchangeAdmin(http, tenant_id=TENANT_ID, token=wrong_audience, base_url=sim.url, retry=FAST)
            with pytest.raises(ServiceRefused) as caught:
                await ex.blocked_senders()
            assert caught.value.http_status == 401
            assert "Exchange.ManageAsApp" in caught.value.message

    asyncio.run(main())
