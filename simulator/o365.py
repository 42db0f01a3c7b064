"""The Office 365 Management Activity API: subscriptions, content listing, content blobs and webhook notifications.

Shapes and error codes follow MicrosoftDocs/office-365-management-api
``office-365-management-activity-api-reference.md`` (the error table lists AF10001, AF20001-AF20003, AF20010-AF20013,
AF20020-AF20023, AF20030, AF20031, AF20050-AF20055, AF429, AF50000). Where the live service is known to differ
from that page (AF20024, AF20055, the AF20023 wording), the comment says where the knowledge comes from.

Deliberate simplifications: content listing is never paged (no ``NextPageUri``), every blob of the content type in
the time window is listed whenever its subscription started, and the real service's delays (up to 12 hours to
the first blob, 60-90 minutes per event) do not exist here.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from simulator.tokens import DEFAULT_CLIENT_ID, TokenIssuer
from simulator.wire import NotJson, Request, Response, json_response, utc_now

# Not imported from simulator.tenant, which imports this module to validate x-auditContent.
Json = dict[str, Any]

MANAGE_RESOURCE = "https://manage.office.com"
CONTENT_TYPES = ("Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint", "Audit.General", "DLP.All")
DEFAULT_CONTENT_TYPE = "Audit.General"
RETENTION = dt.timedelta(days=7)
MAX_WINDOW = dt.timedelta(hours=24)
VALIDATION_TIMEOUT_SECONDS = 5.0
# Only these webhook hosts are called (validation) or may be plain http: the simulator serves http on 127.0.0.1,
# and it must never reach out to the internet.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
CONTENT_KEYS = frozenset({"contentId", "contentType", "contentCreated", "records"})

_BY_FOLDED = {name.casefold(): name for name in CONTENT_TYPES}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_WINDOW_MESSAGE = (
    "Start time and end time must both be specified (or both omitted) and must be less than or equal to 24 hours "
    "apart, with the start time no more than 7 days in the past."
)
# Codes the injected faults answer with (429 and 5xx are the ones clients retry).
_FAULT_MESSAGES = {
    429: ("AF429", "Too many requests. Method={method}, PublisherId={publisher}"),
    500: ("AF50000", "An internal error occurred. Retry the request."),
    503: ("AF50000", "An internal error occurred. Retry the request."),
}


def canonical_content_type(value: object) -> str | None:
    """``Audit.General`` for any casing of it; ``None`` for a content type the API does not have."""
    return _BY_FOLDED.get(value.casefold()) if isinstance(value, str) else None


def parse_time(value: object) -> dt.datetime | None:
    """An aware UTC datetime from ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM[:SS[.fffffff]]`` with or without ``Z``."""
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2}(T|$)", value.strip()):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def wire_time(moment: dt.datetime) -> str:
    """``2015-05-23T17:35:00.000Z``, as content pointers write times."""
    moment = moment.astimezone(dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


# -- content blobs -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    content_id: str
    content_type: str
    created: dt.datetime
    records: list[Json]

    @property
    def expiration(self) -> dt.datetime:
        return self.created + RETENTION

    def pointer(self, base_url: str, tenant_id: str) -> Json:
        """What ``/subscriptions/content`` lists for this blob."""
        return {
            "contentUri": f"{base_url}/api/v1.0/{tenant_id}/activity/feed/audit/{self.content_id}",
            "contentId": self.content_id,
            "contentType": self.content_type,
            "contentCreated": wire_time(self.created),
            "contentExpiration": wire_time(self.expiration),
        }


def normalize_content(spec: Mapping[str, Any], *, tenant_id: str, ordinal: int, now: dt.datetime) -> Json:
    """A content blob spec (``x-auditContent`` item or ``POST /_sim/o365/content`` body) with every key filled in.

    ``contentType`` defaults to Audit.General, ``contentCreated`` to ``now``, ``contentId`` to an id derived from
    the tenant, content type, creation time and ``ordinal`` (its position), so reloading a file gives the same ids.
    Raises ValueError naming the problem.
    """
    unknown = sorted(set(spec) - CONTENT_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)} (allowed: {', '.join(sorted(CONTENT_KEYS))})")
    records = spec.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("records must be a list of audit record mappings")
    content_type = canonical_content_type(spec.get("contentType", DEFAULT_CONTENT_TYPE))
    if content_type is None:
        raise ValueError(f"contentType must be one of {', '.join(CONTENT_TYPES)}, got {spec.get('contentType')!r}")
    created = now
    if spec.get("contentCreated") is not None:
        parsed = parse_time(spec["contentCreated"])
        if parsed is None:
            raise ValueError(f"contentCreated must be an ISO 8601 UTC time, got {spec['contentCreated']!r}")
        created = parsed
    content_id = spec.get("contentId")
    if content_id is None:
        content_id = _content_id(tenant_id, content_type, created, ordinal)
    elif not isinstance(content_id, str) or not content_id.strip() or "/" in content_id:
        raise ValueError(f"contentId must be a non-empty string without '/', got {content_id!r}")
    return {
        "contentId": content_id,
        "contentType": content_type,
        "contentCreated": wire_time(created),
        "records": copy.deepcopy(records),
    }


def _content_id(tenant_id: str, content_type: str, created: dt.datetime, ordinal: int) -> str:
    """An id shaped like the service's (``$``-separated, tenant and hour inside) so clients meet real ``$``s."""
    digest = hashlib.sha256(f"{tenant_id}|{content_type}|{created.isoformat()}|{ordinal}".encode()).hexdigest()
    number = str(int(digest[:10], 16)).zfill(12)[:12]
    workload = content_type.replace(".", "").casefold()
    return f"{number}${number}${tenant_id.replace('-', '')}{workload}{created:%Y%m%d%H}${digest[:32]}$04"


