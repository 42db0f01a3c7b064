"""Runs against the tenant simulator: ``replay``/``demo``/``check --tenant``, ``doctor --simulated``, the
benchmarks and the tests that need the real clients. Wired by :func:`~restricted_sender.entrypoints.compose.bootstrap`
like the function app; the simulator's URLs and its identity endpoint are passed as explicit settings and an
explicit credential (nothing here touches ``os.environ``)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from restricted_sender.core.policy import LoadedPolicy
from restricted_sender.errors import ResponderError
from restricted_sender.model import DecisionRecord, UnblockEntry, UnblockKind
from restricted_sender.timeutil import FixedClock, SystemClock, parse_instant

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from restricted_sender.entrypoints.compose import ProcessorBundle
    from restricted_sender.entrypoints.permissions import IntakePaths
    from restricted_sender.fakes import MemoryDelayedQueue, MemoryQueue
    from restricted_sender.ports import Clock, Store
    from restricted_sender.processing.admin import Admin
    from restricted_sender.processing.doctor import Report
    from restricted_sender.settings import Settings
    from simulator import Simulator


def simulator_settings(sim: Simulator) -> Settings:
    """Settings that point Graph, Exchange, the Management Activity API, the token authority and every ticket
    system at the simulator."""
    from restricted_sender.settings import Secret, Settings

    itsm = sim.itsm_credentials
    return Settings(
        tenant_id=sim.tenant_id,
        graph_base_url=sim.graph_url,
        exchange_base_url=sim.url,
        ticket_webhook_url=Secret(sim.tickets_url),
        teams_webhook_url=Secret(sim.teams_url),
        servicenow_instance_url=itsm["SERVICENOW_INSTANCE_URL"],
        servicenow_username=itsm["SERVICENOW_USERNAME"],
        servicenow_password=Secret(itsm["SERVICENOW_PASSWORD"]),
        jira_site_url=itsm["JIRA_SITE_URL"],
        jira_email=itsm["JIRA_EMAIL"],
        jira_api_token=Secret(itsm["JIRA_API_TOKEN"]),
        admin_api_audiences=(sim.admin_api.audience,),
        entra_authority=sim.url,
        http_timeout_seconds=10,
        o365_api_root=sim.url,
    )


def simulator_credential(sim: Simulator) -> AsyncTokenCredential:
    """The app's identity as the simulator's App Service-style token endpoint serves it, given explicitly."""
    from restricted_sender.adapters.identity import identity_endpoint

    return identity_endpoint(sim.identity_endpoint, sim.identity_header)


@contextmanager
def started(sim: Simulator) -> Iterator[Simulator]:
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@asynccontextmanager
async def on_simulator(
    sim: Simulator,
    policy: LoadedPolicy,
    clock: Clock,
    *,
    history: Sequence[dict[str, Any]] = (),
    events: MemoryQueue | None = None,
    content: MemoryQueue | None = None,
) -> AsyncIterator[tuple[ProcessorBundle, MemoryDelayedQueue]]:
    """The function app's processor bundle against a running simulator: the real clients, an in-memory store
    seeded with ``history``, in-memory queues. The CLI and the benchmarks run on it."""
    from restricted_sender.entrypoints.compose import bootstrap
    from restricted_sender.fakes import MemoryDelayedQueue, MemoryQueue, MemoryStore
    from restricted_sender.retry import RetryPolicy

    store = MemoryStore()
    await _seed_history(store, history)
    verifications = MemoryDelayedQueue()
    credential = simulator_credential(sim)
    bundle = bootstrap(
        simulator_settings(sim),
        policy,
        credential=credential,
        store=store,
        clock=clock,
        verifications=verifications,
        retry=RetryPolicy(attempts=3, base_delay=0.2, max_delay=5),
        events=events if events is not None else MemoryQueue(),
        content=content if content is not None else MemoryQueue(),
    )
    try:
        yield bundle, verifications
    finally:
        await bundle.aclose()
        await store.close()
        await credential.close()


@asynccontextmanager
async def simulated(
    tenant: Path | dict[str, Any],
    policy: LoadedPolicy,
    now: datetime | None = None,
    *,
    events: MemoryQueue | None = None,
    content: MemoryQueue | None = None,
) -> AsyncIterator[tuple[ProcessorBundle, Simulator, MemoryDelayedQueue]]:
    """:func:`on_simulator` against a simulator seeded with ``tenant`` on a free loopback port."""
    from simulator import Simulator, load_tenant

    state = load_tenant(tenant)
    clock = FixedClock(now) if now else SystemClock()
    # One clock for the product and the simulated tenant: a sample is judged at --now, never at the machine's date.
    with started(Simulator(state, port=0, clock=clock)) as sim:
        async with on_simulator(sim, policy, clock, history=state.history, events=events, content=content) as (
            bundle,
            verifications,
        ):
            yield bundle, sim, verifications


async def _seed_history(store: Store, history: Sequence[dict[str, Any]]) -> None:
    for index, item in enumerate(history):
        await store.record_unblock(
            UnblockEntry(
                user=str(item["user"]).lower(),
                at=parse_instant(str(item["at"])),
                kind=UnblockKind(str(item.get("kind", "auto"))),
                event_id=f"x-history-{index}",
            )
        )


@dataclass(frozen=True)
class ReplayOutcome:
    records: list[DecisionRecord]
    requests: list[dict[str, Any]]
    simulator_state: dict[str, Any]


MANAGEMENT_ROOT = "https://manage.office.com"


def localized(body: bytes, sim_url: str) -> bytes:
    """A notification's ``https://manage.office.com`` content URIs pointed at the simulator, which stands in for
    that host in a replay (the intake then checks them against the simulator's root, as it would in Azure)."""
    payload = json.loads(body)
    if not isinstance(payload, list):
        return body
    for item in payload:
        uri = item.get("contentUri") if isinstance(item, dict) else None
        if isinstance(uri, str) and uri.startswith(MANAGEMENT_ROOT + "/"):
            item["contentUri"] = sim_url + uri[len(MANAGEMENT_ROOT) :]
    return json.dumps(payload).encode()


async def replay(
    bodies: Sequence[bytes],
    *,
    tenant: Path | dict[str, Any],
    policy: LoadedPolicy,
    now: datetime | None = None,
) -> ReplayOutcome:
    """The replay engine: the simulator on a free loopback port, an in-memory store, the real clients."""
    from restricted_sender.fakes import MemoryQueue

    queue, content = MemoryQueue(), MemoryQueue()
    async with simulated(tenant, policy, now, events=queue, content=content) as (bundle, sim, verifications):
        records = await _replay_on(bundle, sim, queue, content, bodies)
        return ReplayOutcome(
            records=records,
            requests=sim.requests,
            simulator_state={
                "blocked_senders": sim.blocked_senders,
                "tickets": sim.tickets,
                "teams_posts": sim.teams_posts(),
                "servicenow_records": sim.servicenow_records(),
                "jira_issues": sim.jira_issues(),
                "sent_mail": sim.sent_mail(),
                "verifications": [message for message, _ in verifications.scheduled],
            },
        )


async def _replay_on(
    bundle: ProcessorBundle, sim: Simulator, queue: MemoryQueue, content: MemoryQueue, bodies: Sequence[bytes]
) -> list[DecisionRecord]:
    from restricted_sender.entrypoints.edge import process_message

    intake = bundle.expander.intake
    records: list[DecisionRecord] = []
    for body in bodies:
        # The same entry points as the function app: POST /api/alerts, or /api/alerts/o365 for an array.
        if isinstance(json.loads(body), list):
            intake.accept_o365(localized(body, sim.url))
        else:
            records.extend(intake.accept(body).ignored)
        for message in content.drain():
            await bundle.expander.expand(message)
        for message in queue.drain():
            try:
                records.append(await process_message(message, bundle.processor))
            except ResponderError as error:
                # As in the function app the event would be retried; the record is in the audit trail.
                print(f"event not completed, the queue would retry it: {error}", file=sys.stderr)
                audit = await bundle.processor.store.audit()
                records.append(DecisionRecord.from_dict(audit[-1]))
    return records


async def replay_then(
    bodies: Sequence[bytes],
    *,
    tenant: Path | dict[str, Any],
    policy: LoadedPolicy,
    now: datetime | None,
    then: Callable[[Admin], Awaitable[DecisionRecord]],
) -> DecisionRecord:
    """Replay ``bodies``, then run ``then`` on the admin side of the same simulated tenant and store (``restore
    --replay``: the simulator keeps no state between runs, so what is restored is made in the same run)."""
    from restricted_sender.fakes import MemoryQueue

    queue, content = MemoryQueue(), MemoryQueue()
    async with simulated(tenant, policy, now, events=queue, content=content) as (bundle, sim, _):
        await _replay_on(bundle, sim, queue, content, bodies)
        return await then(bundle.admin)


async def simulated_doctor(tenant: Path | dict[str, Any], policy: LoadedPolicy) -> Report:
    """The doctor's probes run here, through the app's adapters, against a simulator seeded with ``tenant``."""
    from simulator import Simulator, load_tenant

    with started(Simulator(load_tenant(tenant), port=0)) as sim:
        return await doctor_on(sim, policy)


async def doctor_on(sim: Simulator, policy: LoadedPolicy, intake: IntakePaths | None = None) -> Report:
    """The doctor's probes against a running simulator (tables and queues are in memory there: skipped); the
    intake paths default to the alerts_v2 poller on and the Management Activity API off."""
    from restricted_sender.entrypoints.compose import doctor_targets
    from restricted_sender.entrypoints.permissions import IntakePaths
    from restricted_sender.processing.doctor import diagnose

    async with (
        simulator_credential(sim) as credential,
        doctor_targets(
            simulator_settings(sim), policy, intake or IntakePaths(), credential=credential, storage=False
        ) as targets,
    ):
        return await diagnose(targets)
