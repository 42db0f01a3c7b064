"""Hostile bodies found by the fuzz and review campaign: each is a clear 4xx that queues nothing, and costs little.

Every webhook here runs through the edge functions (the same ones the function app's handlers call) on the
in-memory queues; :class:`MemoryQueue` refuses what the Storage service refuses (64 KiB after base64).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from restricted_sender.core.policy import load_policy_text
from restricted_sender.entrypoints.edge import HttpAnswer, receive_alerts, receive_o365
from restricted_sender.errors import MalformedPayload
from restricted_sender.fakes import FakeAlertFeed, MemoryQueue, MemoryStore
from restricted_sender.intake.alerts import MAX_EVENTS_PER_REQUEST, MAX_JSON_DEPTH, MAX_USERS_PER_ALERT, merge_users
from restricted_sender.intake.content import ContentExpander
from restricted_sender.intake.nets import AlertPoller
from restricted_sender.intake.o365 import parse_content
from restricted_sender.model import UserRef
from restricted_sender.processing.admin import parse_unblock_request
from restricted_sender.processing.pipeline import Intake
from restricted_sender.settings import Secret
from restricted_sender.timeutil import FixedClock
from tests.conftest import TENANT_ID, alert_v2

SAMPLES = Path(__file__).parents[1] / "samples" / "alerts"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
POLICY = load_policy_text("mode: enforce\nallow: [{name: staff, domains: [contoso.com]}]\n")
AUTH_ID = Secret("o365-auth-id-4711")
ROOT = "https://manage.office.com"
DEEP = 100_000
MDO = "microsoftDefenderForOffice365"  # far past the interpreter's recursion limit


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def intake() -> Intake:
    return Intake(
        queue=MemoryQueue(),
        clock=FixedClock(NOW),
        policy=POLICY,
        content_queue=MemoryQueue(),
        tenant_id=TENANT_ID,
        o365_api_root=ROOT,
    )


def queued(target: Intake) -> list[str]:
    assert isinstance(target.queue, MemoryQueue)
    assert isinstance(target.content_queue, MemoryQueue)
    return [*target.queue.messages, *target.content_queue.messages]


def post(target: Intake, body: Any) -> HttpAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return receive_alerts(raw, {}, target, None)


def post_o365(target: Intake, body: Any) -> HttpAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return receive_o365(raw, {"Webhook-AuthID": AUTH_ID.reveal()}, target, AUTH_ID)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_entities_text(text: str) -> dict[str, Any]:
    body = sample("08-sentinel-alert.json")
    body["Entities"] = text
    return body


def with_additional_fields(text: str) -> dict[str, Any]:
    body = sample("09-defender-records.json")
    evidence = next(r for r in body["records"] if r["category"] == "AdvancedHunting-AlertEvidence")
    evidence["properties"]["AdditionalFields"] = text
    return body


@pytest.mark.parametrize(
    "body",
    [
        nested(DEEP).encode(),
        ('{"value": ' + nested(DEEP) + "}").encode(),
        with_entities_text(nested(DEEP)),
        with_additional_fields('{"a": ' + nested(DEEP) + "}"),
        nested(MAX_JSON_DEPTH + 1).encode(),
    ],
    ids=["body", "inside-value", "sentinel-entities-text", "defender-additional-fields-text", "one-past-the-limit"],
)
def test_deeply_nested_json_in_an_alert_body_is_a_400_that_queues_nothing(body: Any) -> None:
    """Before: RecursionError out of the handler (the host answered 500)."""
    target = intake()
    answer = post(target, body)
    assert (answer.status, answer.body["error"]["code"]) == (400, "malformed-payload")
    assert "nested" in answer.body["error"]["message"]
    assert queued(target) == []


def test_deeply_nested_json_in_a_management_activity_notification_is_a_400() -> None:
    target = intake()
    answer = post_o365(target, nested(DEEP).encode())
    assert answer.status == 400
    assert queued(target) == []


def test_deeply_nested_json_in_an_admin_unblock_body_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="nested"):
        parse_unblock_request(('{"justification": "ok then", "x": ' + nested(DEEP) + "}").encode())


def test_one_deeply_nested_defender_message_does_not_stop_the_good_messages_of_its_event_hub_batch() -> None:
    """Before: RecursionError escaped ``defender_bodies`` and the whole batch was lost."""
    target = intake()
    expander = ContentExpander(target, MemoryStore(), FixedClock(NOW))
    good = json.dumps(sample("09-defender-records.json")).encode()
    bad = json.dumps(with_additional_fields(nested(DEEP))).encode()
    relayed = asyncio.run(expander.defender_bodies([bad, nested(DEEP).encode(), good]))
    assert relayed > 0
    assert len(queued(target)) == 1


@pytest.mark.parametrize(
    "body",
    [
        alert_v2("alice@contoso.com", alert_id="da-\ud800"),
        alert_v2("alice\udfff@contoso.com"),
        {**sample("08-sentinel-alert.json"), "SystemAlertId": "\ud800"},
    ],
    ids=["alert-id", "user", "sentinel-alert-id"],
)
def test_a_lone_surrogate_anywhere_in_a_body_is_a_400_that_queues_nothing(body: dict[str, Any]) -> None:
    """Before: UnicodeEncodeError when the event id was computed (500)."""
    target = intake()
    answer = post(target, body)  # json.dumps writes the lone surrogate as a \\ud800 escape, as an attacker would
    assert (answer.status, answer.body["error"]["code"]) == (400, "malformed-payload")
    assert "surrogate" in answer.body["error"]["message"]
    assert queued(target) == []


def test_a_surrogate_pair_written_as_escapes_is_ordinary_text() -> None:
    target = intake()
    answer = post(target, alert_v2("alice@contoso.com", alert_id="da-\U0001f600"))
    assert answer.status == 202
    assert len(queued(target)) == 1


@pytest.mark.parametrize(
    "uri",
    [
        f"https://manage.office.com\uff03@evil.example/api/v1.0/{TENANT_ID}/activity/feed/audit/c1",
        f"https://[::1/api/v1.0/{TENANT_ID}/activity/feed/audit/c1",
        f"https://manage.office.com:99999999/api/v1.0/{TENANT_ID}/activity/feed/audit/c1",
    ],
    ids=["fullwidth-number-sign", "unclosed-ipv6-bracket", "port-out-of-range"],
)
def test_a_content_uri_that_cannot_be_parsed_is_refused_with_400(uri: str) -> None:
    """Before: ValueError out of urlsplit (500)."""
    target = intake()
    notification = sample("12-o365-notification.json")
    notification[0]["contentUri"] = uri
    answer = post_o365(target, notification)
    assert (answer.status, answer.body["error"]["code"]) == (400, "unsafe-content-uri")
    assert queued(target) == []


HUGE = "x" * 70_000  # more than a queue message can carry, in a body well under 1 MiB


def _three_users_with(field: str) -> dict[str, Any]:
    body = alert_v2("alice@contoso.com", "bob@contoso.com", "carol@contoso.com")
    body[field] = HUGE
    return body


def _defender_with(field: str) -> dict[str, Any]:
    body = sample("09-defender-records.json")
    for record in body["records"]:
        record["properties"][field] = HUGE
    return body


def _aad_user_id() -> dict[str, Any]:
    body = sample("08-sentinel-alert.json")
    entities = json.loads(body["Entities"]) if isinstance(body["Entities"], str) else body["Entities"]
    entities.append({"Type": "account", "Name": "x", "UPNSuffix": "contoso.com", "AadUserId": HUGE})
    body["Entities"] = entities
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_three_users_with("createdDateTime"), "createdDateTime"),
        (_three_users_with("alertWebUrl"), "alertWebUrl"),
        (_three_users_with("title"), "title"),
        (_aad_user_id(), "aadUserId"),
        (alert_v2("alice@contoso.com", HUGE + "@contoso.com"), "evidence[1].userAccount (the user's address)"),
        (_defender_with("Timestamp"), "Timestamp"),
        (_defender_with("AlertId"), "AlertId"),
    ],
    ids=["createdDateTime", "alertWebUrl", "title", "AadUserId", "address", "defender-Timestamp", "defender-AlertId"],
)
def test_a_field_longer_than_its_bound_is_a_4xx_naming_it_and_nothing_is_queued(body: Any, field: str) -> None:
    """Before: 503 "retry" (a retry that can never succeed) after the first events of the body were queued."""
    target = intake()
    answer = post(target, body)
    assert answer.status in (400, 413)
    assert field in answer.body["error"]["message"]
    assert queued(target) == []


def test_an_oversized_content_created_in_a_notification_is_a_4xx_and_queues_no_pointer() -> None:
    target = intake()
    notification = sample("12-o365-notification.json")
    notification.append({**notification[0], "contentId": "second"})
    notification[1]["contentCreated"] = HUGE
    answer = post_o365(target, notification)
    assert answer.status in (400, 413)
    assert "contentCreated" in answer.body["error"]["message"]
    assert queued(target) == []


def test_a_queue_outage_midway_answers_503_and_the_retry_queues_what_is_missing_under_the_same_event_ids() -> None:
    """All or none cannot hold against the queue itself: what was sent stays, and the sender's retry of the whole
    body sends every event again under the same event ids (the processor claims each id once)."""

    class FailingAfter(MemoryQueue):
        def __init__(self, sends: int) -> None:
            super().__init__()
            self.sends = sends

        def send(self, message: str) -> None:
            if len(self.messages) >= self.sends:
                self.available = False
            super().send(message)

    target = intake()
    target.queue = FailingAfter(1)
    body = alert_v2("alice@contoso.com", "bob@contoso.com")
    assert post(target, body).status == 503
    first = [json.loads(m)["event_id"] for m in target.queue.messages]
    target.queue = MemoryQueue()
    answer = post(target, body)
    assert answer.status == 202
    again = [json.loads(m)["event_id"] for m in target.queue.messages]
    assert len(again) == 2
    assert set(first) < set(again)


def test_more_users_in_one_alert_than_the_cap_is_a_413_that_queues_nothing() -> None:
    target = intake()
    users = [f"user{i}@contoso.com" for i in range(MAX_USERS_PER_ALERT + 1)]
    answer = post(target, alert_v2(*users))
    assert (answer.status, answer.body["error"]["code"]) == (413, "payload-too-large")
    assert "users" in answer.body["error"]["message"]
    assert queued(target) == []


def test_defender_rows_naming_more_users_for_one_alert_than_the_cap_are_a_413_that_relays_nothing() -> None:
    target = intake()
    body = sample("09-defender-records.json")
    evidence = next(r for r in body["records"] if r["category"] == "AdvancedHunting-AlertEvidence")
    for i in range(MAX_USERS_PER_ALERT + 1):
        row = json.loads(json.dumps(evidence))
        row["properties"].update(AccountUpn=f"user{i}@contoso.com", AccountObjectId=None, AdditionalFields="{}")
        body["records"].append(row)
    answer = post(target, body)
    assert (answer.status, answer.body["error"]["code"]) == (413, "payload-too-large")
    assert queued(target) == []


def test_as_many_users_as_the_cap_are_all_queued() -> None:
    target = intake()
    answer = post(target, alert_v2(*[f"user{i}@contoso.com" for i in range(MAX_USERS_PER_ALERT)]))
    assert answer.status == 202
    assert len(queued(target)) == MAX_USERS_PER_ALERT


def test_more_events_in_one_request_than_the_cap_is_a_413_that_queues_nothing() -> None:
    target = intake()
    alerts = [alert_v2(f"user{i}@contoso.com", alert_id=f"da-{i}") for i in range(MAX_EVENTS_PER_REQUEST + 1)]
    answer = post(target, {"value": alerts})
    assert (answer.status, answer.body["error"]["code"]) == (413, "payload-too-large")
    assert "events" in answer.body["error"]["message"]
    assert queued(target) == []


def test_more_content_pointers_in_one_notification_than_the_cap_is_a_413() -> None:
    target = intake()
    [first] = sample("12-o365-notification.json")
    notification = [
        {**first, "contentId": f"c{i}", "contentUri": first["contentUri"] + str(i)}
        for i in range(MAX_EVENTS_PER_REQUEST + 1)
    ]
    assert post_o365(target, notification).status == 413
    assert queued(target) == []


def test_merging_thousands_of_user_refs_takes_linear_time() -> None:
    """Before: 6,000 users took 2.1 s (every ref compared with every user merged so far)."""
    refs = [UserRef(f"user{i}@contoso.com") for i in range(10_000)]
    started = time.perf_counter()
    merged = merge_users(refs * 2, limit=None)
    assert len(merged) == 10_000
    assert time.perf_counter() - started < 1.0  # about 30 ms; the quadratic merge took seconds


def test_merging_keeps_contradicting_refs_apart_and_merges_the_rest_as_before() -> None:
    a, b = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
    refs = [
        UserRef("x@contoso.com", a),
        UserRef("x@contoso.com", b),  # the same address with another object id: kept on its own
        UserRef("X@contoso.com"),  # merges with the first that does not contradict it
        UserRef(object_id=b),
        UserRef("y@contoso.com"),
        UserRef("y@contoso.com", a),  # a's address is x: contradicts the first, merges with y
    ]
    assert merge_users(refs) == (
        UserRef("x@contoso.com", a),
        UserRef("x@contoso.com", b),
        UserRef("y@contoso.com", a),
    )


@pytest.mark.parametrize("object_id", ["..", "../../users/other", "%2e%2e", "not-a-guid"])
def test_an_object_id_that_is_not_a_guid_never_reaches_a_graph_url(object_id: str) -> None:
    target = intake()
    body = sample("08-sentinel-alert.json")
    body["Entities"] = [{"Type": "account", "Name": "x", "UPNSuffix": "contoso.com", "AadUserId": object_id}]
    answer = post(target, body)
    assert (answer.status, answer.body["error"]["code"]) == (400, "malformed-payload")
    assert "GUID" in answer.body["error"]["message"]
    assert queued(target) == []


def test_a_management_activity_record_over_a_bound_is_skipped_as_a_problem_and_the_others_still_count() -> None:
    """Before: the oversized record became an event no queue message could carry, failing the whole blob."""
    good = {
        "Id": "r1",
        "RecordType": 40,
        "Operation": "AlertTriggered",
        "Name": "User restricted from sending email",
        "AlertId": "alert-r1",
        "CreationTime": "2026-11-27T08:05:00",
        "Data": json.dumps({"f3u": "a@contoso.com"}),
    }
    content = parse_content(
        [good, {**good, "Id": "r2", "AlertId": HUGE}, {**good, "Id": "r3", "AlertId": "r3", "CreationTime": HUGE}],
        is_target=POLICY.is_target_alert,
    )
    assert [r.alert_id for r in content.reports] == ["alert-r1"]
    assert [p.split(":")[0] for p in content.problems] == ["content[1].AlertId", "content[2].CreationTime"]


def test_the_poller_skips_an_alert_with_a_field_over_its_bound_and_queues_the_others() -> None:
    """Before: PayloadTooLarge (or the queue's refusal) failed every poll run from then on."""
    feed = FakeAlertFeed(
        [{**alert_v2("a@contoso.com", alert_id="a1"), "createdDateTime": HUGE, "serviceSource": MDO,
          "lastUpdateDateTime": "2026-11-27T08:57:00Z"},
         {**alert_v2("b@contoso.com", alert_id="a2"), "serviceSource": MDO,
          "lastUpdateDateTime": "2026-11-27T08:57:00Z"}]
    )  # fmt: skip
    target = intake()
    run = asyncio.run(AlertPoller(feed, target, MemoryStore(), FixedClock(NOW), every=timedelta(minutes=5)).run())
    assert (run.ran, run.queued) == (True, 1)
    assert [json.loads(m)["alert_id"] for m in queued(target)] == ["a2"]


def _many_users(count: int) -> bytes:
    return json.dumps(alert_v2(*[f"user{i}@contoso.com" for i in range(count)])).encode()


@pytest.mark.parametrize(
    "body",
    [b"[" * 1_000_000, b'{"a":' * 200_000, _many_users(7_000), json.dumps({"value": [nested(60)] * 8_000}).encode()],
    ids=["a-million-brackets", "nested-objects", "7000-users", "wide-and-deep"],
)
def test_a_hostile_body_near_the_size_limit_is_refused_cheaply(body: bytes) -> None:
    """About 0.1 s on a CI core; the bound is loose so that a loaded machine does not fail it."""
    target = intake()
    started = time.perf_counter()
    answer = post(target, body)
    assert answer.status in (400, 413)
    assert time.perf_counter() - started < 1.0
    assert queued(target) == []
