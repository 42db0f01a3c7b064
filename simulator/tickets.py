"""A generic ticket webhook sink: records deliveries, deduplicated on ``Idempotency-Key``."""

from __future__ import annotations

from simulator.state import TenantState
from simulator.wire import NotJson, Request, Response, json_response


def webhook(request: Request, state: TenantState) -> Response:
    try:
        body = request.json()
    except NotJson as exc:
        return json_response(400, {"error": {"code": "BadRequest", "message": str(exc)}})
    ticket, created = state.record_ticket(
        request.header("Idempotency-Key"),
        request.header("X-Signature"),
        body,
        dict(request.headers.items()),
    )
    if created:
        return json_response(201, {"id": ticket["id"], "status": "created"})
    return json_response(200, {"id": ticket["id"], "status": "existing"})
