"""The composition root: the one place adapters are built and wired, lazily.

The webhook side (:func:`build_intake`) needs only the policy and a sync queue client; the processor side
(:func:`bootstrap`) brings in httpx, msgraph-sdk and azure-identity, and is built on first use. The function app,
the CLI, the benchmarks and the tests all call :func:`bootstrap`; the tests and the simulated runs pass their own
ports (fakes, or a credential for the simulator's identity endpoint) and get everything else wired as in Azure
(``restricted_sender.testing``, ``restricted_sender.entrypoints.simulated``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from restricted_sender.core.policy import (
    Containment,
    LoadedPolicy,
    Notify,
    Remediation,
    TicketOptions,
    default_policy,
    load_policy_file,
    load_policy_text,
    usable,
)
from restricted_sender.core.untrusted import guard_logger
from restricted_sender.errors import ConfigurationError, PolicyError
from restricted_sender.intake.content import ContentExpander
from restricted_sender.intake.nets import AlertPoller, RestrictedSweep
from restricted_sender.model import TicketContent, TicketRef
from restricted_sender.ports import (
    AlertFeed,
    ChatChannel,
    Claims,
    Clock,
    DelayedQueue,
    Directory,
    EventQueue,
    Exchange,
    ManagementActivity,
    Store,
    TicketSystem,
)
from restricted_sender.processing.actions import Actor, TicketDesk
from restricted_sender.processing.admin import Admin
from restricted_sender.processing.facts import FactSources
from restricted_sender.processing.pipeline import Intake, Processor, Verifier
from restricted_sender.retry import RetryPolicy
from restricted_sender.settings import CONTENT_QUEUE, EVENTS_QUEUE, VERIFY_QUEUE, Settings
from restricted_sender.timeutil import SystemClock

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials_async import AsyncTokenCredential

    from restricted_sender.adapters.exchange import ExchangeAdmin
    from restricted_sender.adapters.management_activity import ManagementActivityApi
    from restricted_sender.adapters.queue import DelayedStorageQueue
    from restricted_sender.entrypoints.auth import TokenValidator
    from restricted_sender.entrypoints.permissions import IntakePaths
    from restricted_sender.processing.doctor import QueueReader, Targets

log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)


APP_ROOT = Path(__file__).resolve().parents[2]  # where function_app.py and config/policy.yaml are deployed


def policy_path(setting: str) -> Path:
    """``POLICY_FILE`` as given; a relative path that does not exist from the working directory is taken from the
    app root, so ``config/policy.yaml`` works whatever directory the worker starts in."""
    path = Path(setting)
    if not path.is_absolute() and not path.exists() and (APP_ROOT / path).exists():
        return APP_ROOT / path
    return path


def load_policy(settings: Settings) -> LoadedPolicy:
    """The policy from ``POLICY_YAML`` or ``POLICY_FILE``; a :class:`PolicyError` (never raised) when unusable."""
    try:
        if settings.policy_yaml:
            policy = load_policy_text(settings.policy_yaml, source="POLICY_YAML")
        elif settings.policy_file:
            policy = load_policy_file(policy_path(settings.policy_file))
        else:
            log.warning("neither POLICY_FILE nor POLICY_YAML is set: using the default policy (report-only)")
            policy = default_policy()
    except PolicyError as error:
        log.error("POLICY INVALID - nothing will be unblocked, every restricted user is escalated: %s", error)
        return error
    for note in policy.notes:
        log.warning("policy: %s", note)
    return policy


class LazyQueue:
    """An event queue built on its first ``send``: wiring stays cheap and needs no storage until used."""

    def __init__(self, build: Callable[[], EventQueue]) -> None:
        self._build = build
        self._queue: EventQueue | None = None

    def send(self, message: str) -> None:
        if self._queue is None:
            self._queue = self._build()
        self._queue.send(message)

    def close(self) -> None:
        close = getattr(self._queue, "close", None)
        if close is not None:
            close()


def storage_queue(settings: Settings, name: str = EVENTS_QUEUE) -> EventQueue:
    from restricted_sender.adapters.queue import StorageQueue

    if settings.storage_connection:
        return StorageQueue.from_connection_string(settings.storage_connection.reveal(), name)
    if settings.queue_service_uri:
        return StorageQueue.with_identity(settings.queue_service_uri, name, settings.storage_client_id)
    raise ConfigurationError(f"set AzureWebJobsStorage or AzureWebJobsStorage__queueServiceUri for the {name} queue")


def build_intake(
    settings: Settings,
    policy: LoadedPolicy,
    *,
    queue: EventQueue | None = None,
    content_queue: EventQueue | None = None,
    clock: Clock | None = None,
) -> Intake:
    return Intake(
        queue=queue or storage_queue(settings),
        clock=clock or SystemClock(),
        policy=policy,
        content_queue=content_queue or LazyQueue(lambda: storage_queue(settings, CONTENT_QUEUE)),
        tenant_id=settings.tenant_id,
        o365_api_root=settings.o365_api_root,
    )


@dataclass
class ProcessorBundle:
    """The processor and everything built with it: the verifier and the admin side share its clients."""

    processor: Processor
    verifier: Verifier
    admin: Admin
    expander: ContentExpander
    poller: AlertPoller | None = None  # None without a Graph alerts feed
    sweep: RestrictedSweep | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def aclose(self) -> None:
        for close in reversed(self.closers):
            await close()
        self.closers.clear()


def exchange_admin(
    settings: Settings, http: httpx.AsyncClient, credential: AsyncTokenCredential, retry: RetryPolicy | None
) -> ExchangeAdmin:
    """The Exchange admin endpoint with the app's identity: the processor and the doctor talk to it alike."""
    from restricted_sender.adapters.exchange import ExchangeAdmin
    from restricted_sender.adapters.identity import EXCHANGE_SCOPE, bearer

    return ExchangeAdmin(
        http,
        tenant_id=settings.require_tenant_id(),
        token=bearer(credential, EXCHANGE_SCOPE),
        base_url=settings.exchange_base_url,
        retry=retry,
        timeout=settings.exchange_timeout_seconds,
    )


