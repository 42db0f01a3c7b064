"""ServiceNow Table API endpoints: ``/api/now/table/{table}[/{sys_id}]`` and the ``sysparm_query`` subset."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from simulator.itsm.state import SN_JOURNAL_FIELDS, ItsmState, ServiceNowConfig, basic_credentials
from simulator.itsm.sysparm import parse_sysparm_query
from simulator.tenant import Json
from simulator.wire import NotJson, Request, Response, json_response

# -- ServiceNow endpoints ---------------------------------------------------------------------------------------


def servicenow_error(
    status: int, message: str, detail: str | None, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response(status, {"error": {"message": message, "detail": detail}, "status": "failure"}, headers)


def _servicenow_user(request: Request, config: ServiceNowConfig) -> str | None:
    """The authenticated user name, or ``None`` when the request does not authenticate."""
    header = request.header("Authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), config.token.encode()):
        return config.username
    if scheme.lower() == "basic":
        user, password = basic_credentials(value)
        if user == config.username and secrets.compare_digest(password.encode(), config.password.encode()):
            return user
    return None


def _servicenow_refused() -> Response:
    return servicenow_error(
        401,
        "User Not Authenticated",
        "Required to provide Auth information",
        {"WWW-Authenticate": 'BASIC realm="Service-now"'},
    )


def _sn_view(record: Json, fields: str | None) -> Json:
    """A record as the API serves it: no ``x-`` keys, journal fields read back empty, ``sysparm_fields`` honoured."""
    served = {k: ("" if k in SN_JOURNAL_FIELDS else v) for k, v in record.items() if not k.startswith("x-")}
    if fields:
        wanted = [f.strip() for f in fields.split(",") if f.strip()]
        return {f: served[f] for f in wanted if f in served}
    return served


def _sn_body(request: Request) -> Json | Response:
    try:
        body = request.json()
    except NotJson:
        return servicenow_error(400, "Exception while reading request", "The payload is not valid JSON.")
    if not isinstance(body, dict):
        return servicenow_error(400, "Exception while reading request", "The payload is not a JSON object.")
    return body


def _sn_guard(request: Request, state: ItsmState, table: str, methods: Iterable[str]) -> Response | str:
    """The authenticated user, or the error answer (auth first, as the instance checks it first)."""
    user = _servicenow_user(request, state.servicenow)
    if user is None:
        return _servicenow_refused()
    if request.method not in methods:
        return servicenow_error(405, "Method not Supported", f"{request.method} is not supported by this resource")
    if table not in state.servicenow.tables:
        return servicenow_error(400, f"Invalid table {table}", None)
    return user


def servicenow_table(request: Request, state: ItsmState, table: str) -> Response:
    guard = _sn_guard(request, state, table, ("GET", "POST"))
    if isinstance(guard, Response):
        return guard
    fields = request.query.get("sysparm_fields")
    if request.method == "POST":
        body = _sn_body(request)
        if isinstance(body, Response):
            return body
        record = state.create_record(table, body, guard)
        location = f"{request.base_url}/api/now/table/{table}/{record['sys_id']}"
        return json_response(201, {"result": _sn_view(record, fields)}, {"Location": location})
    try:
        query = parse_sysparm_query(request.query.get("sysparm_query", ""))
        limit = _whole(request.query.get("sysparm_limit"), 10000, "sysparm_limit")
        offset = _whole(request.query.get("sysparm_offset"), 0, "sysparm_offset")
    except ValueError as exc:
        return servicenow_error(400, "Invalid query", str(exc))
    found = state.query_records(table, query)
    page = [_sn_view(r, fields) for r in found[offset : offset + limit]]
    return json_response(200, {"result": page}, {"X-Total-Count": str(len(found))})


def servicenow_record(request: Request, state: ItsmState, table: str, sys_id: str) -> Response:
    guard = _sn_guard(request, state, table, ("GET", "PATCH", "PUT"))
    if isinstance(guard, Response):
        return guard
    if request.method == "GET":
        record = state.get_record(table, sys_id)
    else:
        body = _sn_body(request)
        if isinstance(body, Response):
            return body
        record = state.update_record(table, sys_id, body, guard)
    if record is None:
        return servicenow_error(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
    return json_response(200, {"result": _sn_view(record, request.query.get("sysparm_fields"))})


def _whole(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise ValueError(f"{name} must be a whole number, got '{value}'")
    return int(value)
