"""Which shape a posted body is, and its alerts: Graph alerts_v2 (one, or a ``{"value": [...]}`` list) or the
Sentinel incident and alert bodies a Logic App playbook posts, bare or wrapped as ``{"Body": ...}``.

Above both parsers, so neither imports the other: :mod:`restricted_sender.intake.sentinel` builds on the field
helpers of :mod:`restricted_sender.intake.alerts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from restricted_sender.errors import MalformedPayload
from restricted_sender.intake import sentinel
from restricted_sender.intake.alerts import ACCEPTED_SHAPES, ALERTS_V2_KEYS, at, parse_alert_v2
from restricted_sender.intake.defender import is_defender_batch, parse_records
from restricted_sender.model import SOURCE_ALERTS_V2, AlertReport


def parse_alert_payload(
    payload: object,
    *,
    source: str = SOURCE_ALERTS_V2,
    is_target: Callable[[str], bool] | None = None,
) -> tuple[AlertReport, ...]:
    """Every alert in the payload, in order. Raises :class:`MalformedPayload` for an unknown shape.

    ``source`` is the kind given to alerts_v2 reports (the poller passes ``SOURCE_POLL``); Sentinel reports are
    always ``SOURCE_SENTINEL``. ``is_target`` picks an incident's title among its alerts' names (see
    :func:`restricted_sender.intake.sentinel.parse_incident`).
    """
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
        return tuple(parse_alert_v2(item, at(where, f"value[{i}]"), source) for i, item in enumerate(items))
    if not any(key in payload for key in ALERTS_V2_KEYS):
        raise MalformedPayload(f"unknown payload shape{' in Body' if where else ''}: {ACCEPTED_SHAPES}")
    return (parse_alert_v2(payload, where or "body", source),)


def check_payload(payload: Any) -> None:
    """Any body the function app accepts: a Management Activity notification (a JSON array of content
    pointers, whose tenant is checked when it is replayed), Defender streaming records, or an alert body."""
    if isinstance(payload, list):
        for index, item in enumerate(payload):
            if not isinstance(item, dict) or not isinstance(item.get("contentUri"), str):
                raise MalformedPayload(f"[{index}]: a Management Activity notification item needs a contentUri")
    elif is_defender_batch(payload):
        parse_records(payload)
    else:
        parse_alert_payload(payload)
