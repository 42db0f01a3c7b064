"""The Exchange Online admin endpoint (``/adminapi/beta/{tenant}/InvokeCommand``) over httpx.

Microsoft does not document this endpoint. What it answers, as the ExchangeOnlineManagement module's REST client and
the tools that call the same endpoint in production show (the README's "Unverified assumptions" lists what is still
unconfirmed):

- rows in ``value``, more pages through ``@odata.nextLink`` (re-POSTed with the same body);
- warnings in ``@adminapi.warnings``; non-terminating errors (the cmdlet did not do what was asked) in a *200* under
  ``@adminapi.errors``;
- a failing cmdlet as HTTP 404 or 500 (400 possible) with ``error.details[].message = "Ex…|ExceptionType|text"``
  (older answers: ``error.message = "|ExceptionType|text"``);
- an unknown cmdlet or a missing role as 403, with an empty or non-JSON body.

So an answer is classified by the cmdlet's exception *before* its HTTP status (a 500 carrying a cmdlet exception is a
refusal, not an outage), and only what the module itself retries is retried: 429 (``Retry-After`` in seconds, maybe
fractional), 503, 504, one 401 after a fresh token, and the transient exceptions it names. A write
(``Remove-BlockedSenderAddress``) is retried only when the answer proves the cmdlet never ran (429, 503 with
``Retry-After``, 401); any other failure is :class:`OutcomeUnknown`, and the caller reads the restricted list.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx

from restricted_sender.adapters.identity import TokenProvider
from restricted_sender.core.mailbox import Forwarding, ForwardingSettings, Recipient
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.errors import (
    ObjectNotFound,
    OutcomeUnknown,
    SenderNotBlocked,
    ServiceError,
    ServiceRefused,
    TransientServiceError,
    UnblockLimitReached,
)
from restricted_sender.retry import RetryPolicy, Sleep, backoff, retry_after_seconds

SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
MAX_PAGES = 500
REMOVE = "Remove-BlockedSenderAddress"
# Server-side cmdlets may run up to 15 minutes ("Cmdlets backed by the REST API have a 15-minute timeout":
# https://learn.microsoft.com/powershell/exchange/exchange-online-powershell-v2); we wait this long by default.
DEFAULT_TIMEOUT_SECONDS = 300.0
# The service's wording is undocumented; these cover the known phrasings of "you used up your unblocks". Every refusal
# keeps the service's exact message in the record, so the first real one teaches us its wording.
_UNBLOCK_LIMIT = re.compile(r"unblock\s+limit|exceed\w*\s+the\s+(?:number|limit)\s+of\s+(?:times|unblocks)", re.I)
_NOT_FOUND = re.compile(
    r"ManagementObjectNotFound|couldn't be found|could not be found|isn't blocked|is not blocked", re.IGNORECASE
)
# The exceptions the module's REST client retries (transient directory, server-maintenance and storage faults).
_TRANSIENT = re.compile(
    r"DCOverloaded|SuitabilityDirectory|ServerInMM|ADServerSettingsChanged|StorageTransient|ADTransient"
    r"|TransientException",
    re.IGNORECASE,
)
_PERMISSION_HINT = "check Exchange.ManageAsApp and the Exchange role of the app's identity (scripts/grant-permissions)"


@dataclass(frozen=True, slots=True)
class CmdletError:
    """``Ex6F9304|Microsoft.Exchange.…Exception|text`` taken apart; each part may be missing."""

    code: str | None
    exception: str | None
    text: str

    @classmethod
    def parse(cls, message: str) -> CmdletError:
        parts = message.split("|", 2)
        if len(parts) == 3 and re.fullmatch(r"\s*(Ex[0-9A-Za-z]*)?\s*", parts[0]) and "." in parts[1]:
            return cls(code=parts[0].strip() or None, exception=parts[1].strip() or None, text=parts[2].strip())
        return cls(code=None, exception=None, text=message.strip())

    @property
    def short_type(self) -> str | None:
        return self.exception.rpartition(".")[2] if self.exception else None

    def __str__(self) -> str:
        return f"{self.short_type}: {self.text}" if self.short_type else self.text


class Answer(StrEnum):
    """What an answer means, whatever the cmdlet. One pure rule: :func:`classify`."""

    NOT_FOUND = "not-found"  # the object does not exist (not blocked, no such mailbox or recipient)
    UNBLOCK_LIMIT = "unblock-limit"  # Microsoft's unblock limit for the account
    TRANSIENT = "transient"  # a transient exception the module retries: the cmdlet ran and failed
    REFUSED = "refused"  # any other cmdlet exception: the cmdlet ran and said no
    THROTTLED = "throttled"  # 429, or 503 with Retry-After: the cmdlet never ran
    UNAVAILABLE = "unavailable"  # 503 without Retry-After, 504: the gateway gave up; the cmdlet may have run
    UNAUTHORIZED = "unauthorized"  # 401: try once more with a fresh token
    FORBIDDEN = "forbidden"  # 403 (often with an empty body): a missing role or permission, or an unknown cmdlet
    BAD_REQUEST = "bad-request"  # another 4xx without a cmdlet exception
    FAULT = "fault"  # 500 (or another 5xx) without a cmdlet exception: not retried


def classify(status: int, error: CmdletError | None, *, retry_after: float | None = None) -> Answer:
    """The meaning of an error answer: the cmdlet's exception first, then the HTTP status."""
    if error is not None and error.exception:
        said = f"{error.exception} {error.text}"
        if _NOT_FOUND.search(said):
            return Answer.NOT_FOUND
        if _UNBLOCK_LIMIT.search(said):
            return Answer.UNBLOCK_LIMIT
        if _TRANSIENT.search(said) or (error.code and _TRANSIENT.search(error.code)):
            return Answer.TRANSIENT
        return Answer.REFUSED
    text = error.text if error else ""
    if _UNBLOCK_LIMIT.search(text):
        return Answer.UNBLOCK_LIMIT
    if status == 429 or (status == 503 and retry_after is not None):
        return Answer.THROTTLED
    if status in (503, 504):
        return Answer.UNAVAILABLE
    if status == 401:
        return Answer.UNAUTHORIZED
    if status == 403:
        return Answer.FORBIDDEN
    if _NOT_FOUND.search(text):
        return Answer.NOT_FOUND
    if status >= 500:
        return Answer.FAULT
    return Answer.BAD_REQUEST


