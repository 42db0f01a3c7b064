"""ServiceNow Table API and Jira Cloud REST v3, the parts the responder calls, in their wire shapes.

ServiceNow: ``/api/now/table/{table}`` (GET with ``sysparm_query``, POST) and ``/api/now/table/{table}/{sys_id}``
(GET, PATCH, PUT); Basic or OAuth bearer auth; ``{"result": ...}`` answers, ``{"error": {"message", "detail"},
"status": "failure"}`` errors; every value a string; journal fields (``work_notes``, ``comments``) kept as
entries and read back empty, as the real API does.

Jira: ``GET /rest/api/3/search/jql`` (a JQL subset), ``POST /rest/api/3/issue`` and
``POST /rest/api/3/issue/{key}/comment``; Basic auth with an account email and API token; descriptions and
comments must be Atlassian Document Format; ``{"errorMessages": [...], "errors": {...}}`` errors.

Credentials and projects come from the tenant file's ``x-servicenow`` and ``x-jira`` keys (defaults below).
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from simulator.tenant import Json, Tenant
from simulator.wire import NotJson, Request, Response, json_response, utc_now

SERVICENOW_DEFAULTS: Json = {
    "username": "rsr-integration",
    "password": "sim-servicenow-password",
    "token": "sim-servicenow-token",
    "tables": ["incident", "sn_si_incident"],
}
JIRA_DEFAULTS: Json = {
    "email": "responder@contoso.com",
    "apiToken": "sim-jira-api-token",
    "projects": [{"key": "SEC", "name": "Security", "issueTypes": ["Task", "Bug", "Incident"]}],
}

# -- configuration from the tenant file -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceNowConfig:
    username: str
    password: str
    token: str
    tables: tuple[str, ...]


@dataclass(frozen=True)
class JiraProject:
    key: str
    id: str
    name: str
    issue_types: tuple[str, ...]


@dataclass(frozen=True)
class JiraConfig:
    email: str
    api_token: str
    projects: tuple[JiraProject, ...]

    def project(self, value: str) -> JiraProject | None:
        """The project whose key, id or name is ``value`` (case-insensitive, as JQL compares)."""
        wanted = value.casefold()
        for project in self.projects:
            if wanted in (project.key.casefold(), project.id, project.name.casefold()):
                return project
        return None


def load_config(tenant: Tenant) -> tuple[ServiceNowConfig, JiraConfig]:
    """``x-servicenow`` and ``x-jira`` of the tenant file, defaults filled in; ValueError when unusable."""

    def fail(message: str) -> ValueError:
        return ValueError(f"tenant file {tenant.source}: {message}")

    def section(name: str, defaults: Json) -> Json:
        value = tenant.raw.get(name)
        if value is None:
            return dict(defaults)
        if not isinstance(value, dict):
            raise fail(f"{name} must be a mapping")
        unknown = sorted(set(value) - set(defaults))
        if unknown:
            raise fail(f"{name} has unknown keys: {', '.join(unknown)} (allowed: {', '.join(sorted(defaults))})")
        return {**defaults, **value}

    def text(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise fail(f"{where} must be a non-empty string")
        return value

    def texts(value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise fail(f"{where} must be a non-empty list of strings")
        return tuple(text(v, f"{where}[{i}]") for i, v in enumerate(value))

    sn = section("x-servicenow", SERVICENOW_DEFAULTS)
    servicenow = ServiceNowConfig(
        username=text(sn["username"], "x-servicenow.username"),
        password=text(sn["password"], "x-servicenow.password"),
        token=text(sn["token"], "x-servicenow.token"),
        tables=texts(sn["tables"], "x-servicenow.tables"),
    )
    jr = section("x-jira", JIRA_DEFAULTS)
    if not isinstance(jr["projects"], list) or not jr["projects"]:
        raise fail("x-jira.projects must be a non-empty list of {key, issueTypes}")
    projects: list[JiraProject] = []
    for index, spec in enumerate(jr["projects"]):
        where = f"x-jira.projects[{index}]"
        if not isinstance(spec, dict):
            raise fail(f"{where} must be a mapping")
        key = text(spec.get("key"), f"{where}.key")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]+", key):
            raise fail(f"{where}.key {key!r} is not a Jira project key (upper-case letters, digits, _)")
        if any(p.key == key for p in projects):
            raise fail(f"{where}.key {key!r} repeats")
        projects.append(
            JiraProject(
                key=key,
                id=str(spec.get("id") or 10000 + index),
                name=text(spec.get("name", key), f"{where}.name"),
                issue_types=texts(spec.get("issueTypes", ["Task"]), f"{where}.issueTypes"),
            )
        )
    jira = JiraConfig(
        email=text(jr["email"], "x-jira.email"),
        api_token=text(jr["apiToken"], "x-jira.apiToken"),
        projects=tuple(projects),
    )
    return servicenow, jira


# -- state ------------------------------------------------------------------------------------------------------

SN_STATE_NEW = "1"
SN_STATE_CLOSED = "7"
SN_INACTIVE_STATES = frozenset({"7", "8"})  # Closed, Canceled: the instance sets active=false
SN_JOURNAL_FIELDS = ("work_notes", "comments")
SN_MAX_LENGTHS = {"short_description": 160, "description": 4000, "correlation_id": 100, "correlation_display": 100}
SN_NUMBER_PREFIXES = {"incident": "INC", "sn_si_incident": "SIR", "problem": "PRB", "change_request": "CHG"}
# Priority from impact x urgency, the incident table's default lookup rules.
SN_PRIORITY = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("2", "1"): "2",
    ("1", "3"): "3",
    ("2", "2"): "3",
    ("3", "1"): "3",
    ("2", "3"): "4",
    ("3", "2"): "4",
    ("3", "3"): "5",
}
SN_SYSTEM_FIELDS = frozenset(
    {"sys_id", "number", "sys_created_on", "sys_updated_on", "sys_created_by", "sys_updated_by", "sys_class_name"}
)

JIRA_STATUSES: dict[str, tuple[str, int, str]] = {
    # status name -> (statusCategory key, statusCategory id, statusCategory name)
    "To Do": ("new", 2, "To Do"),
    "In Progress": ("indeterminate", 4, "In Progress"),
    "Done": ("done", 3, "Done"),
}
JIRA_FIELD_MAX = 32767


class ItsmState:
    """Records and issues the endpoints created; every method is thread-safe and returns copies."""

    def __init__(self, tenant: Tenant, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.servicenow, self.jira = load_config(tenant)
        self._clock = clock
        self._lock = threading.RLock()
        self._records: list[Json] = []  # wire fields + "x-table" and the journal lists "x-work_notes", "x-comments"
        self._numbers: dict[str, int] = {}
        self._issues: list[Json] = []  # issue JSON + "x-comments" (comment JSON)
        self._issue_numbers: dict[str, int] = {}
        self._ids = 10000

    # -- ServiceNow ---------------------------------------------------------------------------------------------

    def create_record(self, table: str, values: Mapping[str, Any], user: str) -> Json:
        with self._lock:
            count = self._numbers.get(table, 0) + 1
            self._numbers[table] = count
            now = _sn_time(self._clock())
            record: Json = {
                "sys_id": secrets.token_hex(16),
                "number": f"{SN_NUMBER_PREFIXES.get(table, 'TASK')}{10000 + count:07d}",
                "sys_class_name": table,
                "sys_created_on": now,
                "sys_created_by": user,
                "sys_updated_on": now,
                "sys_updated_by": user,
                "opened_at": now,
                "opened_by": user,
                "state": SN_STATE_NEW,
                "active": "true",
                "impact": "3",
                "urgency": "3",
                "short_description": "",
                "description": "",
                "correlation_id": "",
                "correlation_display": "",
                "closed_at": "",
                "work_notes": "",
                "comments": "",
                "x-table": table,
                "x-work_notes": [],
                "x-comments": [],
            }
            self._apply(record, values, user, now)
            self._records.append(record)
            return copy.deepcopy(record)

    def update_record(self, table: str, sys_id: str, values: Mapping[str, Any], user: str) -> Json | None:
        with self._lock:
            record = self._record(table, sys_id)
            if record is None:
                return None
            now = _sn_time(self._clock())
            record["sys_updated_on"] = now
            record["sys_updated_by"] = user
            self._apply(record, values, user, now)
            return copy.deepcopy(record)

    def get_record(self, table: str, sys_id: str) -> Json | None:
        with self._lock:
            record = self._record(table, sys_id)
            return copy.deepcopy(record) if record is not None else None

    def query_records(self, table: str, query: SnQuery) -> list[Json]:
        with self._lock:
            rows = [r for r in self._records if r["x-table"] == table]
            known = set().union(*(r.keys() for r in rows)) if rows else set()
            # A condition on a field the table does not have is ignored, as ServiceNow does by default
            # (glide.invalid_query.returns_no_rows=false): a misspelt field widens the search, not narrows it.
            conditions = [c for c in query.conditions if c[0] in known]
            found = [(position, r) for position, r in enumerate(rows) if all(_sn_matches(r, c) for c in conditions)]
            for field, descending in reversed(query.order):
                # Ties (one second is the field's precision) keep creation order, so the newest sorts first.
                found.sort(key=lambda pair: (str(pair[1].get(field, "")), pair[0]), reverse=descending)
            return copy.deepcopy([r for _, r in found])

    def close_record(self, key: str) -> Json | None:
        """Close the record whose sys_id or number is ``key`` (state Closed, active false)."""
        with self._lock:
            record = next((r for r in self._records if key in (r["sys_id"], r["number"])), None)
            if record is None:
                return None
            return self.update_record(record["x-table"], record["sys_id"], {"state": SN_STATE_CLOSED}, "admin")

    def records(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._records)

    def _record(self, table: str, sys_id: str) -> Json | None:
        return next((r for r in self._records if r["x-table"] == table and r["sys_id"] == sys_id), None)

    def _apply(self, record: Json, values: Mapping[str, Any], user: str, now: str) -> None:
        for field, value in values.items():
            if field in SN_SYSTEM_FIELDS or field.startswith("x-"):
                continue  # the instance owns these
            text = _sn_string(value)
            if field in SN_JOURNAL_FIELDS:
                if text.strip():
                    record[f"x-{field}"].append({"value": text, "sys_created_on": now, "sys_created_by": user})
                continue
            limit = SN_MAX_LENGTHS.get(field)
            record[field] = text[:limit] if limit else text  # longer values are cut silently
        record["priority"] = SN_PRIORITY.get((record["impact"], record["urgency"]), "5")
        if record["state"] in SN_INACTIVE_STATES and record["active"] == "true":
            record["active"] = "false"
            record["closed_at"] = now
            record["closed_by"] = user

    # -- Jira -------------------------------------------------------------------------------------------------------

    def create_issue(self, project: JiraProject, fields: Mapping[str, Any], base_url: str) -> Json:
        with self._lock:
            count = self._issue_numbers.get(project.key, 0) + 1
            self._issue_numbers[project.key] = count
            self._ids += 1
            issue_id = str(self._ids)
            now = _jira_time(self._clock())
            issue_fields = {
                **copy.deepcopy(dict(fields)),
                "project": {"id": project.id, "key": project.key, "name": project.name},
                "issuetype": {"name": fields["issuetype"]["name"]},
                "labels": list(fields.get("labels", [])),
                "created": now,
                "updated": now,
                "resolution": None,
                "resolutiondate": None,
                "reporter": self._account(),
            }
            issue: Json = {
                "id": issue_id,
                "key": f"{project.key}-{count}",
                "self": f"{base_url}/rest/api/3/issue/{issue_id}",
                "fields": issue_fields,
                "x-comments": [],
            }
            _set_status(issue, "To Do", now)
            self._issues.append(issue)
            return copy.deepcopy(issue)

    def add_comment(self, key: str, body: Any, base_url: str) -> Json | None:
        with self._lock:
            issue = self._issue(key)
            if issue is None:
                return None
            self._ids += 1
            now = _jira_time(self._clock())
            comment = {
                "self": f"{base_url}/rest/api/3/issue/{issue['id']}/comment/{self._ids}",
                "id": str(self._ids),
                "author": self._account(),
                "body": copy.deepcopy(body),
                "updateAuthor": self._account(),
                "created": now,
                "updated": now,
                "jsdPublic": True,
            }
            issue["x-comments"].append(comment)
            issue["fields"]["updated"] = now
            return copy.deepcopy(comment)

    def set_issue_status(self, key: str, status: str) -> Json | None:
        with self._lock:
            issue = self._issue(key)
            if issue is None:
                return None
            _set_status(issue, status, _jira_time(self._clock()))
            return copy.deepcopy(issue)

    def search_issues(self, predicate: Callable[[Json], bool], order: Sequence[tuple[str, bool]]) -> list[Json]:
        with self._lock:
            found = [issue for issue in self._issues if predicate(issue)]
            for field, descending in reversed(order):
                found.sort(key=_jira_sort_key(field), reverse=descending)
            return copy.deepcopy(found)

    def issues(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._issues)

    def _issue(self, key: str) -> Json | None:
        wanted = key.upper()
        return next((i for i in self._issues if wanted in (i["key"], i["id"])), None)

    def _account(self) -> Json:
        return {
            "accountId": "5b10ac8d82e05b22cc7d4ef5",
            "emailAddress": self.jira.email,
            "displayName": "Restricted Sender Responder",
            "active": True,
            "accountType": "atlassian",
        }


def _set_status(issue: Json, name: str, now: str) -> None:
    key, category_id, category_name = JIRA_STATUSES[name]
    fields = issue["fields"]
    fields["status"] = {
        "name": name,
        "statusCategory": {"id": category_id, "key": key, "name": category_name},
    }
    fields["statusCategory"] = fields["status"]["statusCategory"]
    fields["updated"] = now
    done = key == "done"
    fields["resolution"] = {"name": "Done"} if done else None
    fields["resolutiondate"] = now if done else None


def _jira_sort_key(field: str) -> Callable[[Json], Any]:
    if field == "key":
        return lambda issue: (issue["key"].split("-")[0], int(issue["key"].split("-")[1]))
    # Ties within one millisecond keep creation order (ids grow).
    return lambda issue: (str(issue["fields"].get(field, "")), int(issue["id"]))


def _sn_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _jira_time(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _sn_string(value: Any) -> str:
    """How the instance stores a JSON value: everything becomes a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict):  # a reference given as {"value": sys_id} or {"sys_id": ...}
        return str(value.get("value") or value.get("sys_id") or "")
    return str(value)


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
        user, password = _basic(value)
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


