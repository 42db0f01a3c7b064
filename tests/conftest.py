"""Shared fixtures: Azurite (queues + tables) for the session, the simulator per test, tenants, clocks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

from simulator import Simulator
from simulator import azurite as local_storage
from simulator.azurite import Azurite

if TYPE_CHECKING:
    from restricted_sender.model import DecisionRecord, RestrictionEvent

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
WIRE_SAMPLES = ROOT / "samples" / "wire"
TENANT_ID = "8f0c2a52-6a4e-4b8e-9a62-1d2f3c4b5a69"
# A TLS context costs ~50 ms to build; the tests' clients only speak plain HTTP to 127.0.0.1, so they share one.
TLS = ssl.create_default_context()
BULK_GROUP = "3f1c9a7e-2b4d-4e8f-9a6b-7c5d1e2f3a4b"
# The policy example of the README's "The policy file", every key present.
DESIGN_POLICY_EXAMPLE = """
mode: report-only
alert_names: ["User restricted from sending email"]
allow:
  - {name: bulk-mail senders, users: [newsletter@contoso.com], domains: [contoso.com], groups: [g1]}
deny: {users: [], domains: [], groups: []}
guards:
  max_unblocks_per_user: {count: 1, days: 7}
  max_unblocks_per_tenant: {count: 10, hours: 1}
  max_risk_level: low
  suspicious_inbox_rules: true
  external_forwarding: true
  account_enabled: true
  min_hours_to_auto_release: 2
containment: {revoke_sessions: false, confirm_compromised: false, disable_account: false}
notify: {user: false, recipients: []}
ticket: {system: webhook}
"""


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's queue and table services, in memory, on free ports, for the whole session."""
    absent = local_storage.missing()
    if absent:
        pytest.fail(f"Azurite is not installed ({', '.join(absent)} missing): run `make setup` (npm ci)")
    with local_storage.running() as running:
        yield running


@pytest.fixture
def table_prefix() -> str:
    """Tables are shared by the session's Azurite: each test gets its own names."""
    return "t" + uuid.uuid4().hex[:10]


def user(name: str, *, domain: str = "contoso.com", enabled: bool = True, **extra: Any) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {
        "id": f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}",
        "userPrincipalName": f"{name}@{domain}",
        "mail": f"{name}@{domain}",
        "displayName": name.title(),
        "accountEnabled": enabled,
        **extra,
    }


SPAM_REASON = "OutboundSpamLast24Hours=212;OutboundMailLast24Hours=240;OutboundSpamPercent=88"


def blocked(
    address: str, *, created: str = "2026-11-27T08:02:11Z", temporary: bool = False, reason: str = SPAM_REASON
) -> dict[str, Any]:
    return {
        "SenderAddress": address,
        "Reason": reason,
        "TemporaryBlock": temporary,
        "CreatedDatetime": created,
        "ChangedDatetime": created,
    }


def tenant(users: list[dict[str, Any]], blocked_senders: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "tenantId": TENANT_ID,
        "users": users,
        "groups": [{"id": BULK_GROUP, "displayName": "Bulk mail senders"}],
        "domains": [{"id": "contoso.com", "isVerified": True}],
        "blockedSenders": blocked_senders,
        **extra,
    }


EVENT_AT = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def restriction_event(
    address: str | None = "alice@contoso.com",
    object_id: str | None = None,
    *,
    alert_name: str = "User restricted from sending email",
    at: datetime = EVENT_AT,
) -> RestrictionEvent:
    """One parsed alerts_v2 event about ``address`` (and ``object_id``), received ``at``."""
    from restricted_sender.model import RestrictionEvent, UserRef

    return RestrictionEvent(
        event_id="e1",
        delivery_id="d1",
        source="alerts_v2",
        alert_id="a1",
        alert_name=alert_name,
        user=UserRef(address, object_id),
        received_at=at,
    )


def alert_v2(
    *addresses: str,
    alert_id: str = "alert-1",
    title: str = "User restricted from sending email",
    object_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    evidence = []
    for address in addresses:
        account = {"userPrincipalName": address, "azureAdUserId": (object_ids or {}).get(address)}
        evidence.append(
            {
                "@odata.type": "#microsoft.graph.security.userEvidence",
                "userAccount": account,
                "verdict": "suspicious",
                "roles": [],
            }
        )
    return {
        "@odata.type": "#microsoft.graph.security.alert",
        "id": alert_id,
        "title": title,
        "serviceSource": "microsoftDefenderForOffice365",
        "alertWebUrl": f"https://security.microsoft.com/alerts/{alert_id}",
        "createdDateTime": "2026-11-27T08:03:12Z",
        "evidence": evidence,
    }


@pytest.fixture
def queue(azurite: Azurite) -> Iterator[Any]:
    """The events queue, emptied, read the way the queue trigger reads it (base64)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from restricted_sender.settings import EVENTS_QUEUE

    client = QueueClient.from_connection_string(
        azurite.connection_string, EVENTS_QUEUE, message_decode_policy=TextBase64DecodePolicy()
    )
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    client.clear_messages()
    yield client
    client.close()


@pytest.fixture
def simulator_factory() -> Iterator[Callable[..., Simulator]]:
    """Started simulators, stopped after the test; keyword options (``clock=``...) go to ``Simulator``."""
    with contextlib.ExitStack() as started:

        def start(state: dict[str, Any], **options: Any) -> Simulator:
            sim = Simulator(state, port=0, **options)
            sim.start()
            started.callback(sim.stop)
            return sim

        yield start


@pytest.fixture
def sim_client() -> Iterator[Callable[..., httpx.Client]]:
    """Opens httpx clients on a simulator, with a bearer token when one is given; closed after the test."""
    with contextlib.ExitStack() as clients:

        def open_client(sim: Simulator, token: str | None) -> httpx.Client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return clients.enter_context(httpx.Client(base_url=sim.url, timeout=5, verify=TLS, headers=headers))

        yield open_client


@pytest.fixture
def identity_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Simulator], None]:
    """Point the real ManagedIdentityCredential at a simulator's App Service-style token endpoint."""

    def point(sim: Simulator) -> None:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"{sim.url}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", sim.identity_header)
        for name in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID"):
            monkeypatch.delenv(name, raising=False)

    return point


