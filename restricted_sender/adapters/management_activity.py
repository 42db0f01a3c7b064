"""The Office 365 Management Activity API over httpx (the ``ManagementActivity`` port).

Tokens are for ``https://manage.office.com`` (or the government cloud's host) and carry the application role
``ActivityFeed.Read``. Content URIs are checked against the configured API root before the token goes
anywhere: a notification that names another host is refused, not fetched (no SSRF, no token leak).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from restricted_sender.adapters.http import send
from restricted_sender.adapters.identity import TokenProvider
from restricted_sender.errors import ContentExpired, ServiceRefused, TransientServiceError
from restricted_sender.intake.o365 import check_content_uri
from restricted_sender.retry import RetryPolicy, with_retries

SERVICE = "o365"
DEFAULT_SCOPE = "https://manage.office.com/.default"
CONTENT_TYPE = "Audit.General"  # alert records (RecordType 40) and HygieneEvent (51) arrive here


def management_scope(api_root: str) -> str:
    """The token scope for ``api_root``: its own host in a Microsoft cloud (GCC, GCC High, DoD), else the default."""
    host = httpx.URL(api_root).host
    return f"https://{host}/.default" if host.startswith("manage") else DEFAULT_SCOPE


class ManagementActivityApi:
    def __init__(
        self,
        client: httpx.AsyncClient,
        token: TokenProvider,
        *,
        api_root: str,
        tenant_id: str,
        publisher_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._client = client
        self._token = token
        self._root = api_root.rstrip("/")
        self._tenant_id = tenant_id
        self._publisher_id = publisher_id or tenant_id  # Microsoft throttles per publisher: name ours
        self._retry = retry or RetryPolicy()

    @property
    def feed(self) -> str:
        return f"{self._root}/api/v1.0/{self._tenant_id}/activity/feed"

    async def content(self, content_uri: str) -> Sequence[Mapping[str, Any]]:
        uri = check_content_uri(content_uri, api_root=self._root, tenant_id=self._tenant_id)
        data = await self._call("content", "GET", uri, params={"PublisherIdentifier": self._publisher_id})
        if not isinstance(data, list):
            raise TransientServiceError(SERVICE, "content: the blob is not a JSON array")
        return [r for r in data if isinstance(r, dict)]

    async def start(self, content_type: str, webhook: Mapping[str, Any] | None) -> Mapping[str, Any]:
        params = {"contentType": content_type, "PublisherIdentifier": self._publisher_id}
        body = {"webhook": dict(webhook)} if webhook else None
        try:
            data = await self._call(
                "subscriptions/start", "POST", f"{self.feed}/subscriptions/start", params=params, json=body
            )
        except ServiceRefused as refused:
            if "AF20024" not in refused.message:
                raise
            # "The subscription is already enabled. No property change.": starting again is idempotent for us.
            current = [s for s in await self.subscriptions() if s.get("contentType") == content_type]
            return current[0] if current else {"contentType": content_type, "status": "enabled"}
        return data if isinstance(data, dict) else {}

    async def subscriptions(self) -> Sequence[Mapping[str, Any]]:
        params = {"PublisherIdentifier": self._publisher_id}
        data = await self._call("subscriptions/list", "GET", f"{self.feed}/subscriptions/list", params=params)
        return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []

    async def _call(self, what: str, method: str, url: str, **kwargs: Any) -> Any:
        async def once() -> httpx.Response:
            headers = {"Authorization": f"Bearer {await self._token()}"}
            return await send(
                SERVICE, what, lambda: self._client.request(method, url, headers=headers, **kwargs), _problem
            )

        response = await with_retries(once, self._retry)
        if response.status_code >= 400:
            problem = _problem(response)
            if "AF20051" in problem or "AF20050" in problem:  # expired, or no such content: gone for good
                raise ContentExpired(SERVICE, f"{what}: {problem}", http_status=response.status_code)
            if response.status_code in (401, 403):
                problem += " (the identity needs the Office 365 Management APIs application role ActivityFeed.Read)"
            raise ServiceRefused(
                SERVICE, f"{what}: HTTP {response.status_code}: {problem}", http_status=response.status_code
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as error:
            raise TransientServiceError(SERVICE, f"{what}: the answer is not JSON") from error


def _problem(response: httpx.Response) -> str:
    """The service's ``{"error": {"code", "message"}}``, else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    return response.text[:200]
