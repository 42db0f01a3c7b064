"""Withheld permissions: the routes an app-only token without a role reaches, answered as the services answer them.

A tenant file's ``x-withheldPermissions`` (or ``Simulator.withhold``) names application permissions, or the
Exchange Administrator directory role, that the app's identity does not hold. Every route a withheld permission
gates then answers the way the real service answers a token without that role:

- Microsoft Graph: 403 ``Authorization_RequestDenied``, "Insufficient privileges to complete the operation."
  (the body Graph sends for a missing application permission, e.g.
  https://github.com/microsoftgraph/nodejs-connect-rest-sample/issues/69).
- Exchange ``InvokeCommand`` without ``Exchange.ManageAsApp``: 403 with an empty body (the service gives no JSON
  when the token carries no Exchange role); without the Exchange Administrator role: 401 ``Unauthorized``,
  "User is not allowed to call <cmdlet>" (as reported in
  https://github.com/MicrosoftDocs/office-docs-powershell/issues/7970).
- The Management Activity API without ``ActivityFeed.Read``: 401 ``AF10001`` (its documented error code).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from simulator.wire import Request, Response

# Which routes each permission gates (a route named by several is refused when any of them is withheld).
GATES: dict[str, tuple[str, ...]] = {
    "User.Read.All": ("graph.user", "graph.users", "graph.checkMemberGroups", "graph.updateUser"),
    "GroupMember.Read.All": ("graph.checkMemberGroups",),
    "IdentityRiskyUser.Read.All": ("graph.riskyUser",),
    "IdentityRiskyUser.ReadWrite.All": ("graph.confirmCompromised",),
    "MailboxSettings.Read": ("graph.messageRules",),
    "Mail.ReadBasic.All": ("graph.mailFolder",),
    "Domain.Read.All": ("graph.domains",),
    "RoleManagement.Read.Directory": ("graph.roleAssignments", "graph.roleEligibilityScheduleInstances"),
    "AuditLog.Read.All": ("graph.userRegistrationDetails",),
    "SecurityAlert.Read.All": ("graph.alerts", "graph.alert"),
    "User.RevokeSessions.All": ("graph.revokeSignInSessions",),
    "User.EnableDisableAccount.All": ("graph.updateUser",),
    "Mail.Send": ("graph.sendMail",),
    "MailboxSettings.ReadWrite": ("graph.messageRule",),
    "Exchange.ManageAsApp": ("exchange.",),  # a prefix: every cmdlet
    "Exchange Administrator": ("exchange.",),
    "ActivityFeed.Read": ("o365.",),
}
_GRAPH_DENIED = "Insufficient privileges to complete the operation."


def check_names(names: Iterable[object]) -> list[str]:
    """The permission names, each one the simulator knows; ``ValueError`` names an unknown one."""
    found: list[str] = []
    for name in names:
        if not isinstance(name, str) or name not in GATES:
            raise ValueError(f"unknown permission {name!r}: one of {', '.join(sorted(GATES))}")
        found.append(name)
    return found


class Withheld:
    """The permissions withheld right now (thread-safe: the server answers on many threads)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._names: set[str] = set(check_names(names))
        self._lock = threading.Lock()

    def set(self, names: Iterable[str]) -> None:
        checked = set(check_names(names))
        with self._lock:
            self._names = checked

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def gating(self, route: str) -> str | None:
        """The first withheld permission that gates ``route`` (Exchange.ManageAsApp before the Exchange role)."""
        with self._lock:
            names = [n for n in GATES if n in self._names]
        for name in names:
            if any(route == gate or (gate.endswith(".") and route.startswith(gate)) for gate in GATES[name]):
                return name
        return None

    def answer(self, route: str, request: Request) -> Response | None:
        """The refusal for ``route``; ``None`` when nothing withheld gates it, or the request carries no token
        (that is the service's 401, which the route itself answers)."""
        from simulator import exchange, graph, o365  # they import the tenant module, which imports this one

        name = self.gating(route)
        if name is None or not request.header("Authorization"):
            return None
        if route.startswith("graph."):
            return graph.error(request, 403, "Authorization_RequestDenied", _GRAPH_DENIED)
        if name == "Exchange.ManageAsApp":
            return Response(403)
        if route.startswith("exchange."):
            cmdlet = route.removeprefix("exchange.")
            return exchange.error(401, "Unauthorized", f"User is not allowed to call {cmdlet}")
        return o365.error(
            401, "AF10001", "The permission set () sent in the request did not include the expected permission."
        )
