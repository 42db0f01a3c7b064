"""Access tokens the simulator issues and checks.

Tokens are JWT-shaped (``header.payload.signature``, HS256 with a key private to one simulator) so a client
that peeks at claims sees the usual ``aud``/``tid``/``exp``; the services only trust tokens this simulator
signed, and only for their own audience.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GRAPH_RESOURCE = "https://graph.microsoft.com"
EXCHANGE_RESOURCE = "https://outlook.office365.com"
# Real tokens may carry the resource's application id as the audience instead of its URI.
AUDIENCE_ALIASES: dict[str, frozenset[str]] = {
    GRAPH_RESOURCE: frozenset({GRAPH_RESOURCE, "00000003-0000-0000-c000-000000000000"}),
    EXCHANGE_RESOURCE: frozenset({EXCHANGE_RESOURCE, "00000002-0000-0ff1-ce00-000000000000"}),
}
DEFAULT_CLIENT_ID = "7d4b1c8e-3f0a-4e55-9a61-5c2d8b9e0f13"
TOKEN_LIFETIME_SECONDS = 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def normalize_resource(resource: str) -> str:
    """``https://graph.microsoft.com/.default`` and ``.../`` name the same resource."""
    resource = resource.strip()
    if resource.endswith("/.default"):
        resource = resource[: -len("/.default")]
    return resource.rstrip("/")


@dataclass(frozen=True)
class TokenProblem:
    """Why a bearer token was refused; ``message`` is worded like the services' own."""

    reason: str  # missing | malformed | signature | expired | audience
    message: str


# Unix seconds. Tokens are stamped and checked on the clock their clients compare ``expires_on``/``exp`` with:
# azure-identity's token cache and the product's TokenValidator read the machine's clock, never the replay's
# ``--now``, so a token stamped on a clock years away would look expired (or good for years) to its client.
TokenClock = Callable[[], float]


class TokenIssuer:
    def __init__(self, tenant_id: str, clock: TokenClock = time.time) -> None:
        self._key = secrets.token_bytes(32)
        self.tenant_id = tenant_id
        self._clock = clock

    def issue(
        self, resource: str, *, client_id: str | None = None, lifetime: int = TOKEN_LIFETIME_SECONDS
    ) -> tuple[str, int]:
        """A token for ``resource`` and its expiry in unix seconds."""
        now = int(self._clock())
        expires_on = now + lifetime
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": expires_on,
            "appid": client_id or DEFAULT_CLIENT_ID,
            "idtyp": "app",
            "tid": self.tenant_id,
            "uti": uuid.uuid4().hex,
        }
        header = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=(",", ":")).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}", expires_on

    def check(self, authorization: str | None, resource: str) -> TokenProblem | None:
        """None when ``authorization`` is ``Bearer <a live token of ours for resource>``."""
        if not authorization or not authorization.strip():
            return TokenProblem("missing", "Access token is empty.")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return TokenProblem("missing", "Access token is empty.")
        parts = token.split(".")
        if len(parts) != 3:
            return TokenProblem("malformed", "IDX14100: JWT is not well formed, there are no dots (.).")
        header, payload, signature = parts
        expected = _b64(hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return TokenProblem("signature", "Access token validation failure. Invalid signature.")
        try:
            claims: dict[str, Any] = json.loads(_unb64(payload))
        except ValueError:
            return TokenProblem("malformed", "IDX14102: Unable to decode the payload as Base64Url encoded string.")
        if int(claims.get("exp", 0)) <= self._clock():
            return TokenProblem("expired", "Lifetime validation failed, the token is expired.")
        audience = normalize_resource(str(claims.get("aud", "")))
        if audience not in AUDIENCE_ALIASES.get(resource, frozenset({resource})):
            return TokenProblem("audience", "Access token validation failure. Invalid audience.")
        return None
