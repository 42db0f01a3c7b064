"""Concurrent Graph GET reads coalesced into JSON batches (``POST /$batch``, at most 20 requests each:
https://learn.microsoft.com/graph/json-batching).

Each HTTP request costs the processor more CPU in the client stack (httpx, httpcore, h11, the SDK's middleware)
than the JSON it carries, so the reads an event gathers concurrently (and those of concurrent events) go out
together. A read queued alone is sent alone: there is nothing to gain from wrapping it. Every caller still gets
its own answer or error, raised as the SDK raises them for a read sent alone (``APIError`` with the status, httpx
errors for the transport), so the adapter maps both the same way.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from restricted_sender.errors import TransientServiceError
from restricted_sender.retry import retry_after_seconds

if TYPE_CHECKING:
    from kiota_abstractions.request_adapter import RequestAdapter
    from kiota_abstractions.request_information import RequestInformation

MAX_BATCH = 20  # the service's limit per $batch
# Loop iterations a queue waits for more reads while it keeps growing: reads started by nested gathers arrive an
# iteration or two after the first one.
SETTLE_TICKS = 3
# Throttled or unavailable: the SDK's retry middleware resends these for a read alone; a sub-response is resent here.
RETRYABLE = frozenset({429, 503, 504})
MAX_DELAY = 180.0  # the SDK's RetryHandlerOption.MAX_DELAY: a longer Retry-After is not waited for


@dataclass(eq=False)
class _Read:
    request: RequestInformation
    relative: str  # the URL relative to the API version, as a batch names it
    future: asyncio.Future[Any]
    retries: int = 0


@dataclass
class ReadBatcher:
    """Sends GET reads through ``adapter`` (its client, token and middleware), batched when ``batch``."""

    adapter: RequestAdapter
    batch: bool = True
    max_retries: int = 3
    retry_delay: float = 3.0
    _pending: list[_Read] = field(default_factory=list)
    _scheduled: bool = False
    _grew: bool = False
    _ticks: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _waiting: dict[_Read, asyncio.TimerHandle] = field(default_factory=dict)  # reads waiting out a Retry-After

    async def get(self, request: RequestInformation) -> Any:
        """The JSON of ``request`` (``None`` for an empty answer); raises what sending it alone would raise."""
        relative = self._relative(request.url) if self.batch else None
        if relative is None:
            return await self._alone(request)
        read = _Read(request, relative, asyncio.get_running_loop().create_future())
        self._enqueue(read)
        return await read.future

    def _relative(self, url: str) -> str | None:
        base = str(self.adapter.base_url).rstrip("/")
        return url[len(base) :] if url.startswith(base + "/") else None

    def _enqueue(self, read: _Read) -> None:
        self._pending.append(read)
        self._grew = True
        if not self._scheduled:
            self._scheduled = True
            self._ticks = 0
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._grew and self._ticks < SETTLE_TICKS and len(self._pending) < MAX_BATCH:
            self._grew = False
            self._ticks += 1
            loop.call_soon(self._tick)
            return
        self._scheduled = False
        # A read whose caller was cancelled (while it waited for a retry, say) is not sent.
        pending = [read for read in self._pending if not read.future.done()]
        self._pending = []
        for start in range(0, len(pending), MAX_BATCH):
            task = loop.create_task(self._send(pending[start : start + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, reads: list[_Read]) -> None:
        try:
            if len(reads) == 1:
                await self._send_alone(reads[0])
            else:
                await self._send_batch(reads)
        except asyncio.CancelledError:
            for read in reads:
                read.future.cancel()
            raise
        except Exception as error:  # a bug here must not leave a caller waiting for ever
            for read in reads:
                _fail(read, error)

    async def _send_alone(self, read: _Read) -> None:
        try:
            found = await self._alone(read.request)
        except Exception as error:
            _fail(read, error)
        else:
            _resolve(read, found)

    async def _send_batch(self, reads: list[_Read]) -> None:
        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation

        by_id = {str(index): read for index, read in enumerate(reads, 1)}
        body = {"requests": [_sub_request(key, read) for key, read in by_id.items()]}
        request = RequestInformation(Method.POST)
        request.url = f"{str(self.adapter.base_url).rstrip('/')}/$batch"
        request.headers.try_add("Accept", "application/json")
        request.set_stream_content(json.dumps(body, separators=(",", ":")).encode(), "application/json")
        try:
            answer = _loads(await self.adapter.send_primitive_async(request, "bytes", _error_map()))
        except Exception as error:
            if getattr(error, "response_status_code", None) == 404:
                # No $batch at this endpoint: a 404 here says nothing about the reads (none of them is "missing").
                await asyncio.gather(*(self._send_alone(read) for read in reads))
                return
            # The whole batch failed (transport, timeout, an error status the middleware did not retry away):
            # every read gets the error it would have got alone. A copy each: one exception raised in many tasks
            # would share (and grow) one traceback.
            for read in reads:
                _fail(read, _copy(error))
            return
        responses = answer.get("responses") if isinstance(answer, dict) else None
        answered = {str(r.get("id")): r for r in responses or () if isinstance(r, dict) and str(r.get("id")) in by_id}
        for key, read in by_id.items():
            sub = answered.get(key)
            if sub is None:
                _fail(read, TransientServiceError("graph", "$batch: no response for one of its requests"))
            else:
                self._settle(read, sub)

    def _settle(self, read: _Read, sub: dict[str, Any]) -> None:
        status = sub.get("status")
        body = sub.get("body")
        headers = sub.get("headers")
        headers = {str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
        if not isinstance(status, int):
            _fail(read, TransientServiceError("graph", "$batch: a response without a status"))
        elif 200 <= status < 300:
            if body is None:
                _resolve(read, None)  # 204 No Content, as a read alone answers it
            elif isinstance(body, dict | list):
                _resolve(read, body)
            else:
                _fail(read, TransientServiceError("graph", "response is not JSON"))
        elif status in RETRYABLE and read.retries < self.max_retries:
            # Reads are safe to resend: this one only (queued again: alone, or in a later batch), after the
            # Retry-After its sub-response names, else the SDK's kind of backoff.
            read.retries += 1
            seconds = retry_after_seconds(headers.get("retry-after"))
            delay = seconds if seconds else self.retry_delay * 2 ** (read.retries - 1)
            if delay >= MAX_DELAY:
                _fail(read, _api_error(status, body, headers))
                return
            self._waiting[read] = asyncio.get_running_loop().call_later(delay, self._retry, read)
        else:
            _fail(read, _api_error(status, body, headers))

    def _retry(self, read: _Read) -> None:
        del self._waiting[read]
        self._enqueue(read)

    async def aclose(self) -> None:
        """Cancel what is still queued, waiting for a retry or in flight (before the HTTP client closes)."""
        for read, timer in self._waiting.items():
            timer.cancel()
            read.future.cancel()
        self._waiting.clear()
        for read in self._pending:
            read.future.cancel()
        self._pending.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _alone(self, request: RequestInformation) -> Any:
        raw = await self.adapter.send_primitive_async(request, "bytes", _error_map())
        return None if raw is None else _loads(raw)


def _sub_request(key: str, read: _Read) -> dict[str, Any]:
    """The URL as sent, relative to the version, query as encoded, and the request's own headers: what
    msgraph-core's ``BatchRequestItem`` builds from a ``RequestInformation`` too."""
    sub: dict[str, Any] = {"id": key, "method": "GET", "url": read.relative}
    headers = {name: ", ".join(sorted(values)) for name, values in read.request.request_headers.items()}
    if headers:
        sub["headers"] = headers
    return sub


