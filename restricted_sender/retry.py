"""Bounded retries that honour ``Retry-After``. Only :class:`TransientServiceError` is ever retried."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from restricted_sender.errors import TransientServiceError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included
    base_delay: float = 0.5  # seconds; doubles each time, with jitter, when the service gives no Retry-After
    max_delay: float = 30.0  # a longer Retry-After is not waited out here: the queue retries the event later


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date. ``None`` when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None) -> float | None:
    """How long to wait before try ``attempt + 1``; ``None`` when the policy gives up (tries used up, or the service
    asks for a longer wait than is worth holding the worker for: the queue retries later)."""
    if attempt >= policy.attempts:
        return None
    delay = (
        retry_after if retry_after is not None else policy.base_delay * (2 ** (attempt - 1)) * random.uniform(0.5, 1)
    )
    return None if delay > policy.max_delay else delay


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy, sleep: Sleep = asyncio.sleep) -> T:
    attempt = 1
    while True:
        try:
            return await call()
        except TransientServiceError as error:
            delay = backoff(policy, attempt, error.retry_after)
            if delay is None:
                raise
            await sleep(delay)
            attempt += 1
