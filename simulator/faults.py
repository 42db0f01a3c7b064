"""Fault and latency injection per route.

A route is a name such as ``graph.user`` or ``exchange.Remove-BlockedSenderAddress``. Fault and latency
routes may be shell-style patterns (``exchange.*``, ``graph.*``, ``*``); patterns never match the
``control`` route, so a runaway ``*`` fault cannot lock out the endpoints that clear it.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

FaultKind = Literal["status", "timeout", "malformed", "reset"]
FAULT_KINDS: tuple[FaultKind, ...] = ("status", "timeout", "malformed", "reset")

ROUTES: tuple[str, ...] = (
    "identity.token",
    "graph.user",
    "graph.batch",
    "graph.users",
    "graph.checkMemberGroups",
    "graph.domains",
    "graph.alerts",
    "graph.alert",
    "graph.riskyUser",
    "graph.roleAssignments",
    "graph.roleEligibilityScheduleInstances",
    "graph.userRegistrationDetails",
    "graph.messageRules",
    "graph.messageRule",
    "graph.mailFolder",
    "graph.revokeSignInSessions",
    "graph.confirmCompromised",
    "graph.updateUser",
    "graph.sendMail",
    "exchange.Get-BlockedSenderAddress",
    "exchange.Remove-BlockedSenderAddress",
    "exchange.Get-Mailbox",
    "exchange.Get-Recipient",
    "exchange.Set-Mailbox",
    "tickets.webhook",
    "teams.workflow",
    "servicenow.table",
    "servicenow.record",
    "jira.search",
    "jira.issue",
    "jira.comment",
    "entra.metadata",
    "entra.keys",
    "o365.start",
    "o365.stop",
    "o365.list",
    "o365.content",
    "o365.blob",
    "control",
)
CONTROL_ROUTE = "control"
_PATTERN_CHARS = frozenset("*?[")


def validate_route(route: str) -> str:
    """Return ``route`` if it names a route (or pattern) the simulator serves, else raise ValueError."""
    if not isinstance(route, str) or not route:
        raise ValueError("route must be a non-empty string")
    if _PATTERN_CHARS & set(route):
        if not any(route_matches(route, known) for known in ROUTES):
            raise ValueError(f"route pattern {route!r} matches none of: {', '.join(ROUTES)}")
        return route
    # Any cmdlet name is a route of its own: unknown cmdlets are answered (with an error) too.
    if route in ROUTES or (route.startswith("exchange.") and len(route) > len("exchange.")):
        return route
    raise ValueError(f"unknown route {route!r}; known routes: {', '.join(ROUTES)}")


def route_matches(pattern: str, route: str) -> bool:
    if pattern == route:
        return True
    if route == CONTROL_ROUTE:
        return False
    return bool(_PATTERN_CHARS & set(pattern)) and fnmatch.fnmatchcase(route, pattern)


@dataclass
class Fault:
    """One injected failure. ``times=None`` means it fires forever."""

    route: str
    status: int = 503
    retry_after: float | None = None
    times: int | None = 1
    kind: FaultKind = "status"
    body: Any = None
    seconds: float = 2.0
    # The request is carried out first, then the fault answers: a write that happened although its answer says
    # otherwise (or never arrives). Without it the request is not carried out.
    apply: bool = False

    def __post_init__(self) -> None:
        validate_route(self.route)
        if not isinstance(self.apply, bool):
            raise ValueError(f"fault apply must be true or false, got {self.apply!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}")
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP status code, got {self.status!r}")
        if self.times is not None and (
            isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1
        ):
            raise ValueError(f"fault times must be a whole number >= 1 or None (forever), got {self.times!r}")
        for name in ("retry_after", "seconds"):
            value = getattr(self, name)
            if value is None and name == "retry_after":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"fault {name} must be a number of seconds >= 0, got {value!r}")

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> Fault:
        """Build a fault from the JSON/YAML form used by the tenant file and ``POST /_sim/faults``."""
        allowed = {"route", "status", "retry_after", "times", "kind", "body", "seconds", "apply"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        if "route" not in spec:
            raise ValueError("a fault needs a route")
        values = dict(spec)
        kind = values.pop("kind", "status")
        return cls(kind=cast(FaultKind, kind), **values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultBook:
    """Thread-safe store of pending faults and per-route latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._latency: dict[str, float] = {}

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def take(self, route: str) -> Fault | None:
        """The first pending fault for ``route``, consuming one of its ``times``."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if not route_matches(fault.route, route):
                    continue
                if fault.times is not None:
                    remaining = fault.times - 1
                    if remaining == 0:
                        del self._faults[index]
                    else:
                        self._faults[index] = Fault(**{**asdict(fault), "times": remaining})
                return fault
            return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def clear(self) -> int:
        with self._lock:
            count = len(self._faults)
            self._faults.clear()
            return count

    def clear_latency(self) -> None:
        with self._lock:
            self._latency.clear()

    def set_latency(self, route: str, seconds: float) -> None:
        validate_route(route)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"latency must be a number of seconds >= 0, got {seconds!r}")
        with self._lock:
            if seconds == 0:
                self._latency.pop(route, None)
            else:
                self._latency[route] = float(seconds)

    def latency(self, route: str) -> float:
        with self._lock:
            if route in self._latency:
                return self._latency[route]
            for pattern, seconds in self._latency.items():
                if route_matches(pattern, route):
                    return seconds
            return 0.0

    def latencies(self) -> dict[str, float]:
        with self._lock:
            return dict(self._latency)