@dataclass(frozen=True)
class SnQuery:
    conditions: tuple[tuple[str, str, str], ...]  # (field, "=" or "!=", value)
    order: tuple[tuple[str, bool], ...]  # (field, descending)


_SN_CONDITION = re.compile(r"([a-z_][a-z0-9_.]*)(!=|=)(.*)", re.DOTALL)
_SN_OTHER_OPERATOR = re.compile(r"[a-z_][a-z0-9_.]*(?:LIKE|STARTSWITH|ENDSWITH|IN|NOT|ISEMPTY|ISNOTEMPTY|[<>])")


def parse_sysparm_query(text: str) -> SnQuery:
    """``field=value^field!=value^ORDERBYfield^ORDERBYDESCfield``; ValueError for what the simulator lacks."""
    conditions: list[tuple[str, str, str]] = []
    order: list[tuple[str, bool]] = []
    for term in text.split("^") if text else []:
        if not term or term == "EQ":
            continue
        if term.startswith("ORDERBYDESC"):
            order.append((term[len("ORDERBYDESC") :], True))
        elif term.startswith("ORDERBY"):
            order.append((term[len("ORDERBY") :], False))
        elif term.startswith(("OR", "NQ", "RL")) or _SN_OTHER_OPERATOR.match(term):
            raise ValueError(f"the simulator does not evaluate '{term}': it knows field=value, field!=value, ORDERBY")
        else:
            match = _SN_CONDITION.fullmatch(term)
            if match is None:
                raise ValueError(f"cannot read the condition '{term}'")
            conditions.append((match[1], match[2], match[3]))
    return SnQuery(tuple(conditions), tuple(order))


