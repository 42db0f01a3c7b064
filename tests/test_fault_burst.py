"""A burst of alerts under injected faults, run the way the Functions host runs the queue trigger.

Azurite holds the events queue and the tables; the simulator serves Exchange, Graph, the identity endpoint and the
ticket webhook, and about a quarter of their answers are faults (throttling, server errors, dropped connections,
malformed bodies, timeouts, writes whose answer is lost). A small host receives batches of 16 with a visibility
timeout, runs the queue handler with the message's dequeue count, deletes a message that succeeded, leaves a failed
one invisible for a batch or more before it shows again, and moves it to the poison list at its fifth failure.
Alerts are re-posted while their first delivery is being retried, some are posted twice at once, a second alert
reports some restrictions again, and the instance restarts now and then (a cold token cache, the identity endpoint
faulted too).

After the burst: every delivery ends recorded or poisoned, every restriction is decided unless every event naming
it was poisoned, at most one Remove reaches Exchange per restriction, and at most one ticket is opened per one.
The run is seeded: the faults, re-posts and retry delays are the same every time (the interleaving of a batch's
concurrent deliveries is the event loop's).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient, QueueMessage

from restricted_sender.entrypoints.edge import process_message
from restricted_sender.model import RestrictionEvent
from simulator import Simulator
from simulator.azurite import Azurite
from tests.conftest import alert_v2, audit_rows, blocked, tenant, user

pytestmark = pytest.mark.azurite

USERS = 48
SEED = 12
BATCH = 16  # host.json extensions.queues.batchSize
MAX_DEQUEUE = 5  # host.json extensions.queues.maxDequeueCount
HIDDEN = 600  # seconds a received message stays invisible: the host, not the wall clock, shows it again
REPOSTED_WHILE_RETRIED = 0.6  # share of first failures whose alert is posted again before the retry
POSTED_TWICE = 0.15  # share of alerts posted twice at once
ALSO_REPORTED = 0.25  # share of restrictions that a second alert reports too (another event, the same restriction)
RESTART_EVERY = 6  # batches between instance restarts
POLICY = """
mode: enforce
allow:
  - name: staff
    domains: [contoso.com]
guards:
  max_unblocks_per_tenant: {count: 100000, hours: 1}
