"""Property-based fuzzing of every handler that reads untrusted bytes, over mutations of the real samples.

The function app's own HTTP handlers (``alerts``, ``alerts_o365``) get real ``func.HttpRequest`` objects; the
webhooks queue through in-memory queues that refuse what the Storage queue refuses, so hundreds of bodies run in
seconds (one Azurite-backed smoke test below shows the same holds on the real queue). The Event Hub handler's
work (``ContentExpander.defender_bodies``) and the admin unblock body parser get the same mutations.

Properties: never an exception out of a handler, never a 5xx; a 4xx queues nothing; a 2xx queues exactly the
events its answer lists, each a readable message naming an alert and a user the body itself names, under the id
the product derives from them. Derandomized, without an example database: CI sees the same bodies every run.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from restricted_sender.entrypoints.edge import runtime
from restricted_sender.errors import MalformedPayload
from restricted_sender.fakes import MemoryQueue, MemoryStore
from restricted_sender.intake.content import ContentExpander
from restricted_sender.intake.defender import DefenderBatch
from restricted_sender.intake.relay import MAX_MESSAGE_CHARS
from restricted_sender.model import RestrictionEvent
from restricted_sender.processing.admin import UnblockRequest, parse_unblock_request
from restricted_sender.processing.pipeline import Intake
from restricted_sender.settings import Secret, Settings
from restricted_sender.timeutil import FixedClock
from tests.conftest import TENANT_ID
from tests.test_hostile_inputs import NOW, ROOT
from tests.test_hostile_inputs import intake as fresh_intake

# A failing body can be 1 MiB: Hypothesis warns that printing it is costly; the failure is what matters then.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
SAMPLES = Path(__file__).parents[1] / "samples" / "alerts"
AUTH_ID = "o365-auth-id-fuzz"
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=500,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


def load(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


ALERT_SAMPLES = [load(p.name) for p in sorted(SAMPLES.glob("*.json")) if p.name != "12-o365-notification.json"]
DEFENDER_SAMPLES = [load(n) for n in ("09-defender-records.json", "10-defender-info-only.json",
                                      "11-defender-evidence-only.json")]  # fmt: skip
O365_SAMPLES = [load("12-o365-notification.json")]


class Duplicated(dict[str, Any]):
    """An object written with one of its keys twice (the parser keeps the last): ``first`` is written before."""

    def __init__(self, data: dict[str, Any], key: str, first: Any) -> None:
        super().__init__(data)
        self.key, self.first = key, first


class Raw(str):
    """JSON text written as is: deep nesting, built as text so that the test itself never recurses into it."""

    __slots__ = ()


def encode(value: Any) -> str:
    """JSON text, with :class:`Duplicated` objects written with their key twice."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Duplicated):
        items = [f"{json.dumps(value.key)}:{encode(value.first)}"]
        items += [f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()]
        return "{" + ",".join(items) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


def places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (the root included)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from places(item, (*path, index))


def get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\ud800", "\udfff", "\u2028", "\u202e", "\uff03", "\x00", "\n", "@", ".", "/", "\\"]),
    ),
    max_size=20,
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                      max_leaves=6)  # fmt: skip


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


@st.composite
def mutated(draw: st.DrawFn, documents: list[Any]) -> bytes:
    """A real sample with one to three mutations, written as JSON (sometimes truncated)."""
    document = copy.deepcopy(documents[draw(st.integers(0, len(documents) - 1))])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(places(document))))
        target = get(document, path)
        operation = draw(
            st.sampled_from(
                ["replace", "delete", "huge-string", "huge-array", "deep", "duplicate-key", "as-json-text", "insert"]
            )
        )
        new: Any
        if operation == "replace":
            new = draw(VALUES)
        elif operation == "huge-string":
            new = draw(st.sampled_from(["x", "\u00e9", "\U0001f600", "\ud800"])) * draw(st.sampled_from([300, 70_000]))
        elif operation == "huge-array":
            # Copies of the value, as text; at most about 1 MiB (the body limit), beyond which all is one 413.
            item = encode(target)
            copies = min(draw(st.sampled_from([60, 250, 2_000])), max(1, 1_100_000 // (len(item) + 1)))
            new = Raw("[" + ",".join([item] * copies) + "]")
        elif operation == "deep":
            new = nested(draw(st.sampled_from([65, 1_000, 50_000])))
        elif operation == "duplicate-key" and isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target)))
            new = Duplicated(target, key, draw(VALUES))
        elif operation == "as-json-text" and isinstance(target, dict | list):
            new = encode(target)  # what Sentinel's Entities and Defender's AdditionalFields carry
        elif operation == "insert" and isinstance(target, dict):
            new = {**target, draw(TEXT): draw(VALUES)}
        elif operation == "delete" and path:
            parent = get(document, path[:-1])
            del parent[path[-1]]
            continue
        else:
            continue
        if path:
            get(document, path[:-1])[path[-1]] = new
        else:
            document = new
    raw = encode(document).encode("utf-8", "surrogatepass")  # a raw surrogate too, not only an escaped one
    if draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    return raw