def bootstrap(
    settings: Settings,
    policy: LoadedPolicy | None = None,
    *,
    credential: AsyncTokenCredential | None = None,
    store: Store | None = None,
    exchange: Exchange | None = None,
    directory: Directory | None = None,
    tickets: TicketSystem | None = None,
    verifications: DelayedQueue | None = None,
    clock: Clock | None = None,
    retry: RetryPolicy | None = None,
    graph_retry_delay: float = 3.0,
    ticket_wait_seconds: float = 20.0,
    ticket_poll_seconds: float = 0.2,
    events: EventQueue | None = None,
    content: EventQueue | None = None,
    feed: AlertFeed | None = None,
    management: ManagementActivity | None = None,
    channel: ChatChannel | None = None,
) -> ProcessorBundle:
    """The processor, verifier, admin side, content expander and nets wired from ``settings`` (and the policy they
    name unless one is given); any port passed in is used as is (the tests' fakes, the CLI's simulated runs), and
    a ``credential`` replaces the app's managed identity. Nothing is connected yet: clients open on first use."""
    if policy is None:
        policy = load_policy(settings)
    closers: list[Callable[[], Awaitable[None]]] = []
    tenant_id = settings.require_tenant_id()
    if credential is None and (exchange is None or directory is None or management is None):
        from restricted_sender.adapters.identity import managed_identity

        credential = managed_identity(settings.managed_identity_client_id)
        closers.append(credential.close)
    shared: list[httpx.AsyncClient] = []

    def http() -> httpx.AsyncClient:
        """One httpx client for the adapters that need one (none when every port is given)."""
        if not shared:
            import httpx

            from restricted_sender.adapters.http import pooled_transport

            shared.append(httpx.AsyncClient(timeout=settings.http_timeout_seconds, transport=pooled_transport()))
            closers.append(shared[0].aclose)
        return shared[0]

    if exchange is None:
        assert credential is not None
        exchange = exchange_admin(settings, http(), credential, retry)
    if directory is None:
        from restricted_sender.adapters.graph import graph_directory

        assert credential is not None
        graph = graph_directory(
            credential,
            base_url=settings.graph_base_url,
            timeout=settings.http_timeout_seconds,
            retry_delay=graph_retry_delay,
        )
        closers.append(graph.close)
        directory = graph
    if store is None:
        store = table_store(settings)
        closers.append(store.close)
    clock = clock or SystemClock()
    if channel is None and settings.teams_webhook_url is not None:
        channel = teams_channel(settings, http(), retry)
    if tickets is None:
        tickets = ticket_system(settings, policy, http(), directory, retry, channel=channel, claims=store, clock=clock)
    if verifications is None:
        delayed = verification_queue(settings)
        closers.append(delayed.close)
        verifications = delayed
    valid = usable(policy)
    actor = Actor(
        exchange=exchange,
        directory=directory,
        desk=TicketDesk(tickets, store, clock, wait_seconds=ticket_wait_seconds, poll_seconds=ticket_poll_seconds),
        store=store,
        tenant_id=tenant_id,
        verifications=verifications,
        verify_after=timedelta(minutes=settings.verify_after_minutes),
        containment=valid.containment if valid else Containment(),
        notify=valid.notify if valid else Notify(),
        channel=channel,
        remediation=valid.remediation if valid else Remediation(),
    )
    sources = FactSources(exchange=exchange, directory=directory, store=store)
    if management is None:
        from restricted_sender.adapters.identity import bearer
        from restricted_sender.adapters.management_activity import ManagementActivityApi, management_scope

        assert credential is not None
        management = ManagementActivityApi(
            http(),
            bearer(credential, management_scope(settings.o365_api_root)),
            api_root=settings.o365_api_root,
            tenant_id=tenant_id,
            publisher_id=settings.o365_publisher_id,
            retry=retry,
        )
    # Queues for the nets and the content expander, built when first written: a CLI check never needs them.
    intake = build_intake(
        settings,
        policy,
        queue=events or LazyQueue(lambda: storage_queue(settings)),
        content_queue=content,
        clock=clock,
    )

    async def close_queues() -> None:
        intake.close()

    closers.append(close_queues)
    if feed is None and isinstance(directory, AlertFeed):
        feed = directory
    poller = (
        AlertPoller(feed, intake, store, clock, every=timedelta(minutes=settings.poll_alerts_minutes))
        if feed is not None and settings.poll_alerts_minutes
        else None
    )
    sweep = (
        RestrictedSweep(exchange, intake, store, clock, every=timedelta(minutes=settings.sweep_minutes))
        if settings.sweep_minutes
        else None
    )
    return ProcessorBundle(
        processor=Processor(sources=sources, actor=actor, store=store, clock=clock, policy=policy),
        verifier=Verifier(exchange=exchange, actor=actor, store=store, clock=clock, policy=policy),
        admin=Admin(sources=sources, actor=actor, store=store, clock=clock, policy=policy),
        expander=ContentExpander(intake, store, clock, management),
        poller=poller,
        sweep=sweep,
        closers=closers,
    )


