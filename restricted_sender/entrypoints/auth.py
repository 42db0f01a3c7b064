"""Entra ID bearer tokens for the admin endpoints (README: The admin API; how Entra access tokens are validated:
https://learn.microsoft.com/entra/identity-platform/access-tokens).

:class:`TokenValidator` checks an ``Authorization: Bearer <access token>`` header the way Entra's tokens must be
checked: RS256 only, the signing key picked by ``kid`` from the tenant's published key set, issuer, audience,
lifetime (with leeway), tenant, and finally the app role the endpoint needs. Anything wrong with the token is
:class:`~restricted_sender.errors.Unauthorized` (401); a valid token without the role is
:class:`~restricted_sender.errors.Forbidden` (403); failing to fetch the metadata or keys is
:class:`~restricted_sender.errors.TransientServiceError` (``identity``; 503). Messages never contain the token.

This module imports PyJWT and cryptography: only the admin endpoints import it, lazily, so the webhook path does
not pay for them.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import exceptions as jwt_errors

from restricted_sender.core.untrusted import guard_logger
from restricted_sender.errors import ConfigurationError, Forbidden, TransientServiceError, Unauthorized
from restricted_sender.model import Operator
from restricted_sender.settings import ENTRA_AUTHORITY

log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)

# Fixed, never taken from the token: with a list that mixes HS* and RS*, a public key becomes an HMAC secret.
ALGORITHMS = ("RS256",)
# An unknown kid refetches the key set at most this often: a flood of made-up kids cannot hammer the endpoint.
KID_REFETCH_INTERVAL = 300.0
# After a failed scheduled refresh the cached keys stay in use; the next attempt waits this long.
REFRESH_RETRY_INTERVAL = 60.0
# While the metadata or keys cannot be fetched (and none are cached), the failure is answered from memory for this
# long: a flood of bad tokens during an Entra outage is not a flood of metadata fetches.
FAILURE_HOLD = 10.0
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "tid", "oid"]
MAX_TOKEN_LENGTH = 16 * 1024
_SERVICE = "identity"
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_USER_NAME_CLAIMS = ("preferred_username", "upn", "unique_name")  # v2, then v1


@dataclass(frozen=True)
class _Metadata:
    issuer: str
    jwks_uri: str


class TokenValidator:
    """Validates Entra ID access tokens for one tenant and one API app. Keep one per process (it caches).

    ``tenant_id`` is the directory id (GUID); ``audiences`` the API app's client id and/or app id URI
    (``api://...``), any of which ``aud`` may carry. Metadata and keys are fetched with ``client`` from
    ``{authority}/{tenant}/v2.0/.well-known/openid-configuration`` and cached for ``metadata_ttl`` seconds;
    ``clock`` (unix seconds) drives the cache and the token lifetime checks, with ``leeway`` seconds of skew.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        tenant_id: str,
        audiences: Sequence[str],
        *,
        authority: str = ENTRA_AUTHORITY,
        leeway: float = 60,
        clock: Callable[[], float] = time.time,
        metadata_ttl: float = 24 * 3600,
    ) -> None:
        tenant_id = tenant_id.strip()
        if not _GUID.match(tenant_id):
            raise ConfigurationError("the tenant for token validation must be the directory (tenant) id, a GUID")
        if isinstance(audiences, str):
            audiences = [audiences]
        audience_list = [a.strip() for a in audiences if a and a.strip()]
        if not audience_list:
            raise ConfigurationError("token validation needs at least one audience (the API's client id or URI)")
        self._client = client
        self.tenant_id = tenant_id.lower()
        self.audiences: tuple[str, ...] = tuple(audience_list)
        self.authority = authority.rstrip("/")
        self.metadata_url = f"{self.authority}/{self.tenant_id}/v2.0/.well-known/openid-configuration"
        # v1 tokens (API manifest accessTokenAcceptedVersion null/1) carry this issuer whatever authority the
        # client used (public cloud; sovereign clouds use another STS host).
        self.v1_issuer = f"https://sts.windows.net/{self.tenant_id}/"
        self._leeway = float(leeway)
        self._clock = clock
        self._ttl = float(metadata_ttl)
        self._metadata: _Metadata | None = None
        self._keys: dict[str, Any] = {}  # kid -> RSAPublicKey
        self._next_refresh = -math.inf
        self._kid_refetched_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        self._failure: TransientServiceError | ConfigurationError | None = None
        self._failed_at = -math.inf

    def __repr__(self) -> str:
        return (
            f"TokenValidator(tenant_id={self.tenant_id!r}, audiences={self.audiences!r}, authority={self.authority!r})"
        )

    # -- the check -------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client the validator was given (for owners that hand it a client of its own)."""
        await self._client.aclose()

    async def authenticate(self, authorization: str | None, *, role: str | tuple[str, ...]) -> Operator:
        """The operator behind ``authorization`` (the whole header value), who must hold app role ``role``.

        ``role`` may be a tuple of roles, any one of which will do.
        """
        wanted = (role,) if isinstance(role, str) else role
        if not wanted:
            raise ConfigurationError("an admin endpoint must name the app role it needs")
        token = _bearer_token(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            raise Unauthorized("malformed token") from None
        # The header is trusted for nothing but picking the key; decode() enforces RS256 on its own as well.
        if header.get("alg") != "RS256":
            raise Unauthorized("token algorithm not allowed (RS256 only)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("token has no key id (kid)")
        key = await self._signing_key(kid)
        claims = self._decode(token, key)
        self._check_lifetime(claims)
        if not isinstance(claims["tid"], str) or claims["tid"].lower() != self.tenant_id:
            raise Unauthorized("token is for another tenant")
        operator = _operator(claims)
        if operator.roles.isdisjoint(wanted):
            names = ", ".join(f"'{r}'" for r in wanted)
            raise Forbidden(
                f"the caller lacks the {names} app role"
                if len(wanted) == 1
                else f"the caller lacks all of the app roles {names}"
            )
        return operator

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        assert self._metadata is not None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=list(self.audiences),
                issuer=[self._metadata.issuer, self.v1_issuer],
                # Lifetime is checked against the injected clock in _check_lifetime.
                options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt_errors.InvalidAlgorithmError:
            raise Unauthorized("token algorithm not allowed (RS256 only)") from None
        except jwt_errors.InvalidSignatureError:
            raise Unauthorized("bad token signature") from None
        except jwt_errors.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the required '{exc.claim}' claim") from None
        except jwt_errors.InvalidAudienceError:
            raise Unauthorized("wrong audience") from None
        except jwt_errors.InvalidIssuerError:
            raise Unauthorized("wrong issuer") from None
        except jwt_errors.DecodeError:
            raise Unauthorized("malformed token") from None
        except jwt_errors.PyJWTError:
            raise Unauthorized("invalid token") from None
        return claims

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise Unauthorized(f"token {name} claim is not a number")
        if now >= claims["exp"] + self._leeway:
            raise Unauthorized("token expired")
        if "nbf" in claims and claims["nbf"] > now + self._leeway:
            raise Unauthorized("token not yet valid")
        if claims["iat"] > now + self._leeway:
            raise Unauthorized("token issued in the future")

    # -- metadata and keys -----------------------------------------------------------------------------------

    async def _signing_key(self, kid: str) -> Any:
        if not self._keys and self._failure is not None and self._clock() < self._failed_at + FAILURE_HOLD:
            raise self._held()
        if not self._keys or self._clock() >= self._next_refresh:
            await self._load(full=True)
        key = self._keys.get(kid)
        if key is None:
            now = self._clock()
            if now - self._kid_refetched_at >= KID_REFETCH_INTERVAL:
                self._kid_refetched_at = now
                await self._load(full=False)
                key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("token signed with an unknown key")
        return key

    async def _load(self, *, full: bool) -> None:
        """Fetch (``full``: metadata and keys; else keys), sharing a fetch already in flight."""
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._fetch(full=full))
            # A waiter cancelled mid-fetch leaves the task unawaited: take its outcome so nothing is logged.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight = task
        await asyncio.shield(task)

    async def _fetch(self, *, full: bool) -> None:
        try:
            metadata = self._metadata
            if full or metadata is None:
                metadata = _parse_metadata(await self._get_json(self.metadata_url, "OpenID metadata"))
            # Keys from the v2 jwks_uri: Entra signs v1 and v2 tokens with the same keys (the v1 metadata's
            # .../discovery/keys publishes the same set), so one key set validates both token versions.
            keys = _parse_keys(await self._get_json(metadata.jwks_uri, "signing keys"))
        except (TransientServiceError, ConfigurationError) as exc:
            if full and self._keys:
                log.warning("token validation: refreshing keys failed, keeping the cached ones: %s", exc.message)
                self._next_refresh = self._clock() + REFRESH_RETRY_INTERVAL
                return
            if not self._keys:
                self._failure, self._failed_at = exc, self._clock()
            raise
        self._metadata = metadata
        self._keys = keys
        self._failure = None
        if full:
            self._next_refresh = self._clock() + self._ttl

    def _held(self) -> TransientServiceError | ConfigurationError:
        """The last failure again, without asking Entra: a fresh error, told when to retry."""
        failure = self._failure
        if isinstance(failure, TransientServiceError):
            wait = max(math.ceil(self._failed_at + FAILURE_HOLD - self._clock()), 1)
            return TransientServiceError(
                _SERVICE,
                failure.message.removeprefix(f"{_SERVICE}: "),
                http_status=failure.http_status,
                retry_after=max(failure.retry_after or 0, wait),
            )
        assert failure is not None
        return ConfigurationError(failure.message)

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            response = await self._client.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TransientServiceError(_SERVICE, f"cannot fetch the {what} ({type(exc).__name__})") from None
        status = response.status_code
        if status in (400, 404):
            # Entra answers 400 invalid_tenant (AADSTS90002) for a tenant it does not know: a settings problem.
            raise ConfigurationError(f"{_SERVICE}: the {what} at {url} answered HTTP {status}: check the tenant id")
        if status != 200:
            raise TransientServiceError(
                _SERVICE,
                f"the {what} answered HTTP {status}",
                http_status=status,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        try:
            return response.json()
        except ValueError:
            raise TransientServiceError(_SERVICE, f"the {what} is not JSON", http_status=status) from None


def _bearer_token(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise Unauthorized("missing Authorization header (expected: Bearer <Entra ID access token>)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("the Authorization header must use the Bearer scheme")
    token = token.strip()
    if not token:
        raise Unauthorized("missing bearer token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("token too large")
    return token


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value.strip() else None


def _user_name(claims: Mapping[str, Any]) -> str | None:
    for claim in _USER_NAME_CLAIMS:
        value = _text(claims, claim)
        if value is not None:
            return value
    return None


def _operator(claims: Mapping[str, Any]) -> Operator:
    object_id = _text(claims, "oid")
    if object_id is None:
        raise Unauthorized("token oid claim is not a string")
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized("token roles claim is not a list of role names")
    app_id = _text(claims, "azp") or _text(claims, "appid")  # v2, v1
    # App-only (client-credentials) tokens say idtyp=app and carry no user names: the app is the operator.
    person = None if claims.get("idtyp") == "app" else _user_name(claims)
    name = person or app_id
    if name is None:
        raise Unauthorized("token names neither a user nor an app")
    return Operator(object_id=object_id, name=name, roles=frozenset(roles), app_id=app_id)


def _parse_metadata(document: Any) -> _Metadata:
    if not isinstance(document, dict):
        raise TransientServiceError(_SERVICE, "the OpenID metadata is not a JSON object")
    issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
    if not isinstance(issuer, str) or not issuer or not isinstance(jwks_uri, str) or not jwks_uri:
        raise TransientServiceError(_SERVICE, "the OpenID metadata lacks issuer or jwks_uri")
    return _Metadata(issuer=issuer, jwks_uri=jwks_uri)


def _parse_keys(document: Any) -> dict[str, Any]:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise TransientServiceError(_SERVICE, "the signing-key set has no keys list")
    keys: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm="RS256").key
        except (jwt_errors.PyJWTError, ValueError, TypeError, KeyError):
            continue  # one unusable key must not hide the others
    if not keys:
        raise TransientServiceError(_SERVICE, "the signing-key set has no usable RS256 key")
    return keys


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


__all__ = ["TokenValidator"]