def _sn_matches(record: Json, condition: tuple[str, str, str]) -> bool:
    field, operator, value = condition
    equal = str(record.get(field, "")).casefold() == value.casefold()  # the database compares without case
    return equal if operator == "=" else not equal


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


# -- Jira endpoints ---------------------------------------------------------------------------------------------


def jira_error(status: int, messages: Sequence[str] = (), errors: Mapping[str, str] | None = None) -> Response:
    return json_response(status, {"errorMessages": list(messages), "errors": dict(errors or {})})


def _jira_authenticated(request: Request, config: JiraConfig) -> bool:
    scheme, _, value = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    email, token = _basic(value)
    return email.casefold() == config.email.casefold() and secrets.compare_digest(
        token.encode(), config.api_token.encode()
    )


def _jira_guard(request: Request, state: ItsmState, method: str) -> Response | None:
    if not _jira_authenticated(request, state.jira):
        return jira_error(401, ["Client must be authenticated to access this resource."])
    if request.method != method:
        response = jira_error(405, [f"HTTP method {request.method} is not supported by this resource."])
        response.headers["Allow"] = method
        return response
    return None


def jira_search(request: Request, state: ItsmState) -> Response:
    refused = _jira_guard(request, state, "GET")
    if refused is not None:
        return refused
    jql = request.query.get("jql", "").strip()
    if not jql:
        return jira_error(
            400, ["Unbounded JQL queries are not allowed here. Please add a search restriction to your query."]
        )
    try:
        predicate, order = parse_jql(jql, state.jira)
    except JqlError as exc:
        return jira_error(400, [str(exc)])
    max_text = request.query.get("maxResults", "50")
    token = request.query.get("nextPageToken", "0") or "0"
    if not max_text.isdigit() or not token.isdigit():
        return jira_error(400, ["maxResults and nextPageToken must be whole numbers."])
    limit = min(max(int(max_text), 1), 5000)
    start = int(token)
    found = state.search_issues(predicate, order)
    wanted = [f.strip() for f in request.query.get("fields", "id").split(",") if f.strip()]
    page = [_jira_view(issue, wanted) for issue in found[start : start + limit]]
    payload: Json = {"issues": page, "isLast": start + limit >= len(found)}
    if not payload["isLast"]:
        payload["nextPageToken"] = str(start + limit)
    return json_response(200, payload)


