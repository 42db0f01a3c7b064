"""The simulator's Office 365 Management Activity API over real HTTP: subscriptions, webhook validation, content
listing and blobs, errors in the service's AF shapes, auth, faults, and the webhook notification it builds."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from restricted_sender.timeutil import FixedClock
from simulator import Simulator, load_tenant
from tests.conftest import TENANT_ID, TLS, WIRE_SAMPLES, tenant

MANAGE = "https://manage.office.com"
FEED = f"/api/v1.0/{TENANT_ID}/activity/feed"
PUBLISHER = "46b472a7-c68e-4adf-8ade-3db49497518e"
GENERAL = {"contentType": "Audit.General", "PublisherIdentifier": PUBLISHER}
ALERT_RECORD = {
    "CreationTime": "2026-11-27T08:02:30",
    "Id": "2b6f3c1e-7a4d-4f8e-9c0b-1d2e3f4a5b6c",
    "Operation": "AlertTriggered",
    "OrganizationId": TENANT_ID,
    "RecordType": 40,
    "UserKey": "SecurityComplianceAlerts",
    "UserId": "SecurityComplianceAlerts",
    "Workload": "SecurityComplianceCenter",
    "Name": "User restricted from sending email",
    "Severity": "High",
    "Status": "Active",
}


NOW = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)  # the simulator's injected clock, never the machine's date


def ago(**delta: float) -> str:
    return (NOW - dt.timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def blob(content_id: str, created: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"contentId": content_id, "records": [{**ALERT_RECORD, "Id": content_id}], **extra}
    if created is not None:
        spec["contentCreated"] = created
    return spec


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def start_sim(simulator_factory: Callable[..., Simulator], clock: FixedClock) -> Callable[..., Simulator]:
    def run(content: list[dict[str, Any]] | None = None, subscribed: bool = True, **extra: Any) -> Simulator:
        if content is not None:
            extra["x-auditContent"] = content
        if subscribed:
            extra["x-auditSubscriptions"] = ["Audit.General"]
        return simulator_factory(tenant([], [], **extra), clock=clock)

    return run


@pytest.fixture
def connect(sim_client: Callable[..., httpx.Client]) -> Callable[..., httpx.Client]:
    """A client with a Management Activity API token unless ``token`` says otherwise ("" for none)."""

    def open_client(sim: Simulator, token: str | None = None) -> httpx.Client:
        return sim_client(sim, token if token is not None else sim.issue_token(MANAGE))

    return open_client


@pytest.fixture
def sim(start_sim: Callable[..., Simulator]) -> Simulator:
    return start_sim(subscribed=False)


@pytest.fixture
def api(sim: Simulator, connect: Callable[..., httpx.Client]) -> httpx.Client:
    return connect(sim)


def refused(response: httpx.Response, status: int, code: str) -> str:
    """The error message, after checking the status and the service's ``{"error": {"code", "message"}}`` body."""
    body = response.json()
    assert (response.status_code, body["error"]["code"]) == (status, code), response.text
    message: str = body["error"]["message"]
    return message


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on 127.0.0.1 that records what it is sent and answers ``status``."""

    status = 200

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], Any]] = []
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/o365/"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((dict(self.headers.items()), json.loads(body)))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def start(api: httpx.Client, webhook: dict[str, Any] | None = None, **params: str) -> httpx.Response:
    body = {"webhook": webhook} if webhook is not None else None
    return api.post(f"{FEED}/subscriptions/start", params={**GENERAL, **params}, json=body)


# -- subscriptions ------------------------------------------------------------------------------------------------


def test_a_started_subscription_is_answered_and_listed(api: httpx.Client) -> None:
    started = start(api)
    listed = api.get(f"{FEED}/subscriptions/list", params={"PublisherIdentifier": PUBLISHER})

    expected = {"contentType": "Audit.General", "status": "enabled", "webhook": None}
    assert (started.status_code, started.json()) == (200, expected)
    assert listed.json() == [expected]


def test_a_webhook_is_validated_with_a_code_before_the_subscription_starts(
    api: httpx.Client, receiver: Receiver
) -> None:
    response = start(api, {"address": receiver.url, "authId": "o365activityapinotification", "expiration": ""})

    assert response.json() == {
        "contentType": "Audit.General",
        "status": "enabled",
        "webhook": {
            "status": "enabled",
            "address": receiver.url,
            "authId": "o365activityapinotification",
            "expiration": None,
        },
    }
    [(headers, body)] = receiver.seen
    assert headers["Webhook-AuthID"] == "o365activityapinotification"
    assert headers["Webhook-ValidationCode"] == body["validationCode"] != ""
    assert headers["Content-Type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize("status", [201, 500])
def test_a_webhook_that_does_not_answer_200_is_refused_and_nothing_starts(
    api: httpx.Client, receiver: Receiver, status: int
) -> None:
    receiver.status = status

    message = refused(start(api, {"address": receiver.url}), 400, "AF20021")

    assert (
        message
        == f"The webhook endpoint ({receiver.url}) could not be validated. The endpoint did not return HTTP 200."
    )
    assert api.get(f"{FEED}/subscriptions/list").json() == []


def test_a_webhook_nobody_listens_on_is_refused(api: httpx.Client) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    message = refused(start(api, {"address": f"http://127.0.0.1:{port}/hook"}), 400, "AF20021")

    assert message.endswith("The endpoint did not return HTTP 200.")


def test_only_loopback_webhooks_may_be_plain_http_and_remote_ones_are_not_called(api: httpx.Client) -> None:
    plain = start(api, {"address": "http://webhook.example.com/o365"})
    remote = start(api, {"address": "https://webhook.example.com/o365"})

    assert refused(plain, 400, "AF20021").endswith("The address must begin with HTTPS.")
    assert remote.status_code == 200
    assert remote.json()["webhook"]["address"] == "https://webhook.example.com/o365"


def test_starting_again_without_a_change_is_af20024_and_with_one_updates(api: httpx.Client) -> None:
    start(api, {"address": "https://webhook.example.com/o365"})

    same = start(api, {"address": "https://webhook.example.com/o365"})
    removed = start(api)

    assert refused(same, 400, "AF20024") == "The subscription is already enabled. No property change."
    assert removed.json()["webhook"] is None


def test_a_stopped_subscription_stays_listed_disabled_and_serves_no_content(api: httpx.Client) -> None:
    start(api)

    stopped = api.post(f"{FEED}/subscriptions/stop", params=GENERAL)
    listed = api.get(f"{FEED}/subscriptions/list").json()
    content = api.get(f"{FEED}/subscriptions/content", params=GENERAL)
    restarted = start(api)

    assert (stopped.status_code, stopped.content) == (200, b"")
    assert listed == [{"contentType": "Audit.General", "status": "disabled", "webhook": None}]
    assert refused(content, 400, "AF20023") == "The subscription was disabled."
    assert restarted.json()["status"] == "enabled"


@pytest.mark.parametrize(("method", "operation"), [("POST", "start"), ("POST", "stop"), ("GET", "content")])
@pytest.mark.parametrize(
    ("content_type", "code", "message"),
    [
        (None, "AF20001", "Missing parameter: contentType."),
        ("Audit.Everything", "AF20020", "The specified content type is not valid."),
    ],
)
def test_a_missing_or_unknown_content_type_is_refused(
    api: httpx.Client, method: str, operation: str, content_type: str | None, code: str, message: str
) -> None:
    params = {"contentType": content_type} if content_type else {}

    response = api.request(method, f"{FEED}/subscriptions/{operation}", params=params)

    assert refused(response, 400, code) == message


@pytest.mark.parametrize(("method", "operation"), [("POST", "stop"), ("GET", "content")])
def test_an_operation_on_a_never_started_subscription_is_af20022(
    api: httpx.Client, method: str, operation: str
) -> None:
    response = api.request(method, f"{FEED}/subscriptions/{operation}", params=GENERAL)

    assert refused(response, 400, "AF20022") == "No subscription found for the specified content type."


# -- content ------------------------------------------------------------------------------------------------------


def test_content_of_the_last_24_hours_is_listed_and_each_uri_serves_its_records(
    start_sim: Callable[..., Simulator], connect: Callable[..., httpx.Client]
) -> None:
    sim = start_sim([blob("new", ago(hours=1)), blob("old", ago(hours=30)), blob("sp", contentType="Audit.SharePoint")])
    api = connect(sim)

    pointers = api.get(f"{FEED}/subscriptions/content", params=GENERAL).json()
    records = api.get(pointers[0]["contentUri"])

    assert [p["contentId"] for p in pointers] == ["new"]
    assert pointers[0]["contentUri"] == f"{sim.url}{FEED}/audit/new"
    assert set(pointers[0]) == {"contentUri", "contentId", "contentType", "contentCreated", "contentExpiration"}
    assert (records.status_code, records.json()) == (200, [{**ALERT_RECORD, "Id": "new"}])


def test_a_window_includes_its_start_and_excludes_its_end(
    start_sim: Callable[..., Simulator], connect: Callable[..., httpx.Client]
) -> None:
    at_start, at_end = ago(hours=30), ago(hours=10)
    api = connect(start_sim([blob("at-start", at_start), blob("at-end", at_end)]))

    response = api.get(f"{FEED}/subscriptions/content", params={**GENERAL, "startTime": at_start, "endTime": at_end})

    assert [p["contentId"] for p in response.json()] == ["at-start"]


@pytest.mark.parametrize(
    "window",
    [
        {"startTime": ago(hours=2)},
        {"endTime": ago(hours=2)},
        {"startTime": ago(hours=30), "endTime": ago(hours=1)},
        {"startTime": ago(days=8), "endTime": ago(days=7, hours=20)},
    ],
    ids=["start-only", "end-only", "over-24h", "over-7-days-back"],
)
def test_a_window_must_be_whole_at_most_24_hours_and_within_7_days(
    start_sim: Callable[..., Simulator], connect: Callable[..., httpx.Client], window: dict[str, str]
) -> None:
    api = connect(start_sim())

    response = api.get(f"{FEED}/subscriptions/content", params={**GENERAL, **window})

    assert refused(response, 400, "AF20055").startswith("Start time and end time must both be specified")


def test_a_window_bound_that_is_no_time_is_af20002(
    start_sim: Callable[..., Simulator], connect: Callable[..., httpx.Client]
) -> None:
    api = connect(start_sim())

    response = api.get(f"{FEED}/subscriptions/content", params={**GENERAL, "startTime": "yesterday", "endTime": "now"})

    assert refused(response, 400, "AF20002") == "Invalid parameter type: startTime. Expected type: datetime"


def test_unknown_and_expired_blobs_are_not_served(
    start_sim: Callable[..., Simulator], connect: Callable[..., httpx.Client]
) -> None:
    api = connect(start_sim([blob("stale", ago(days=8))]))

    unknown = api.get(f"{FEED}/audit/nope")
    expired = api.get(f"{FEED}/audit/stale")

    assert refused(unknown, 404, "AF20050") == "The specified content (nope) does not exist."
    assert refused(expired, 404, "AF20051").startswith("Content requested with the key stale has already expired.")


def test_generated_content_ids_are_stable_and_shaped_like_the_services() -> None:
    document = tenant([], [], **{"x-auditContent": [{"contentCreated": "2026-11-27T08:00:00Z", "records": []}]})

    first, second = load_tenant(document).audit_content, load_tenant(document).audit_content

    assert first[0]["contentId"] == second[0]["contentId"]
    assert first[0]["contentId"].endswith("$04")
    assert TENANT_ID.replace("-", "") + "auditgeneral2026112708$" in first[0]["contentId"]
    assert first[0]["contentType"] == "Audit.General"


# -- runtime content and notifications ----------------------------------------------------------------------------


def test_content_added_at_runtime_is_listed_and_served(
    start_sim: Callable[..., Simulator], connect: Callable[..., httpx.Client], clock: FixedClock
) -> None:
    sim = start_sim()
    api = connect(sim)

    added = sim.add_audit_content([ALERT_RECORD])
    posted = httpx.post(f"{sim.url}/_sim/o365/content", json=blob("via-control"), verify=TLS)
    clock.advance(dt.timedelta(seconds=1))  # the default window ends at now, excluded
    listed = api.get(f"{FEED}/subscriptions/content", params=GENERAL).json()

    assert posted.status_code == 201
    assert listed == [added, posted.json()]
    assert api.get(added["contentUri"]).json() == [ALERT_RECORD]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"records": "nope"}, "records must be a list"),
        (blob("x", contentType="Audit.Everything"), "contentType must be one of"),
        (blob("taken"), "already exists"),
        ([], "the body must be"),
    ],
)
def test_a_bad_runtime_blob_is_refused_by_the_control_endpoint(
    start_sim: Callable[..., Simulator], body: Any, message: str
) -> None:
    sim = start_sim([blob("taken")])

    response = httpx.post(f"{sim.url}/_sim/o365/content", json=body, verify=TLS)

    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_the_notification_is_what_the_service_posts_for_the_subscribing_app(
    start_sim: Callable[..., Simulator], connect: Callable[..., httpx.Client]
) -> None:
    sim = start_sim(subscribed=False)
    token = httpx.get(
        sim.identity_endpoint,
        params={"resource": MANAGE, "api-version": "2019-08-01", "client_id": "0c1a2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"},
        headers={"X-IDENTITY-HEADER": sim.identity_header},
        verify=TLS,
    ).json()["access_token"]
    start(connect(sim, token))
    pointer = sim.add_audit_content([ALERT_RECORD], content_id="c1")
    sim.add_audit_content([ALERT_RECORD], content_id="c2")

    notification = sim.notification(["c1"])
    over_http = httpx.get(f"{sim.url}/_sim/o365/notification", params={"contentIds": "c1"}, verify=TLS).json()

    sample = json.loads((WIRE_SAMPLES / "mgmt_activity_notification.json").read_text())
    assert [set(item) for item in notification] == [set(sample[0])]
    assert notification == over_http
    assert notification == [{"tenantId": TENANT_ID, "clientId": "0c1a2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", **pointer}]
    assert [n["contentId"] for n in sim.notification()] == ["c1", "c2"]
    with pytest.raises(KeyError, match="nope"):
        sim.notification(["nope"])


# -- auth, tenant, methods, faults and the request log -------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "graph", "expired"])
def test_a_request_without_a_live_manage_office_token_is_401(
    sim: Simulator, connect: Callable[..., httpx.Client], token: str
) -> None:
    bearer = {
        "": "",
        "graph": sim.issue_token("https://graph.microsoft.com"),
        "expired": sim.issue_token(MANAGE, lifetime=-1),
    }

    response = connect(sim, bearer[token]).get(f"{FEED}/subscriptions/list")

    assert "did not include the expected permission" in refused(response, 401, "AF10001")


@pytest.mark.parametrize(
    ("tenant_in_path", "code"), [("0b9a8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d", "AF20010"), ("contoso.com", "AF20013")]
)
def test_another_tenant_in_the_path_is_refused(api: httpx.Client, tenant_in_path: str, code: str) -> None:
    response = api.get(f"/api/v1.0/{tenant_in_path}/activity/feed/subscriptions/list")

    assert tenant_in_path in refused(response, 400, code)


def test_a_wrong_method_is_405_with_allow(api: httpx.Client) -> None:
    response = api.get(f"{FEED}/subscriptions/start", params=GENERAL)

    assert (response.status_code, response.headers["Allow"]) == (405, "POST")


def test_faults_latency_and_the_request_log_work_per_route(sim: Simulator, api: httpx.Client) -> None:
    start(api)
    sim.clear_requests()
    sim.inject_fault("o365.content", status=429, retry_after=1)
    sim.set_latency("o365.*", 0.05)

    began = time.perf_counter()
    throttled = api.get(f"{FEED}/subscriptions/content", params=GENERAL)
    served = api.get(f"{FEED}/subscriptions/content", params=GENERAL)
    elapsed = time.perf_counter() - began

    assert refused(throttled, 429, "AF429") == f"Too many requests. Method=GET, PublisherId={PUBLISHER}"
    assert throttled.headers["Retry-After"] == "1"
    assert served.status_code == 200
    assert elapsed >= 0.1
    assert [(r["route"], r["status"]) for r in sim.requests] == [("o365.content", 429), ("o365.content", 200)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"x-auditContent": {"records": []}}, "x-auditContent must be a list"),
        ({"x-auditContent": [{"contentId": "a"}]}, r"x-auditContent\[0\]: records must be a list"),
        ({"x-auditContent": [{"records": [], "contentCreated": "soon"}]}, "contentCreated must be an ISO 8601"),
        ({"x-auditContent": [{"records": [], "colour": "red"}]}, "unknown keys colour"),
        ({"x-auditContent": [blob("a"), blob("a")]}, r"x-auditContent\[1\].contentId 'a' repeats"),
        ({"x-auditSubscriptions": ["Audit.Everything"]}, r"x-auditSubscriptions\[0\] must be one of"),
        ({"x-auditSubscriptions": "Audit.General"}, "x-auditSubscriptions must be a list"),
    ],
)
def test_bad_audit_keys_in_the_tenant_file_are_named(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_tenant(tenant([], [], **extra))