"""
REMOVE = "exchange.Remove-BlockedSenderAddress"
THROTTLED = 429  # the only fault that proves Remove never ran: the product may send it again after this one


def address(index: int) -> str:
    return f"user{index:03d}@{'contoso.com' if index % 2 == 0 else 'fabrikam.com'}"


def burst_tenant() -> dict[str, Any]:
    people = []
    for i in range(USERS):
        name, domain = address(i).split("@")
        people.append(user(name, domain=domain, **({"x-unblockLimitReached": True} if i % 10 == 4 else {})))
    return tenant(people, [blocked(address(i)) for i in range(USERS)])


def alert(index: int, second: bool = False) -> dict[str, Any]:
    return alert_v2(address(index), alert_id=f"burst-{index:03d}{'-b' if second else ''}")


# (route, fault options, weight): what a fault on each service looks like.
FAULTS: list[tuple[str, dict[str, Any], int]] = [
    ("exchange.Get-BlockedSenderAddress", {"status": 503}, 3),
    ("exchange.Get-BlockedSenderAddress", {"status": THROTTLED, "retry_after": 0.01}, 2),
    ("exchange.Get-BlockedSenderAddress", {"kind": "reset"}, 1),
    ("exchange.Get-BlockedSenderAddress", {"kind": "malformed"}, 1),
    ("exchange.Get-BlockedSenderAddress", {"kind": "timeout", "seconds": 0.6}, 1),
    (REMOVE, {"status": THROTTLED, "retry_after": 0.01}, 1),
    (REMOVE, {"status": 503, "apply": True}, 1),
    (REMOVE, {"kind": "reset", "apply": True}, 1),
    (REMOVE, {"kind": "reset"}, 1),
    (REMOVE, {"status": 500, "apply": True}, 1),
    (REMOVE, {"kind": "malformed", "apply": True}, 1),
    (REMOVE, {"kind": "timeout", "seconds": 0.6, "apply": True}, 1),
    ("graph.*", {"status": 503}, 3),
    ("graph.*", {"status": THROTTLED, "retry_after": 0.01}, 2),
    ("graph.*", {"status": 500}, 1),
    ("graph.*", {"kind": "malformed"}, 1),
    ("graph.*", {"kind": "reset"}, 1),
    ("tickets.webhook", {"status": 503}, 2),
    ("tickets.webhook", {"status": 500, "apply": True}, 1),
    ("tickets.webhook", {"kind": "reset", "apply": True}, 1),
    ("tickets.webhook", {"kind": "malformed", "apply": True}, 1),
]
FAULTS_PER_DELIVERY = 2.2  # one-shot faults armed per delivery dispatched: about a quarter of the calls
# (2.2 since the privileged guard and the MFA evidence added three Graph reads per event: 1.6 left a sixth)
FAULTED_FAMILIES = ("exchange.", "graph.", "identity.", "tickets.")


@dataclass
class Host:
    """The Functions host's queue trigger over an Azurite queue (see the module docstring)."""

    queue: QueueClient
    handle: Callable[[str, int], Any]
    on_failure: Callable[[str, int], None]
    rng: random.Random
    tick: int = 0
    hidden: list[tuple[int, QueueMessage]] = field(default_factory=list)
    deliveries: set[tuple[str, str]] = field(default_factory=set)  # (event id, delivery id) of every message seen
    users: dict[str, str] = field(default_factory=dict)  # event id -> the user it names
    completed: list[tuple[str, str]] = field(default_factory=list)
    poisoned: list[tuple[str, str]] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    async def drain(self, before_batch: Callable[[int, int], Any]) -> None:
        while True:
            self.tick += 1
            self._show_due()
            received = list(self.queue.receive_messages(messages_per_page=BATCH, max_messages=BATCH,
                                                        visibility_timeout=HIDDEN))  # fmt: skip
            if not received:
                if not self.hidden:
                    return
                self.tick = min(due for due, _ in self.hidden) - 1  # nothing visible: the retry delay passes
                continue
            await before_batch(self.tick, len(received))
            outcomes = await asyncio.gather(*(self._run(m) for m in received), return_exceptions=True)
            for message, outcome in zip(received, outcomes, strict=True):
                self._settle(message, outcome)

    async def _run(self, message: QueueMessage) -> None:
        await self.handle(message.content, message.dequeue_count or 1)

    def _settle(self, message: QueueMessage, outcome: BaseException | None) -> None:
        event = RestrictionEvent.from_message(message.content)
        delivery = (event.event_id, event.delivery_id)
        self.deliveries.add(delivery)
        self.users[event.event_id] = event.user.key.lower()
        count = message.dequeue_count or 1
        if outcome is None:
            self.queue.delete_message(message)
            self.completed.append(delivery)
            return
        if not isinstance(outcome, Exception):
            raise outcome
        self.failures[type(outcome).__name__] += 1
        if count >= MAX_DEQUEUE:
            self.queue.delete_message(message)
            self.poisoned.append(delivery)
            return
        self.on_failure(message.content, count)
        self.hidden.append((self.tick + self.rng.randint(1, 3), message))  # the visibility retry delay

    def _show_due(self) -> None:
        due = [m for at, m in self.hidden if at <= self.tick]
        self.hidden = [(at, m) for at, m in self.hidden if at > self.tick]
        for message in due:
            # By id and receipt, content untouched (passing the message would send its decoded text back).
            self.queue.update_message(message.id, pop_receipt=message.pop_receipt, visibility_timeout=0)


@pytest.fixture
def burst(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    azurite: Azurite,
    table_prefix: str,
    queue: QueueClient,
    handlers: dict[str, Callable[..., Any]],
    app_runtime: Callable[..., dict[str, str]],
) -> tuple[Simulator, Host, list[dict[str, Any]]]:
    sim = simulator_factory(burst_tenant())
    app_runtime(
        sim,
        POLICY_YAML=POLICY,
        HTTP_TIMEOUT_SECONDS="0.5",
        EXCHANGE_TIMEOUT_SECONDS="0.5",
        unset=("ALERTS_SHARED_SECRET",),
    )
    rng = random.Random(SEED)

    def post(index: int, second: bool = False) -> None:
        body = json.dumps(alert(index, second)).encode()
        response = handlers["alerts"](func.HttpRequest(method="POST", url="/api/alerts", body=body, headers={}))
        assert response.status_code == 202, response.get_body()

    for i in range(USERS):
        post(i)
        if rng.random() < POSTED_TWICE:
            post(i)
        if rng.random() < ALSO_REPORTED:
            post(i, second=True)

    def repost(text: str, count: int) -> None:
        if count == 1 and rng.random() < REPOSTED_WHILE_RETRIED:
            event = RestrictionEvent.from_message(text)
            post(int(event.user.key.split("@")[0][4:]), second=event.alert_id.endswith("-b"))

    bundle: list[Any] = []

    async def handle(text: str, attempt: int) -> Any:
        return await process_message(text, bundle[0].processor, attempt=attempt)

    host = Host(queue, handle, repost, rng)

    async def before_batch(tick: int, size: int) -> None:
        if tick % RESTART_EVERY == 1:  # a new instance: fresh clients, no cached token
            await restart(bundle, sim, rng)
        for _ in range(round(FAULTS_PER_DELIVERY * size)):
            route, options, _ = rng.choices(FAULTS, weights=[w for *_, w in FAULTS])[0]
            sim.inject_fault(route, times=1, **options)

    async def main() -> None:
        try:
            await host.drain(before_batch)
        finally:
            if bundle:
                await bundle[0].aclose()

    asyncio.run(main())
    return sim, host, audit_rows(azurite, table_prefix)