def _jira_view(issue: Json, wanted: Sequence[str]) -> Json:
    view: Json = {"expand": "", "id": issue["id"], "self": issue["self"], "key": issue["key"]}
    every = "*all" in wanted or "*navigable" in wanted
    fields = {k: v for k, v in issue["fields"].items() if every or k in wanted}
    if fields:
        view["fields"] = fields
    return view


def jira_create_issue(request: Request, state: ItsmState) -> Response:
    refused = _jira_guard(request, state, "POST")
    if refused is not None:
        return refused
    try:
        body = request.json()
    except NotJson:
        return jira_error(400, ["Unexpected character in the request body: it is not valid JSON."])
    fields = body.get("fields") if isinstance(body, dict) else None
    if not isinstance(fields, dict):
        return jira_error(400, ["Can not deserialize the request: 'fields' must be an object."])
    errors: dict[str, str] = {}
    project_spec = fields.get("project")
    project = None
    if isinstance(project_spec, dict):
        value = project_spec.get("key") or project_spec.get("id")
        project = state.jira.project(str(value)) if value else None
    if project is None:
        errors["project"] = "Specify a valid project ID or key"
    issue_type = fields.get("issuetype")
    type_name = issue_type.get("name") if isinstance(issue_type, dict) else None
    if not isinstance(type_name, str) or not type_name:
        errors["issuetype"] = "Specify an issue type"
    elif project is not None and type_name not in project.issue_types:
        errors["issuetype"] = "The issue type selected is invalid."
    summary = fields.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        errors["summary"] = "You must specify a summary of the issue."
    elif len(summary) > 255:
        errors["summary"] = "Summary must be less than 255 characters."
    elif "\n" in summary or "\r" in summary:
        errors["summary"] = "The summary is invalid because it contains newline characters."
    if "description" in fields and fields["description"] is not None:
        problem = document_problem(fields["description"])
        if problem:
            errors["description"] = problem
    labels = fields.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        errors["labels"] = "Labels must be a list of strings."
    else:
        for label in labels:
            if not label or any(c.isspace() for c in label):
                errors["labels"] = f"The label '{label}' contains spaces which is invalid."
            elif len(label) > 255:
                errors["labels"] = "The label must not exceed 255 characters."
    for name in fields:
        if name not in {"project", "issuetype", "summary", "description", "labels", "priority"}:
            errors[name] = f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."
    if errors or project is None:
        return jira_error(400, [], errors)
    issue = state.create_issue(project, fields, request.base_url)
    return json_response(201, {"id": issue["id"], "key": issue["key"], "self": issue["self"]})


