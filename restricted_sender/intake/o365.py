"""Office 365 Management Activity API, the pure parts: webhook notifications -> content pointers, and the
fetched content (audit records) -> :class:`AlertReport` values and delistings
(https://learn.microsoft.com/office/office-365-management-api/office-365-management-activity-api-reference
and -schema).

A notification only points at content; fetching it sends our token to ``contentUri``, so
:func:`check_content_uri` accepts nothing but this tenant's feed on the configured API root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from restricted_sender.errors import InputError, MalformedPayload, PayloadTooLarge, UnsafeContentUri
from restricted_sender.intake.alerts import (
    MAX_EVENTS_PER_REQUEST,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_TIME_CHARS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    bounded,
    field_text,
    first_text,
    loose_json_object,
    merge_users,
    user_ref,
)
from restricted_sender.model import SOURCE_O365, AlertReport
from restricted_sender.timeutil import parse_instant

RECORD_ALERT = "40"  # SecurityComplianceAlerts
RECORD_HYGIENE = "51"  # HygieneEvent: outbound spam protection listing and delisting users
HYGIENE_LISTED_TITLE = "HygieneEvent Listed"
_DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True, slots=True)
class ContentPointer:
    """One notified content blob: fetch ``content_uri`` (after :func:`check_content_uri`) to get its records."""

    content_id: str
    content_uri: str
    content_type: str | None = None
    created: str | None = None
    expiration: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContentPointer:
        content_id, content_uri = data.get("content_id"), data.get("content_uri")
        if not isinstance(content_id, str) or not isinstance(content_uri, str):
            raise ValueError("a content pointer needs string 'content_id' and 'content_uri'")
        return cls(
            content_id,
            content_uri,
            first_text(data, "content_type"),
            first_text(data, "created"),
            first_text(data, "expiration"),
        )


@dataclass(frozen=True, slots=True)
class Delisting:
    """A HygieneEvent ``Delisted`` record: the service lifted the user's restriction."""

    address: str
    at: datetime
    record_id: str


@dataclass(frozen=True, slots=True)
class O365Content:
    reports: tuple[AlertReport, ...] = ()
    delisted: tuple[Delisting, ...] = ()
    problems: tuple[str, ...] = ()  # records skipped, each with its place: one bad record must not sink the blob


def parse_notifications(payload: object, *, tenant_id: str, api_root: str) -> tuple[ContentPointer, ...]:
    """The pointers of a notification body, each content id once. One bad item refuses the whole body."""
    if not isinstance(payload, list):
        raise MalformedPayload("body: expected a JSON array of content notifications")
    if len(payload) > MAX_EVENTS_PER_REQUEST:
        raise PayloadTooLarge(
            f"body: {len(payload)} notifications; the limit is {MAX_EVENTS_PER_REQUEST} content pointers per request"
        )
    pointers: dict[str, ContentPointer] = {}
    for index, item in enumerate(payload):
        where = f"body[{index}]"
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where}: expected a notification object")
        content_id = field_text(item, "contentId", where=where, limit=MAX_ID_CHARS)
        if not content_id:
            raise MalformedPayload(f"{where}.contentId: expected a non-empty string")
        uri = item.get("contentUri")
        if not isinstance(uri, str):
            raise MalformedPayload(f"{where}.contentUri: expected a string")
        bounded(uri, f"{where}.contentUri", MAX_URL_CHARS)
        tenant = item.get("tenantId")
        if not isinstance(tenant, str) or tenant.strip().lower() != tenant_id.lower():
            raise MalformedPayload(f"{where}.tenantId: {tenant!r} is not this tenant")
        try:
            check_content_uri(uri, api_root=api_root, tenant_id=tenant_id)
        except UnsafeContentUri as refused:
            raise UnsafeContentUri(f"{where}.contentUri: {refused.message}") from refused
        pointers.setdefault(
            content_id,
            ContentPointer(
                content_id,
                uri,
                field_text(item, "contentType", where=where, limit=MAX_NAME_CHARS),
                field_text(item, "contentCreated", where=where, limit=MAX_TIME_CHARS),
                field_text(item, "contentExpiration", where=where, limit=MAX_TIME_CHARS),
            ),
        )
    return tuple(pointers.values())