@pytest.fixture(scope="session")
def handlers() -> dict[str, Callable[..., Any]]:
    """The function app's handlers by function name; ``get_functions()`` may be called only once per process."""
    import function_app

    return {fn.get_function_name(): fn.get_user_function() for fn in function_app.app.get_functions()}


def app_settings(sim: Simulator, azurite: Azurite, table_prefix: str, **extra: str) -> dict[str, str]:
    """The function app's settings with every dependency pointed at ``sim`` and ``azurite``; ``extra`` overrides."""
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "TENANT_ID": TENANT_ID,
        "TABLE_PREFIX": table_prefix,
        "GRAPH_BASE_URL": f"{sim.url}/v1.0",
        "EXCHANGE_BASE_URL": sim.url,
        "TICKET_WEBHOOK_URL": f"{sim.url}/tickets/webhook",
        "IDENTITY_ENDPOINT": f"{sim.url}/msi/token",
        "IDENTITY_HEADER": sim.identity_header,
        **sim.itsm_credentials,
        "ADMIN_API_AUDIENCE": sim.admin_api.audience,
        "ENTRA_AUTHORITY": sim.url,
        **extra,
    }


@pytest.fixture
def app_runtime(
    monkeypatch: pytest.MonkeyPatch, azurite: Azurite, table_prefix: str
) -> Iterator[Callable[..., dict[str, str]]]:
    """The function app's runtime for the end-to-end tests: ``configure(sim, **extra)`` gives the process the app
    settings pointed at ``sim`` and Azurite (as environment variables: the host hands them over that way), drops
    ``POLICY_FILE`` and the names in ``unset``, and resets the runtime so it reads them; reset again after the test.
    Returns the settings it set."""
    from restricted_sender.entrypoints.edge import runtime

    def configure(
        sim: Simulator, *, unset: tuple[str, ...] = (), prefix: str | None = None, **extra: str
    ) -> dict[str, str]:
        values = app_settings(sim, azurite, prefix or table_prefix, **extra)
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        for name in ("POLICY_FILE", *unset):
            monkeypatch.delenv(name, raising=False)
        runtime.reset()
        return values

    yield configure
    runtime.reset()


def audit_rows(azurite: Azurite, prefix: str) -> list[dict[str, Any]]:
    """Every audit row in the Table store, oldest first."""
    from restricted_sender.adapters.tables import TableStore

    async def read() -> list[dict[str, Any]]:
        store = TableStore.from_connection_string(azurite.connection_string, prefix=prefix)
        try:
            return [dict(row) for row in await store.audit()]
        finally:
            await store.close()

    return asyncio.run(read())


Audit = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def audit(azurite: Azurite, table_prefix: str) -> Audit:
    """Reads this test's audit rows (oldest first) when called."""
    return partial(audit_rows, azurite, table_prefix)


def on_separate_instances(messages: list[str]) -> list[DecisionRecord]:
    """Process each queue message on a processor of its own (its own clients: one function instance each), all at
    once, sharing only Azurite and the tenant the app settings name."""
    from restricted_sender.entrypoints.compose import bootstrap, load_policy
    from restricted_sender.model import RestrictionEvent
    from restricted_sender.settings import Settings

    async def race() -> list[DecisionRecord]:
        settings = Settings.from_env()
        policy = load_policy(settings)
        bundles = [bootstrap(settings, policy, graph_retry_delay=0.1) for _ in messages]
        try:
            events = [RestrictionEvent.from_message(m) for m in messages]
            return await asyncio.gather(*(b.processor.process(e) for b, e in zip(bundles, events, strict=True)))
        finally:
            for bundle in bundles:
                await bundle.aclose()

    return asyncio.run(race())


def on_graph(sim: Simulator, scenario: Callable[[Any, Simulator], Awaitable[T]], *, retry_delay: float = 0.05) -> T:
    """Run ``scenario(directory, sim)`` with the real Graph adapter and the real managed-identity credential
    against ``sim`` (the identity environment must point at it: the ``identity_env`` fixture)."""
    from azure.identity.aio import ManagedIdentityCredential

    from restricted_sender.adapters.graph import graph_directory

    async def main() -> T:
        async with ManagedIdentityCredential() as credential:
            directory = graph_directory(credential, base_url=sim.graph_url, timeout=5, retry_delay=retry_delay)
            try:
                return await scenario(directory, sim)
            finally:
                await directory.close()

    return asyncio.run(main())


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Every record of every logger at DEBUG, through a real handler on the root logger, one ``LOG`` line each."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("LOG %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