# -- subscriptions and the feed ----------------------------------------------------------------------------------


@dataclass
class Subscription:
    content_type: str
    status: str  # enabled | disabled
    webhook: Json | None  # {address, authId, expiration} as given
    client_id: str

    def to_json(self, now: dt.datetime) -> Json:
        webhook: Json | None = None
        if self.webhook is not None:
            expires = parse_time(self.webhook.get("expiration"))
            status = "expired" if expires is not None and expires <= now else "enabled"
            webhook = {"status": status, **self.webhook}
        return {"contentType": self.content_type, "status": self.status, "webhook": webhook}


class ActivityFeed:
    """The tenant's subscriptions and content blobs; thread-safe."""

    def __init__(
        self,
        tenant_id: str,
        content: Sequence[Mapping[str, Any]] = (),
        subscriptions: Sequence[str] = (),
        *,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.tenant_id = tenant_id
        self._clock = clock
        self._lock = threading.Lock()
        self._blobs: list[Blob] = []
        self._subscriptions: dict[str, Subscription] = {}
        for spec in content:
            self.add(spec)
        for content_type in subscriptions:
            self._subscriptions[content_type] = Subscription(content_type, "enabled", None, DEFAULT_CLIENT_ID)

    def now(self) -> dt.datetime:
        return self._clock()

    def add(self, spec: Mapping[str, Any]) -> Blob:
        """Store a content blob (see ``normalize_content``); ValueError when its contentId is taken."""
        with self._lock:
            normalized = normalize_content(spec, tenant_id=self.tenant_id, ordinal=len(self._blobs), now=self.now())
            if any(b.content_id == normalized["contentId"] for b in self._blobs):
                raise ValueError(f"contentId {normalized['contentId']!r} already exists")
            created = parse_time(normalized["contentCreated"])
            assert created is not None  # normalize_content wrote it
            blob = Blob(normalized["contentId"], normalized["contentType"], created, normalized["records"])
            self._blobs.append(blob)
            return blob

    def blobs(self, content_ids: Sequence[str] | None = None) -> list[Blob]:
        """Every blob in the order added, or those of ``content_ids`` in that order (KeyError for an unknown id)."""
        with self._lock:
            if content_ids is None:
                return list(self._blobs)
            by_id = {b.content_id: b for b in self._blobs}
        missing = [c for c in content_ids if c not in by_id]
        if missing:
            raise KeyError(f"no content blob {', '.join(missing)}")
        return [by_id[c] for c in content_ids]

    def find(self, content_id: str) -> Blob | None:
        with self._lock:
            return next((b for b in self._blobs if b.content_id == content_id), None)

    def subscription(self, content_type: str) -> Subscription | None:
        with self._lock:
            found = self._subscriptions.get(content_type)
            return copy.deepcopy(found)

    def subscriptions(self) -> list[Json]:
        now = self.now()
        with self._lock:
            return [s.to_json(now) for s in self._subscriptions.values()]

    def put_subscription(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions[subscription.content_type] = subscription

    def notification(self, base_url: str, content_ids: Sequence[str] | None = None) -> list[Json]:
        """The body the service would POST to the webhook for these blobs (all of them by default)."""
        items: list[Json] = []
        for blob in self.blobs(content_ids):
            subscription = self.subscription(blob.content_type)
            client_id = subscription.client_id if subscription else DEFAULT_CLIENT_ID
            items.append({"tenantId": self.tenant_id, "clientId": client_id, **blob.pointer(base_url, self.tenant_id)})
        return items


# -- endpoints (simulator/routes.py routes to them) -------------------------------------------------------------------


def error(status: int, code: str, message: str) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}})