def check_content_uri(uri: str, *, api_root: str, tenant_id: str) -> str:
    """``uri`` itself when it is this tenant's activity feed on ``api_root``; else :class:`UnsafeContentUri`."""

    def refuse(why: str) -> UnsafeContentUri:
        feed = f"{api_root.rstrip('/')}/api/v1.0/{tenant_id}/activity/feed/"
        return UnsafeContentUri(f"{uri!r} {why}; only {feed} is fetched")

    # urlsplit silently drops tabs and newlines, and a backslash is a separator to some clients: refuse them.
    if not uri or any(c.isspace() or not c.isprintable() or c == "\\" for c in uri):
        raise refuse("is empty or has whitespace, control characters or backslashes")
    root = urlsplit(api_root)
    try:
        # urlsplit refuses some text outright (an unclosed IPv6 bracket, characters that NFKC-normalize into a
        # separator, such as a fullwidth number sign): a URI it cannot parse is one we do not fetch.
        parts = urlsplit(uri)
    except ValueError as error:
        raise refuse(f"cannot be parsed as a URL ({error})") from error
    if parts.scheme.lower() != root.scheme.lower():
        raise refuse(f"does not use {root.scheme or 'the root'}'s scheme")
    if "@" in parts.netloc:
        raise refuse("carries user info")
    try:
        port, root_port = parts.port, root.port
    except ValueError as error:
        raise refuse("has an invalid port") from error
    default = _DEFAULT_PORTS.get(root.scheme.lower())
    if parts.hostname != root.hostname or (port or default) != (root_port or default):
        raise refuse("is on another host or port")
    prefix = f"/api/v1.0/{tenant_id}/activity/feed/"
    if parts.path[: len(prefix)].lower() != prefix.lower():
        raise refuse("is not under this tenant's activity feed")
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        raise refuse("has dot segments")
    return uri


def parse_content(records: object, *, is_target: Callable[[str], bool]) -> O365Content:
    """Reports for target alert records (one per AlertId, users merged) and HygieneEvent ``Listed`` records,
    and the ``Delisted`` ones. A record repeated under the same Id counts once (the API may repeat records)."""
    if not isinstance(records, list):
        raise MalformedPayload("content: expected a JSON array of audit records")
    seen: set[str] = set()
    reports: dict[tuple[str, bool], AlertReport] = {}
    delisted: list[Delisting] = []
    problems: list[str] = []
    for index, record in enumerate(records):
        where = f"content[{index}]"
        if not isinstance(record, dict):
            problems.append(f"{where}: expected an audit record object")
            continue
        record_id = first_text(record, "Id")
        if record_id:
            if record_id.lower() in seen:
                continue
            seen.add(record_id.lower())
        kind = str(record.get("RecordType", "")).strip()  # an int in Microsoft's samples, a string in others
        try:
            if kind == RECORD_ALERT:
                report = _alert_report(record, where, is_target)
            elif kind == RECORD_HYGIENE:
                report, delisting = _hygiene(record, where, record_id)
                delisted.extend([delisting] if delisting else [])
            else:
                continue
        except InputError as problem:  # malformed, or a field over its bound: one record never sinks the blob
            problems.append(problem.message)
            continue
        if report is not None:
            key = (report.alert_id, report.direct)
            known = reports.get(key)
            users = report.users if known is None else merge_users(known.users + report.users, limit=None)
            reports[key] = replace(report if known is None else known, users=users)
    return O365Content(tuple(reports.values()), tuple(delisted), tuple(problems))


def _alert_report(record: Mapping[str, Any], where: str, is_target: Callable[[str], bool]) -> AlertReport | None:
    operation = str(record.get("Operation") or "").lower()
    name = field_text(record, "Name", where=where, limit=MAX_TITLE_CHARS)  # the alert policy's name
    if operation not in ("alerttriggered", "alertentitygenerated") or not name or not is_target(name):
        return None  # AlertUpdated (status, comments) adds nobody
    alert_id = field_text(record, "AlertId", where=where, limit=MAX_ID_CHARS)
    if not alert_id:
        raise MalformedPayload(f"{where}.AlertId: a target alert record needs a non-empty string")
    data = loose_json_object(record.get("Data"), f"{where}.Data")
    address: str | None = None
    if operation == "alerttriggered":
        address = first_text(data, "f3u")
    elif (first_text(record, "EntityType") or first_text(data, "etype") or "").lower() == "user":
        address = first_text(data, "eid") or first_text(record, "AlertEntityId")
    ref = user_ref(address, None, f"{where}.Data")
    return AlertReport(
        source=SOURCE_O365,
        alert_id=alert_id,
        title=name,
        users=(ref,) if ref else (),
        created=field_text(record, "CreationTime", where=where, limit=MAX_TIME_CHARS),
    )


def _hygiene(
    record: Mapping[str, Any], where: str, record_id: str | None
) -> tuple[AlertReport | None, Delisting | None]:
    event = str(record.get("Event") or "").lower()
    ref = user_ref(first_text(record, "EventValue"), None, f"{where}.EventValue")  # "the user who was impacted"
    created = field_text(record, "CreationTime", where=where, limit=MAX_TIME_CHARS)
    if event == "listed":
        if not record_id:
            raise MalformedPayload(f"{where}.Id: a HygieneEvent Listed record needs a non-empty string")
        report = AlertReport(
            source=SOURCE_O365,
            alert_id=record_id,
            title=HYGIENE_LISTED_TITLE,
            users=(ref,) if ref else (),
            created=created,
            direct=True,
        )
        return report, None
    if event == "delisted" and ref is not None and ref.address and record_id and created:
        # Only evidence that a restriction lifted: a record lacking a part of it is skipped, never fatal.
        try:
            return None, Delisting(ref.address, parse_instant(created), record_id)
        except ValueError:
            return None, None
    return None, None