def verification_queue(settings: Settings) -> DelayedStorageQueue:
    from restricted_sender.adapters.queue import DelayedStorageQueue, StorageQueue

    if settings.storage_connection:
        return DelayedStorageQueue(
            StorageQueue.from_connection_string(settings.storage_connection.reveal(), VERIFY_QUEUE)
        )
    if settings.queue_service_uri:
        return DelayedStorageQueue(
            StorageQueue.with_identity(settings.queue_service_uri, VERIFY_QUEUE, settings.storage_client_id)
        )
    raise ConfigurationError("set AzureWebJobsStorage or AzureWebJobsStorage__queueServiceUri for the queues")


def table_store(settings: Settings) -> Store:
    from restricted_sender.adapters.tables import TableStore

    if settings.storage_connection:
        return TableStore.from_connection_string(settings.storage_connection.reveal(), prefix=settings.table_prefix)
    if settings.table_service_uri:
        from azure.data.tables.aio import TableServiceClient

        from restricted_sender.adapters.identity import managed_identity

        credential = managed_identity(settings.storage_client_id)
        return TableStore(
            TableServiceClient(settings.table_service_uri, credential=credential), prefix=settings.table_prefix
        )
    raise ConfigurationError("set AzureWebJobsStorage or AzureWebJobsStorage__tableServiceUri for the store")


def teams_channel(settings: Settings, http: httpx.AsyncClient, retry: RetryPolicy | None = None) -> ChatChannel:
    """The Teams channel of ``TEAMS_WEBHOOK_URL`` (a Workflows webhook)."""
    from restricted_sender.adapters.teams import TeamsWebhook

    assert settings.teams_webhook_url is not None
    return TeamsWebhook(http, url=settings.teams_webhook_url, retry=retry)