@dataclass(frozen=True, slots=True)
class CmdletResult:
    rows: tuple[Mapping[str, Any], ...]
    warnings: tuple[str, ...] = ()


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
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._http = http
        self._tenant_id = tenant_id
        self._token = token
        self._base = base_url.rstrip("/")
        self._origin = _origin(self._base)
        self._retry = retry or RetryPolicy()
        self._page_size = page_size
        self._timeout = timeout
        self._sleep = sleep

    async def blocked_senders(self, address: str | None = None) -> Sequence[BlockedSender]:
        parameters = {"SenderAddress": address} if address else {}
        try:
            result = await self.invoke("Get-BlockedSenderAddress", parameters)
        except ObjectNotFound:
            return []  # asked about one address that is not restricted: an answer, not a failure
        return [BlockedSender.from_row(row) for row in result.rows if _has_address(row)]

    async def mailbox_forwarding(self, address: str) -> Forwarding | None:
        """``Get-Mailbox`` forwarding, with a ``ForwardingAddress`` resolved by ``Get-Recipient`` (a name, alias or
        DN alone does not show where mail goes: a mail contact outside the tenant hides there)."""
        try:
            result = await self.invoke("Get-Mailbox", {"Identity": address})
        except ObjectNotFound:
            return None  # no mailbox (e.g. a shared sender without one): nothing forwards
        if not result.rows:
            return None
        forwarding = Forwarding.from_mailbox(result.rows[0])
        if forwarding.recipient is None:
            return forwarding
        return forwarding.resolved(await self.recipient(forwarding.recipient))

    async def recipient(self, identity: str) -> Recipient | None:
        """``Get-Recipient -Identity``; ``None`` when there is no such recipient."""
        try:
            result = await self.invoke("Get-Recipient", {"Identity": identity})
        except ObjectNotFound:
            return None
        return Recipient.from_row(result.rows[0]) if len(result.rows) == 1 else None

    async def remove_blocked_sender(self, address: str) -> tuple[str, ...]:
        """Send ``Remove-BlockedSenderAddress`` at most once (resent only when the answer proves it never ran).

        Returns the service's warnings. Raises ``UnblockLimitReached`` and ``SenderNotBlocked``; ``ServiceRefused``
        when the cmdlet said no (``http_status`` >= 500 when it said so inside a server error); ``OutcomeUnknown``
        when the answer does not say whether it happened: then read the list, never send it again.
        """
        result = await self.invoke(REMOVE, {"SenderAddress": address}, write=True)
        return result.warnings

    async def set_forwarding(self, address: str, settings: ForwardingSettings) -> None:
        """``Set-Mailbox`` with the three forwarding parameters, a ``None`` sent as JSON ``null`` (``$null``): how
        the module's REST client and other InvokeCommand callers clear a field (e.g. CIPP-API's Set-CIPPForwarding
        sends ``ForwardingSMTPAddress = $null`` through ``ConvertTo-Json``, which writes ``null``). A write: sent
        again only when the answer proves it never ran; otherwise ``OutcomeUnknown`` and the caller reads."""
        await self.invoke("Set-Mailbox", {"Identity": address, **settings.parameters()}, write=True)

    async def invoke(
        self, cmdlet: str, parameters: dict[str, Any], *, write: bool = False, pages: int | None = None
    ) -> CmdletResult:
        """Run one cmdlet; follow ``@odata.nextLink`` (re-POSTing the same body) and return every row, or the rows
        of the first ``pages`` pages."""
        url: str | None = f"{self._base}/adminapi/beta/{self._tenant_id}/InvokeCommand"
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}
        rows: list[Mapping[str, Any]] = []
        warnings: list[str] = []
        for page in range(MAX_PAGES):
            if url is None or page == pages:
                return CmdletResult(tuple(rows), tuple(warnings))
            data = await self._call(url, body, cmdlet, write=write)
            value = data.get("value", [])
            if not isinstance(value, list):
                raise self._unreadable(cmdlet, "'value' is not a list", write).error
            rows.extend(row for row in value if isinstance(row, dict))
            warnings.extend(_texts(_adminapi(data, "warnings")))
            next_link = data.get("@odata.nextLink")
            if next_link is not None and (not isinstance(next_link, str) or _origin(next_link) != self._origin):
                # The bearer token goes wherever nextLink points: never follow it off our own endpoint.
                raise ServiceRefused(self.service, f"{cmdlet}: refusing @odata.nextLink to another host")
            url = next_link
        raise TransientServiceError(self.service, f"{cmdlet}: more than {MAX_PAGES} pages")

    async def _call(self, url: str, body: dict[str, Any], cmdlet: str, *, write: bool) -> dict[str, Any]:
        """One page, retried only as :func:`classify` allows (see the module docstring)."""
        attempt, fresh = 1, False
        while True:
            tried = await self._attempt(url, body, cmdlet, write=write, fresh=fresh)
            if isinstance(tried, dict):
                return tried
            if tried.reauthenticate and not fresh:
                fresh = True  # once: a second 401 with a fresh token is a refusal
                continue
            delay = backoff(self._retry, attempt, tried.retry_after) if tried.retryable else None
            if delay is None:
                raise tried.error
            await self._sleep(delay)
            attempt += 1

    async def _attempt(
        self, url: str, body: dict[str, Any], cmdlet: str, *, write: bool, fresh: bool
    ) -> dict[str, Any] | _Failed:
        """The page's JSON object, or the failure it amounts to."""
        headers = {
            "Authorization": f"Bearer {await self._token(fresh=fresh)}",
            "X-AnchorMailbox": f"APP:{SYSTEM_MAILBOX}@{self._tenant_id}",
            "X-ResponseFormat": "json",
            "X-CmdletName": cmdlet,
            "Prefer": f"odata.maxpagesize={self._page_size}",
        }
        try:
            response = await self._http.post(url, json=body, headers=headers, timeout=self._timeout)
        except (httpx.TimeoutException, httpx.TransportError) as failure:
            what = "timed out" if isinstance(failure, httpx.TimeoutException) else "connection failed"
            message = f"{cmdlet}: {what} ({type(failure).__name__})"
            if write:
                return _Failed(OutcomeUnknown(self.service, message))
            return _Failed(TransientServiceError(self.service, message), retryable=True)
        status = response.status_code
        if status < 300:
            return self._success(response, cmdlet, write)
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        error = _error_of(response)
        answer = classify(status, error, retry_after=retry_after)
        said = str(error) if error and error.text else f"HTTP {status} {response.reason_phrase}".strip()
        return self._failed(answer, cmdlet, said, status, retry_after, write)

    def _success(self, response: httpx.Response, cmdlet: str, write: bool) -> dict[str, Any] | _Failed:
        try:
            data = response.json()
        except ValueError:
            return self._unreadable(cmdlet, "the answer is not JSON", write)
        if not isinstance(data, dict):
            return self._unreadable(cmdlet, "the answer is not a JSON object", write)
        errors = [CmdletError.parse(text) for text in _texts(_adminapi(data, "errors"))]
        if not errors:
            return data
        # Non-terminating errors: the cmdlet ran and did not do (all of) what was asked.
        said = "; ".join(str(e) for e in errors)
        answer = classify(200, errors[0])
        if answer in (Answer.NOT_FOUND, Answer.UNBLOCK_LIMIT):
            return self._failed(answer, cmdlet, said, 200, None, write)
        message = f"{cmdlet}: the answer carries errors: {said}"
        if write:
            return _Failed(OutcomeUnknown(self.service, message, http_status=200))
        return _Failed(ServiceRefused(self.service, message, http_status=200))

    def _failed(
        self, answer: Answer, cmdlet: str, said: str, status: int, retry_after: float | None, write: bool
    ) -> _Failed:
        message = f"{cmdlet}: HTTP {status}: {said}"
        if answer is Answer.NOT_FOUND:
            cls = SenderNotBlocked if cmdlet.endswith("-BlockedSenderAddress") else ObjectNotFound
            return _Failed(cls(self.service, message, http_status=status))
        if answer is Answer.UNBLOCK_LIMIT and cmdlet == REMOVE:
            # The service's own words, whole: the limit's wording is not public.
            return _Failed(UnblockLimitReached(self.service, said, http_status=status))
        transient = TransientServiceError(self.service, message, http_status=status, retry_after=retry_after)
        if answer is Answer.THROTTLED:
            return _Failed(transient, retryable=True, retry_after=retry_after)
        if answer in (Answer.TRANSIENT, Answer.UNAVAILABLE, Answer.FAULT):
            if write:
                return _Failed(OutcomeUnknown(self.service, message, http_status=status))
            # A plain 500 is not retried here (the module does not either): the queue retries the event later.
            return _Failed(transient, retryable=answer is not Answer.FAULT, retry_after=retry_after)
        if answer in (Answer.UNAUTHORIZED, Answer.FORBIDDEN):
            refused = ServiceRefused(self.service, f"{message} ({_PERMISSION_HINT})", http_status=status)
            return _Failed(refused, reauthenticate=answer is Answer.UNAUTHORIZED)
        return _Failed(ServiceRefused(self.service, message, http_status=status))

    def _unreadable(self, cmdlet: str, what: str, write: bool) -> _Failed:
        message = f"{cmdlet}: {what}"
        if write:
            return _Failed(OutcomeUnknown(self.service, message))
        return _Failed(TransientServiceError(self.service, message), retryable=True)


