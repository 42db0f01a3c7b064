"""ServiceNow Table API and Jira Cloud REST v3, the parts the responder calls, in their wire shapes.

ServiceNow: ``/api/now/table/{table}`` (GET with ``sysparm_query``, POST) and ``/api/now/table/{table}/{sys_id}``
(GET, PATCH, PUT); Basic or OAuth bearer auth; ``{"result": ...}`` answers, ``{"error": {"message", "detail"},
"status": "failure"}`` errors; every value a string; journal fields (``work_notes``, ``comments``) kept as
entries and read back empty, as the real API does.

Jira: ``GET /rest/api/3/search/jql`` (a JQL subset), ``POST /rest/api/3/issue`` and
``POST /rest/api/3/issue/{key}/comment``; Basic auth with an account email and API token; descriptions and
comments must be Atlassian Document Format; ``{"errorMessages": [...], "errors": {...}}`` errors.

Credentials and projects come from the tenant file's ``x-servicenow`` and ``x-jira`` keys (defaults in ``state.py``).
One module per part: ``state`` (configuration and records), ``servicenow`` and ``sysparm`` (the Table API and its
query subset), ``jira``, ``jql`` and ``adf`` (REST v3, its JQL subset, the document checks); the route table is in
simulator/routes.py.
"""

from __future__ import annotations

from http import HTTPStatus

from simulator.itsm.adf import document_problem, json_text
from simulator.itsm.jira import jira_add_comment, jira_create_issue, jira_error, jira_search
from simulator.itsm.jql import JqlError, parse_jql
from simulator.itsm.servicenow import servicenow_error, servicenow_record, servicenow_table
from simulator.itsm.state import (
    JIRA_DEFAULTS,
    SERVICENOW_DEFAULTS,
    ItsmState,
    JiraConfig,
    ServiceNowConfig,
    load_config,
)
from simulator.itsm.sysparm import SnQuery, parse_sysparm_query
from simulator.wire import Request, Response, json_response

__all__ = [
    "JIRA_DEFAULTS",
    "SERVICENOW_DEFAULTS",
    "ItsmState",
    "JiraConfig",
    "JqlError",
    "ServiceNowConfig",
    "SnQuery",
    "control",
    "document_problem",
    "injected_error",
    "jira_add_comment",
    "jira_create_issue",
    "jira_error",
    "jira_search",
    "json_text",
    "load_config",
    "parse_jql",
    "parse_sysparm_query",
    "servicenow_error",
    "servicenow_record",
    "servicenow_table",
]

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