def jira_add_comment(request: Request, state: ItsmState, key: str) -> Response:
    refused = _jira_guard(request, state, "POST")
    if refused is not None:
        return refused
    try:
        body = request.json()
    except NotJson:
        return jira_error(400, ["Unexpected character in the request body: it is not valid JSON."])
    document = body.get("body") if isinstance(body, dict) else None
    if document is None or document == "":
        return jira_error(400, [], {"comment": "Comment body can not be empty!"})
    problem = document_problem(document)
    if problem:
        return jira_error(400, [], {"comment": problem})
    comment = state.add_comment(key, document, request.base_url)
    if comment is None:
        return jira_error(404, ["Issue does not exist or you do not have permission to see it."])
    return json_response(201, comment)


# -- Atlassian Document Format ----------------------------------------------------------------------------------

_ADF_BLOCKS = frozenset(
    {"paragraph", "heading", "codeBlock", "bulletList", "orderedList", "blockquote", "rule", "panel", "table"}
)
_ADF_INLINE = frozenset({"text", "hardBreak", "mention", "emoji", "inlineCard", "date", "status"})
_ADF_CHILDREN: dict[str, frozenset[str]] = {
    "doc": _ADF_BLOCKS,
    "paragraph": _ADF_INLINE,
    "heading": _ADF_INLINE,
    "codeBlock": frozenset({"text"}),
    "bulletList": frozenset({"listItem"}),
    "orderedList": frozenset({"listItem"}),
    "listItem": frozenset({"paragraph", "bulletList", "orderedList", "codeBlock"}),
    "blockquote": frozenset({"paragraph", "bulletList", "orderedList", "codeBlock"}),
    "panel": frozenset({"paragraph", "heading", "bulletList", "orderedList"}),
}


