"""The real adapters of the new intake paths against the simulator over HTTP, with the real credential: the
Management Activity API client, the alerts_v2 poller on msgraph-sdk, and the CLI's replay and ``o365`` commands."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from restricted_sender.adapters.identity import bearer
from restricted_sender.adapters.management_activity import (
    CONTENT_TYPE,
    DEFAULT_SCOPE,
    ManagementActivityApi,
    management_scope,
)
from restricted_sender.core.policy import default_policy
from restricted_sender.errors import ContentExpired, UnsafeContentUri
from restricted_sender.fakes import MemoryQueue, MemoryStore
from restricted_sender.intake.nets import AlertPoller
from restricted_sender.processing.pipeline import Intake
from restricted_sender.retry import RetryPolicy
from restricted_sender.timeutil import FixedClock, iso
from simulator import Simulator
from tests.conftest import ROOT, TENANT_ID, alert_v2, blocked, on_graph, tenant, user

T = TypeVar("T")
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)  # the poller's injected clock: never the machine's date
RECORD = {
    "Id": "r-1", "RecordType": 40, "CreationTime": "2026-11-27T08:05:00", "Operation": "AlertTriggered",
    "AlertId": "a-1", "Name": "User restricted from sending email", "Data": '{"f3u": "alice@contoso.com"}',
}  # fmt: skip


def alerts() -> list[dict[str, Any]]:
    """Five MDO target alerts and one Defender for Endpoint alert, all changed in the last minutes."""
    mdo = [
        {**alert_v2("alice@contoso.com", alert_id=f"mdo-{i}"), "serviceSource": "microsoftDefenderForOffice365",
         "lastUpdateDateTime": iso(NOW - timedelta(minutes=i))}
        for i in range(5)
    ]  # fmt: skip
    mde = {**alert_v2("eve@contoso.com", alert_id="mde-1"), "serviceSource": "microsoftDefenderForEndpoint",
           "lastUpdateDateTime": iso(NOW)}  # fmt: skip
    return [*mdo, mde]


@pytest.fixture
def sim(
    simulator_factory: Callable[[dict[str, Any]], Simulator], identity_env: Callable[[Simulator], None]
) -> Simulator:
    extra = {"x-auditSubscriptions": ["Audit.General"]}
    started = simulator_factory(tenant([user("alice")], [blocked("alice@contoso.com")], **extra))
    identity_env(started)
    return started


def with_api(sim: Simulator, scenario: Callable[[ManagementActivityApi], Awaitable[T]]) -> T:
    from azure.identity.aio import ManagedIdentityCredential

    async def main() -> T:
        async with ManagedIdentityCredential() as credential, httpx.AsyncClient(timeout=5) as http:
            api = ManagementActivityApi(
                http, bearer(credential, management_scope(sim.url)), api_root=sim.url, tenant_id=TENANT_ID,
                retry=RetryPolicy(attempts=2, base_delay=0.01),
            )  # fmt: skip
            return await scenario(api)

    return asyncio.run(main())


def test_the_scope_is_the_clouds_own_management_host() -> None:
    assert management_scope("https://manage.office.com") == DEFAULT_SCOPE
    assert management_scope("https://manage-gcc.office.com") == "https://manage-gcc.office.com/.default"
    assert management_scope("http://127.0.0.1:8765") == DEFAULT_SCOPE


def test_content_is_fetched_with_a_management_token_and_a_foreign_uri_is_never_requested(sim: Simulator) -> None:
    pointer = sim.add_audit_content([RECORD], content_id="c-1")
    records = with_api(sim, lambda api: api.content(pointer["contentUri"]))
    assert records == [RECORD]
    sim.clear_requests()
    with pytest.raises(UnsafeContentUri):
        with_api(sim, lambda api: api.content(f"http://localhost:1/api/v1.0/{TENANT_ID}/activity/feed/audit/c-1"))
    assert sim.requests == []


def test_unknown_content_is_expired_not_retried(sim: Simulator) -> None:
    with pytest.raises(ContentExpired):
        with_api(sim, lambda api: api.content(f"{sim.activity_feed_url}/audit/never-was"))
    assert len([r for r in sim.requests if "/audit/" in r["path"]]) == 1


def test_starting_the_subscription_again_is_idempotent(sim: Simulator) -> None:
    async def twice(api: ManagementActivityApi) -> list[Any]:
        return [await api.start(CONTENT_TYPE, None), await api.start(CONTENT_TYPE, None), await api.subscriptions()]

    first, second, listed = with_api(sim, twice)
    assert first["status"] == second["status"] == "enabled"
    assert [s["contentType"] for s in listed] == [CONTENT_TYPE]


@pytest.mark.parametrize("refuse_combined", [False, True], ids=["combined-filter", "single-property-fallback"])
def test_the_poller_on_graph_pages_and_queues_only_mdo_target_alerts(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    identity_env: Callable[[Simulator], None],
    refuse_combined: bool,
) -> None:
    extra = {"x-graphPageSize": 2, "x-alertsCombinedFilterRefused": refuse_combined}
    sim = simulator_factory(tenant([user("alice")], [], alerts=alerts(), **extra))
    identity_env(sim)
    queue = MemoryQueue()
    intake = Intake(queue=queue, clock=FixedClock(NOW), policy=default_policy())

    async def poll(directory: Any, _: Simulator) -> Any:
        poller = AlertPoller(directory, intake, MemoryStore(), FixedClock(NOW), every=timedelta(minutes=5))
        poller.page_size = 2
        return await poller.run()

    run = on_graph(sim, poll)
    assert sorted(json.loads(m)["alert_id"] for m in queue.messages) == [f"mdo-{i}" for i in range(5)]
    graph_calls = [r for r in sim.requests if r["path"].endswith("/security/alerts_v2")]
    assert run.requests == 3  # six alerts, two a page; the refused first try is not counted
    assert len(graph_calls) == run.requests + (1 if refuse_combined else 0)
    assert all("title" not in (r["query"].get("$filter") or "") for r in graph_calls)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "restricted_sender", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, **env},
    )  # fmt: skip


def test_the_cli_subscribes_the_webhook_and_shows_it_without_the_key_or_auth_id(sim: Simulator) -> None:
    env = {"TENANT_ID": TENANT_ID, "O365_API_ROOT": sim.url, "O365_WEBHOOK_AUTH_ID": "sekret-auth-id",
           "IDENTITY_ENDPOINT": f"{sim.url}/msi/token", "IDENTITY_HEADER": sim.identity_header}  # fmt: skip
    done = cli("o365", "subscribe", "--webhook", f"{sim.url}/hook?code=function-key", env=env)
    assert done.returncode != 0  # the simulator validates loopback webhooks: nothing answers there
    assert "AF20021" in done.stderr
    status = cli("o365", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "sekret-auth-id" not in status.stdout + done.stdout + done.stderr
    assert "function-key" not in status.stdout + done.stderr


def test_replay_fetches_a_notifications_content_from_the_simulator(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "restricted_sender", "replay", "samples/alerts/12-o365-notification.json",
         "samples/alerts/09-defender-records.json", "samples/alerts/06-sentinel-incident.json",
         "--tenant", "samples/tenant.yaml", "--policy", "samples/policy.yaml", "--now", "2026-11-27T22:30:00Z",
         "--json", "--requests-log", str(tmp_path / "log.jsonl")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert {(r["user"], r["source"]) for r in records} >= {
        ("heidi@contoso.com", "o365"), ("alice@contoso.com", "o365"), ("mallory@contoso.com", "defender"),
        ("judy@contoso.com", "sentinel"),
    }  # fmt: skip
    paths = [json.loads(line)["path"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any("/activity/feed/audit/" in p for p in paths)