@pytest.fixture
def app() -> Iterator[Callable[[], Intake]]:
    """The function app's runtime with the O365 webhook on; each call gives it new in-memory queues."""
    runtime.reset(Settings(tenant_id=TENANT_ID, o365_auth_id=Secret(AUTH_ID), o365_api_root=ROOT))

    def renew() -> Intake:
        intake = fresh_intake()
        runtime.use_intake(intake)
        return intake

    yield renew
    runtime.reset()


def call(handler: Callable[..., Any], url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    response = handler(func.HttpRequest(method="POST", url=url, body=body, headers=headers))
    return response.status_code, json.loads(response.get_body())


def messages(queue: Any) -> list[str]:
    assert isinstance(queue, MemoryQueue)
    for message in queue.messages:
        assert len(message) <= MAX_MESSAGE_CHARS
    return list(queue.messages)


def assert_events_are_the_answers(body: bytes, answer: dict[str, Any], queued: list[str]) -> None:
    events = [RestrictionEvent.from_message(m) for m in queued]
    assert [(e.event_id, e.alert_id, e.user.key) for e in events] == [
        (a["event_id"], a["alert_id"], a["user"]) for a in answer["accepted"]
    ]
    text = body.decode("utf-8", "surrogatepass").lower()
    for queued_event in events:
        user = queued_event.user
        parts = "\x1f".join(p.lower() for p in (queued_event.source, queued_event.alert_id, user.key))
        assert queued_event.event_id == hashlib.sha256(parts.encode("utf-8")).hexdigest()[:32]
        # The body names them (escaped or not): nothing is invented on the way to the queue. An address may be
        # built from an entity's Name and UPNSuffix, so its two halves are looked for.
        assert _named(queued_event.alert_id, text)
        assert user.object_id is None or _named(user.object_id, text)
        assert user.address is None or all(_named(half, text) for half in user.address.split("@"))


def _named(value: str, text: str) -> bool:
    return value.lower() in text or json.dumps(value.lower())[1:-1] in text


A = "fa8f2b1c-0d3e-4f5a-9b6c-7d8e9f0a1b"  # the samples' alerts_v2 ids differ in their last two digits
SENTINEL = "3e5a7c9e-4f6b-4d8a-9c1e-2b4d6f8a0c1e"
# What each real sample names, read off the files by hand: the reference the mutated bodies are fuzzed around.
NAMED: dict[str, tuple[list[tuple[str, str]], int]] = {
    "01-three-users-one-alert.json": ([(A + "2c", "alice@contoso.com"), (A + "2c", "bob@fabrikam.com"),
                                       (A + "2c", "carol@contoso.com")], 0),
    "02-value-list.json": ([(A + "2d", "dave@contoso.com"), (A + "2d", "erin@contoso.com"),
                            (A + "2d", "frank@contoso.com"), (A + "2e", "grace@contoso.com"),
                            (A + "2e", "0b1c2d3e-0008-4a5b-8c9d-000000000008")], 0),
    "03-other-alert-and-unrestricted-user.json": ([(A + "30", "ivan@contoso.com")], 0),
    "04-same-alert-again.json": ([(A + "2c", "alice@contoso.com"), (A + "2c", "bob@fabrikam.com"),
                                  (A + "2c", "carol@contoso.com")], 0),
    "05-compromised-looking-users.json": ([(A + "31", "judy@contoso.com"), (A + "31", "mallory@contoso.com")], 0),
    "06-sentinel-incident.json": ([(SENTINEL, "judy@contoso.com")], 0),
    "07-sentinel-incident-wrapped.json": ([(SENTINEL, "judy@contoso.com")], 0),
    "08-sentinel-alert.json": ([(SENTINEL, "judy@contoso.com")], 0),
    "09-defender-records.json": ([], 2),  # an AlertInfo and its user's AlertEvidence, relayed for the join
    "10-defender-info-only.json": ([], 1),
    "11-defender-evidence-only.json": ([], 1),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NAMED))
def test_each_real_sample_queues_exactly_the_events_it_names(
    handlers: dict[str, Callable[..., Any]], app: Callable[[], Intake], name: str
) -> None:
    intake = app()
    body = (SAMPLES / name).read_bytes()
    status, answer = call(handlers["alerts"], "/api/alerts", body, {})
    assert status == 202
    events, deferred = NAMED[name]
    queued = [RestrictionEvent.from_message(m) for m in messages(intake.queue)]
    assert [(e.alert_id, e.user.key) for e in queued] == events
    assert answer["deferred"] == deferred
    assert_events_are_the_answers(body, answer, messages(intake.queue))