def injected_error(status: int, request: Request) -> Response:
    """An injected failure in the service's error shape."""
    code, message = _FAULT_MESSAGES.get(status, ("AF50000", f"Simulated failure: HTTP {status}."))
    publisher = request.query.get("PublisherIdentifier", "")
    return error(status, code, message.format(method=request.method, publisher=publisher))


def authorize(request: Request, tokens: TokenIssuer, tenant_id: str, tenant_in_path: str) -> Response | None:
    if tokens.check(request.header("Authorization"), MANAGE_RESOURCE) is not None:
        # One answer for every bad token (none, expired, another resource's): the service reports the missing
        # ActivityFeed.Read permission, with the token's (here empty) permission set.
        return error(
            401, "AF10001", "The permission set () sent in the request did not include the expected permission."
        )
    if not _GUID.match(tenant_in_path):
        return error(400, "AF20013", f"The tenant ID passed in the URL ({tenant_in_path}) is not a valid GUID.")
    if tenant_in_path.casefold() != tenant_id.casefold():
        # The simulator's tokens always carry its own tenant, so a different tenant in the URL is AF20010.
        return error(
            400,
            "AF20010",
            f"The tenant ID passed in the URL ({tenant_in_path}) does not match the tenant ID passed in the "
            f"access token ({tenant_id}).",
        )
    publisher = request.query.get("PublisherIdentifier")
    if publisher is not None and not _GUID.match(publisher):
        return error(400, "AF20002", "Invalid parameter type: PublisherIdentifier. Expected type: guid")
    return None


def _content_type(request: Request) -> str | Response:
    raw = request.query.get("contentType")
    if not raw:
        return error(400, "AF20001", "Missing parameter: contentType.")
    return canonical_content_type(raw) or error(400, "AF20020", "The specified content type is not valid.")


def _client_id(request: Request) -> str:
    """The ``appid`` of the (already verified) bearer token: the notification's ``clientId``."""
    token = (request.header("Authorization") or "").partition(" ")[2].strip()
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return DEFAULT_CLIENT_ID
    appid = claims.get("appid") if isinstance(claims, dict) else None
    return appid if isinstance(appid, str) else DEFAULT_CLIENT_ID


def start(request: Request, feed: ActivityFeed) -> Response:
    """``POST /subscriptions/start?contentType=``, optional body ``{"webhook": {address, authId, expiration}}``."""
    content_type = _content_type(request)
    if isinstance(content_type, Response):
        return content_type
    webhook = _webhook(request, feed.now())
    if isinstance(webhook, Response):
        return webhook
    current = feed.subscription(content_type)
    if current is not None and current.status == "enabled" and current.webhook == webhook:
        # Not in the reference's table, but what the live service answers (MicrosoftDocs/office-365-management-api
        # issue #387; clients such as Wazuh treat it as success).
        return error(400, "AF20024", "The subscription is already enabled. No property change.")
    if webhook is not None:
        refused = _validate_webhook(webhook)
        if refused is not None:
            return refused
    subscription = Subscription(content_type, "enabled", webhook, _client_id(request))
    feed.put_subscription(subscription)
    return json_response(200, subscription.to_json(feed.now()))


def _webhook(request: Request, now: dt.datetime) -> Json | Response | None:
    """The webhook of a start request (``None`` without one), or the service's answer to a bad one."""
    if not request.body.strip():
        return None
    try:
        body = request.json()
    except NotJson:
        return error(400, "AF20002", "Invalid parameter type: body. Expected type: JSON object")
    if not isinstance(body, dict):
        return error(400, "AF20002", "Invalid parameter type: body. Expected type: JSON object")
    webhook = body.get("webhook")
    if webhook is None:
        return None
    if not isinstance(webhook, dict):
        return error(400, "AF20002", "Invalid parameter type: webhook. Expected type: JSON object")
    address = webhook.get("address")
    if not isinstance(address, str) or not address.strip():
        return error(400, "AF20001", "Missing parameter: address.")
    auth_id = webhook.get("authId")
    if auth_id is not None and not isinstance(auth_id, str):
        return error(400, "AF20002", "Invalid parameter type: authId. Expected type: string")
    expiration = webhook.get("expiration") or None
    if expiration is not None:
        moment = parse_time(expiration)
        if moment is None:
            return error(400, "AF20002", "Invalid parameter type: expiration. Expected type: datetime")
        if moment <= now:
            return error(400, "AF20003", f"Expiration {expiration} provided is set to past date and time.")
    return {"address": address, "authId": auth_id, "expiration": expiration}


