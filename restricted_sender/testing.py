"""Wiring for tests and benchmarks, shipped with the package (as ``structlog.testing`` is).

Everything here goes through the function app's one composition root,
:func:`~restricted_sender.entrypoints.compose.bootstrap`: :class:`Fakes` wires it on in-memory ports (the model is
cosmicpython's ``bootstrap(uow=FakeUnitOfWork(), ...)``), and :func:`on_simulator` / :func:`simulated` wire it
with the real clients against a running simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from restricted_sender.core.policy import LoadedPolicy
from restricted_sender.entrypoints.compose import ProcessorBundle, bootstrap
from restricted_sender.entrypoints.simulated import (
    doctor_on,
    on_simulator,
    replay,
    simulated,
    simulated_doctor,
    simulator_credential,
    simulator_settings,
)
from restricted_sender.fakes import (
    FakeDirectory,
    FakeExchange,
    FakeManagementActivity,
    FakeTickets,
    MemoryDelayedQueue,
    MemoryQueue,
    MemoryStore,
)
from restricted_sender.settings import Settings

if TYPE_CHECKING:
    from restricted_sender.ports import Clock

__all__ = [
    "FAKE_SETTINGS",
    "Fakes",
    "doctor_on",
    "on_simulator",
    "replay",
    "simulated",
    "simulated_doctor",
    "simulator_credential",
    "simulator_settings",
]

# A tenant id for the fakes; the nets are off (a test runs them by hand when it wants them).
FAKE_SETTINGS = Settings(tenant_id="t", poll_alerts_minutes=0, sweep_minutes=0)


@dataclass
class Fakes:
    """One tenant's in-memory ports. Every bundle wired on them shares them, so two bundles are two processors
    racing on one tenant and one store."""

    exchange: FakeExchange = field(default_factory=FakeExchange)
    directory: FakeDirectory = field(default_factory=FakeDirectory)
    tickets: FakeTickets = field(default_factory=FakeTickets)
    store: MemoryStore = field(default_factory=MemoryStore)
    verifications: MemoryDelayedQueue = field(default_factory=MemoryDelayedQueue)
    events: MemoryQueue = field(default_factory=MemoryQueue)
    content: MemoryQueue = field(default_factory=MemoryQueue)
    management: FakeManagementActivity = field(default_factory=FakeManagementActivity)

    def wire(
        self,
        policy: LoadedPolicy,
        clock: Clock,
        *,
        settings: Settings = FAKE_SETTINGS,
        ticket_wait_seconds: float = 0.5,
        ticket_poll_seconds: float = 0.01,
        **options: Any,
    ) -> ProcessorBundle:
        """:func:`bootstrap` on these ports: a peer's ticket is waited for briefly (no test waits 20 s)."""
        return bootstrap(
            settings,
            policy,
            store=self.store,
            exchange=self.exchange,
            directory=self.directory,
            tickets=self.tickets,
            verifications=self.verifications,
            events=self.events,
            content=self.content,
            management=self.management,
            clock=clock,
            ticket_wait_seconds=ticket_wait_seconds,
            ticket_poll_seconds=ticket_poll_seconds,
            **options,
        )