async def restart(bundle: list[Any], sim: Simulator, rng: random.Random) -> None:
    from restricted_sender.entrypoints.compose import bootstrap, load_policy
    from restricted_sender.retry import RetryPolicy
    from restricted_sender.settings import Settings

    if bundle:
        await bundle.pop().aclose()
    sim.inject_fault("identity.token", status=rng.choice((500, 503)), times=rng.randint(1, 3))
    settings = Settings.from_env()
    built = bootstrap(
        settings,
        load_policy(settings),
        retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=1.0),
        graph_retry_delay=0.01,
        ticket_wait_seconds=1.0,
    )
    built.processor.decided_wait = 1.0
    bundle.append(built)


def carried_out_removes(sim: Simulator) -> Counter[str]:
    """Remove requests that may have run, by address (a 429 proves the cmdlet never ran)."""
    return Counter(
        str(r["body"]["CmdletInput"]["Parameters"]["SenderAddress"]).lower()
        for r in sim.requests
        if r["route"] == REMOVE and r["status"] != THROTTLED
    )


def poisoned_restrictions(host: Host) -> set[str]:
    """Users every one of whose events (alerts) had a delivery poisoned: nothing may have decided them."""
    poisoned = {event_id for event_id, _ in host.poisoned}
    by_user: dict[str, set[str]] = {}
    for event_id, user_key in host.users.items():
        by_user.setdefault(user_key, set()).add(event_id)
    return {u for u, events in by_user.items() if events <= poisoned}


def terminal(row: dict[str, Any]) -> bool:
    return not any(a["kind"] == "ticket" and a["status"] == "failed" for a in row["actions"])


def test_under_faults_and_reposts_every_delivery_ends_recorded_or_poisoned_and_every_restriction_is_decided_once(
    burst: tuple[Simulator, Host, list[dict[str, Any]]],
) -> None:
    sim, host, rows = burst
    # The faults were real: at least a fifth of the calls to every faulted service failed.
    calls = [r for r in sim.requests if r["route"].startswith(FAULTED_FAMILIES)]
    faulted = sum(1 for r in calls if r["status"] is None or r["status"] in (THROTTLED, 500, 503))
    assert faulted / len(calls) >= 0.2, (faulted, len(calls))
    assert host.failures, "no delivery failed: the burst tested nothing"

    recorded = {(r["event_id"], r["delivery_id"]) for r in rows if terminal(r)}
    decided = {r["user"] for r in rows if terminal(r) and r["decision"] != "ignore"}
    removes = carried_out_removes(sim)
    tickets = Counter(str(t["idempotency_key"]) for t in sim.tickets)
    found = {
        "deliveries neither recorded nor poisoned": sorted(host.deliveries - recorded - set(host.poisoned)),
        "deliveries completed without their own terminal record": sorted(set(host.completed) - recorded),
        "restrictions never decided whose event was not poisoned": sorted(
            {address(i) for i in range(USERS)} - decided - poisoned_restrictions(host)
        ),
        "restrictions with more than one Remove": sorted(a for a, n in removes.items() if n > 1),
        "restrictions with more than one ticket": sorted(k for k, n in tickets.items() if n > 1),
    }
    counts = f"{faulted}/{len(calls)} calls faulted, failures {dict(host.failures)}, poisoned {len(host.poisoned)}"
    print(f"burst: {len(host.deliveries)} deliveries, {counts}, {len(removes)} unblocked, {len(tickets)} ticketed")
    assert found == {key: [] for key in found}, (found, counts)