def document_problem(document: Any) -> str | None:
    """Why Jira would refuse ``document`` as a rich-text value; ``None`` when it is valid ADF."""
    if not isinstance(document, dict) or document.get("type") != "doc":
        return "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
    if document.get("version") != 1 or not isinstance(document.get("content"), list):
        return "INVALID_INPUT"
    if len(json_text(document)) > JIRA_FIELD_MAX:
        return f"The entered text is too long. It exceeds the allowed limit of {JIRA_FIELD_MAX:,} characters."
    return None if _adf_node_valid(document, "doc") else "INVALID_INPUT"


def _adf_node_valid(node: Any, expected_parent: str) -> bool:
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        return False
    kind = node["type"]
    if kind != "doc" and kind not in _ADF_CHILDREN.get(expected_parent, frozenset()):
        return False
    if kind == "text":
        text = node.get("text")
        if not isinstance(text, str) or not text:
            return False  # Jira refuses empty text nodes
        return not (expected_parent == "codeBlock" and node.get("marks"))
    if kind == "heading":
        level = (node.get("attrs") or {}).get("level")
        if level not in range(1, 7):
            return False
    content = node.get("content", [])
    if not isinstance(content, list):
        return False
    if kind in ("bulletList", "orderedList", "listItem") and not content:
        return False
    return all(_adf_node_valid(child, kind) for child in content)


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- JQL --------------------------------------------------------------------------------------------------------


class JqlError(ValueError):
    """A JQL query the simulator cannot run; the message reads like Jira's."""


