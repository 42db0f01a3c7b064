"""Microsoft Sentinel trigger bodies, as a Logic App playbook posts them -> :class:`AlertReport`. Pure parsing.

- The **incident** trigger body: ``objectSchemaType: "Incident"``, ``object.properties.alerts[]`` (ARM alert
  resources) and ``object.properties.relatedEntities[]`` (ARM entities: ``kind`` + camelCase ``properties``).
  Microsoft-security alerts such as "User restricted from sending email" reach a playbook only this way.
- The flat **alert** trigger body (the SecurityAlert schema, PascalCase): ``AlertDisplayName``,
  ``SystemAlertId``, ``Entities[]`` (``Type`` + PascalCase fields; a JSON string in the SecurityAlert table).

:func:`restricted_sender.intake.payloads.parse_alert_payload` detects these (and the ``{"Body": ...}`` wrapper).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from restricted_sender.errors import MalformedPayload
from restricted_sender.intake.alerts import (
    MAX_ID_CHARS,
    MAX_TIME_CHARS,
    MAX_TITLE_CHARS,
    MAX_URL_CHARS,
    at,
    field_text,
    first_text,
    merge_users,
    parse_json_text,
    user_ref,
)
from restricted_sender.model import SOURCE_SENTINEL, AlertReport, UserRef


def is_incident(body: Mapping[str, Any]) -> bool:
    if str(body.get("objectSchemaType") or "").lower() == "incident":
        return True
    obj = body.get("object")
    props = obj.get("properties") if isinstance(obj, dict) else None
    return isinstance(props, dict) and ("alerts" in props or "relatedEntities" in props)


def is_alert(body: Mapping[str, Any]) -> bool:
    # AlertName: a SecurityAlert row forwarded as is (a query-based playbook) names its alert that way.
    return any(key in body for key in ("AlertDisplayName", "SystemAlertId", "AlertName"))


def parse_incident(
    body: Mapping[str, Any], where: str = "", *, is_target: Callable[[str], bool] | None = None
) -> AlertReport:
    """One report per incident. Its title is the first alert name ``is_target`` accepts (else the first alert
    name), so an incident that grouped our alert with others is still recognised; ``alert_id`` is that alert's."""
    obj = body.get("object")
    if not isinstance(obj, dict):
        raise MalformedPayload(f"{at(where, 'object')}: expected the incident object")
    props = obj.get("properties")
    if not isinstance(props, dict):
        raise MalformedPayload(f"{at(where, 'object.properties')}: expected an object")
    alerts_at = at(where, "object.properties.alerts")
    alerts = props.get("alerts")
    if not isinstance(alerts, list):
        raise MalformedPayload(f"{alerts_at}: expected a list of alerts")
    named: list[tuple[str, str, Mapping[str, Any], Mapping[str, Any]]] = []
    for index, alert in enumerate(alerts):
        place = f"{alerts_at}[{index}]"
        if not isinstance(alert, dict):
            raise MalformedPayload(f"{place}: expected an alert object")
        alert_props = alert.get("properties")
        if not isinstance(alert_props, dict):
            raise MalformedPayload(f"{place}.properties: expected an object")
        name = field_text(alert_props, "alertDisplayName", where=f"{place}.properties", limit=MAX_TITLE_CHARS)
        if name:
            named.append((place, name, alert, alert_props))
    if not named:
        raise MalformedPayload(f"{alerts_at}: no alert has properties.alertDisplayName")
    place, title, alert, alert_props = next(
        (item for item in named if is_target is not None and is_target(item[1])), named[0]
    )
    alert_id = field_text(alert_props, "systemAlertId", where=f"{place}.properties", limit=MAX_ID_CHARS) or field_text(
        alert, "name", "id", where=place, limit=MAX_ID_CHARS
    )
    if not alert_id:
        raise MalformedPayload(f"{place}: an alert needs properties.systemAlertId, name or id")
    if "relatedEntities" in props:
        entities = _entity_list(props["relatedEntities"], at(where, "object.properties.relatedEntities"))
    else:
        # A playbook that passed the designer's Entities array (or Get Accounts' output) beside the incident.
        entities = _entity_list(body.get("Entities", []), at(where, "Entities"))
    props_at = at(where, "object.properties")
    return AlertReport(
        source=SOURCE_SENTINEL,
        alert_id=alert_id,
        title=title,
        users=merge_users(entities, where=props_at),
        web_url=field_text(props, "incidentUrl", where=props_at, limit=MAX_URL_CHARS),
        created=field_text(props, "createdTimeUtc", where=props_at, limit=MAX_TIME_CHARS),
    )


