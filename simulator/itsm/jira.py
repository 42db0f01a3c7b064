"""Jira Cloud REST v3 endpoints: JQL search, create issue, add comment."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from simulator.itsm.adf import document_problem
from simulator.itsm.jql import JqlError, parse_jql
from simulator.itsm.state import ItsmState, JiraConfig, basic_credentials
from simulator.tenant import Json
from simulator.wire import NotJson, Request, Response, json_response

# -- Jira endpoints ---------------------------------------------------------------------------------------------


def jira_error(status: int, messages: Sequence[str] = (), errors: Mapping[str, str] | None = None) -> Response:
    return json_response(status, {"errorMessages": list(messages), "errors": dict(errors or {})})


def _jira_authenticated(request: Request, config: JiraConfig) -> bool:
    scheme, _, value = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    email, token = basic_credentials(value)
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


def _posted_json(request: Request, state: ItsmState) -> Any:
    """The body of an authenticated POST, or the Response that refuses it."""
    refused = _jira_guard(request, state, "POST")
    if refused is not None:
        return refused
    try:
        return request.json()
    except NotJson:
        return jira_error(400, ["Unexpected character in the request body: it is not valid JSON."])


def jira_create_issue(request: Request, state: ItsmState) -> Response:
    body = _posted_json(request, state)
    if isinstance(body, Response):
        return body
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
    # The priority is an object naming it by "name" or "id" (the default scheme: Highest, High, Medium, Low, Lowest),
    # https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issue-priorities/
    priority = fields.get("priority")
    if "priority" in fields and not (
        isinstance(priority, dict) and any(isinstance(priority.get(k), str) and priority[k] for k in ("name", "id"))
    ):
        errors["priority"] = "Could not find valid 'id' or 'name' in priority object."
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
    body = _posted_json(request, state)
    if isinstance(body, Response):
        return body
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
