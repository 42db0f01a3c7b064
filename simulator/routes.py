"""The route table: every path the simulator serves, its route name, method, handler and README line.

One ordered list, first match wins. A route's name is what the request log records and what faults and latency
(simulator/faults.py) are set on. Routes that share a template differ by method (``GET`` and ``PATCH`` on a user);
any other method on a matched path answers 405 in the service's error shape, named after the first of them. The
``**`` entries are fallbacks: the service's own "no such resource" for a path under its prefix.

The route table in simulator/README.md is generated from this list (``make generate`` writes it); a test fails
while the committed table differs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from simulator import entra, exchange, graph, identity, itsm, o365, teams, tickets
from simulator.faults import CONTROL_ROUTE
from simulator.state import TenantState
from simulator.tokens import GRAPH_RESOURCE, TokenIssuer
from simulator.wire import Request, Response, json_response

UNKNOWN_ROUTE = "unknown"
GRAPH_BATCH_ROUTE = "graph.batch"


class Simulator(Protocol):
    """What the handlers use of ``simulator.server.Simulator`` (its parts, read-only)."""

    @property
    def identity_header(self) -> str: ...
    @property
    def _tokens(self) -> TokenIssuer: ...
    @property
    def _state(self) -> TenantState: ...
    @property
    def _entra(self) -> entra.Entra: ...
    @property
    def _itsm(self) -> itsm.ItsmState: ...
    @property
    def _feed(self) -> o365.ActivityFeed: ...
    @property
    def _graph_writes(self) -> graph.GraphWrites: ...
    @property
    def _teams(self) -> teams.TeamsChannel: ...
    def _control(self, request: Request) -> Response: ...
    def _exchange(self, request: Request, tenant_in_path: str) -> Response: ...
    def _batch(self, request: Request) -> Response: ...


Endpoint = Callable[[], Response]
# (the simulator, the request, the path's {placeholders} in their original case) -> the answer
Handler = Callable[[Simulator, Request, list[str]], Response]


@dataclass(frozen=True)
class Route:
    name: str
    template: str  # "/v1.0/users/{user}"; "a|b" is either literal (case-insensitive); a final "**" any rest
    handler: Handler
    method: str | None = None  # the one method served; None: the handler answers every method itself
    doc: str = ""  # the README's endpoint column; empty for fallbacks
    shown: str | None = None  # the README's route column when it is not the name
    named: Callable[[Request], str] | None = None  # a name that depends on the request (exchange cmdlets)

    def match(self, folded: list[str], parts: list[str]) -> list[str] | None:
        """The placeholders' values when ``folded`` (the request's segments, case-folded) fits, else ``None``."""
        pattern = [p for p in self.template.split("/") if p]
        rest = pattern[-1] == "**" if pattern else False
        if rest:
            pattern = pattern[:-1]
            if len(folded) < len(pattern):
                return None
        elif len(folded) != len(pattern):
            return None
        values: list[str] = []
        for segment, text, original in zip(pattern, folded, parts, strict=False):
            if segment.startswith("{"):
                values.append(original)
            elif text not in segment.casefold().split("|"):
                return None
        return values


def plain_error(status: int, code: str, message: str) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}})


def method_not_allowed(request: Request, route: str, allowed: str) -> Response:
    message = f"{request.method} is not allowed here; use {allowed}."
    if route.startswith("graph."):
        response = graph.error(request, 405, "Request_BadRequest", message)
    elif route.startswith("exchange."):
        response = exchange.error(405, "MethodNotAllowed", message)
    else:
        response = plain_error(405, "MethodNotAllowed", message)
    response.headers["Allow"] = allowed
    return response


def _graph(call: Callable[[Simulator, Request, list[str]], Response]) -> Handler:
    """A Graph handler that first checks the bearer token is for Graph."""

    def run(sim: Simulator, request: Request, args: list[str]) -> Response:
        problem = sim._tokens.check(request.header("Authorization"), GRAPH_RESOURCE)
        return graph.unauthorized(request, problem) if problem else call(sim, request, args)

    return run


def _o365(call: Callable[[Simulator, Request, list[str]], Response]) -> Handler:
    """A Management Activity handler: the token and the tenant in the path are checked first (args[0])."""

    def run(sim: Simulator, request: Request, args: list[str]) -> Response:
        return o365.authorize(request, sim._tokens, sim._feed.tenant_id, args[0]) or call(sim, request, args)

    return run


def _exchange_name(request: Request) -> str:
    name = exchange.cmdlet_name(request) if request.method == "POST" else None
    return f"exchange.{name or 'InvokeCommand'}"


def _graph_not_found(sim: Simulator, request: Request, args: list[str]) -> Response:
    parts = request.segments[1:]
    segment = parts[-1] if parts else "v1.0"
    return graph.error(request, 404, "NotFound", f"Resource not found for the segment '{segment}'.")


_USERS = "/v1.0/users/{user}"
_FEED = "/api/v1.0/{tenant}/activity/feed"

ROUTE_TABLE: tuple[Route, ...] = (
    Route(
        CONTROL_ROUTE,
        "/_sim/**",
        lambda sim, request, _: sim._control(request),
        doc="`GET /_sim/requests`, `GET /_sim/state`, `POST /_sim/faults`, `DELETE /_sim/faults`, "
        "`POST /_sim/latency`, `POST /_sim/reset-requests`, `POST /_sim/blocked-senders`, `POST /_sim/tokens`, "
        "`POST /_sim/servicenow/records/{sys_id or number}/close`, `POST /_sim/jira/issues/{key}/close`, "
        "`POST /_sim/o365/content`, `GET /_sim/o365/notification[?contentIds=a,b]` (not in the request log)",
    ),
    Route(
        "identity.token",
        "/msi/token",
        lambda sim, request, _: identity.get_token(request, sim._tokens, sim.identity_header),
        "GET",
        "`GET /msi/token?resource=R&api-version=2019-08-01[&client_id=]`, header `X-IDENTITY-HEADER`",
    ),
    Route(
        "graph.users",
        "/v1.0/users",
        _graph(lambda sim, request, _: graph.list_users(request, sim._state)),
        "GET",
        "`GET /v1.0/users[?$filter=mail eq '…' or proxyAddresses/any(p:p eq 'smtp:…')&$select=&$top=]` "
        "(`prop op literal` and `collection/any(x:x eq literal)` clauses, joined by `and`, conjunctions by `or`; "
        "string equality ignores case; other functions are ignored, not applied)",
    ),
    Route(
        "graph.user",
        _USERS,
        _graph(lambda sim, request, args: graph.get_user(request, sim._state, args[0])),
        "GET",
        "`GET /v1.0/users/{id or userPrincipalName}[?$select=]`",
    ),
    Route(
        "graph.updateUser",
        _USERS,
        _graph(lambda sim, request, args: graph.update_user(request, sim._state, sim._graph_writes, args[0])),
        "PATCH",
        "`PATCH /v1.0/users/{id or upn}` (writable properties only, e.g. `accountEnabled`; 204)",
    ),
    Route(
        "graph.revokeSignInSessions",
        f"{_USERS}/revokeSignInSessions|microsoft.graph.revokeSignInSessions",
        _graph(
            lambda sim, request, args: graph.revoke_sign_in_sessions(request, sim._state, sim._graph_writes, args[0])
        ),
        "POST",
        "`POST /v1.0/users/{id or upn}/revokeSignInSessions`",
    ),
    Route(
        "graph.sendMail",
        f"{_USERS}/sendMail|microsoft.graph.sendMail",
        _graph(lambda sim, request, args: graph.send_mail(request, sim._state, sim._graph_writes, args[0])),
        "POST",
        "`POST /v1.0/users/{id or upn}/sendMail` (recorded, 202; `sim.sent_mail()`)",
    ),
    Route(
        "graph.confirmCompromised",
        "/v1.0/identityProtection/riskyUsers/confirmCompromised|microsoft.graph.confirmCompromised",
        _graph(lambda sim, request, _: graph.confirm_compromised(request, sim._state, sim._graph_writes)),
        "POST",
        '`POST /v1.0/identityProtection/riskyUsers/confirmCompromised` `{"userIds": [...]}` (all or nothing, 204)',
    ),
    Route(
        "graph.checkMemberGroups",
        f"{_USERS}/checkMemberGroups|microsoft.graph.checkMemberGroups",
        _graph(lambda sim, request, args: graph.check_member_groups(request, sim._state, args[0])),
        "POST",
        "`POST /v1.0/users/{id or upn}/checkMemberGroups`",
    ),
    Route(
        "graph.mailFolder",
        f"{_USERS}/mailFolders/{{folder}}",
        _graph(lambda sim, request, args: graph.get_mail_folder(request, sim._state, args[0], args[1])),
        "GET",
        "`GET /v1.0/users/{id or upn}/mailFolders/{folder id or well-known name}`",
    ),
    Route(
        "graph.messageRules",
        f"{_USERS}/mailFolders/{{folder}}/messageRules",
        _graph(lambda sim, request, args: graph.list_message_rules(request, sim._state, args[0], args[1])),
        "GET",
        "`GET /v1.0/users/{id or upn}/mailFolders/inbox/messageRules` (the Inbox by name or id)",
    ),
    Route(
        "graph.messageRule",
        f"{_USERS}/mailFolders/{{folder}}/messageRules/{{rule}}",
        _graph(
            lambda sim, request, args: graph.update_message_rule(
                request, sim._state, sim._graph_writes, args[0], args[1], args[2]
            )
        ),
        "PATCH",
        '`PATCH /v1.0/users/{id or upn}/mailFolders/inbox/messageRules/{id}` (e.g. `{"isEnabled": false}`; 200, '
        "the rule; never deleted: `DELETE` is 405)",
    ),
    Route(
        "graph.riskyUser",
        "/v1.0/identityProtection/riskyUsers/{id}",
        _graph(lambda sim, request, args: graph.get_risky_user(request, sim._state, args[0])),
        "GET",
        "`GET /v1.0/identityProtection/riskyUsers/{object id}` (object ids only, as in the real API)",
    ),
    Route(
        "graph.roleAssignments",
        "/v1.0/roleManagement/directory/roleAssignments",
        _graph(lambda sim, request, _: graph.list_role_assignments(request, sim._state)),
        "GET",
        "`GET /v1.0/roleManagement/directory/roleAssignments?$filter=principalId eq '{id}'[&$expand=roleDefinition]`",
    ),
    Route(
        "graph.roleEligibilityScheduleInstances",
        "/v1.0/roleManagement/directory/roleEligibilityScheduleInstances",
        _graph(lambda sim, request, _: graph.list_role_eligibility_instances(request, sim._state)),
        "GET",
        "`GET /v1.0/roleManagement/directory/roleEligibilityScheduleInstances?$filter=principalId eq '{id}'"
        "[&$expand=roleDefinition]` (Entra ID P2, else 400 `AadPremiumLicenseRequired`)",
    ),
    Route(
        "graph.userRegistrationDetails",
        "/v1.0/reports/authenticationMethods/userRegistrationDetails/{id}",
        _graph(lambda sim, request, args: graph.get_user_registration_details(request, sim._state, args[0])),
        "GET",
        "`GET /v1.0/reports/authenticationMethods/userRegistrationDetails/{object id}` (Entra ID P1/P2, else 403)",
    ),
    Route(
        "graph.domains",
        "/v1.0/domains",
        _graph(lambda sim, request, _: graph.list_domains(request, sim._state)),
        "GET",
        "`GET /v1.0/domains`",
    ),
    Route(
        "graph.alerts",
        "/v1.0/security/alerts_v2",
        _graph(lambda sim, request, _: graph.list_alerts(request, sim._state)),
        "GET",
        "`GET /v1.0/security/alerts_v2[?$top=&$filter=&$skiptoken=]` (`$filter` below)",
    ),
    Route(
        "graph.alert",
        "/v1.0/security/alerts_v2/{id}",
        _graph(lambda sim, request, args: graph.get_alert(request, sim._state, args[0])),
        "GET",
        "`GET /v1.0/security/alerts_v2/{id}`",
    ),
    Route(
        GRAPH_BATCH_ROUTE,
        "/v1.0/$batch",
        _graph(lambda sim, request, _: sim._batch(request)),
        "POST",
        "`POST /v1.0/$batch` (JSON batching: each request routed and logged as its own, answered in reverse order)",
    ),
    Route(UNKNOWN_ROUTE, "/v1.0/**", _graph_not_found),
    Route(
        "exchange.InvokeCommand",
        "/adminapi/beta/{tenant}/InvokeCommand",
        lambda sim, request, args: sim._exchange(request, args[0]),
        "POST",
        "`POST /adminapi/beta/{tenantId}/InvokeCommand[?$skiptoken=&$select=]`: `Get-BlockedSenderAddress`, "
        "`Remove-BlockedSenderAddress`, `Get-Mailbox`, `Get-Recipient`, `Set-Mailbox` (forwarding parameters; `null` "
        "clears)",
        shown="exchange.<CmdletName>",
        named=_exchange_name,
    ),
    Route(
        "tickets.webhook",
        "/tickets/webhook",
        lambda sim, request, _: tickets.webhook(request, sim._state),
        "POST",
        "`POST /tickets/webhook` (deduplicated on `Idempotency-Key`)",
    ),
    Route(
        "teams.workflow",
        teams.WORKFLOW_PATH,
        lambda sim, request, args: sim._teams.invoke(request, args[0]),
        "POST",
        "`POST /workflows/{id}/triggers/manual/paths/invoke?...&sig=` (a Teams Workflows webhook: 202, the card "
        "judged by the Adaptive Card schema)",
    ),
    Route(
        "entra.metadata",
        "/{tenant}/v2.0/.well-known/openid-configuration",
        lambda sim, request, args: sim._entra.metadata(request, args[0]),
        "GET",
        "`GET /{tenant id or verified domain}/v2.0/.well-known/openid-configuration` (Entra ID OpenID metadata)",
    ),
    Route(
        "entra.keys",
        "/{tenant}/discovery/v2.0/keys",
        lambda sim, request, args: sim._entra.keys(request, args[0]),
        "GET",
        "`GET /{tenant id or verified domain}/discovery/v2.0/keys` (the JWKS: the active signing key)",
    ),
    Route(
        "servicenow.table",
        "/api/now/table/{table}",
        lambda sim, request, args: itsm.servicenow_table(request, sim._itsm, args[0]),
        doc="`GET /api/now/table/{table}[?sysparm_query=&sysparm_fields=&sysparm_limit=&sysparm_offset=]`, "
        "`POST /api/now/table/{table}`",
    ),
    Route(
        "servicenow.record",
        "/api/now/table/{table}/{sys_id}",
        lambda sim, request, args: itsm.servicenow_record(request, sim._itsm, args[0], args[1]),
        doc="`GET`, `PATCH`, `PUT /api/now/table/{table}/{sys_id}`",
    ),
    Route(
        UNKNOWN_ROUTE,
        "/api/now/**",
        lambda sim, request, _: itsm.servicenow_error(400, "Requested URI does not represent any resource", None),
    ),
    Route(
        "jira.search",
        "/rest/api/3/search/jql",
        lambda sim, request, _: itsm.jira_search(request, sim._itsm),
        doc="`GET /rest/api/3/search/jql?jql=&fields=&maxResults=&nextPageToken=` (a JQL subset, below)",
    ),
    Route(
        "jira.issue",
        "/rest/api/3/issue",
        lambda sim, request, _: itsm.jira_create_issue(request, sim._itsm),
        doc="`POST /rest/api/3/issue`",
    ),
    Route(
        "jira.comment",
        "/rest/api/3/issue/{key}/comment",
        lambda sim, request, args: itsm.jira_add_comment(request, sim._itsm, args[0]),
        doc="`POST /rest/api/3/issue/{key or id}/comment`",
    ),
    Route(
        UNKNOWN_ROUTE,
        "/rest/api/3/**",
        lambda sim, request, _: itsm.jira_error(404, ["null for uri: " + request.path]),
    ),
    Route(
        "o365.start",
        f"{_FEED}/subscriptions/start",
        _o365(lambda sim, request, _: o365.start(request, sim._feed)),
        "POST",
        "`POST /api/v1.0/{tenantId}/activity/feed/subscriptions/start?contentType=[&PublisherIdentifier=]`",
    ),
    Route(
        "o365.stop",
        f"{_FEED}/subscriptions/stop",
        _o365(lambda sim, request, _: o365.stop(request, sim._feed)),
        "POST",
        "`POST /api/v1.0/{tenantId}/activity/feed/subscriptions/stop?contentType=`",
    ),
    Route(
        "o365.list",
        f"{_FEED}/subscriptions/list",
        _o365(lambda sim, request, _: o365.list_subscriptions(sim._feed)),
        "GET",
        "`GET /api/v1.0/{tenantId}/activity/feed/subscriptions/list`",
    ),
    Route(
        "o365.content",
        f"{_FEED}/subscriptions/content",
        _o365(lambda sim, request, _: o365.list_content(request, sim._feed)),
        "GET",
        "`GET /api/v1.0/{tenantId}/activity/feed/subscriptions/content?contentType=[&startTime=&endTime=]`",
    ),
    Route(
        "o365.blob",
        f"{_FEED}/audit/{{content_id}}",
        _o365(lambda sim, request, args: o365.get_blob(request, sim._feed, args[1])),
        "GET",
        "`GET /api/v1.0/{tenantId}/activity/feed/audit/{contentId}`",
    ),
    Route(
        UNKNOWN_ROUTE,
        f"{_FEED}/**",
        lambda sim, request, _: o365.error(404, "NotFound", f"No resource at '{request.path}'."),
    ),
    Route(
        UNKNOWN_ROUTE,
        "/adminapi/**",
        lambda sim, request, _: exchange.error(404, "NotFound", f"No resource at '{request.path}'."),
    ),
    Route(
        UNKNOWN_ROUTE,
        "/**",
        lambda sim, request, _: plain_error(404, "NotFound", f"No route for {request.method} {request.path}"),
    ),
)


def dispatch(sim: Simulator, request: Request) -> tuple[str, Endpoint]:
    """The route name for ``request`` and the endpoint that answers it (405 for a method the route does not serve)."""
    parts = request.segments
    folded = [p.casefold() for p in parts]
    for route in ROUTE_TABLE:
        args = route.match(folded, parts)
        if args is not None:
            break
    else:  # pragma: no cover - the final "/**" matches every path
        raise AssertionError("no fallback route")
    chosen = next((r for r in ROUTE_TABLE if r.template == route.template and r.method == request.method), route)
    name = chosen.named(request) if chosen.named else chosen.name
    allowed = chosen.method
    if allowed is not None and request.method != allowed:
        return name, lambda: method_not_allowed(request, name, allowed)
    return name, lambda: chosen.handler(sim, request, args)


def readme_table() -> str:
    """The README's route table, control endpoints last."""
    rows = [r for r in ROUTE_TABLE if r.doc]
    rows.sort(key=lambda r: r.name == CONTROL_ROUTE)
    lines = ["| route | endpoint |", "|---|---|"]
    lines += [f"| `{r.shown or r.name}` | {r.doc} |" for r in rows]
    return "\n".join(lines) + "\n"


README = Path(__file__).with_name("README.md")
_TABLE = re.compile(r"^\| route \| endpoint \|\n(?:\|.*\|\n)+", re.MULTILINE)


def readme_with_table(text: str) -> str:
    """``text`` (the README) with its route table replaced by the generated one."""
    if not _TABLE.search(text):
        raise ValueError("no '| route | endpoint |' table in the README")
    return _TABLE.sub(lambda _: readme_table(), text, count=1)


def committed_table(text: str) -> str:
    found = _TABLE.search(text)
    return found.group(0) if found else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print (or --write into simulator/README.md) the route table.")
    parser.add_argument("--write", action="store_true", help="replace the table in simulator/README.md")
    args = parser.parse_args(argv)
    if args.write:
        README.write_text(readme_with_table(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(readme_table())
    return 0
