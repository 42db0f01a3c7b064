"""Instants: always timezone-aware UTC inside the product."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def parse_instant(text: str) -> datetime:
    """Parse ISO 8601 (``Z``, offsets, 7-digit fractions) or the ``/Date(ms)/`` form Exchange can emit.

    A value without an offset is taken as UTC, as Exchange and Graph mean it. Python 3.11's ``fromisoformat`` takes
    ``Z`` and the 7 fractional digits Graph and Exchange send (it keeps 6); only a lowercase ``z`` needs help.
    """
    value = text.strip()
    ms = _MS_DATE.match(value)
    if ms:
        return datetime.fromtimestamp(int(ms.group(1)) / 1000, tz=UTC)
    if value.endswith("z"):
        value = value[:-1] + "Z"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso(instant: datetime) -> str:
    """The one text form of an instant the product writes: ``2026-11-27T08:02:11Z``."""
    text = instant.astimezone(UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that stands still (``replay --now``, tests); ``advance`` moves it on."""

    def __init__(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta
