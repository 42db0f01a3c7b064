"""What every httpx-based adapter does the same way: send, and turn what retrying can fix into one error."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from ..errors import TransientServiceError
from ..retry import retry_after_seconds


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
