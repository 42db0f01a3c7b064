"""Entra ID for the admin API: OpenID metadata, the signing-key set, and access tokens signed with real RSA keys.

Different from :mod:`simulator.tokens` (managed-identity tokens the simulated Graph and Exchange accept): these are
the tokens an operator presents to the product's own admin endpoints, validated by the product against the
metadata and keys served here exactly as it validates Entra's.

Two RSA-2048 keys exist per simulator, made when first needed (keeps ``Simulator`` start fast): the *active* key
signs tokens and is published in the key set; the *rogue* key is never published and signs ``wrong-key`` tokens
(which still carry the active key's ``kid``, so only the signature check can catch them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from simulator.tenant import Json, Tenant
from simulator.tokens import TokenClock
from simulator.wire import Request, Response, json_response

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

TokenVariant = Literal[
    "valid",
    "expired",
    "not-yet-valid",
    "wrong-issuer",
    "wrong-audience",
    "wrong-key",
    "alg-none",
    "no-role",
    "hs256",
    "app-only",
    "other-tenant",
]
VARIANTS: tuple[str, ...] = get_args(TokenVariant)
TokenVersion = Literal["1.0", "2.0"]

DEFAULT_AUDIENCE = "api://restricted-sender-responder"
DEFAULT_API_CLIENT_ID = "2c9a7d14-6b3e-4f58-9d21-8e0b5a4c7f36"
# The app the operator signs in through (delegated tokens) or that calls with its own identity (app-only).
DEFAULT_CALLER_APP_ID = "b6e4f0a2-1d3c-4a7b-8e95-0c2f6a1d4e83"
DEFAULT_ROLES = ("Sender.Unblock",)
DEFAULT_LIFETIME = 3600
WRONG_AUDIENCE = "00000003-0000-0000-c000-000000000000"  # Microsoft Graph: a token meant for another API
OTHER_TENANT_ID = "0b4e7c1d-9a2f-4e63-8d05-6f1a3b2c9e74"
_EXPIRED_BY = 600  # seconds past expiry (well beyond any validator's clock-skew leeway)
_VALID_IN = 600  # seconds until a not-yet-valid token starts
_AUTH_METHODS = ("client_secret_post", "private_key_jwt", "client_secret_basic")
_CLAIMS_SUPPORTED = (
    "sub iss cloud_instance_name cloud_instance_host_name cloud_graph_host_name msgraph_host aud exp iat auth_time acr "
    "nonce preferred_username name tid ver at_hash c_hash email"
)
_TOKEN_REQUEST_KEYS = frozenset(
    {"variant", "roles", "upn", "audience", "object_id", "version", "lifetime", "app_id", "claims"}
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_int(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _segment(document: Mapping[str, Any]) -> str:
    return _b64(json.dumps(document, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True)
class AdminApi:
    """The product's API app registration, from the tenant file's ``x-adminApi`` (both keys optional).

    ``audience`` is what minted tokens carry in ``aud`` (the app id URI by default); ``client_id`` is the API
    app's client id, which a real v2 token would carry instead and the product may accept as well.
    """

    audience: str = DEFAULT_AUDIENCE
    client_id: str = DEFAULT_API_CLIENT_ID

    @classmethod
    def from_tenant(cls, tenant: Tenant) -> AdminApi:
        spec = tenant.raw.get("x-adminApi")
        if spec is None:
            return cls()
        where = f"tenant file {tenant.source}: x-adminApi"
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping {{audience, clientId}}")
        unknown = sorted(set(spec) - {"audience", "clientId"})
        if unknown:
            raise ValueError(f"{where} has unknown keys: {', '.join(unknown)} (allowed: audience, clientId)")
        for key in ("audience", "clientId"):
            if key in spec and (not isinstance(spec[key], str) or not spec[key].strip()):
                raise ValueError(f"{where}.{key} must be a non-empty string")
        return cls(
            audience=spec.get("audience", DEFAULT_AUDIENCE).strip(),
            client_id=spec.get("clientId", DEFAULT_API_CLIENT_ID).strip(),
        )


class _Keys:
    """The active (published) and rogue (never published) RSA keys, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: tuple[RSAPrivateKey, RSAPrivateKey, str] | None = None

    def get(self) -> tuple[RSAPrivateKey, RSAPrivateKey, str]:
        with self._lock:
            if self._made is None:
                from cryptography.hazmat.primitives import serialization
                from cryptography.hazmat.primitives.asymmetric import rsa

                active = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                der = active.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                # Entra's kid equals the x5t (SHA-1 thumbprint of the certificate, base64url); there is no
                # certificate here, so the thumbprint of the public key stands in for it.
                kid = _b64(hashlib.sha1(der, usedforsecurity=False).digest())
                self._made = (active, rogue, kid)
            return self._made