def ticket_system(
    settings: Settings,
    policy: LoadedPolicy,
    http: httpx.AsyncClient,
    directory: Directory,
    retry: RetryPolicy | None = None,
    *,
    channel: ChatChannel | None = None,
    claims: Claims | None = None,
    clock: Clock | None = None,
) -> TicketSystem:
    """The policy's ticket system with its app settings. Missing settings do not stop the processor: tickets fail
    (recorded, retried, then poisoned) with a message naming what to set. An unloadable policy cannot name a
    system: the webhook, else ServiceNow, is used when its settings are there."""
    if (loaded := usable(policy)) is not None:
        options = loaded.ticket
    elif settings.ticket_webhook_url or not settings.servicenow_instance_url:
        options = TicketOptions(system="webhook")
    else:
        options = TicketOptions(system="servicenow")
    if options.system == "servicenow":
        from restricted_sender.adapters.servicenow import ServiceNowTickets

        url, username, password = (
            settings.servicenow_instance_url,
            settings.servicenow_username,
            settings.servicenow_password,
        )
        login = settings.servicenow_token or (username and password)
        missing = _unset(
            {"SERVICENOW_INSTANCE_URL": url, "SERVICENOW_USERNAME and SERVICENOW_PASSWORD (or SERVICENOW_TOKEN)": login}
        )
        if not url or missing:
            return MissingTickets("servicenow", missing)
        return ServiceNowTickets(
            http,
            instance_url=url,
            table=options.servicenow_table,
            username=username,
            password=password,
            token=settings.servicenow_token,
            fields=options.servicenow_fields,
            retry=retry,
        )
    if options.system == "jira":
        from restricted_sender.adapters.jira import JiraTickets

        site, email, token = settings.jira_site_url, settings.jira_email, settings.jira_api_token
        assert options.jira_project is not None, "the policy loader requires it"
        if not (site and email and token):
            return MissingTickets("jira", _unset({"JIRA_SITE_URL": site, "JIRA_EMAIL": email, "JIRA_API_TOKEN": token}))
        return JiraTickets(
            http,
            site_url=site,
            project=options.jira_project,
            issue_type=options.jira_issue_type,
            email=email,
            api_token=token,
            labels=options.jira_labels,
            high_priority=options.jira_high_priority,
            retry=retry,
        )
    if options.system == "email":
        from restricted_sender.adapters.email_tickets import EmailTickets

        assert options.email_sender is not None, "the policy loader requires it"
        return EmailTickets(directory, sender=options.email_sender, to=options.email_to)
    if options.system == "teams":
        from restricted_sender.adapters.teams import TeamsTickets

        channel = channel or (teams_channel(settings, http, retry) if settings.teams_webhook_url else None)
        if channel is None:
            return MissingTickets("teams", ["TEAMS_WEBHOOK_URL"])
        if claims is None:
            # The doctor's probe never posts; a processor always passes its store.
            return MissingTickets("teams", ["a store for its claims"])
        return TeamsTickets(channel, claims, clock or SystemClock())
    from restricted_sender.adapters.tickets import WebhookTickets

    if not settings.ticket_webhook_url:
        return MissingTickets("webhook", ["TICKET_WEBHOOK_URL"])
    return WebhookTickets(
        http, url=settings.ticket_webhook_url.reveal(), secret=settings.ticket_webhook_secret, retry=retry
    )


def _unset(settings: dict[str, object]) -> list[str]:
    """The names of the settings that have no value."""
    return [name for name, value in settings.items() if not value]


class MissingTickets:
    """A ticket system without its settings: every ticket fails (recorded, retried, then kept in the poison
    queue) with a message that names what to set."""

    def __init__(self, name: str, missing: list[str]) -> None:
        self.name = name
        self._message = f"the {name} ticket system is not configured: set {', '.join(missing)}"

    async def find_open(self, correlation_id: str) -> TicketRef | None:
        raise ConfigurationError(self._message)

    async def create(self, content: TicketContent) -> TicketRef:
        raise ConfigurationError(self._message)

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        raise ConfigurationError(self._message)


def token_validator(settings: Settings) -> TokenValidator:
    """The admin API's Entra ID token validator; its own httpx client (closed by ``aclose``)."""
    import httpx

    from restricted_sender.entrypoints.auth import TokenValidator

    if not settings.admin_api_audiences:
        raise ConfigurationError(
            "ADMIN_API_AUDIENCE is not set: the admin API needs its app registration's client id or api:// URI"
        )
    return TokenValidator(
        httpx.AsyncClient(timeout=10),
        settings.require_tenant_id(),
        settings.admin_api_audiences,
        authority=settings.entra_authority,
    )


