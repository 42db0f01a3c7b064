"""A generic ticket webhook sink: records deliveries, deduplicated on ``Idempotency-Key``; an ``update`` body adds
a note to the ticket it names."""

from __future__ import annotations

from simulator.state import TenantState
from simulator.wire import NotJson, Request, Response, json_response


def webhook(request: Request, state: TenantState) -> Response:
    try:
        body = request.json()
    except NotJson as exc:
        return json_response(400, {"error": {"code": "BadRequest", "message": str(exc)}})
    if isinstance(body, dict) and body.get("kind") == "update":
        updated = state.update_ticket(str(body.get("ticket")), request.header("Idempotency-Key"), body)
        if updated is None:
            return json_response(404, {"error": {"code": "NotFound", "message": f"no ticket {body.get('ticket')}"}})
        return json_response(200, {"id": updated["id"], "status": "updated"})
    ticket, created = state.record_ticket(
        request.header("Idempotency-Key"),
        request.header("X-Signature"),
        body,
        dict(request.headers.items()),
    )
    if created:
        return json_response(201, {"id": ticket["id"], "status": "created"})
    return json_response(200, {"id": ticket["id"], "status": "existing"})