class Entra:
    """Metadata, keys and token minting for one simulated tenant."""

    def __init__(self, tenant: Tenant, clock: TokenClock = time.time) -> None:
        self.tenant = tenant
        self.tenant_id = tenant.tenant_id
        self.admin_api = AdminApi.from_tenant(tenant)
        self._keys = _Keys()
        self._clock = clock  # the clock of the validator that will check these tokens (see simulator/tokens.py)

    # -- addresses ---------------------------------------------------------------------------------------

    def issuer(self, base_url: str, version: str = "2.0", tenant_id: str | None = None) -> str:
        tid = tenant_id or self.tenant_id
        return f"https://sts.windows.net/{tid}/" if version == "1.0" else f"{base_url}/{tid}/v2.0"

    def knows_tenant(self, name: str) -> bool:
        """Entra accepts the directory id or any of the tenant's verified domain names in the path."""
        wanted = name.casefold()
        if wanted == self.tenant_id.casefold():
            return True
        return any(
            isinstance(d.get("id"), str) and d["id"].casefold() == wanted and d.get("isVerified", True)
            for d in self.tenant.domains
        )

    def default_upn(self) -> str:
        for domain in self.tenant.domains:
            if domain.get("isVerified", True) and isinstance(domain.get("id"), str):
                return f"admin@{domain['id']}"
        return "admin@contoso.onmicrosoft.com"

    # -- endpoints ---------------------------------------------------------------------------------------

    def metadata(self, request: Request, tenant_in_path: str) -> Response:
        """``GET /{tenant}/v2.0/.well-known/openid-configuration``, with Entra's field names."""
        if not self.knows_tenant(tenant_in_path):
            return invalid_tenant(tenant_in_path)
        base = request.base_url
        tid = self.tenant_id
        oauth = f"{base}/{tid}/oauth2/v2.0"
        return json_response(
            200,
            {
                "token_endpoint": f"{oauth}/token",
                "token_endpoint_auth_methods_supported": list(_AUTH_METHODS),
                "jwks_uri": f"{base}/{tid}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": self.issuer(base),
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{oauth}/authorize",
                "device_authorization_endpoint": f"{oauth}/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{oauth}/logout",
                "claims_supported": _CLAIMS_SUPPORTED.split(),
                "kerberos_endpoint": f"{base}/{tid}/kerberos",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            },
        )

    def keys(self, request: Request, tenant_in_path: str) -> Response:
        """``GET /{tenant}/discovery/v2.0/keys``: the active key only (the rogue key is never published)."""
        if not self.knows_tenant(tenant_in_path):
            return invalid_tenant(tenant_in_path)
        return json_response(200, {"keys": [self.public_jwk(request.base_url)]})

    def public_jwk(self, base_url: str) -> Json:
        active, _, kid = self._keys.get()
        numbers = active.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "x5t": kid,
            "n": _b64_int(numbers.n),
            "e": _b64_int(numbers.e),
            "issuer": self.issuer(base_url),
        }

    def token_request(self, request: Request) -> Response:
        """``POST /_sim/tokens``: ``{"variant", "roles", "upn", "audience", ...}`` (all optional) -> a token."""
        spec: Any = request.json() if request.body.strip() else {}
        if not isinstance(spec, dict):
            raise ValueError('the body must be a JSON object such as {"variant": "valid"}')
        unknown = sorted(set(spec) - _TOKEN_REQUEST_KEYS)
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(unknown)} (allowed: {', '.join(sorted(_TOKEN_REQUEST_KEYS))})")
        roles = spec.get("roles", list(DEFAULT_ROLES))
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValueError("roles must be a list of strings")
        claims = spec.get("claims")
        if claims is not None and not isinstance(claims, dict):
            raise ValueError("claims must be a JSON object of claims to set (null removes one)")
        lifetime = spec.get("lifetime", DEFAULT_LIFETIME)
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 1:
            raise ValueError(f"lifetime must be a whole number of seconds >= 1, got {lifetime!r}")
        for key in ("variant", "upn", "audience", "object_id", "version", "app_id"):
            if key in spec and spec[key] is not None and not isinstance(spec[key], str):
                raise ValueError(f"{key} must be a string")
        token, expires = self.mint(
            request.base_url,
            variant=spec.get("variant") or "valid",
            roles=tuple(roles),
            audience=spec.get("audience"),
            upn=spec.get("upn"),
            object_id=spec.get("object_id"),
            version=spec.get("version") or "2.0",
            lifetime=lifetime,
            app_id=spec.get("app_id"),
            claims=claims,
        )
        return json_response(
            200, {"access_token": token, "token_type": "Bearer", "expires_in": max(0, expires - int(self._clock()))}
        )

    # -- minting -------------------------------------------------------------------------------------------

    def mint(
        self,
        base_url: str,
        *,
        variant: str = "valid",
        roles: Sequence[str] = DEFAULT_ROLES,
        audience: str | None = None,
        upn: str | None = None,
        object_id: str | None = None,
        version: str = "2.0",
        lifetime: int = DEFAULT_LIFETIME,
        app_id: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> tuple[str, int]:
        """A token and its ``exp``. ``claims`` overrides claims after the variant is applied (None removes one)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown token variant {variant!r}; known: {', '.join(VARIANTS)}")
        if version not in ("1.0", "2.0"):
            raise ValueError(f"token version must be '1.0' or '2.0', got {version!r}")
        if isinstance(roles, str):
            raise ValueError("roles must be a sequence of role names, not one string")
        now = int(self._clock())
        iat = nbf = now
        exp = now + lifetime
        if variant == "expired":
            exp = now - _EXPIRED_BY
            iat = nbf = exp - lifetime
        elif variant == "not-yet-valid":
            nbf = now + _VALID_IN
            exp = nbf + lifetime
        tid = OTHER_TENANT_ID if variant == "other-tenant" else self.tenant_id
        issuer = self.issuer(base_url, version, tid)
        if variant == "wrong-issuer":
            issuer = f"https://issuer.invalid/{tid}/" + ("" if version == "1.0" else "v2.0")
        caller = app_id or DEFAULT_CALLER_APP_ID
        oid = object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant_id}/{upn or self.default_upn()}"))
        if variant == "app-only":
            oid = object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant_id}/sp/{caller}"))
        payload: Json = {
            "aud": WRONG_AUDIENCE if variant == "wrong-audience" else (audience or self.admin_api.audience),
            "iss": issuer,
            "iat": iat,
            "nbf": nbf,
            "exp": exp,
        }
        name = upn or self.default_upn()
        if version == "1.0":
            payload.update({"appid": caller, "appidacr": "0" if variant != "app-only" else "1"})
            if variant == "app-only":
                payload["idtyp"] = "app"
            else:
                payload.update({"name": name.split("@")[0].title(), "upn": name, "unique_name": name})
        else:
            payload.update({"azp": caller, "azpacr": "0" if variant != "app-only" else "1"})
            if variant == "app-only":
                payload["idtyp"] = "app"
            else:
                payload.update({"name": name.split("@")[0].title(), "preferred_username": name})
        # sub is pairwise (per user and app) for users; for an app's own identity Entra sets it to the oid.
        sub = oid if variant == "app-only" else _b64(hashlib.sha256(f"{oid}/{caller}".encode()).digest()[:24])
        payload.update({"oid": oid, "sub": sub})
        if variant != "no-role":
            payload["roles"] = list(roles)
        payload.update({"tid": tid, "uti": _b64(uuid.uuid4().bytes), "ver": version})
        for claim, value in (claims or {}).items():
            if value is None:
                payload.pop(claim, None)
            else:
                payload[claim] = value
        return self._sign(payload, variant), exp

    def _sign(self, payload: Json, variant: str) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        active, rogue, kid = self._keys.get()
        if variant == "alg-none":
            return f"{_segment({'typ': 'JWT', 'alg': 'none', 'kid': kid})}.{_segment(payload)}."
        if variant == "hs256":
            # The classic confusion: HMAC keyed with the published public key, hoping the validator hands that
            # key to whatever algorithm the header names.
            secret = active.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            signing_input = f"{_segment({'typ': 'JWT', 'alg': 'HS256', 'kid': kid})}.{_segment(payload)}"
            return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
        signer = rogue if variant == "wrong-key" else active
        signing_input = f"{_segment({'typ': 'JWT', 'alg': 'RS256', 'kid': kid})}.{_segment(payload)}"
        signature = signer.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"


def invalid_tenant(tenant_in_path: str) -> Response:
    """Entra's answer for a tenant it does not know (400, an OAuth error body)."""
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return json_response(
        400,
        {
            "error": "invalid_tenant",
            "error_description": (
                f"AADSTS90002: Tenant '{tenant_in_path}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud. Check with your subscription administrator, this may happen "
                f"if there are no active subscriptions for the tenant. Trace ID: {trace} Correlation ID: {correlation} "
                f"Timestamp: {stamp}"
            ),
            "error_codes": [90002],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": "https://login.microsoftonline.com/error?code=90002",
        },
    )


def service_error(status: int) -> Response:
    """An injected failure in the shape Entra answers errors (an OAuth error body)."""
    code = "temporarily_unavailable" if status >= 500 or status == 429 else "invalid_request"
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return json_response(
        status,
        {
            "error": code,
            "error_description": f"AADSTS90033: Simulated failure: HTTP {status}. Timestamp: {stamp}",
            "error_codes": [90033],
            "timestamp": stamp,
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        },
    )
