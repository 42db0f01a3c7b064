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
from restricted_sender.model import TicketContent
from restricted_sender.retry import RetryPolicy
from restricted_sender.settings import Secret
from simulator import Simulator
from tests.conftest import tenant

CONTENT = TicketContent(
    correlation_id="rsr-1",
    title="Restricted sender: bob@fabrikam.com",
    text="readable",
    html="<p>readable</p>",
    record={"correlation_id": "rsr-1", "record": {"decision": "ticket"}, "evidence": {"user": None}},
    update="Another report of this restriction: alerts_v2 alert a2",
)


def tickets_for(
    sim: Simulator, http: httpx.AsyncClient, *, secret: str | None = "k", attempts: int = 3
) -> WebhookTickets:
    return WebhookTickets(
        http,
        url=f"{sim.url}/tickets/webhook",
        secret=Secret(secret) if secret else None,
        retry=RetryPolicy(attempts=attempts, base_delay=0.01),
    )


def open_ticket(sim: Simulator, *, secret: str | None = "k", attempts: int = 3) -> str:
    async def main() -> str:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await tickets_for(sim, http, secret=secret, attempts=attempts).create(CONTENT)).id

    return asyncio.run(main())


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(tenant([], []))


def test_posts_the_ticket_signed_with_an_idempotency_key(sim: Simulator) -> None:
    assert open_ticket(sim) == "SIM-0001"
    [ticket] = sim.tickets
    assert ticket["body"] == {
        "kind": "open",
        "correlation_id": "rsr-1",
        "title": CONTENT.title,
        "severity": "high",
        "text": "readable",
        "record": {"decision": "ticket"},
        "evidence": {"user": None},
    }
    body = json.dumps(ticket["body"], separators=(",", ":"), sort_keys=True).encode()
    assert ticket["idempotency_key"] == "rsr-1"
    assert ticket["signature"] == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_an_update_names_the_ticket_and_an_exact_repeat_is_dropped_by_its_key(sim: Simulator) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            tickets = tickets_for(sim, http)
            ticket = await tickets.create(CONTENT)
            await tickets.update(ticket, CONTENT)
            await tickets.update(ticket, CONTENT)
            assert await tickets.find_open("rsr-1") is None  # a webhook cannot be searched

    asyncio.run(main())
    [ticket] = sim.tickets
    [update] = ticket["updates"]
    assert update["body"] == {"kind": "update", "ticket": "SIM-0001", "correlation_id": "rsr-1", "note": CONTENT.update}


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
