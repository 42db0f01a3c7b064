"""Alert payloads -> :class:`AlertReport` values. Pure parsing: no I/O, no policy.

Shapes understood (design §7): a Graph ``security/alerts_v2`` alert object, and a ``{"value": [...]}``
collection of them (what ``GET /security/alerts_v2`` returns and what we document for Logic Apps).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import MalformedPayload
from .model import SOURCE_ALERTS_V2, AlertReport, UserRef

MAX_BODY_BYTES = 1024 * 1024

_ALERT_TYPE = "#microsoft.graph.security.alert"
_USER_EVIDENCE = "#microsoft.graph.security.userevidence"
_MAILBOX_EVIDENCE = "#microsoft.graph.security.mailboxevidence"


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise MalformedPayload("body is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise MalformedPayload(f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def parse_alert_payload(payload: object) -> tuple[AlertReport, ...]:
    """Every alert in the payload, in order. Raises :class:`MalformedPayload` for an unknown shape."""
    if isinstance(payload, dict) and "value" in payload and "title" not in payload:
        items = payload["value"]
        if not isinstance(items, list):
            raise MalformedPayload("'value' must be a list of alerts_v2 alert objects")
        return tuple(_parse_alert(item, f"value[{i}]") for i, item in enumerate(items))
    if isinstance(payload, dict):
        return (_parse_alert(payload, "body"),)
    raise MalformedPayload('unknown payload shape: expected an alerts_v2 alert object or {"value": [alert, ...]}')


def _parse_alert(item: object, where: str) -> AlertReport:
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
        source=SOURCE_ALERTS_V2,
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
        if kind == _USER_EVIDENCE:
            ref = _ref(_text(account, "userPrincipalName"), _text(account, "azureAdUserId"))
        elif kind == _MAILBOX_EVIDENCE:
            address = _text(item, "primaryAddress") or _text(item, "upn") or _text(account, "userPrincipalName")
            ref = _ref(address, _text(account, "azureAdUserId"))
        else:
            continue
        if ref is not None:
            yield ref


def merge_users(refs: Iterable[UserRef]) -> tuple[UserRef, ...]:
    """One ref per user: refs sharing an address or an object id are the same user."""
    merged: list[UserRef] = []
    for ref in refs:
        for index, known in enumerate(merged):
            same_address = ref.address and known.address and ref.address.lower() == known.address.lower()
            same_object = ref.object_id and known.object_id and ref.object_id.lower() == known.object_id.lower()
            if same_address or same_object:
                merged[index] = UserRef(
                    address=known.address or ref.address, object_id=known.object_id or ref.object_id
                )
                break
        else:
            merged.append(ref)
    return tuple(merged)


def _ref(address: str | None, object_id: str | None) -> UserRef | None:
    if address and "@" not in address:
        address = None  # an accountName without a domain cannot name a mailbox
    if not address and not object_id:
        return None
    return UserRef(address=address.lower() if address else None, object_id=object_id)


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None