_JQL_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>!=|!~|>=|<=|=|~|>|<)"""
    r"""|(?P<punct>[(),])|(?P<word>[\w\-]+))"""
)
_JQL_FIELDS = {
    "project": "project",
    "labels": "labels",
    "statuscategory": "statusCategory",
    "status": "status",
    "key": "key",
    "issuekey": "key",
    "id": "key",
    "issuetype": "issuetype",
    "type": "issuetype",
}
_JQL_ORDER_FIELDS = {"created": "created", "updated": "updated", "key": "key", "issuekey": "key"}
_JQL_UNSUPPORTED = frozenset({"OR", "NOT", "IN", "IS", "WAS", "CHANGED", "EMPTY", "NULL"})

Token = tuple[str, str, int]  # (kind, text, 1-based character position)


def _jql_tokens(jql: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(jql):
        if not jql[position:].strip():
            break
        match = _JQL_TOKEN.match(jql, position)
        if match is None or match.end() == position:
            start = position + len(jql[position:]) - len(jql[position:].lstrip())
            raise JqlError(
                f"Error in the JQL Query: The character '{jql[start]}' is a reserved JQL character. You must "
                f"enclose it in a string or use the escape '\\u{ord(jql[start]):04x}' instead. "
                f"(line 1, character {start + 1})"
            )
        kind = match.lastgroup or "word"
        text = match.group(kind)
        tokens.append((kind, text, match.start(kind) + 1))
        position = match.end()
    return tokens


def _jql_value(token: Token) -> str:
    kind, text, _ = token
    if kind == "string":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_jql(jql: str, config: JiraConfig) -> tuple[Callable[[Json], bool], list[tuple[str, bool]]]:
    """The subset ``field (=|!=) value [AND ...] [ORDER BY field [ASC|DESC], ...]``; JqlError otherwise."""
    tokens = _jql_tokens(jql)
    clauses: list[Callable[[Json], bool]] = []
    order: list[tuple[str, bool]] = []
    index = 0

    def expecting(what: str, at: int) -> JqlError:
        if at >= len(tokens):
            return JqlError(f"Error in the JQL Query: Expecting {what} but reached the end of the query.")
        _, text, position = tokens[at]
        if text.upper() in _JQL_UNSUPPORTED:
            return JqlError(
                f"Error in the JQL Query: the simulator supports only 'field = value' and 'field != value' clauses "
                f"joined by AND, and ORDER BY; got '{text}'. (line 1, character {position})"
            )
        return JqlError(f"Error in the JQL Query: Expecting {what} but got '{text}'. (line 1, character {position})")

    while index < len(tokens) and not (tokens[index][0] == "word" and tokens[index][1].upper() == "ORDER"):
        if clauses:
            if tokens[index][0] != "word" or tokens[index][1].upper() != "AND":
                raise expecting("either 'OR' or 'AND'", index)
            index += 1
        if index >= len(tokens) or tokens[index][0] not in ("word", "string"):
            raise expecting("a field name", index)
        field_text = _jql_value(tokens[index])
        field = _JQL_FIELDS.get(field_text.casefold())
        if field is None:
            raise JqlError(f"Field '{field_text}' does not exist or you do not have permission to view it.")
        index += 1
        if index >= len(tokens) or tokens[index][1] not in ("=", "!="):
            raise expecting("operator '=' or '!='", index)
        operator = tokens[index][1]
        index += 1
        if index >= len(tokens) or tokens[index][0] not in ("word", "string"):
            raise expecting("either a value, list or function", index)
        value = _jql_value(tokens[index])
        index += 1
        clauses.append(_jql_clause(field, operator, value, config))

    if index < len(tokens):
        index += 1  # ORDER
        if index >= len(tokens) or tokens[index][1].upper() != "BY":
            raise expecting("'BY'", index)
        index += 1
        while True:
            if index >= len(tokens) or tokens[index][0] not in ("word", "string"):
                raise expecting("a field name", index)
            name = _jql_value(tokens[index])
            sort_field = _JQL_ORDER_FIELDS.get(name.casefold())
            if sort_field is None:
                raise JqlError(f"Not able to sort using field '{name}'.")
            index += 1
            descending = False
            if index < len(tokens) and tokens[index][1].upper() in ("ASC", "DESC"):
                descending = tokens[index][1].upper() == "DESC"
                index += 1
            order.append((sort_field, descending))
            if index < len(tokens) and tokens[index][1] == ",":
                index += 1
                continue
            break
        if index < len(tokens):
            raise expecting("',' or the end of the query", index)
    if not clauses:
        raise JqlError("Unbounded JQL queries are not allowed here. Please add a search restriction to your query.")
    return (lambda issue: all(clause(issue) for clause in clauses)), order


def _jql_clause(field: str, operator: str, value: str, config: JiraConfig) -> Callable[[Json], bool]:
    wanted = value.casefold()
    if field == "project":
        project = config.project(value)
        if project is None:
            raise JqlError(f"The value '{value}' does not exist for the field 'project'.")
        wanted = project.key.casefold()
    elif field == "statusCategory":
        known = {text.casefold() for key, _, name in JIRA_STATUSES.values() for text in (key, name)}
        if wanted not in known:
            raise JqlError(f"The value '{value}' does not exist for the field 'statusCategory'.")
    elif field == "status" and wanted not in {name.casefold() for name in JIRA_STATUSES}:
        raise JqlError(f"The value '{value}' does not exist for the field 'status'.")

    def values(issue: Json) -> list[str]:
        """What ``field`` holds on ``issue``, every way JQL may name it."""
        fields = issue["fields"]
        if field == "project":
            return [fields["project"]["key"]]
        if field == "labels":
            return list(fields["labels"])
        if field == "statusCategory":
            category = fields["status"]["statusCategory"]
            return [category["name"], category["key"]]
        if field == "status":
            return [fields["status"]["name"]]
        if field == "issuetype":
            return [fields["issuetype"]["name"]]
        return [issue["key"], issue["id"]]

    def test(issue: Json) -> bool:
        found = wanted in (v.casefold() for v in values(issue))
        return found if operator == "=" else not found

    return test


# -- faults and the control endpoints ---------------------------------------------------------------------------

_SN_FAULTS = {
    429: ("Too many requests", "Rate limit exceeded; retry after the time in Retry-After."),
    500: ("Internal server error", "An unexpected error occurred on the instance."),
    503: ("Service Unavailable", "The instance is unavailable; it may be in maintenance."),
}
_JIRA_FAULTS = {
    429: "Rate limit exceeded.",
    503: "The service is temporarily unavailable. Please try again later.",
}


def injected_error(route_name: str, status: int) -> Response:
    """An injected failure in the shape of the service behind ``route_name`` (``servicenow.*``, ``jira.*``)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    if route_name.startswith("servicenow."):
        message, detail = _SN_FAULTS.get(status, (phrase, f"Simulated failure: HTTP {status}."))
        return servicenow_error(status, message, detail)
    return jira_error(status, [_JIRA_FAULTS.get(status, f"Simulated failure: HTTP {status} ({phrase}).")])


def control(request: Request, state: ItsmState) -> Response | None:
    """``POST /_sim/servicenow/records/{sys_id or number}/close`` and ``POST /_sim/jira/issues/{key}/close``;
    ``None`` for any other control path."""
    parts = request.segments[1:]
    folded = [p.casefold() for p in parts]
    if len(parts) != 4 or folded[3] != "close":
        return None
    if folded[:2] == ["servicenow", "records"]:
        if request.method != "POST":
            return json_response(405, {"error": {"code": "MethodNotAllowed", "message": "use POST"}})
        record = state.close_record(parts[2])
        if record is None:
            return json_response(404, {"error": {"code": "NotFound", "message": f"no record '{parts[2]}'"}})
        return json_response(200, record)
    if folded[:2] == ["jira", "issues"]:
        if request.method != "POST":
            return json_response(405, {"error": {"code": "MethodNotAllowed", "message": "use POST"}})
        issue = state.set_issue_status(parts[2], "Done")
        if issue is None:
            return json_response(404, {"error": {"code": "NotFound", "message": f"no issue '{parts[2]}'"}})
        return json_response(200, issue)
    return None


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password