def _validate_webhook(webhook: Json) -> Response | None:
    """The service's validation POST; ``None`` when the endpoint answers 200 (or is not on this machine)."""
    address = str(webhook["address"])
    split = urlsplit(address)
    loopback = (split.hostname or "").casefold() in LOOPBACK_HOSTS
    # Deviation: the service takes https only; plain http is allowed on loopback because the simulator and test
    # receivers serve http.
    if split.scheme.casefold() != "https" and not (loopback and split.scheme.casefold() == "http"):
        return _unvalidated(address, "The address must begin with HTTPS.")
    if not loopback:
        # Never call out of the machine: an https address elsewhere is accepted unvalidated.
        return None
    import httpx  # only needed here; keeps importing the simulator light

    code = secrets.token_urlsafe(24)
    headers = {"Content-Type": "application/json; charset=utf-8", "Webhook-ValidationCode": code}
    if webhook.get("authId") is not None:
        headers["Webhook-AuthID"] = str(webhook["authId"])
    try:
        answer = httpx.post(
            address,
            content=json.dumps({"validationCode": code}).encode("utf-8"),
            headers=headers,
            timeout=VALIDATION_TIMEOUT_SECONDS,
        )
    except httpx.HTTPError:
        return _unvalidated(address, "The endpoint did not return HTTP 200.")
    if answer.status_code != 200:
        return _unvalidated(address, "The endpoint did not return HTTP 200.")
    return None


def _unvalidated(address: str, reason: str) -> Response:
    return error(400, "AF20021", f"The webhook endpoint ({address}) could not be validated. {reason}")


def stop(request: Request, feed: ActivityFeed) -> Response:
    """``POST /subscriptions/stop?contentType=``: 200 with an empty body; the subscription stays listed, disabled."""
    content_type = _content_type(request)
    if isinstance(content_type, Response):
        return content_type
    current = feed.subscription(content_type)
    if current is None:
        return error(400, "AF20022", "No subscription found for the specified content type.")
    current.status = "disabled"
    feed.put_subscription(current)
    return Response(200, b"")


def list_subscriptions(feed: ActivityFeed) -> Response:
    return json_response(200, feed.subscriptions())


def _enabled(feed: ActivityFeed, content_type: str) -> Response | None:
    """``None`` when ``content_type`` has an enabled subscription, else the service's refusal."""
    subscription = feed.subscription(content_type)
    if subscription is None:
        return error(400, "AF20022", "No subscription found for the specified content type.")
    if subscription.status != "enabled":
        # The reference writes "disabled by {0}"; a stopped subscription answers this text live (issue #479).
        return error(400, "AF20023", "The subscription was disabled.")
    return None


def list_content(request: Request, feed: ActivityFeed) -> Response:
    """``GET /subscriptions/content?contentType=[&startTime=&endTime=]``: pointers with start <= created < end."""
    content_type = _content_type(request)
    if isinstance(content_type, Response):
        return content_type
    refused = _enabled(feed, content_type)
    if refused is not None:
        return refused
    now = feed.now()
    raw_start, raw_end = request.query.get("startTime"), request.query.get("endTime")
    if raw_start is None and raw_end is None:
        window_start, window_end = now - MAX_WINDOW, now
    else:
        parsed: list[dt.datetime] = []
        for name, raw in (("startTime", raw_start), ("endTime", raw_end)):
            if raw is None:
                return _window_refused()
            moment = parse_time(raw)
            if moment is None:
                return error(400, "AF20002", f"Invalid parameter type: {name}. Expected type: datetime")
            parsed.append(moment)
        window_start, window_end = parsed
        if window_end - window_start > MAX_WINDOW or window_start < now - RETENTION:
            return _window_refused()
    pointers = [
        blob.pointer(request.base_url, feed.tenant_id)
        for blob in sorted(feed.blobs(), key=lambda b: b.created)
        if blob.content_type == content_type and window_start <= blob.created < window_end
    ]
    return json_response(200, pointers)


def _window_refused() -> Response:
    # The reference lists this text under AF20030; the live service answers AF20055 with it (Elastic's and other
    # clients handle both codes alike; AF20055 was added to the reference in 2025, PR #503).
    return error(400, "AF20055", _WINDOW_MESSAGE)


def get_blob(request: Request, feed: ActivityFeed, content_id: str) -> Response:
    """``GET /audit/{contentId}``: the blob's records. A stopped subscription cannot retrieve content (reference)."""
    blob = feed.find(content_id)
    if blob is None:
        # 404 is the simulator's choice; the reference gives the code and text, not the status.
        return error(404, "AF20050", f"The specified content ({content_id}) does not exist.")
    refused = _enabled(feed, blob.content_type)
    if refused is not None:
        return refused
    if blob.expiration <= feed.now():
        return error(
            404,
            "AF20051",
            f"Content requested with the key {content_id} has already expired. "
            "Content older than 7 days cannot be retrieved.",
        )
    return json_response(200, copy.deepcopy(blob.records))
