"""What every httpx-based adapter does the same way: send, and turn what retrying can fix into one error."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ClassVar, TypeVar

import httpcore
import httpx

from restricted_sender.errors import ServiceRefused, TransientServiceError
from restricted_sender.model import TicketContent, TicketRef
from restricted_sender.retry import RetryPolicy, retry_after_seconds, with_retries

T = TypeVar("T")
SWEEP_SECONDS = 1.0  # how often every pooled connection is checked for expiry


class _OneRequestPerIdleConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool (1.0.x), assigning an idle connection to one waiting request only.

    httpcore hands the same idle HTTP/1.1 connection to every request that arrives before the first one has started
    on it: all but one then fail with ``ConnectionNotAvailable`` and go round the pool again, each round a scan of
    every connection (and its count of idle connections is quadratic). With 16 events at once that was ~5 rounds per
    request and a third of the processor's CPU. Same policy otherwise: reuse an available connection, else open one
    under ``max_connections``, else replace an idle one; close expired and surplus idle connections.

    Whether an idle connection has expired (its keep-alive is over, or the server closed it: a socket poll each) is
    asked of the connection about to be reused, always, and of every connection at most once a second, not on every
    request as httpcore does (~12 polls per request at 16 events at once).
    """

    _swept_at = -SWEEP_SECONDS

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        now = time.monotonic()
        sweep = now - self._swept_at >= SWEEP_SECONDS
        if sweep:
            self._swept_at = now
        idle = sum(1 for connection in self._connections if connection.is_idle())
        for connection in list(self._connections):
            if connection.is_closed():
                self._connections.remove(connection)
            elif sweep and connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
            elif connection.is_idle() and idle > self._max_keepalive_connections:
                self._connections.remove(connection)
                closing.append(connection)
                idle -= 1
        taken = {id(request.connection) for request in self._requests if request.connection is not None}
        for request in [request for request in self._requests if request.is_queued()]:
            origin = request.request.url.origin
            chosen = None
            for connection in list(self._connections):
                if id(connection) in taken or not (connection.can_handle_request(origin) and connection.is_available()):
                    continue
                if connection.has_expired():
                    self._connections.remove(connection)
                    closing.append(connection)
                    continue
                chosen = connection
                break
            if chosen is None and len(self._connections) >= self._max_connections:
                surplus = next((c for c in self._connections if id(c) not in taken and c.is_idle()), None)
                if surplus is None:
                    continue  # waits for a connection to come free
                self._connections.remove(surplus)
                closing.append(surplus)
            if chosen is None:
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            request.assign_to_connection(chosen)
            taken.add(id(chosen))
        return closing


def pooled_transport() -> httpx.AsyncHTTPTransport:
    """httpx's default transport, on a pool that gives an idle connection to one request at a time."""
    transport = httpx.AsyncHTTPTransport()
    # Only the pool's class changes: every setting httpx gave it (TLS, limits, keep-alive) stays as built.
    transport._pool.__class__ = _OneRequestPerIdleConnectionPool
    return transport


async def send(
    service: str, what: str, request: Callable[[], Awaitable[httpx.Response]], detail: Callable[[httpx.Response], str]
) -> httpx.Response:
    """The response, unless it is a timeout, a transport failure, a 429 or a 5xx: those become
    :class:`TransientServiceError` (with ``Retry-After`` when the service sent one). Other 4xx are the caller's."""
    try:
        response = await request()
    except httpx.TimeoutException as error:
        raise TransientServiceError(service, f"{what}: timed out ({type(error).__name__})") from error
    except httpx.TransportError as error:
        raise TransientServiceError(service, f"{what}: {type(error).__name__}: {error}") from error
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientServiceError(
            service,
            f"{what}: HTTP {status}: {detail(response)}",
            http_status=status,
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    return response


_CORRELATION_ID = re.compile(r"[A-Za-z0-9-]{1,100}")


def check_correlation_id(system: str, correlation_id: str) -> None:
    """Ticket systems search by the correlation id inside a query: only ``rsr-<hex>``-like ids go in."""
    if not _CORRELATION_ID.fullmatch(correlation_id):
        raise ServiceRefused(
            "tickets", f"{system}: correlation id {correlation_id[:60]!r} is not letters, digits and '-'"
        )


def cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters, a cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_answer(service: str, what: str, response: httpx.Response, detail: Callable[[httpx.Response], str]) -> Any:
    """The parsed JSON of a response ``send`` let through: another 4xx is ``ServiceRefused``, a body that is not JSON
    a ``TransientServiceError``. Its shape is the caller's to check."""
    status = response.status_code
    if status >= 400:
        raise ServiceRefused(service, f"{what}: HTTP {status}: {detail(response)}", http_status=status)
    try:
        return response.json()
    except ValueError as error:
        raise TransientServiceError(service, f"{what}: the answer is not JSON", http_status=status) from error


class SearchedTickets(ABC):
    """A ticket system that finds its open ticket by our correlation id (Jira, ServiceNow): both search by the id
    inside a query, and neither has an idempotency key, so a create that may have happened is searched for first."""

    system: ClassVar[str]  # the name in error messages
    _retry: RetryPolicy

    async def find_open(self, correlation_id: str) -> TicketRef | None:
        check_correlation_id(self.system, correlation_id)
        return await with_retries(partial(self._find, correlation_id), self._retry)

    async def create(self, content: TicketContent) -> TicketRef:
        check_correlation_id(self.system, content.correlation_id)
        return await create_once(partial(self._post, content), partial(self._find, content.correlation_id), self._retry)

    @abstractmethod
    async def _find(self, correlation_id: str) -> TicketRef | None: ...

    @abstractmethod
    async def _post(self, content: TicketContent) -> TicketRef: ...


async def create_once(
    post: Callable[[], Awaitable[T]], find: Callable[[], Awaitable[T | None]], retry: RetryPolicy
) -> T:
    """``post`` with bounded retries; before posting again, ``find`` what the earlier try may have created.

    A POST that timed out or got a 5xx may still have created the ticket, and these APIs have no idempotency key.
    """
    tried = False

    async def attempt() -> T:
        nonlocal tried
        if tried:
            existing = await find()
            if existing is not None:
                return existing
        tried = True
        return await post()

    return await with_retries(attempt, retry)