def parse_alert(body: Mapping[str, Any], where: str = "") -> AlertReport:
    """The flat alert trigger body (or a SecurityAlert row)."""
    place = where or "body"
    alert_id = field_text(body, "SystemAlertId", "ProviderAlertId", where=where, limit=MAX_ID_CHARS)
    if not alert_id:
        raise MalformedPayload(f"{place}: a Sentinel alert needs a string SystemAlertId or ProviderAlertId")
    title = field_text(body, "AlertDisplayName", "AlertName", where=where, limit=MAX_TITLE_CHARS)
    if not title:
        raise MalformedPayload(f"{place}: a Sentinel alert needs a string AlertDisplayName")
    return AlertReport(
        source=SOURCE_SENTINEL,
        alert_id=alert_id,
        title=title,
        users=merge_users(_entity_list(body.get("Entities", []), at(where, "Entities")), where=place),
        web_url=field_text(body, "AlertLink", where=where, limit=MAX_URL_CHARS),
        created=field_text(body, "TimeGenerated", "StartTimeUtc", where=where, limit=MAX_TIME_CHARS),
    )


def _entity_list(value: object, where: str) -> tuple[UserRef, ...]:
    if value is None:
        return ()  # a null list: no entities (the incident's alerts may still name its users elsewhere)
    if isinstance(value, str):
        # The SecurityAlert table's Entities column is JSON text, and playbooks pass it on as such.
        value = parse_json_text(value, where) if value.strip() else []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where}: expected a list of entities")
    return tuple(_entity_users(value, where))


def _entity_users(entities: list[Any], where: str) -> Iterator[UserRef]:
    for index, entity in enumerate(entities):
        if not isinstance(entity, dict):
            raise MalformedPayload(f"{where}[{index}]: expected an entity object")
        fields: Mapping[str, Any] = entity
        kind = entity.get("Type") or entity.get("kind")
        if "properties" in entity and "kind" in entity:  # the ARM form: camelCase fields under properties
            fields = entity["properties"]
            if not isinstance(fields, dict):
                raise MalformedPayload(f"{where}[{index}].properties: expected an object")
        kind = str(kind or "").lower()
        if kind == "account":
            name = first_text(fields, "accountName", "Name")
            suffix = first_text(fields, "upnSuffix", "UPNSuffix")
            # Some connectors put the whole UPN in accountName: then it is the address, suffix or not.
            address = name if name and "@" in name else (f"{name}@{suffix}" if name and suffix else None)
            ref = user_ref(address, first_text(fields, "aadUserId", "AadUserId"), f"{where}[{index}].aadUserId")
        elif kind == "mailbox":
            # MDO alerts may name the sender as a mailbox (alerts_v2 does, with mailboxEvidence): dropping it
            # would leave a restricted user unhandled.
            address = first_text(fields, "mailboxPrimaryAddress", "MailboxPrimaryAddress", "upn", "Upn")
            object_id = first_text(fields, "externalDirectoryObjectId", "ExternalDirectoryObjectId")
            ref = user_ref(address, object_id, f"{where}[{index}].externalDirectoryObjectId")
        else:
            continue
        if ref is not None:
            yield ref
