"""Request and response values shared by the endpoint modules (no HTTP plumbing here)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
ODATA_CONTENT_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
)

_NO_BODY = object()


class Headers(Mapping[str, str]):
    """Request headers with case-insensitive lookup; repeated headers are joined with ", "."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._names: dict[str, str] = {}
        self._values: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            self._names.setdefault(key, name)
            self._values[key] = f"{self._values[key]}, {value}" if key in self._values else value

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values


class NotJson(ValueError):
    """The request body is empty or not valid JSON."""


@dataclass
class Request:
    method: str
    path: str
    """The path without the query string, percent-decoded."""
    segments: list[str]
    """``path`` split on ``/`` with empty parts removed, each percent-decoded."""
    query: dict[str, str]
    headers: Mapping[str, str]
    """Header lookups are case-insensitive."""
    body: bytes
    base_url: str
    """``http://host:port`` of the simulator, for links such as ``@odata.nextLink``."""
    received: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when it was read (a batched request: when its batch was)."""
    _parsed: Any = field(default=_NO_BODY, repr=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        """The body parsed as JSON; raises ``NotJson`` when it is empty or malformed."""
        if self._parsed is _NO_BODY:
            if not self.body.strip():
                raise NotJson("the request body is empty")
            try:
                self._parsed = json.loads(self.body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise NotJson(f"the request body is not valid JSON: {exc}") from exc
        return self._parsed

    def logged_body(self) -> Any:
        """What the request log shows: parsed JSON when JSON, else text, else None."""
        if not self.body:
            return None
        try:
            return self.json()
        except NotJson:
            return self.body.decode("utf-8", errors="replace")


def request_for(
    method: str, target: str, headers: Mapping[str, str], body: bytes, base_url: str, *, prefix: str = ""
) -> Request:
    """The ``Request`` for ``method target`` (a path with its query, percent-encoded as sent); ``prefix`` goes
    before the path (a batch's relative URLs are relative to the API version)."""
    split = urlsplit(target)
    raw_path = prefix + (split.path if split.path.startswith("/") or not prefix else "/" + split.path)
    raw_path = raw_path or "/"
    return Request(
        method=method,
        path=unquote(raw_path),
        segments=[unquote(p) for p in raw_path.split("/") if p],
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        body=body,
        base_url=base_url,
    )


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: float | None = None
    """When set, send nothing: wait this many seconds, then close the connection."""


def json_response(
    status: int,
    payload: Any,
    headers: Mapping[str, str] | None = None,
    *,
    content_type: str = JSON_CONTENT_TYPE,
) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status, body, {"Content-Type": content_type, **(headers or {})})


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Clock(Protocol):
    """The tenant's clock: what "now" is for every dated decision the simulator makes (content expiry, listing
    windows, timestamps it writes). The product's ``Clock`` has the same shape, so a replay hands the simulator
    the very clock the product runs on (``--now``) and a sample is judged at that instant, not at the machine's."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    """The machine's clock (the default outside replays and tests)."""

    def now(self) -> dt.datetime:
        return utc_now()


def iso_seconds(moment: dt.datetime) -> str:
    """``2026-11-27T08:02:11`` as Graph writes ``innerError.date``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
