"""The generic ticket webhook: POST the ticket as JSON, signed, with an ``Idempotency-Key``.

A new ticket is ``{"kind": "open", "correlation_id", "title", "text", "severity", "record", "evidence"}`` keyed by the
correlation id; a later report of the same restriction is ``{"kind": "update", "ticket", "correlation_id",
"note"}`` keyed by the correlation id and the note, so a receiver can drop exact repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import partial
from typing import Any

import httpx

from restricted_sender.adapters.http import send
from restricted_sender.errors import ServiceRefused
from restricted_sender.model import TicketContent, TicketRef
from restricted_sender.retry import RetryPolicy, with_retries
from restricted_sender.settings import Secret


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the exact body bytes>``: what a receiver recomputes to trust the POST."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookTickets:
    name = "webhook"
    service = "tickets"

    def __init__(
        self, http: httpx.AsyncClient, *, url: str, secret: Secret | None = None, retry: RetryPolicy | None = None
    ) -> None:
        self._http = http
        self._url = url
        self._secret = secret
        self._retry = retry or RetryPolicy()

    async def find_open(self, correlation_id: str) -> TicketRef | None:
        return None  # a webhook cannot be searched; the receiver dedupes on Idempotency-Key instead

    async def create(self, content: TicketContent) -> TicketRef:
        body = {
            "kind": "open",
            "correlation_id": content.correlation_id,
            "title": content.title,
            "severity": content.severity,
            "text": content.text,
            "record": content.record.get("record"),
            "evidence": content.record.get("evidence"),
        }
        reference = await self._post(body, content.correlation_id)
        return TicketRef(id=reference, label=reference)

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        note_key = hashlib.sha256(content.update.encode("utf-8")).hexdigest()[:16]
        body = {"kind": "update", "ticket": ticket.id, "correlation_id": content.correlation_id, "note": content.update}
        await self._post(body, f"{content.correlation_id}:{note_key}")

    async def _post(self, payload: dict[str, Any], key: str) -> str:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self._secret is not None:
            headers["X-Signature"] = signature(self._secret.reveal(), body)
        return await with_retries(lambda: self._send(body, headers), self._retry)

    async def _send(self, body: bytes, headers: dict[str, str]) -> str:
        response = await send(
            self.service,
            "webhook",
            partial(self._http.post, self._url, content=body, headers=headers),
            lambda r: r.text[:300],
        )
        status = response.status_code
        if status >= 400:
            raise ServiceRefused(
                self.service, f"webhook answered HTTP {status}: {response.text[:300]}", http_status=status
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        reference = data.get("id") if isinstance(data, dict) else None
        return str(reference) if reference else f"HTTP {status}"
