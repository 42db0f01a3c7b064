"""The intake paths that need more than parsing, on the fakes: the Management Activity webhook (AuthID,
validation, pointers), its content fetch, and Defender rows joined across batches through the store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from restricted_sender.entrypoints.edge import receive_alerts, receive_o365
from restricted_sender.fakes import FakeManagementActivity, MemoryQueue
from restricted_sender.intake.content import ContentExpander
from restricted_sender.model import RestrictionEvent
from restricted_sender.processing.pipeline import delisted_key
from restricted_sender.settings import Secret
from tests.conftest import TENANT_ID, blocked
from tests.test_pipeline import ALICE, World

ROOT = "https://manage.office.com"
FEED = f"{ROOT}/api/v1.0/{TENANT_ID}/activity/feed"
AUTH_ID = Secret("o365-auth-id-4711")
SAMPLES = Path(__file__).parents[1] / "samples" / "alerts"


def pointer(content_id: str, uri: str | None = None, tenant_id: str = TENANT_ID) -> dict[str, Any]:
    return {
        "tenantId": tenant_id,
        "clientId": "c7c1d5a1-2222-4a4c-8f39-5d2e4b0c1a11",
        "contentType": "Audit.General",
        "contentId": content_id,
        "contentUri": uri or f"{FEED}/audit/{content_id}",
        "contentCreated": "2026-11-27T08:10:00.000Z",
        "contentExpiration": "2026-12-04T08:10:00.000Z",
    }


def alert_record(record_id: str, user: str, *, name: str = "User restricted from sending email") -> dict[str, Any]:
    return {
        "Id": record_id,
        "RecordType": 40,
        "CreationTime": "2026-11-27T08:05:00",
        "Operation": "AlertTriggered",
        "Workload": "SecurityComplianceCenter",
        "UserId": "SecurityComplianceAlerts",
        "AlertId": f"alert-{record_id}",
        "Name": name,
        "Data": json.dumps({"f3u": user, "an": name}),
    }


def hygiene(record_id: str, user: str, event: str) -> dict[str, Any]:
    return {"Id": record_id, "RecordType": 51, "CreationTime": "2026-11-27T09:30:00", "Operation": "HygieneEvent",
            "Event": event, "EventValue": user, "Reason": "outbound spam"}  # fmt: skip


def world_with_content() -> tuple[World, MemoryQueue]:
    world = World([blocked("alice@contoso.com")], [ALICE])
    content = MemoryQueue()
    world.intake.content_queue = content
    world.intake.tenant_id = TENANT_ID
    world.intake.o365_api_root = ROOT
    return world, content


def webhook(world: World, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = receive_o365(raw, headers, world.intake, AUTH_ID)
    return answer.status, answer.body


@pytest.mark.parametrize(
    "headers",
    [{}, {"Webhook-AuthID": "o365-auth-id-4712"}, {"Webhook-AuthID": ""}, {"Webhook-AuthID": "o365-auth-id-47"}],
    ids=["missing", "one-character-off", "empty", "a-prefix"],
)
def test_a_notification_without_the_right_auth_id_gets_401_and_queues_nothing(headers: dict[str, str]) -> None:
    world, content = world_with_content()
    status, body = webhook(world, [pointer("c1")], **headers)
    assert (status, body["error"]["code"]) == (401, "unauthorized")
    assert content.messages == []


def test_the_validation_request_is_answered_200_only_with_the_auth_id() -> None:
    world, content = world_with_content()
    code = {"Webhook-ValidationCode": "d2f5c1e0-validation"}
    assert webhook(world, {"validationCode": "d2f5c1e0-validation"}, **code)[0] == 401
    assert (
        webhook(world, {"validationCode": "d2f5c1e0-validation"}, **code, **{"Webhook-AuthID": AUTH_ID.reveal()})[0]
        == 200
    )
    assert content.messages == []


def test_the_webhook_is_off_until_an_auth_id_is_configured() -> None:
    world, _content = world_with_content()
    answer = receive_o365(json.dumps([pointer("c1")]).encode(), {"Webhook-AuthID": "x"}, world.intake, None)
    assert answer.status == 404
    assert "O365_WEBHOOK_AUTH_ID" in answer.body["error"]["message"]


def test_a_notification_is_acknowledged_with_200_once_every_pointer_is_queued() -> None:
    world, content = world_with_content()
    status, body = webhook(world, [pointer("c1"), pointer("c2")], **{"Webhook-AuthID": AUTH_ID.reveal()})
    assert (status, body) == (200, {"queued": 2})
    assert [json.loads(m)["pointer"]["content_id"] for m in content.messages] == ["c1", "c2"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[{", "malformed-payload"),
        ({"contentUri": "x"}, "malformed-payload"),
        ([pointer("c1"), pointer("c2", tenant_id="11111111-2222-3333-4444-555555555555")], "malformed-payload"),
        ([pointer("c1"), pointer("c2", uri="https://evil.example/api/v1.0/x/activity/feed/audit/c2")],
         "unsafe-content-uri"),
        ([pointer("c1", uri=f"https://manage.office.com@evil.example/api/v1.0/{TENANT_ID}/activity/feed/audit/c1")],
         "unsafe-content-uri"),
    ],
    ids=["not-json", "not-an-array", "another-tenant", "another-host", "userinfo-trick"],
)  # fmt: skip
def test_a_bad_notification_gets_400_and_queues_no_pointer_at_all(body: Any, code: str) -> None:
    world, content = world_with_content()
    status, answer = webhook(world, body, **{"Webhook-AuthID": AUTH_ID.reveal()})
    assert (status, answer["error"]["code"]) == (400, code)
    assert content.messages == []


def expand_all(world: World, content: MemoryQueue, api: FakeManagementActivity) -> ContentExpander:
    expander = ContentExpander(world.intake, world.store, world.clock, api)

    async def main() -> None:
        for message in content.drain():
            await expander.expand(message)

    asyncio.run(main())
    return expander


def test_content_is_fetched_once_and_its_target_records_become_o365_events() -> None:
    world, content = world_with_content()
    api = FakeManagementActivity(
        {f"{FEED}/audit/c1": [alert_record("r1", "alice@contoso.com"), alert_record("r1", "alice@contoso.com"),
                              alert_record("r2", "bob@contoso.com", name="Email reported by user as malware")]}
    )  # fmt: skip
    auth = {"Webhook-AuthID": AUTH_ID.reveal()}
    webhook(world, [pointer("c1")], **auth)
    webhook(world, [pointer("c1")], **auth)  # the API repeats itself
    expand_all(world, content, api)
    assert api.fetched == [f"{FEED}/audit/c1"]
    events = [RestrictionEvent.from_message(m) for m in world.queue.messages]
    assert [(e.source, e.alert_id, e.user.key) for e in events] == [("o365", "alert-r1", "alice@contoso.com")]
    [record] = world.run()
    assert record.decision.outcome.value == "unblock"
    assert record.sources[0].kind == "o365"


def test_a_listed_hygiene_record_is_a_direct_report_and_delisted_is_kept_for_verification() -> None:
    world, content = world_with_content()
    api = FakeManagementActivity(
        {
            f"{FEED}/audit/c1": [
                hygiene("h1", "alice@contoso.com", "Listed"),
                hygiene("h2", "carol@contoso.com", "Delisted"),
            ]
        }
    )
    webhook(world, [pointer("c1")], **{"Webhook-AuthID": AUTH_ID.reveal()})
    expand_all(world, content, api)
    [event] = [RestrictionEvent.from_message(m) for m in world.queue.messages]
    assert (event.direct, event.user.key) == (True, "alice@contoso.com")
    [delisted] = asyncio.run(world.store.reports(delisted_key("carol@contoso.com", datetime(2026, 11, 27, tzinfo=UTC))))
    assert delisted.id == "h2"


def test_expired_or_unsafe_content_is_logged_and_dropped_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    world, _ = world_with_content()
    expander = ContentExpander(world.intake, world.store, world.clock, FakeManagementActivity())
    from restricted_sender.intake.o365 import ContentPointer
    from restricted_sender.intake.relay import o365_message

    gone = o365_message(ContentPointer("c9", f"{FEED}/audit/c9"))
    assert asyncio.run(expander.expand(gone)) is None
    assert "expired" in caplog.text
    assert world.queue.messages == []


def defender(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


@pytest.mark.parametrize("order", [("10-defender-info-only.json", "11-defender-evidence-only.json"),
                                   ("11-defender-evidence-only.json", "10-defender-info-only.json")],
                         ids=["info-first", "evidence-first"])  # fmt: skip
def test_defender_halves_posted_in_separate_batches_still_make_one_event(order: tuple[str, str]) -> None:
    world, content = world_with_content()
    for name in order:
        answer = receive_alerts(defender(name), {}, world.intake, None)
        assert answer.status == 202
        assert answer.body["accepted"] == []
        assert answer.body["deferred"] >= 1
    expand_all(world, content, FakeManagementActivity())
    events = [RestrictionEvent.from_message(m) for m in world.queue.messages]
    assert len(events) == 1
    assert events[0].source == "defender"


def test_an_event_hub_batch_is_relayed_through_the_content_queue_and_becomes_its_events() -> None:
    world, content = world_with_content()
    expander = ContentExpander(world.intake, world.store, world.clock, FakeManagementActivity())
    relayed = asyncio.run(expander.defender_bodies([defender("09-defender-records.json"), b"not json"]))
    assert relayed >= 2
    assert world.queue.messages == []  # nothing that can fail is done inline: the queue retries the join
    expand_all(world, content, FakeManagementActivity())
    assert [RestrictionEvent.from_message(m).source for m in world.queue.messages] == ["defender"]


@pytest.mark.parametrize(
    "body",
    [
        {"Body": {"objectSchemaType": "Incident", "object": {"properties": {"alerts": "not a list"}}}},
        {"objectSchemaType": "Incident", "object": {"properties": {"alerts": [{"properties": {}}],
                                                                   "relatedEntities": []}}},
        {"AlertDisplayName": "User restricted from sending email", "Entities": "[not json"},
        {"records": "not a list"},
        {"records": [{"category": "AdvancedHunting-AlertEvidence", "properties": {"EntityType": "User"}}]},
        {"records": [{"category": "AdvancedHunting-AlertInfo", "properties": {"AlertId": 7}}]},
        {"Body": None},
    ],
    ids=["incident-alerts-not-a-list", "incident-without-alert-names", "alert-entities-not-json",
         "records-not-a-list", "evidence-without-alert-id", "info-with-a-numeric-alert-id", "empty-wrapper"],
)  # fmt: skip
def test_a_malformed_sentinel_or_defender_body_gets_400_and_queues_nothing(body: Any) -> None:
    world, content = world_with_content()
    answer = receive_alerts(json.dumps(body).encode(), {}, world.intake, None)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "malformed-payload"
    assert world.queue.messages == []
    assert content.messages == []
