"""Ticket systems. This version speaks the generic webhook: POST the record and evidence as JSON."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from functools import partial
from typing import Any

import httpx

from ..errors import ServiceRefused
from ..retry import RetryPolicy, with_retries
from ..settings import Secret
from .http import send


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the exact body bytes>``: what a receiver recomputes to trust the POST."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookTickets:
    service = "tickets"

    def __init__(
        self, http: httpx.AsyncClient, *, url: str, secret: Secret | None = None, retry: RetryPolicy | None = None
    ) -> None:
        self._http = http
        self._url = url
        self._secret = secret
        self._retry = retry or RetryPolicy()

    async def open(self, correlation_id: str, record: Mapping[str, Any]) -> str:
        body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": correlation_id}
        if self._secret is not None:
            headers["X-Signature"] = signature(self._secret.reveal(), body)
        return await with_retries(lambda: self._post(body, headers), self._retry)

    async def _post(self, body: bytes, headers: dict[str, str]) -> str:
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
