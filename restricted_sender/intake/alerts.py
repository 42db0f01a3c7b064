"""Alert payloads -> :class:`AlertReport` values. Pure parsing: no I/O, no policy.

Shapes understood (README: Where alerts come from): a Graph ``security/alerts_v2`` alert object, a ``{"value": [...]}``
collection of them (what ``GET /security/alerts_v2`` returns), and the Sentinel incident and alert trigger
bodies a Logic App playbook posts (:mod:`restricted_sender.intake.sentinel`), bare or wrapped as ``{"Body": ...}``.
Defender streaming batches and Management Activity content have their own modules (``defender``, ``o365``):
they need state or a fetch before they become reports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import Any

from restricted_sender.errors import MalformedPayload, PayloadTooLarge
from restricted_sender.model import AlertReport, UserRef, object_id_or_error

MAX_BODY_BYTES = 1024 * 1024
# The real bodies nest 8 levels at most (a Sentinel incident's related entities); 64 leaves room for wrappers
# while staying far below the interpreter's recursion limit, which a deeper body would otherwise hit.
MAX_JSON_DEPTH = 64
# A "User restricted from sending email" alert names the one user Microsoft restricted; an aggregated alert a few.
# 50 is also what the Defender join keeps per pending alert (content.MAX_PENDING_ROWS): more is a forged body, or a
# tenant-wide incident a person must look at, not 50 x (Exchange + Graph) calls racing the real unblocks.
MAX_USERS_PER_ALERT = 50
# One request's events are checked and queued before the answer: 200 sends stay within a few seconds, well inside
# the caller's HTTP timeout, and a {"value": [...]} page of alerts_v2 holds far fewer target alerts.
MAX_EVENTS_PER_REQUEST = 200

# Every text field that reaches a queue message has a bound, checked while parsing (4xx naming the field), so an
# event always fits a queue message (relay.MAX_MESSAGE_CHARS) and a body is refused before anything is queued.
MAX_ID_CHARS = 256  # alert, record and content ids (Microsoft's are GUIDs or under 100 characters)
MAX_TITLE_CHARS = 512  # alert names and titles
MAX_URL_CHARS = 2048  # alertWebUrl, incidentUrl, AlertLink, contentUri
MAX_TIME_CHARS = 64  # ISO 8601 timestamps (createdDateTime, Timestamp, contentCreated, ...)
MAX_ADDRESS_CHARS = 320  # an SMTP address: 64 (local part) + 1 + 255 (domain), RFC 5321
MAX_NAME_CHARS = 256  # other short names kept in a message (contentType, ServiceSource, an entity's Name)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

_ALERT_TYPE = "#microsoft.graph.security.alert"
_USER_EVIDENCE = "#microsoft.graph.security.userevidence"
_MAILBOX_EVIDENCE = "#microsoft.graph.security.mailboxevidence"
# Keys only an alerts_v2 object has among the shapes we accept: a dict with none of them is no known shape.
ALERTS_V2_KEYS = ("id", "title", "@odata.type", "evidence")
ACCEPTED_SHAPES = (
    'expected a Graph alerts_v2 alert object, {"value": [alert, ...]}, a Sentinel incident trigger body '
    '(objectSchemaType "Incident", object.properties.alerts), a Sentinel alert trigger body (AlertDisplayName, '
    'SystemAlertId), or one of those wrapped as {"Body": ...}'
)


def parse_json(body: bytes, what: str = "body") -> Any:
    """Untrusted JSON bytes as Python values: UTF-8 text, nested at most ``MAX_JSON_DEPTH`` levels, every string
    Unicode text. Anything else is :class:`MalformedPayload` (400)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"{what}: not UTF-8 text") from exc
    return parse_json_text(text, what)


def parse_json_text(text: str, what: str = "body") -> Any:
    """The one rule for JSON from outside, also for JSON text inside a field (Sentinel ``Entities``, Defender
    ``AdditionalFields``, an audit record's ``Data``).

    The depth is measured before parsing: the parser recurses once per level, so a deep enough body raises
    ``RecursionError`` instead of an answer. A lone surrogate (``"\\ud800"``) is refused too: it is no character,
    cannot be encoded, and would fail later, when an event id is hashed or a message is queued.
    """
    if (depth := _nesting(text)) > MAX_JSON_DEPTH:
        raise MalformedPayload(f"{what}: nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _NotJson(f"{what}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if _SURROGATE_ESCAPE.search(text):  # only an escape can put a surrogate into decoded UTF-8 text
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MalformedPayload(f"{what}: a lone surrogate ({exc.object[exc.start]!a}) is not text") from exc
    return value


def _nesting(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings do not count); linear, in C loops."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # cannot be deeper than it has openings: the common case costs two counts
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


class _NotJson(MalformedPayload):
    """Text that does not parse as JSON at all (as opposed to JSON refused by the rule)."""


def at(where: str, place: str) -> str:
    """``place`` inside ``where`` (empty at the top of the body), as error messages name it."""
    return f"{where}.{place}" if where else place


def parse_alert_v2(item: object, where: str, source: str) -> AlertReport:
    if not isinstance(item, dict):
        raise MalformedPayload(f"{where}: expected an alerts_v2 alert object")
    odata_type = item.get("@odata.type")
    if odata_type is not None and str(odata_type).lower() != _ALERT_TYPE:
        raise MalformedPayload(f"{where}: @odata.type {odata_type!r} is not {_ALERT_TYPE}")
    alert_id = item.get("id")
    title = item.get("title")
    if not isinstance(alert_id, str) or not alert_id.strip():
        raise MalformedPayload(f"{where}: an alerts_v2 alert needs a string 'id'")
    if not isinstance(title, str):
        raise MalformedPayload(f"{where}: an alerts_v2 alert needs a string 'title'")
    evidence = item.get("evidence")
    evidence = [] if evidence is None else evidence
    if not isinstance(evidence, list):
        raise MalformedPayload(f"{where}.evidence: expected a list")
    created = item.get("createdDateTime")
    return AlertReport(
        source=source,
        alert_id=bounded(alert_id.strip(), at(where, "id"), MAX_ID_CHARS),
        title=bounded(title, at(where, "title"), MAX_TITLE_CHARS),
        users=merge_users(_evidence_users(evidence, f"{where}.evidence"), where=where),
        web_url=field_text(item, "alertWebUrl", where=where, limit=MAX_URL_CHARS),
        created=bounded(created, at(where, "createdDateTime"), MAX_TIME_CHARS) if isinstance(created, str) else None,
    )


def _evidence_users(evidence: list[Any], where: str) -> Iterable[UserRef]:
    for index, item in enumerate(evidence):
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where}[{index}]: expected an evidence object")
        kind = str(item.get("@odata.type") or "").lower()
        account = item.get("userAccount")
        account = account if isinstance(account, dict) else {}
        place = f"{where}[{index}].userAccount.azureAdUserId"
        if kind == _USER_EVIDENCE:
            ref = user_ref(first_text(account, "userPrincipalName"), first_text(account, "azureAdUserId"), place)
        elif kind == _MAILBOX_EVIDENCE:
            address = first_text(item, "primaryAddress", "upn") or first_text(account, "userPrincipalName")
            ref = user_ref(address, first_text(account, "azureAdUserId"), place)
        else:
            continue
        if ref is not None:
            yield ref


