"""The App Service managed-identity endpoint (``IDENTITY_ENDPOINT``, api-version 2019-08-01)."""

from __future__ import annotations

import hmac
import uuid

from simulator.tokens import DEFAULT_CLIENT_ID, TokenIssuer, normalize_resource
from simulator.wire import Request, Response, json_response

API_VERSION = "2019-08-01"


def _error(status: int, message: str) -> Response:
    # The App Service token service answers errors with this body, not an OAuth error.
    return json_response(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})


def get_token(request: Request, issuer: TokenIssuer, identity_header: str) -> Response:
    presented = request.header("X-IDENTITY-HEADER")
    if presented is None or not hmac.compare_digest(presented.encode(), identity_header.encode()):
        return _error(401, "Unauthorized: the X-IDENTITY-HEADER header is missing or does not match.")
    version = request.query.get("api-version")
    if version != API_VERSION:
        return _error(400, f"Unsupported api-version {version!r}; this endpoint serves {API_VERSION}.")
    resource = request.query.get("resource", "").strip()
    if not resource:
        return _error(400, "The resource parameter is required.")
    client_id = request.query.get("client_id") or DEFAULT_CLIENT_ID
    token, expires_on = issuer.issue(normalize_resource(resource), client_id=client_id)
    return json_response(
        200,
        {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id,
        },
    )
