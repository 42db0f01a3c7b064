"""The one place adapters are built and wired, lazily.

The webhook side (:func:`build_intake`) needs only the policy and a sync queue client; the processor side
(:func:`build_processor`) brings in httpx, msgraph-sdk and azure-identity, and is built on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .actions import Actor
from .errors import ConfigurationError, PolicyError
from .facts import FactSources
from .pipeline import Intake, Processor
from .policy import Policy, default_policy, load_policy_file, load_policy_text
from .ports import Clock, Directory, EventQueue, Exchange, Store, Tickets
from .retry import RetryPolicy
from .settings import EVENTS_QUEUE, Settings
from .timeutil import SystemClock

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential

log = logging.getLogger("restricted_sender")


def load_policy(settings: Settings) -> Policy | PolicyError:
    """The policy from ``POLICY_YAML`` or ``POLICY_FILE``; a :class:`PolicyError` (never raised) when unusable."""
    try:
        if settings.policy_yaml:
            policy = load_policy_text(settings.policy_yaml, source="POLICY_YAML")
        elif settings.policy_file:
            policy = load_policy_file(settings.policy_file)
        else:
            log.warning("neither POLICY_FILE nor POLICY_YAML is set: using the default policy (report-only)")
            policy = default_policy()
    except PolicyError as error:
        log.error("POLICY INVALID - nothing will be unblocked, every restricted user is escalated: %s", error)
        return error
    for note in policy.notes:
        log.warning("policy: %s", note)
    return policy


def storage_queue(settings: Settings) -> EventQueue:
    from .adapters.queue import StorageQueue

    if settings.storage_connection:
        return StorageQueue.from_connection_string(settings.storage_connection.reveal(), EVENTS_QUEUE)
    if settings.queue_service_uri:
        return StorageQueue.with_identity(settings.queue_service_uri, EVENTS_QUEUE, settings.storage_client_id)
    raise ConfigurationError("set AzureWebJobsStorage or AzureWebJobsStorage__queueServiceUri for the events queue")


def build_intake(
    settings: Settings, policy: Policy | PolicyError, *, queue: EventQueue | None = None, clock: Clock | None = None
) -> Intake:
    return Intake(queue=queue or storage_queue(settings), clock=clock or SystemClock(), policy=policy)


@dataclass
class ProcessorBundle:
    processor: Processor
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


async def build_processor(
    settings: Settings,
    policy: Policy | PolicyError,
    *,
    credential: AsyncTokenCredential | None = None,
    store: Store | None = None,
    exchange: Exchange | None = None,
    directory: Directory | None = None,
    tickets: Tickets | None = None,
    clock: Clock | None = None,
    retry: RetryPolicy | None = None,
    graph_retry_delay: float = 3.0,
) -> ProcessorBundle:
    """Wire the processor from settings; any port passed in is used as is (tests, the CLI)."""
    import httpx

    from .adapters.identity import EXCHANGE_SCOPE, bearer, managed_identity

    closers: list[Callable[[], Awaitable[None]]] = []
    tenant_id = settings.require_tenant_id()
    if credential is None and (exchange is None or directory is None):
        credential = managed_identity(settings.managed_identity_client_id)
        closers.append(credential.close)
    http = httpx.AsyncClient(timeout=settings.http_timeout_seconds)
    closers.append(http.aclose)
    if exchange is None:
        from .adapters.exchange import ExchangeAdmin

        assert credential is not None
        exchange = ExchangeAdmin(
            http,
            tenant_id=tenant_id,
            token=bearer(credential, EXCHANGE_SCOPE),
            base_url=settings.exchange_base_url,
            retry=retry,
        )
    if directory is None:
        from .adapters.graph import graph_directory

        assert credential is not None
        graph = graph_directory(
            credential,
            base_url=settings.graph_base_url,
            timeout=settings.http_timeout_seconds,
            retry_delay=graph_retry_delay,
        )
        closers.append(graph.close)
        directory = graph
    if tickets is None:
        tickets = _tickets(settings, policy, http, retry)
    if store is None:
        store = table_store(settings)
        closers.append(store.close)
    processor = Processor(
        sources=FactSources(exchange=exchange, directory=directory, store=store),
        actor=Actor(exchange=exchange, tickets=tickets, store=store, tenant_id=tenant_id),
        store=store,
        clock=clock or SystemClock(),
        policy=policy,
    )
    return ProcessorBundle(processor=processor, closers=closers)


def table_store(settings: Settings) -> Store:
    from .adapters.tables import TableStore

    if settings.storage_connection:
        return TableStore.from_connection_string(settings.storage_connection.reveal(), prefix=settings.table_prefix)
    if settings.table_service_uri:
        from azure.data.tables.aio import TableServiceClient

        from .adapters.identity import managed_identity

        credential = managed_identity(settings.storage_client_id)
        return TableStore(
            TableServiceClient(settings.table_service_uri, credential=credential), prefix=settings.table_prefix
        )
    raise ConfigurationError("set AzureWebJobsStorage or AzureWebJobsStorage__tableServiceUri for the store")


def _tickets(
    settings: Settings, policy: Policy | PolicyError, http: httpx.AsyncClient, retry: RetryPolicy | None
) -> Tickets:
    from .adapters.tickets import WebhookTickets

    system = policy.ticket_system if isinstance(policy, Policy) else "webhook"
    if system != "webhook":  # the policy loader already refuses others; kept for a clear message
        raise ConfigurationError(f"ticket system {system!r} is not supported by this version")
    if not settings.ticket_webhook_url:
        return _MissingTickets()
    return WebhookTickets(http, url=settings.ticket_webhook_url, secret=settings.ticket_webhook_secret, retry=retry)


class _MissingTickets:
    """No ticket destination configured: fail the event (it is retried, then kept in the poison queue)."""

    async def open(self, correlation_id: str, record: object) -> str:
        raise ConfigurationError("TICKET_WEBHOOK_URL is not set: cannot open the ticket " + correlation_id)