@FUZZ
@given(body=mutated(ALERT_SAMPLES))
def test_the_alerts_handler_answers_every_mutated_sample_with_a_4xx_that_queues_nothing_or_the_events_it_names(
    handlers: dict[str, Callable[..., Any]], app: Callable[[], Intake], body: bytes
) -> None:
    intake = app()
    status, answer = call(handlers["alerts"], "/api/alerts", body, {})
    queued, relayed = messages(intake.queue), messages(intake.content_queue)
    event(f"HTTP {status}" + (f" {answer['error']['code']}" if status >= 400 else f", {len(queued)} events"))
    assert status < 500, answer
    if status >= 400:
        assert (queued, relayed) == ([], [])
        assert answer["error"]["code"]
        return
    assert status == 202
    assert_events_are_the_answers(body, answer, queued)
    rows = [DefenderBatch.from_dict(json.loads(m)["batch"]) for m in relayed]
    assert sum(len(b.infos) + len(b.evidence) for b in rows) == answer["deferred"]


@FUZZ
@given(body=mutated(O365_SAMPLES))
def test_the_o365_handler_answers_every_mutated_notification_with_a_4xx_or_only_pointers_into_the_feed(
    handlers: dict[str, Callable[..., Any]], app: Callable[[], Intake], body: bytes
) -> None:
    intake = app()
    status, answer = call(handlers["alerts_o365"], "/api/alerts/o365", body, {"Webhook-AuthID": AUTH_ID})
    relayed = messages(intake.content_queue)
    event(f"HTTP {status}")
    assert status < 500, answer
    assert messages(intake.queue) == []
    if status >= 400:
        assert relayed == []
        return
    assert status == 200
    assert answer == {"queued": len(relayed)}
    for message in relayed:
        uri = json.loads(message)["pointer"]["content_uri"]
        assert uri.lower().startswith(f"{ROOT}/api/v1.0/{TENANT_ID}/activity/feed/")


@FUZZ
@given(bodies=st.lists(mutated(DEFENDER_SAMPLES), min_size=1, max_size=3))
def test_the_event_hub_handler_relays_the_good_messages_of_a_batch_whatever_the_others_hold(
    bodies: list[bytes],
) -> None:
    # Its own alert id: the mutated messages may say anything about the samples' alerts, not about this one.
    good = json.dumps(DEFENDER_SAMPLES[0]).replace("fa2d4f6b8d-0e1c", "good-alert-0e1c").encode()
    intake = fresh_intake()
    expander = ContentExpander(intake, MemoryStore(), FixedClock(NOW))
    relayed = asyncio.run(expander.defender_bodies([*bodies, good]))
    rows = [DefenderBatch.from_dict(json.loads(m)["batch"]) for m in messages(intake.content_queue)]
    assert sum(len(b.infos) + len(b.evidence) for b in rows) == relayed
    assert relayed >= 2  # the good message's AlertInfo and its user's AlertEvidence, whatever came before
    assert messages(intake.queue) == []


UNBLOCK_BODIES = [{"justification": "verified by phone with the user", "force": False}, {"justification": "ok!"}]


@FUZZ
@given(body=mutated(UNBLOCK_BODIES))
def test_the_admin_unblock_body_is_a_request_or_malformed_never_an_exception(body: bytes) -> None:
    try:
        request = parse_unblock_request(body)
    except MalformedPayload:
        return  # the edge answers 400 (MalformedPayload.status)
    assert isinstance(request, UnblockRequest)
    assert len(request.justification) >= 3


@pytest.mark.azurite
def test_on_the_real_queue_a_hostile_body_queues_nothing_and_a_sample_queues_its_events(
    handlers: dict[str, Callable[..., Any]], azurite: Any, queue: Any
) -> None:
    policy = "mode: enforce\nallow: [{name: staff, domains: [contoso.com]}]\n"
    runtime.reset(Settings(storage_connection=Secret(azurite.connection_string), policy_yaml=policy))
    try:
        three = load("01-three-users-one-alert.json")
        oversized = copy.deepcopy(three)
        oversized["createdDateTime"] = "x" * 70_000  # before: 503 after the first two events were queued
        for body in (nested(5_000).encode(), encode(oversized).encode()):
            status, _answer = call(handlers["alerts"], "/api/alerts", body, {})
            assert status in (400, 413)
        assert queue.peek_messages(max_messages=32) == []
        status, answer = call(handlers["alerts"], "/api/alerts", json.dumps(three).encode(), {})
        assert status == 202
        texts = [m.content for m in queue.receive_messages(messages_per_page=32, visibility_timeout=1)]
        assert sorted(RestrictionEvent.from_message(t).event_id for t in texts) == sorted(
            a["event_id"] for a in answer["accepted"]
        )
    finally:
        runtime.reset()