class _QueueProbe:
    """A storage queue read off the event loop (the queue client is synchronous)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name

    async def exists(self) -> bool:
        def read() -> bool:
            from restricted_sender.adapters.queue import StorageQueue

            queue = storage_queue(self._settings, self._name)
            assert isinstance(queue, StorageQueue)
            try:
                return queue.exists()
            finally:
                queue.close()

        return await asyncio.to_thread(read)


@asynccontextmanager
async def doctor_targets(
    settings: Settings,
    policy: LoadedPolicy,
    intake: IntakePaths,
    *,
    credential: AsyncTokenCredential | None = None,
    store: Store | None = None,
    storage: bool = True,
) -> AsyncIterator[Targets]:
    """What ``doctor`` probes, built like the processor's adapters with the app's own identity, closed after.

    ``storage=False`` leaves the tables and queues out (the simulated run keeps them in memory)."""
    import httpx

    from restricted_sender.adapters.graph import graph_directory
    from restricted_sender.adapters.identity import EXCHANGE_SCOPE, GRAPH_SCOPE, bearer, managed_identity
    from restricted_sender.adapters.management_activity import ManagementActivityApi, management_scope
    from restricted_sender.processing.doctor import Targets
    from restricted_sender.retry import RetryPolicy

    tenant_id = settings.require_tenant_id()
    own_credential = credential is None
    credential = credential or managed_identity(settings.managed_identity_client_id)
    retry = RetryPolicy(attempts=1)  # a probe reports what it met; the daily run is the retry
    http = httpx.AsyncClient(timeout=settings.http_timeout_seconds)
    graph = graph_directory(
        credential, base_url=settings.graph_base_url, timeout=settings.http_timeout_seconds, max_retries=0
    )
    tokens = {
        "Microsoft Graph": (bearer(credential, GRAPH_SCOPE), ("User.Read.All",)),
        "Exchange Online": (bearer(credential, EXCHANGE_SCOPE), ("Exchange.ManageAsApp",)),
    }
    management = None
    if intake.management_activity:
        scope = management_scope(settings.o365_api_root)
        tokens["Management Activity API"] = (bearer(credential, scope), ("ActivityFeed.Read",))
        management = ManagementActivityApi(
            http,
            bearer(credential, scope),
            api_root=settings.o365_api_root,
            tenant_id=tenant_id,
            publisher_id=settings.o365_publisher_id,
            retry=retry,
        )
    own_store = store is None and storage
    if own_store:
        store = table_store(settings)
    queues: dict[str, QueueReader] | None = (
        {name: _QueueProbe(settings, name) for name in (EVENTS_QUEUE, VERIFY_QUEUE, CONTENT_QUEUE)} if storage else None
    )
    try:
        yield Targets(
            policy=policy,
            intake=intake,
            tokens=tokens,
            exchange=exchange_admin(settings, http, credential, retry),
            graph=graph,
            tickets=ticket_system(settings, policy, http, graph, retry),
            management=management,
            store=store,
            queues=queues,
            store_note="" if storage else "simulated: the tables and queues are in memory",
            teams_url_set=settings.teams_webhook_url is not None,
        )
    finally:
        if own_store and store is not None:
            await store.close()
        await graph.close()
        await http.aclose()
        if own_credential:
            await credential.close()


@asynccontextmanager
async def management_api(settings: Settings) -> AsyncIterator[tuple[ManagementActivityApi, Settings]]:
    """The Management Activity API as the app settings describe it, with the credential the environment offers
    (the app's managed identity in Azure; a service principal through AZURE_CLIENT_ID/AZURE_CLIENT_SECRET)."""
    import httpx
    from azure.identity.aio import DefaultAzureCredential

    from restricted_sender.adapters.identity import bearer
    from restricted_sender.adapters.management_activity import ManagementActivityApi, management_scope

    async with (
        DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id) as credential,
        httpx.AsyncClient(timeout=settings.http_timeout_seconds) as http,
    ):
        yield (
            ManagementActivityApi(
                http,
                bearer(credential, management_scope(settings.o365_api_root)),
                api_root=settings.o365_api_root,
                tenant_id=settings.require_tenant_id(),
                publisher_id=settings.o365_publisher_id,
            ),
            settings,
        )


def audit_store(settings: Settings, table_endpoint: str | None = None) -> Store:
    """The store whose audit table ``decisions`` reads: the app settings' storage, or ``table_endpoint``
    (https://<account>.table.core.windows.net) with the operator's DefaultAzureCredential."""
    if not table_endpoint:
        return table_store(settings)
    from azure.data.tables.aio import TableServiceClient
    from azure.identity.aio import DefaultAzureCredential

    from restricted_sender.adapters.tables import TableStore

    credential = DefaultAzureCredential()
    return TableStore(
        TableServiceClient(table_endpoint, credential=credential), prefix=settings.table_prefix, credential=credential
    )
