"""Credentials: one managed-identity credential per process; tokens are cached by the credential itself."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

from restricted_sender.errors import TransientServiceError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken
    from azure.core.credentials_async import AsyncTokenCredential

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
_KEEP_MARGIN = 300.0  # seconds: a kept token this close to its expiry is fetched again (azure-identity's own margin)
EXCHANGE_SCOPE = "https://outlook.office365.com/.default"


class TokenProvider(Protocol):
    """A bearer token for one resource; ``fresh`` skips the credential's cache (after the service answered 401)."""

    async def __call__(self, *, fresh: bool = False) -> str: ...


def managed_identity(client_id: str | None) -> AsyncTokenCredential:
    """The user-assigned (``client_id``) or system-assigned managed identity.

    Outside Azure it reads ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` like App Service does, which is how the
    simulator and the tests exercise the real credential.
    """
    from azure.identity.aio import ManagedIdentityCredential  # heavy (aiohttp): never on the webhook path

    inner = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    return cast("AsyncTokenCredential", OneFetchPerScope(inner))


class _ClosedOnExit:
    """``async with`` closes it, as an ``AsyncTokenCredential`` is used."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class IdentityEndpoint(_ClosedOnExit):
    """An App Service-style managed-identity endpoint given explicitly (the simulator's, in the CLI's simulated runs
    and the benchmarks), where azure-identity's ``ManagedIdentityCredential`` would read it from
    ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``. The request is the one that credential sends: ``GET endpoint?
    api-version=2019-08-01&resource=R[&client_id=]`` with ``X-IDENTITY-HEADER``
    (https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference).
    Caching is left to :class:`OneFetchPerScope`, which wraps it."""

    def __init__(self, endpoint: str, header: str, *, client_id: str | None = None, timeout: float = 10) -> None:
        import httpx

        self._endpoint = endpoint
        self._header = header
        self._client_id = client_id
        self._http = httpx.AsyncClient(timeout=timeout)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        import httpx
        from azure.core.credentials import AccessToken
        from azure.core.exceptions import ClientAuthenticationError

        [scope] = scopes
        params = {"api-version": "2019-08-01", "resource": scope.removesuffix("/.default")}
        if self._client_id:
            params["client_id"] = self._client_id
        try:
            response = await self._http.get(self._endpoint, params=params, headers={"X-IDENTITY-HEADER": self._header})
        except httpx.HTTPError as error:
            raise ClientAuthenticationError(f"the identity endpoint did not answer: {error!r}") from error
        if response.status_code != 200:
            raise ClientAuthenticationError(f"the identity endpoint answered HTTP {response.status_code}")
        try:
            body = response.json()
            return AccessToken(str(body["access_token"]), int(body["expires_on"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ClientAuthenticationError(f"the identity endpoint answered no token: {error!r}") from error

    async def close(self) -> None:
        await self._http.aclose()


def identity_endpoint(endpoint: str, header: str, client_id: str | None = None) -> AsyncTokenCredential:
    """:class:`IdentityEndpoint`, with one fetch per scope like :func:`managed_identity`."""
    inner = cast("AsyncTokenCredential", IdentityEndpoint(endpoint, header, client_id=client_id))
    return cast("AsyncTokenCredential", OneFetchPerScope(inner))


class OneFetchPerScope(_ClosedOnExit):
    """Wraps the process's credential so that concurrent requests for one scope share a single fetch.

    azure-identity caches tokens but does not merge concurrent cache misses: a batch of queue messages on a
    cold instance would otherwise each ask the identity endpoint for the same token.
    """

    def __init__(self, inner: AsyncTokenCredential) -> None:
        self._inner = inner
        self._locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._tokens: dict[tuple[str, ...], AccessToken] = {}

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        # A valid token is handed out without the lock: every request asks for one, and queueing them all behind
        # one lock (one hand-off per event-loop turn) made a batch of 16 events wait on each other (bench/burst.py).
        fresh = kwargs.get("claims") is not None  # a claims challenge wants a new token, never the kept one
        kept = None if fresh else self._kept(scopes)
        if kept is not None:
            return kept
        async with self._locks.setdefault(scopes, asyncio.Lock()):
            kept = None if fresh else self._kept(scopes)
            if kept is not None:
                return kept
            token = await self._inner.get_token(*scopes, **kwargs)
            self._tokens[scopes] = token
            return token

    def _kept(self, scopes: tuple[str, ...]) -> AccessToken | None:
        """The token kept for ``scopes`` while it has more than the margin left."""
        kept = self._tokens.get(scopes)
        return kept if kept is not None and kept.expires_on - time.time() > _KEEP_MARGIN else None

    async def close(self) -> None:
        await self._inner.close()


# A claims challenge makes the credential (MSAL underneath) fetch a new token instead of serving its cached one.
_FRESH_TOKEN_CLAIMS = '{"access_token": {"nbf": {"essential": true, "value": "0"}}}'  # noqa: S105


def bearer(credential: AsyncTokenCredential, scope: str) -> TokenProvider:
    async def token(*, fresh: bool = False) -> str:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            if fresh:
                return (await credential.get_token(scope, claims=_FRESH_TOKEN_CLAIMS)).token
            return (await credential.get_token(scope)).token
        except ClientAuthenticationError as error:
            # The identity endpoint being down or slow is worth a later retry; the message says which.
            raise TransientServiceError("identity", f"could not get a token for {scope}: {error.message}") from error

    return token
