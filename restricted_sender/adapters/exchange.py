"""The Exchange Online admin endpoint (``/adminapi/beta/{tenant}/InvokeCommand``) over httpx.

Microsoft does not document this endpoint (platform.md §3.3); everything that depends on its shape lives
here and is pinned by contract tests against the simulator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import SenderNotBlocked, ServiceRefused, TransientServiceError, UnblockLimitReached
from ..mailbox import Forwarding
from ..restriction import BlockedSender
from ..retry import RetryPolicy, with_retries
from .http import send
from .identity import TokenProvider

SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
MAX_PAGES = 500
# The service's wording is undocumented; these cover the known phrasings of "you used up your unblocks".
_UNBLOCK_LIMIT = re.compile(r"unblock\s+limit|exceed\w*\s+the\s+(?:number|limit)\s+of\s+(?:times|unblocks)", re.I)
_NOT_FOUND = re.compile(
    r"couldn't be found|could not be found|ManagementObjectNotFound|isn't blocked|is not blocked", re.IGNORECASE
)


class ExchangeAdmin:
    service = "exchange"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        tenant_id: str,
        token: TokenProvider,
        base_url: str = "https://outlook.office365.com",
        retry: RetryPolicy | None = None,
        page_size: int = 1000,
    ) -> None:
        self._http = http
        self._tenant_id = tenant_id
        self._token = token
        self._base = base_url.rstrip("/")
        self._origin = _origin(self._base)
        self._retry = retry or RetryPolicy()
        self._page_size = page_size

    async def blocked_senders(self, address: str | None = None) -> Sequence[BlockedSender]:
        parameters = {"SenderAddress": address} if address else {}
        try:
            rows = await self.invoke("Get-BlockedSenderAddress", parameters)
        except SenderNotBlocked:
            return []  # asked about one address that is not restricted: an answer, not a failure
        return [BlockedSender.from_row(row) for row in rows if row.get("SenderAddress")]

    async def mailbox_forwarding(self, address: str) -> Forwarding | None:
        try:
            rows = await self.invoke("Get-Mailbox", {"Identity": address})
        except ServiceRefused as refused:
            if _NOT_FOUND.search(refused.message):
                return None  # no mailbox (e.g. a shared sender without one): nothing forwards
            raise
        return Forwarding.from_mailbox(rows[0]) if rows else None

    async def remove_blocked_sender(self, address: str) -> None:
        # Never retried when refused: a second try cannot lift Microsoft's unblock limit.
        await self.invoke("Remove-BlockedSenderAddress", {"SenderAddress": address})

    async def invoke(
        self, cmdlet: str, parameters: dict[str, Any], *, pages: int | None = None
    ) -> list[dict[str, Any]]:
        """Run one cmdlet; follow ``@odata.nextLink`` (re-POSTing the same body) and return every row, or the rows
        of the first ``pages`` pages."""
        url: str | None = f"{self._base}/adminapi/beta/{self._tenant_id}/InvokeCommand"
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}
        rows: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            if url is None or page == pages:
                return rows
            data = await with_retries(partial(self._post, url, body, cmdlet), self._retry)
            value = data.get("value", [])
            if not isinstance(value, list):
                raise TransientServiceError(self.service, f"{cmdlet}: 'value' is not a list")
            rows.extend(row for row in value if isinstance(row, dict))
            next_link = data.get("@odata.nextLink")
            if next_link is not None and (not isinstance(next_link, str) or _origin(next_link) != self._origin):
                # The bearer token goes wherever nextLink points: never follow it off our own endpoint.
                raise ServiceRefused(self.service, f"{cmdlet}: refusing @odata.nextLink to another host")
            url = next_link
        raise TransientServiceError(self.service, f"{cmdlet}: more than {MAX_PAGES} pages")

    async def _post(self, url: str, body: dict[str, Any], cmdlet: str) -> dict[str, Any]:
        token = await self._token()
        headers = {
            "Authorization": f"Bearer {token}",
            "X-AnchorMailbox": f"APP:{SYSTEM_MAILBOX}@{self._tenant_id}",
            "X-ResponseFormat": "json",
            "X-CmdletName": cmdlet,
            "Prefer": f"odata.maxpagesize={self._page_size}",
        }
        response = await send(
            self.service, cmdlet, partial(self._http.post, url, json=body, headers=headers), _error_message
        )
        status = response.status_code
        if status >= 400:
            message = _error_message(response)
            if cmdlet == "Remove-BlockedSenderAddress" and _UNBLOCK_LIMIT.search(message):
                raise UnblockLimitReached(self.service, message, http_status=status)
            if cmdlet.endswith("-BlockedSenderAddress") and _NOT_FOUND.search(message):
                raise SenderNotBlocked(self.service, f"{cmdlet}: {message}", http_status=status)
            if status in (401, 403):
                message = f"{message} (check Exchange.ManageAsApp and the Exchange role of the identity)"
            raise ServiceRefused(self.service, f"{cmdlet}: HTTP {status}: {message}", http_status=status)
        try:
            data = response.json()
        except ValueError as error:
            raise TransientServiceError(self.service, f"{cmdlet}: response is not JSON", http_status=status) from error
        if not isinstance(data, dict):
            raise TransientServiceError(self.service, f"{cmdlet}: response is not a JSON object", http_status=status)
        return data


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _error_message(response: httpx.Response) -> str:
    """The most specific message in ``error.details[].message``, ``error.message`` or the inner exception."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return str(data)[:300]
    details = error.get("details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and isinstance(detail.get("message"), str) and detail["message"]:
                return str(detail["message"])
    inner = error.get("innererror")
    if isinstance(inner, dict):
        internal = inner.get("internalException")
        if isinstance(internal, dict) and isinstance(internal.get("message"), str):
            return str(internal["message"])
    message = error.get("message")
    if isinstance(message, str) and message:
        # Exchange prefixes the exception type: "|Microsoft.Exchange...Exception|The actual message".
        return message.rsplit("|", 1)[-1].strip() or message
    return str(error)[:300]