@dataclass(frozen=True, slots=True)
class _Failed:
    """An attempt that failed: the error to raise, and whether another try (after a fresh token) is worth it."""

    error: ServiceError
    retryable: bool = False
    retry_after: float | None = None
    reauthenticate: bool = False


def _has_address(row: Mapping[str, Any]) -> bool:
    return any(str(k).casefold() == "senderaddress" and v for k, v in row.items())


def _adminapi(data: Mapping[str, Any], kind: str) -> object:
    # Documented with the "@"; early answers (and older clients' fixtures) without it.
    return data.get(f"@adminapi.{kind}", data.get(f"adminapi.{kind}"))


def _texts(value: object) -> list[str]:
    """Messages from ``@adminapi.warnings`` / ``@adminapi.errors``: strings, or objects with a message."""
    found: list[str] = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, str) and item.strip():
            found.append(item.strip())
        elif isinstance(item, dict):
            text = next((v for k, v in item.items() if str(k).casefold() in {"message", "errormessage"}), None)
            found.append(
                str(text) if text else "an error without a message (fields: " + ", ".join(map(str, item)) + ")"
            )
    return found


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _error_of(response: httpx.Response) -> CmdletError | None:
    """The cmdlet's error from ``error.details[].message``, ``error.message`` or the inner exception; ``None`` for an
    empty or non-JSON body (a 403 for a missing role often has none)."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()[:300]
        return CmdletError(None, None, text) if text else None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return CmdletError(None, None, str(data)[:300])
    candidates: list[str] = []
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and isinstance(detail.get("message"), str) and detail["message"]:
            candidates.append(detail["message"])
    inner = error.get("innererror")
    internal = inner.get("internalException") if isinstance(inner, dict) else None
    if isinstance(internal, dict) and isinstance(internal.get("message"), str):
        candidates.append(internal["message"])
    if isinstance(error.get("message"), str) and error["message"]:
        candidates.append(error["message"])
    parsed = [CmdletError.parse(c) for c in candidates]
    # The most specific: one that names its exception, else the first text.
    return next((p for p in parsed if p.exception), parsed[0] if parsed else None)
