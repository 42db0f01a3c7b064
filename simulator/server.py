"""The HTTP server: the request log, faults and latency, and the ``/_sim`` control endpoints (routes: routes.py)."""

from __future__ import annotations

import contextlib
import copy
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

from simulator import entra, exchange, graph, itsm, o365, routes, teams
from simulator.faults import CONTROL_ROUTE, Fault, FaultBook, FaultKind
from simulator.permissions import Withheld
from simulator.routes import Endpoint
from simulator.routes import plain_error as _plain_error
from simulator.state import RequestLog, TenantState
from simulator.tenant import Json, Tenant, TenantSource, load_tenant, strip_private
from simulator.tokens import EXCHANGE_RESOURCE, TokenClock, TokenIssuer
from simulator.wire import (
    JSON_CONTENT_TYPE,
    ODATA_CONTENT_TYPE,
    Clock,
    Headers,
    NotJson,
    Request,
    Response,
    SystemClock,
    json_response,
    request_for,
)

MALFORMED_BODY = b'{"value":[{"id":"truncated'
_MAX_BODY = 16 * 1024 * 1024
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class Simulator:
    """A local stand-in for one Microsoft 365 tenant, served over real HTTP on 127.0.0.1.

    ``tenant`` is a ``Tenant``, a parsed tenant document, or the path of a YAML/JSON tenant file.

    ``clock`` (``now() -> aware datetime``, the product's ``Clock``; default the machine's) is the tenant's "now" for
    every dated decision: content expiry and listing windows, webhook expirations, the times endpoints write. A
    replay passes the product's own clock, so ``--now`` is the only date that counts. ``token_clock`` (unix seconds,
    default ``time.time``) stamps and checks access tokens: it must be the clock their clients compare with, and
    azure-identity's cache and the product's token validator use the machine's (see simulator/tokens.py).
    ``delays`` (monotonic seconds) runs the propagation delay of a removal: a test holds it to see a removal still
    under way whatever the machine's load.
    """

    def __init__(
        self,
        tenant: TenantSource,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        identity_header: str | None = None,
        clock: Clock | None = None,
        token_clock: TokenClock = time.time,
        delays: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenant: Tenant = load_tenant(tenant)
        self.identity_header: str = identity_header or secrets.token_urlsafe(24)
        self._host = host
        self._port = port
        self.clock: Clock = clock or SystemClock()
        self._state = TenantState(self.tenant, self.clock, delays=delays)
        self._tokens = TokenIssuer(self.tenant.tenant_id, token_clock)
        self._entra = entra.Entra(self.tenant, token_clock)
        self._itsm = itsm.ItsmState(self.tenant, self.clock.now)
        self._feed = o365.ActivityFeed(
            self.tenant_id, self.tenant.audit_content, self.tenant.audit_subscriptions, clock=self.clock.now
        )
        self._faults = FaultBook()
        self._log = RequestLog()
        self._graph_writes = graph.GraphWrites()
        self._teams = teams.TeamsChannel()
        self._withheld = Withheld(self.tenant.withheld_permissions)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for spec in self.tenant.faults:
            self._faults.add(Fault.from_mapping(spec))
        for route, seconds in self.tenant.latency.items():
            self._faults.set_latency(route, seconds)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self._host, self._port), _Handler, self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # Wakes handlers that are sleeping for latency or a timeout fault.
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; the simulator must be started."""
        if self._server is None:
            raise RuntimeError("the simulator is not running: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def identity_endpoint(self) -> str:
        """The value for ``IDENTITY_ENDPOINT``."""
        return f"{self.url}/msi/token"

    @property
    def graph_url(self) -> str:
        return f"{self.url}/v1.0"

    @property
    def exchange_url(self) -> str:
        """The Exchange base URL: InvokeCommand lives at ``{exchange_url}/adminapi/beta/{tenantId}/InvokeCommand``."""
        return self.url

    @property
    def tickets_url(self) -> str:
        return f"{self.url}/tickets/webhook"

    @property
    def teams_url(self) -> str:
        """The Teams channel's Workflows webhook URL (its ``sig=`` is the flow's key)."""
        return f"{self.url}{self._teams.path()}"

    def teams_posts(self) -> list[Json]:
        """Posts the Teams webhook accepted, in order: ``{"body", "run", "errors"}`` (copies)."""
        return self._teams.posts()

    @property
    def servicenow_url(self) -> str:
        """The ServiceNow instance URL: the Table API lives at ``{servicenow_url}/api/now/table/{table}``."""
        return self.url

    @property
    def itsm_credentials(self) -> dict[str, str]:
        """The app settings that point the product's ServiceNow and Jira adapters at this simulator."""
        servicenow, jira = self._itsm.servicenow, self._itsm.jira
        return {
            "SERVICENOW_INSTANCE_URL": self.servicenow_url,
            "SERVICENOW_USERNAME": servicenow.username,
            "SERVICENOW_PASSWORD": servicenow.password,
            "JIRA_SITE_URL": self.jira_url,
            "JIRA_EMAIL": jira.email,
            "JIRA_API_TOKEN": jira.api_token,
        }

    @property
    def jira_url(self) -> str:
        """The Jira Cloud site URL: REST v3 lives at ``{jira_url}/rest/api/3/...``."""
        return self.url

    @property
    def tenant_id(self) -> str:
        return self.tenant.tenant_id

    @property
    def anchor_mailbox(self) -> str:
        """The ``X-AnchorMailbox`` value InvokeCommand requires."""
        return exchange.anchor_mailbox(self.tenant_id)

    # -- state for assertions ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[Json]:
        """Every request except ``/_sim`` control calls, in arrival order (copies)."""
        return self._log.snapshot()

    def clear_requests(self) -> None:
        self._log.clear()

    @property
    def blocked_senders(self) -> list[Json]:
        """The rows Get-BlockedSenderAddress would serve now (copies, without ``x-`` keys)."""
        return self._state.blocked_rows()

    def mailbox(self, key: str) -> Json:
        """The mailbox state remediation changes, as the services serve it (copies): the inbox rules (Graph
        ``messageRule`` JSON) and the three forwarding fields of ``Get-Mailbox``."""
        user = self._state.find_user(key)
        if user is None:
            raise KeyError(key)
        rules = [
            {"id": rule.get("id") or graph.rule_id(user, index), **strip_private(rule)}
            for index, rule in enumerate(user.get("x-inboxRules", []))
        ]
        row = exchange.mailbox_row(user)
        forwarding = {k: row[k] for k in ("ForwardingSmtpAddress", "ForwardingAddress", "DeliverToMailboxAndForward")}
        return copy.deepcopy({"inboxRules": rules, "forwarding": forwarding})

    def add_blocked_sender(self, row: Mapping[str, Any]) -> None:
        """Restrict a sender (a Get-BlockedSenderAddress row; ``x-`` keys allowed), replacing any row for it."""
        self._state.add_blocked(row)

    def sent_mail(self) -> list[Json]:
        """Mail accepted by Graph sendMail, in order: ``{"from", "message", "saveToSentItems"}`` (copies)."""
        return self._graph_writes.sent_mail()

    @property
    def tickets(self) -> list[Json]:
        """Tickets the webhook sink received, one per distinct Idempotency-Key (copies)."""
        return self._state.tickets()

    # -- ServiceNow and Jira (simulator/itsm/) -----------------------------------------------------------

    def servicenow_records(self) -> list[Json]:
        """Records created through the Table API, oldest first (copies): the wire fields, plus ``x-table`` and the
        journal entries ``x-work_notes`` / ``x-comments`` (``[{value, sys_created_on, sys_created_by}]``)."""
        return self._itsm.records()

    def jira_issues(self) -> list[Json]:
        """Issues created through REST v3, oldest first (copies): ``{id, key, self, fields}`` plus ``x-comments``."""
        return self._itsm.issues()

    def close_servicenow_record(self, key: str) -> Json:
        """Close a record (by sys_id or number): state 7 (Closed), active false. KeyError when there is none."""
        record = self._itsm.close_record(key)
        if record is None:
            raise KeyError(f"no ServiceNow record {key!r}")
        return record

    def close_jira_issue(self, key: str) -> Json:
        """Move an issue (by key or id) to Done (status category done). KeyError when there is none."""
        issue = self._itsm.set_issue_status(key, "Done")
        if issue is None:
            raise KeyError(f"no Jira issue {key!r}")
        return issue

    # -- Office 365 Management Activity API (simulator/o365.py) -------------------------------------------------

    @property
    def activity_feed_url(self) -> str:
        """``{url}/api/v1.0/{tenantId}/activity/feed``: the Management Activity API root."""
        return f"{self.url}/api/v1.0/{self.tenant_id}/activity/feed"

    def add_audit_content(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        content_id: str | None = None,
        content_type: str = o365.DEFAULT_CONTENT_TYPE,
        created: str | None = None,
    ) -> Json:
        """Publish a content blob of audit ``records``; returns its pointer as ``/subscriptions/content`` lists it.

        ``created`` (ISO 8601) defaults to now, ``content_id`` to a stable generated id. ValueError for a bad blob
        or a taken id. The simulator must be running (the pointer's ``contentUri`` holds its URL).
        """
        spec: Json = {"records": [dict(r) for r in records], "contentType": content_type, "contentCreated": created}
        if content_id is not None:
            spec["contentId"] = content_id
        return self._feed.add(spec).pointer(self.url, self.tenant_id)

    def notification(self, content_ids: Sequence[str] | None = None) -> list[Json]:
        """The JSON array the service would POST to the subscription's webhook for these blobs (default: all).

        ``[{tenantId, clientId, contentType, contentId, contentUri, contentCreated, contentExpiration}]``; ``clientId``
        is the app that started the subscription. KeyError for an unknown content id. The simulator must be running.
        """
        return self._feed.notification(self.url, content_ids)

    def audit_subscriptions(self) -> list[Json]:
        """What ``/subscriptions/list`` answers now: ``[{contentType, status, webhook}]`` (copies)."""
        return self._feed.subscriptions()

    def issue_token(self, resource: str, *, lifetime: int = 3600) -> str:
        """A bearer token for ``resource``, as the identity endpoint would issue it."""
        token, _ = self._tokens.issue(resource.rstrip("/"), lifetime=lifetime)
        return token

    @property
    def admin_api(self) -> entra.AdminApi:
        """The product's API app registration (tenant file ``x-adminApi``): token ``audience`` and ``client_id``."""
        return self._entra.admin_api

    def mint_token(
        self,
        *,
        roles: Sequence[str] = entra.DEFAULT_ROLES,
        audience: str | None = None,
        upn: str | None = None,
        object_id: str | None = None,
        variant: str = "valid",
        version: str = "2.0",
        lifetime: int = entra.DEFAULT_LIFETIME,
        app_id: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An Entra ID access token for the product's admin API, RS256-signed with a key this simulator publishes.

        ``variant``: ``valid``, ``expired``, ``not-yet-valid``, ``wrong-issuer``, ``wrong-audience``, ``wrong-key``,
        ``alg-none``, ``no-role``, ``hs256``, ``app-only``, ``other-tenant`` (see simulator/README.md). ``claims``
        sets claims last (``None`` removes one). The simulator must be running (the issuer is its URL).
        """
        token, _ = self._entra.mint(
            self.url,
            variant=variant,
            roles=roles,
            audience=audience,
            upn=upn,
            object_id=object_id,
            version=version,
            lifetime=lifetime,
            app_id=app_id,
            claims=claims,
        )
        return token

    # -- faults and latency ------------------------------------------------------------------------------

    def inject_fault(
        self,
        route: str,
        *,
        status: int = 503,
        retry_after: float | None = None,
        times: int | None = 1,
        kind: FaultKind = "status",
        body: Any = None,
        seconds: float = 2.0,
        apply: bool = False,
    ) -> Fault:
        """Make the next ``times`` requests to ``route`` fail (``times=None``: every request).

        ``kind``: ``status`` answers ``status`` (with ``Retry-After`` and the service's error body, or
        ``body``); ``timeout`` waits ``seconds`` and drops the connection without answering;
        ``malformed`` answers 200 with a body that is not valid JSON; ``reset`` drops the connection at once.
        ``apply`` carries the request out first, so the write happened whatever the answer says.
        """
        fault = Fault(
            route=route,
            status=status,
            retry_after=retry_after,
            times=times,
            kind=kind,
            body=body,
            seconds=seconds,
            apply=apply,
        )
        self._faults.add(fault)
        return fault

    @property
    def faults(self) -> list[Fault]:
        """Faults still pending."""
        return self._faults.pending()

    def clear_faults(self) -> None:
        self._faults.clear()

    def withhold(self, *permissions: str) -> None:
        """Answer as if the app's identity lacked these permissions (replaces the tenant file's
        ``x-withheldPermissions``; no argument grants everything again). See ``simulator/permissions.py``."""
        self._withheld.set(permissions)

    @property
    def withheld_permissions(self) -> list[str]:
        return self._withheld.names

    def set_latency(self, route: str, seconds: float) -> None:
        """Delay every answer on ``route`` by ``seconds`` (0 removes the delay)."""
        self._faults.set_latency(route, seconds)

    def clear_latency(self) -> None:
        self._faults.clear_latency()

    # -- request handling ----------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        """The answer to ``request``, logged (control calls excepted) before it is sent.

        The status is logged before sending so a client that has its answer already sees it in the log.
        ``started`` (request read) and ``ended`` (answer ready; ``None`` when the connection is dropped) are
        ``time.monotonic()`` seconds, so a benchmark can tell which requests overlapped.
        """
        route, endpoint = self._route(request)
        entry: Json | None = None
        if route != CONTROL_ROUTE:
            entry = self._log.add(self._entry(request, route))
        response = self._answer(route, endpoint, request)
        if entry is not None and response.drop_after is None:
            entry["ended"] = time.monotonic()
            self._log.set_status(entry, response.status)
        return response

    @staticmethod
    def _entry(request: Request, route: str) -> Json:
        return {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "body": request.logged_body(),
            "route": route,
            "status": None,
            "headers": dict(request.headers.items()),
            "started": request.received,
            "ended": None,
        }

    def _answer(self, route: str, endpoint: Endpoint, request: Request) -> Response:
        delay = self._faults.latency(route)
        if delay > 0 and self._stopping.wait(delay):
            return Response(503, drop_after=0)
        return self._served(route, endpoint, request)

    def _served(self, route: str, endpoint: Endpoint, request: Request) -> Response:
        """The answer after the route's latency: a fault, a withheld permission's refusal, or the endpoint's."""
        fault = self._faults.take(route)
        if fault is not None:
            if fault.apply:
                endpoint()  # done, whatever the client is told
            return self._fault_response(fault, route, request)
        refused = self._withheld.answer(route, request)
        if refused is not None:
            return refused
        try:
            return endpoint()
        except Exception as exc:
            traceback.print_exc()
            return _plain_error(500, "SimulatorError", f"{type(exc).__name__}: {exc}")

    def _batch(self, request: Request) -> Response:
        """``POST /v1.0/$batch`` (https://learn.microsoft.com/graph/json-batching): each request is routed as if it
        came alone (its token, withheld permissions and faults; logged as its own entry with ``"batched": true``),
        and its answer becomes one of ``responses`` with its own status, headers and body. The network's latency is
        per HTTP request: the batch waits once, as long as its slowest route. Graph answers in any order: the
        simulator answers in reverse, so a client that pairs answers by position fails its tests."""
        subs = graph.batch_requests(request)
        if isinstance(subs, Response):
            return subs
        routed = [
            (sub, *self._route(inner), inner) for sub, inner in ((s, graph.sub_request(request, s)) for s in subs)
        ]
        slowest = max((self._faults.latency(route) for _, route, _, _ in routed), default=0.0)
        extra = slowest - self._faults.latency(routes.GRAPH_BATCH_ROUTE)
        if extra > 0 and self._stopping.wait(extra):
            return Response(503, drop_after=0)
        answers: list[Json] = []
        entries: list[tuple[Json, int]] = []
        for sub, route, endpoint, inner in routed:
            # Served one after another here, but concurrently for the client: every entry spans the whole batch.
            entry = self._log.add(self._entry(inner, route) | {"batched": True, "started": request.received})
            response = self._served(route, endpoint, inner)
            if response.drop_after is not None:  # a timeout or reset fault: the gateway's own answer for it
                response = _service_error(504, route, inner)
            entries.append((entry, response.status))
            answers.append(graph.sub_response(sub["id"], response))
        ended = time.monotonic()
        for entry, status in entries:
            entry["ended"] = ended
            self._log.set_status(entry, status)
        return graph.ok(request, {"responses": answers[::-1]})

    def _wait_unless_stopping(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _route(self, request: Request) -> tuple[str, Endpoint]:
        return routes.dispatch(self, request)

    def _exchange(self, request: Request, tenant_in_path: str) -> Response:
        if tenant_in_path.casefold() != self.tenant_id.casefold():
            return exchange.error(404, "NotFound", f"The tenant '{tenant_in_path}' was not found.")
        problem = self._tokens.check(request.header("Authorization"), EXCHANGE_RESOURCE)
        if problem is not None:
            return exchange.unauthorized(problem)
        rejected = exchange.check_anchor(request, tenant_in_path)
        if rejected is not None:
            return rejected
        return exchange.invoke_command(request, self._state, tenant_in_path)

    def _fault_response(self, fault: Fault, route: str, request: Request) -> Response:
        if fault.kind == "timeout":
            return Response(0, drop_after=fault.seconds)
        if fault.kind == "reset":
            return Response(0, drop_after=0)
        if fault.kind == "malformed":
            return Response(200, MALFORMED_BODY, {"Content-Type": ODATA_CONTENT_TYPE})
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            seconds = fault.retry_after
            headers["Retry-After"] = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
        if fault.body is not None:
            response = _custom_body(fault.status, fault.body)
        else:
            response = _service_error(fault.status, route, request)
        response.headers.update(headers)
        return response

    # -- control endpoints ---------------------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        action = (request.method, "/".join(s.casefold() for s in request.segments[1:]))
        try:
            closed = itsm.control(request, self._itsm)
            if closed is not None:
                return closed
            if action == ("GET", "requests"):
                return json_response(200, {"value": self.requests})
            if action == ("GET", "state"):
                return json_response(200, self._state_json())
            if action == ("POST", "faults"):
                return self._control_add_faults(request)
            if action == ("DELETE", "faults"):
                count = len(self._faults.pending())
                self._faults.clear()
                return json_response(200, {"cleared": count})
            if action == ("POST", "latency"):
                spec = request.json()
                if not isinstance(spec, dict) or set(spec) != {"route", "seconds"}:
                    raise ValueError('the body must be {"route": "<route>", "seconds": <number>}')
                self._faults.set_latency(spec["route"], spec["seconds"])
                return json_response(200, {"latency": self._faults.latencies()})
            if action == ("POST", "tokens"):
                return self._entra.token_request(request)
            if action == ("POST", "reset-requests"):
                return json_response(200, {"cleared": self._log.clear()})
            if action == ("POST", "o365/content"):
                spec = request.json()
                if not isinstance(spec, dict):
                    raise ValueError('the body must be {"records": [...], "contentType"?, "contentId"?, ...}')
                return json_response(201, self._feed.add(spec).pointer(request.base_url, self.tenant_id))
            if action == ("GET", "o365/notification"):
                wanted = request.query.get("contentIds")
                ids = [i for i in wanted.split(",") if i] if wanted is not None else None
                try:
                    return json_response(200, self._feed.notification(request.base_url, ids))
                except KeyError as exc:
                    return _plain_error(404, "NotFound", str(exc.args[0]))
            if action == ("POST", "blocked-senders"):
                row = request.json()
                if not isinstance(row, dict):
                    raise ValueError("the body must be a Get-BlockedSenderAddress row")
                self._state.add_blocked(row)
                return json_response(201, {"value": self.blocked_senders})
        except (NotJson, ValueError, TypeError) as exc:
            return _plain_error(400, "BadRequest", str(exc))
        return _plain_error(404, "NotFound", f"No control endpoint {request.method} {request.path}")

    def _control_add_faults(self, request: Request) -> Response:
        spec = request.json()
        specs = spec if isinstance(spec, list) else [spec]
        if not all(isinstance(s, dict) for s in specs):
            raise ValueError("the body must be a fault object or a list of them")
        faults = [Fault.from_mapping(s) for s in specs]
        for fault in faults:
            self._faults.add(fault)
        return json_response(201, {"value": [f.to_json() for f in faults]})

    def _state_json(self) -> Json:
        return {
            "tenantId": self.tenant_id,
            "blockedSenders": self.blocked_senders,
            "tickets": self.tickets,
            "sentMail": self.sent_mail(),
            "teamsPosts": self.teams_posts(),
            "servicenowRecords": self.servicenow_records(),
            "jiraIssues": self.jira_issues(),
            "auditSubscriptions": self.audit_subscriptions(),
            "faults": [f.to_json() for f in self._faults.pending()],
            "latency": self._faults.latencies(),
        }


_GRAPH_FAULT_CODES = {
    429: ("TooManyRequests", "Too many requests are being made. Retry after the time in Retry-After."),
    500: ("generalException", "An unspecified error has occurred."),
    502: ("badGateway", "The service could not reach a backend."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Retry after the time in Retry-After."),
    504: ("gatewayTimeout", "The gateway timed out waiting for a backend."),
}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return f"Status{status}"


def _service_error(status: int, route: str, request: Request) -> Response:
    """An injected error answered in the shape of the service behind ``route``."""
    if route.startswith("graph."):
        code, message = _GRAPH_FAULT_CODES.get(status, (_reason(status), f"Simulated failure: HTTP {status}."))
        return graph.error(request, status, code, message)
    if route.startswith("exchange."):
        return exchange.error(status, _reason(status), f"Simulated failure: HTTP {status}.")
    if route == "identity.token":
        return json_response(status, {"statusCode": status, "message": f"Simulated failure: HTTP {status}."})
    if route.startswith("entra."):
        return entra.service_error(status)
    if route.startswith(("servicenow.", "jira.")):
        return itsm.injected_error(route, status)
    if route.startswith("o365."):
        return o365.injected_error(status, request)
    return _plain_error(status, _reason(status), f"Simulated failure: HTTP {status}.")


def _custom_body(status: int, body: Any) -> Response:
    if isinstance(body, bytes):
        return Response(status, body, {"Content-Type": "application/octet-stream"})
    if isinstance(body, str):
        return Response(status, body.encode("utf-8"), {"Content-Type": "text/plain; charset=utf-8"})
    return json_response(status, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a batch of processors opening connections at once overflows it, and each
    # dropped SYN costs the client a 1 s (then 3 s) retransmit, which looked like a slow service.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], simulator: Simulator) -> None:
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Unblock handler threads still waiting on keep-alive connections so they exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer are routine here (timeouts, cancelled retries): stay quiet.
        if not isinstance(sys.exc_info()[1], _DISCONNECTS):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RestrictedSenderSimulator/1.0"
    sys_version = ""
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; with Nagle on, the second waits ~40 ms for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request log is the record."""

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length_text = self.headers.get("Content-Length") or "0"
        if not length_text.isdigit() or int(length_text) > _MAX_BODY:
            return None
        return self.rfile.read(int(length_text))

    def _answer(self) -> None:
        simulator = self.server.simulator
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._send(_plain_error(413, "PayloadTooLarge", "The body is too large or its length is invalid."))
            return
        base_url = "http://{}:{}".format(*self.server.server_address[:2])
        request = request_for(self.command, self.path, Headers(self.headers.items()), body, base_url)
        response = simulator._handle(request)
        if response.drop_after is not None:
            simulator._wait_unless_stopping(response.drop_after)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(response)

    # http.server calls do_<METHOD>: every method goes through the one route table.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            headers = {"Content-Type": JSON_CONTENT_TYPE, **response.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


def serve(
    tenant_path: TenantSource, host: str = "127.0.0.1", port: int = 0, *, identity_header: str | None = None
) -> None:
    """Run a simulator in the foreground until Ctrl-C or SIGTERM."""
    simulator = Simulator(tenant_path, host=host, port=port, identity_header=identity_header)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_signal)
    simulator.start()
    print(
        f"simulator listening on {simulator.url} "
        f"(tenant {simulator.tenant_id}, identity header {simulator.identity_header})",
        flush=True,
    )
    print(f"Teams webhook for TEAMS_WEBHOOK_URL: {simulator.teams_url}", flush=True)
    try:
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["Simulator", "serve"]
