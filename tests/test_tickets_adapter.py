"""The generic ticket webhook over real HTTP against the simulator's sink."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from restricted_sender.adapters.tickets import WebhookTickets
from restricted_sender.errors import ServiceRefused, TransientServiceError
from restricted_sender.retry import RetryPolicy
from restricted_sender.settings import Secret
from simulator import Simulator
from tests.conftest import tenant

RECORD = {"correlation_id": "rsr-1", "record": {"decision": "ticket", "user": "bob@fabrikam.com"}}


def open_ticket(sim: Simulator, *, secret: str | None = "k", attempts: int = 3) -> str:
    async def main() -> str:
        async with httpx.AsyncClient(timeout=5) as http:
            tickets = WebhookTickets(
                http,
                url=f"{sim.url}/tickets/webhook",
                secret=Secret(secret) if secret else None,
                retry=RetryPolicy(attempts=attempts, base_delay=0.01),
            )
            return await tickets.open("rsr-1", RECORD)

    return asyncio.run(main())


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(tenant([], []))


def test_posts_the_record_signed_with_an_idempotency_key(sim: Simulator) -> None:
    assert open_ticket(sim) == "SIM-0001"
    [ticket] = sim.tickets
    body = json.dumps(RECORD, separators=(",", ":"), sort_keys=True).encode()
    assert ticket["idempotency_key"] == "rsr-1"
    assert ticket["signature"] == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_without_a_secret_nothing_is_signed(sim: Simulator) -> None:
    open_ticket(sim, secret=None)
    assert sim.tickets[0]["signature"] is None


def test_the_same_correlation_id_finds_the_same_ticket(sim: Simulator) -> None:
    assert open_ticket(sim) == open_ticket(sim) == "SIM-0001"
    assert sim.tickets[0]["deliveries"] == 2


def test_an_unavailable_receiver_is_retried_then_reported_as_transient(sim: Simulator) -> None:
    sim.inject_fault("tickets.webhook", status=503, retry_after=0, times=1)
    assert open_ticket(sim) == "SIM-0001"
    sim.inject_fault("tickets.webhook", status=503, retry_after=0, times=None)
    with pytest.raises(TransientServiceError):
        open_ticket(sim, attempts=2)


def test_a_rejecting_receiver_is_refused_without_retrying(sim: Simulator) -> None:
    sim.inject_fault("tickets.webhook", status=400, times=None)
    with pytest.raises(ServiceRefused, match="HTTP 400"):
        open_ticket(sim)
    assert len([r for r in sim.requests if r["route"] == "tickets.webhook"]) == 1