def merge_users(
    refs: Iterable[UserRef], *, limit: int | None = MAX_USERS_PER_ALERT, where: str = "alert"
) -> tuple[UserRef, ...]:
    """One ref per user: refs sharing an address or an object id are the same user, unless they contradict each
    other (the same address with two object ids, or the reverse): then each is kept, and bound on its own.

    Each ref is merged into the first user it matches without contradiction. Only users sharing its address or its
    object id can match, so they are looked up by both (linear time); more than ``limit`` users is
    :class:`PayloadTooLarge`, raised as soon as it is known.
    """
    merged: list[UserRef] = []
    by_key: dict[str, set[int]] = {}

    def index(position: int, user: UserRef) -> None:
        for key in _merge_keys(user):
            by_key.setdefault(key, set()).add(position)

    for ref in refs:
        candidates = sorted(set().union(*(by_key.get(key, ()) for key in _merge_keys(ref))))
        for position in candidates:
            known = merged[position]
            if not _contradict(known, ref):
                merged[position] = UserRef(known.address or ref.address, known.object_id or ref.object_id)
                index(position, merged[position])
                break
        else:
            if limit is not None and len(merged) >= limit:
                raise PayloadTooLarge(f"{where} names more than {limit} users; the limit is {limit} users per alert")
            merged.append(ref)
            index(len(merged) - 1, ref)
    return tuple(merged)


def _merge_keys(user: UserRef) -> tuple[str, ...]:
    return tuple(
        key for key in ("a:" + (user.address or "").lower(), "o:" + (user.object_id or "").lower()) if len(key) > 2
    )


def _contradict(one: UserRef, other: UserRef) -> bool:
    def differ(a: str | None, b: str | None) -> bool:
        return bool(a and b and a.lower() != b.lower())

    return differ(one.address, other.address) or differ(one.object_id, other.object_id)


def user_ref(address: str | None, object_id: str | None, where: str = "") -> UserRef | None:
    """The user named by an address and/or an object id; ``None`` when neither names anyone.

    Every parser builds its users here, so this is where an object id that is not a GUID is refused (400, nothing
    queued): Graph would resolve anything else as a UPN, i.e. possibly as another user.
    """
    if address and "@" not in address:
        address = None  # an accountName without a domain cannot name a mailbox
    if not address and not object_id:
        return None
    if address:  # ``where`` names the object id's field: the address is its sibling
        bounded(address, f"{where.rpartition('.')[0] or where or 'body'} (the user's address)", MAX_ADDRESS_CHARS)
    try:
        return UserRef(address=address.lower() if address else None, object_id=_object_id(object_id))
    except ValueError as error:
        raise MalformedPayload(f"{where or 'body'}: {error}") from error


def _object_id(value: str | None) -> str | None:
    return object_id_or_error(value) if value else None


def bounded(value: str, where: str, limit: int) -> str:
    """``value`` when it has at most ``limit`` characters; else :class:`PayloadTooLarge` naming ``where``."""
    if len(value) > limit:
        raise PayloadTooLarge(f"{where}: {len(value)} characters; the limit is {limit}")
    return value


def field_text(data: Mapping[str, Any], *keys: str, where: str, limit: int) -> str | None:
    """:func:`first_text`, bounded: the key that held the text is named when it is too long."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return bounded(value.strip(), at(where, key), limit)
    return None


def first_text(data: Mapping[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` holding a non-blank string, stripped."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def loose_json_object(value: object, where: str = "field") -> Mapping[str, Any]:
    """An object given as itself or as JSON text (Defender's AdditionalFields, an audit record's Data).
    Text that is not JSON reads as empty: these only add detail. JSON that breaks :func:`parse_json_text`'s rule
    (too deep, a lone surrogate) is hostile, and refused like the rest of the body."""
    if isinstance(value, str):
        try:
            value = parse_json_text(value, where)
        except _NotJson:
            return {}
    return value if isinstance(value, dict) else {}
