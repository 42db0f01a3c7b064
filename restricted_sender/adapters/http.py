"""What every httpx-based adapter does the same way: send, and turn what retrying can fix into one error."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from restricted_sender.errors import ServiceRefused, TransientServiceError
from restricted_sender.retry import RetryPolicy, retry_after_seconds, with_retries

T = TypeVar("T")


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
