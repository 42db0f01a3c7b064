"""Alert payloads -> :class:`AlertReport` values. Pure parsing: no I/O, no policy.

Shapes understood (design §7): a Graph ``security/alerts_v2`` alert object, a ``{"value": [...]}``
collection of them (what ``GET /security/alerts_v2`` returns), and the Sentinel incident and alert trigger
bodies a Logic App playbook posts (:mod:`restricted_sender.sentinel`), bare or wrapped as ``{"Body": ...}``.
Defender streaming batches and Management Activity content have their own modules (``defender``, ``o365``):
they need state or a fetch before they become reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import MalformedPayload
from .model import SOURCE_ALERTS_V2, AlertReport, UserRef, object_id_or_error

MAX_BODY_BYTES = 1024 * 1024

_ALERT_TYPE = "#microsoft.graph.security.alert"
_USER_EVIDENCE = "#microsoft.graph.security.userevidence"
_MAILBOX_EVIDENCE = "#microsoft.graph.security.mailboxevidence"
# Keys only an alerts_v2 object has among the shapes we accept: a dict with none of them is no known shape.
_ALERTS_V2_KEYS = ("id", "title", "@odata.type", "evidence")
ACCEPTED_SHAPES = (
    'expected a Graph alerts_v2 alert object, {"value": [alert, ...]}, a Sentinel incident trigger body '
    '(objectSchemaType "Incident", object.properties.alerts), a Sentinel alert trigger body (AlertDisplayName, '
    'SystemAlertId), or one of those wrapped as {"Body": ...}'
)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise MalformedPayload("body is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise MalformedPayload(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def parse_alert_payload(
    payload: object,
    *,
    source: str = SOURCE_ALERTS_V2,
    is_target: Callable[[str], bool] | None = None,
) -> tuple[AlertReport, ...]:
    """Every alert in the payload, in order. Raises :class:`MalformedPayload` for an unknown shape.

    ``source`` is the kind given to alerts_v2 reports (the poller passes ``SOURCE_POLL``); Sentinel reports are
    always ``SOURCE_SENTINEL``. ``is_target`` picks an incident's title among its alerts' names (see
    :func:`restricted_sender.sentinel.parse_incident`).
    """
    from . import sentinel  # here, not at the top: sentinel builds on this module's helpers

    where = ""
    if isinstance(payload, dict) and "Body" in payload:
        # A Logic App that posts {"Body": triggerBody(), ...options} (the STAT-Function convention).
        payload, where = payload["Body"], "Body"
        if not isinstance(payload, dict):
            raise MalformedPayload(f"Body: expected an object, got {type(payload).__name__}")
    if not isinstance(payload, dict):
        raise MalformedPayload(f"unknown payload shape: {ACCEPTED_SHAPES}")
    if sentinel.is_incident(payload):
        return (sentinel.parse_incident(payload, where, is_target=is_target),)
    if sentinel.is_alert(payload):
        return (sentinel.parse_alert(payload, where),)
    if "value" in payload and "title" not in payload:
        items = payload["value"]
        if not isinstance(items, list):
            prefix = f"{where}: " if where else ""
            raise MalformedPayload(f"{prefix}'value' must be a list of alerts_v2 alert objects")
        return tuple(_parse_alert(item, at(where, f"value[{i}]"), source) for i, item in enumerate(items))
    if not any(key in payload for key in _ALERTS_V2_KEYS):
        raise MalformedPayload(f"unknown payload shape{' in Body' if where else ''}: {ACCEPTED_SHAPES}")
    return (_parse_alert(payload, where or "body", source),)


def at(where: str, place: str) -> str:
    """``place`` inside ``where`` (empty at the top of the body), as error messages name it."""
    return f"{where}.{place}" if where else place


def _parse_alert(item: object, where: str, source: str) -> AlertReport:
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
    web_url = item.get("alertWebUrl")
    created = item.get("createdDateTime")
    return AlertReport(
        source=source,
        alert_id=alert_id.strip(),
        title=title,
        users=merge_users(_evidence_users(evidence, f"{where}.evidence")),
        web_url=web_url.strip() if isinstance(web_url, str) and web_url.strip() else None,
        created=created if isinstance(created, str) else None,
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


def merge_users(refs: Iterable[UserRef]) -> tuple[UserRef, ...]:
    """One ref per user: refs sharing an address or an object id are the same user, unless they contradict each
    other (the same address with two object ids, or the reverse): then each is kept, and bound on its own."""
    merged: list[UserRef] = []
    for ref in refs:
        for index, known in enumerate(merged):
            same_address = ref.address and known.address and ref.address.lower() == known.address.lower()
            same_object = ref.object_id and known.object_id and ref.object_id.lower() == known.object_id.lower()
            other_address = ref.address and known.address and not same_address
            other_object = ref.object_id and known.object_id and not same_object
            if (same_address or same_object) and not (other_address or other_object):
                merged[index] = UserRef(
                    address=known.address or ref.address, object_id=known.object_id or ref.object_id
                )
                break
        else:
            merged.append(ref)
    return tuple(merged)


def user_ref(address: str | None, object_id: str | None, where: str = "") -> UserRef | None:
    """The user named by an address and/or an object id; ``None`` when neither names anyone.

    Every parser builds its users here, so this is where an object id that is not a GUID is refused (400, nothing
    queued): Graph would resolve anything else as a UPN, i.e. possibly as another user.
    """
    if address and "@" not in address:
        address = None  # an accountName without a domain cannot name a mailbox
    if not address and not object_id:
        return None
    try:
        return UserRef(address=address.lower() if address else None, object_id=_object_id(object_id))
    except ValueError as error:
        raise MalformedPayload(f"{where or 'body'}: {error}") from error


def _object_id(value: str | None) -> str | None:
    return object_id_or_error(value) if value else None


def first_text(data: Mapping[str, Any], *keys: str) -> str | None:
    """The first of ``keys`` holding a non-blank string, stripped."""
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def loose_json_object(value: object) -> Mapping[str, Any]:
    """An object given as itself or as JSON text (Defender's AdditionalFields, an audit record's Data).
    Anything else reads as empty: these only add detail, so they never fail a record."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}