def _error_map() -> dict[str, Any]:
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    return {"XXX": ODataError}


def _api_error(status: int, body: Any, headers: dict[str, str]) -> Exception:
    """The sub-response's error as the SDK raises it for a read alone: an ``ODataError`` with its status."""
    from msgraph.generated.models.o_data_errors.main_error import MainError
    from msgraph.generated.models.o_data_errors.o_data_error import ODataError

    inner = body.get("error") if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    error: Exception = ODataError(
        error=MainError(
            code=code if isinstance(code, str) else None, message=message if isinstance(message, str) else None
        )
    )
    error.response_status_code = status  # type: ignore[attr-defined]
    error.response_headers = headers  # type: ignore[attr-defined]
    error.message = message if isinstance(message, str) else f"HTTP {status}"  # type: ignore[attr-defined]
    return error


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as error:
        raise TransientServiceError("graph", "response is not JSON") from error


def _copy(error: Exception) -> Exception:
    try:
        return copy.copy(error)
    except Exception:  # an exception whose __init__ wants other arguments: shared, then
        return error


def _resolve(read: _Read, value: Any) -> None:
    if not read.future.done():
        read.future.set_result(value)


def _fail(read: _Read, error: BaseException) -> None:
    if not read.future.done():
        read.future.set_exception(error)
