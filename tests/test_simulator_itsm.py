"""The simulator's ServiceNow Table API and Jira REST v3 endpoints, spoken to with plain httpx."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from simulator import Simulator
from simulator.itsm import JIRA_DEFAULTS, SERVICENOW_DEFAULTS
from tests.conftest import tenant

SN_AUTH = (SERVICENOW_DEFAULTS["username"], SERVICENOW_DEFAULTS["password"])
SN_BEARER = {"Authorization": f"Bearer {SERVICENOW_DEFAULTS['token']}"}
JIRA_AUTH = (JIRA_DEFAULTS["email"], JIRA_DEFAULTS["apiToken"])
TABLE = "/api/now/table/incident"
OPEN_QUERY = "correlation_id={}^active=true^ORDERBYDESCsys_created_on"
SN_UNAUTHENTICATED = {
    "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
    "status": "failure",
}


def adf(*texts: str) -> dict[str, Any]:
    return {
        "type": "doc",
        "version": 1,
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": t} for t in texts]}],
    }


def issue_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "project": {"key": "SEC"},
        "issuetype": {"name": "Task"},
        "summary": "Compromise suspected: bob@contoso.com",
        "description": adf("Evidence"),
        "labels": ["rsr-1", "restricted-sender-responder"],
    }
    fields.update(overrides)
    return {key: value for key, value in fields.items() if value is not None}


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(tenant([], []))


@pytest.fixture
def http(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=5) as client:
        yield client


def sn_create(http: httpx.Client, **values: Any) -> dict[str, Any]:
    response = http.post(TABLE, json={"short_description": "x", "correlation_id": "rsr-1", **values}, auth=SN_AUTH)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


def jql(http: httpx.Client, query: str, **params: str) -> httpx.Response:
    return http.get("/rest/api/3/search/jql", params={"jql": query, **params}, auth=JIRA_AUTH)


def jira_create(http: httpx.Client, **overrides: Any) -> dict[str, Any]:
    response = http.post("/rest/api/3/issue", json={"fields": issue_fields(**overrides)}, auth=JIRA_AUTH)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# -- ServiceNow -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"auth": (SERVICENOW_DEFAULTS["username"], "wrong")},
        {"auth": ("someone-else", SERVICENOW_DEFAULTS["password"])},
        {"headers": {"Authorization": "Bearer wrong"}},
        {"headers": {"Authorization": "Basic !!not-base64"}},
    ],
    ids=["no-auth", "wrong-password", "wrong-user", "wrong-token", "garbage"],
)
def test_servicenow_answers_401_user_not_authenticated_without_valid_credentials(
    http: httpx.Client, auth: dict[str, Any]
) -> None:
    response = http.get(TABLE, **auth)
    assert response.status_code == 401
    assert response.json() == SN_UNAUTHENTICATED
    assert response.headers["WWW-Authenticate"] == 'BASIC realm="Service-now"'


def test_servicenow_accepts_basic_auth_and_the_oauth_bearer_token(http: httpx.Client) -> None:
    assert http.get(TABLE, auth=SN_AUTH).status_code == 200
    assert http.get(TABLE, headers=SN_BEARER).status_code == 200


def test_servicenow_creates_records_with_numbers_sys_ids_and_string_values(http: httpx.Client) -> None:
    response = http.post(
        TABLE,
        json={"short_description": "s" * 200, "correlation_id": "rsr-1", "impact": 1, "urgency": 2, "x-ignored": 1},
        auth=SN_AUTH,
    )
    assert response.status_code == 201
    record = response.json()["result"]
    assert re.fullmatch(r"[0-9a-f]{32}", record["sys_id"])
    assert record["number"] == "INC0010001"
    assert response.headers["Location"].endswith(f"{TABLE}/{record['sys_id']}")
    assert (record["impact"], record["urgency"], record["priority"]) == ("1", "2", "2")
    assert (record["state"], record["active"]) == ("1", "true")
    assert len(record["short_description"]) == 160  # the field's length: longer values are cut silently
    assert all(isinstance(value, str) for value in record.values())
    assert "x-ignored" not in record
    assert sn_create(http)["number"] == "INC0010002"


def test_servicenow_keeps_work_notes_as_journal_entries_and_reads_them_back_empty(
    sim: Simulator, http: httpx.Client
) -> None:
    record = sn_create(http, work_notes="first note")
    assert record["work_notes"] == ""
    response = http.patch(f"{TABLE}/{record['sys_id']}", json={"work_notes": "second note"}, auth=SN_AUTH)
    assert response.status_code == 200
    assert response.json()["result"]["work_notes"] == ""
    [stored] = sim.servicenow_records()
    assert [note["value"] for note in stored["x-work_notes"]] == ["first note", "second note"]
    assert stored["x-table"] == "incident"


def test_servicenow_query_finds_the_open_record_by_correlation_id(http: httpx.Client) -> None:
    older = sn_create(http)
    newer = sn_create(http)
    sn_create(http, correlation_id="rsr-2")
    params = {"sysparm_query": OPEN_QUERY.format("rsr-1"), "sysparm_fields": "sys_id,number", "sysparm_limit": "1"}
    response = http.get(TABLE, params=params, auth=SN_AUTH)
    assert response.status_code == 200
    assert response.json() == {"result": [{"sys_id": newer["sys_id"], "number": newer["number"]}]}
    assert response.headers["X-Total-Count"] == "2"
    everything = http.get(TABLE, params={"sysparm_query": "ORDERBYsys_created_on^ORDERBYnumber"}, auth=SN_AUTH)
    assert [r["number"] for r in everything.json()["result"]][:2] == [older["number"], newer["number"]]


def test_a_closed_servicenow_record_is_inactive_and_not_found_as_open(sim: Simulator, http: httpx.Client) -> None:
    record = sn_create(http)
    closed = http.post(f"/_sim/servicenow/records/{record['number']}/close")
    assert closed.status_code == 200
    assert (closed.json()["state"], closed.json()["active"]) == ("7", "false")
    found = http.get(TABLE, params={"sysparm_query": OPEN_QUERY.format("rsr-1")}, auth=SN_AUTH)
    assert found.json() == {"result": []}
    assert http.post("/_sim/servicenow/records/INC9999999/close").status_code == 404


def test_servicenow_ignores_a_condition_on_a_field_the_table_does_not_have(http: httpx.Client) -> None:
    sn_create(http)
    # As the real instance does by default: a misspelt field widens the search instead of failing it.
    response = http.get(TABLE, params={"sysparm_query": "correlation_idd=nothing"}, auth=SN_AUTH)
    assert len(response.json()["result"]) == 1


@pytest.mark.parametrize("query", ["active=true^ORpriority=1", "short_descriptionLIKEx", "garbage"])
def test_servicenow_refuses_query_terms_the_simulator_cannot_evaluate(http: httpx.Client, query: str) -> None:
    response = http.get(TABLE, params={"sysparm_query": query}, auth=SN_AUTH)
    assert response.status_code == 400
    assert response.json()["status"] == "failure"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", "/api/now/table/nope", None, 400, "Invalid table nope"),
        ("PATCH", f"{TABLE}/{'0' * 32}", {"work_notes": "x"}, 404, "No Record found"),
        ("GET", f"{TABLE}/{'0' * 32}", None, 404, "No Record found"),
        ("POST", TABLE, b"{not json", 400, "Exception while reading request"),
        ("DELETE", TABLE, None, 405, "Method not Supported"),
        ("GET", "/api/now/other/thing", None, 400, "Requested URI does not represent any resource"),
    ],
)
def test_servicenow_errors_carry_message_detail_and_status_failure(
    http: httpx.Client, method: str, path: str, body: Any, status: int, message: str
) -> None:
    content = body if isinstance(body, bytes) else None
    response = http.request(method, path, json=None if content else body, content=content, auth=SN_AUTH)
    assert response.status_code == status
    assert response.json()["status"] == "failure"
    assert response.json()["error"]["message"] == message
    assert set(response.json()["error"]) == {"message", "detail"}


def test_servicenow_credentials_and_tables_come_from_the_tenant_file(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
) -> None:
    settings = {"username": "svc", "password": "pw", "token": "tk", "tables": ["sn_si_incident"]}
    sim = simulator_factory(tenant([], [], **{"x-servicenow": settings}))
    with httpx.Client(base_url=sim.url, timeout=5) as http:
        assert http.get(TABLE, auth=SN_AUTH).status_code == 401
        assert http.get(TABLE, auth=("svc", "pw")).json()["error"]["message"] == "Invalid table incident"
        created = http.post("/api/now/table/sn_si_incident", json={}, headers={"Authorization": "Bearer tk"})
        assert created.json()["result"]["number"] == "SIR0010001"


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"x-servicenow": {"user": "x"}}, "unknown keys: user"),
        ({"x-servicenow": {"password": ""}}, "x-servicenow.password"),
        ({"x-jira": {"projects": [{"key": "lower"}]}}, "not a Jira project key"),
        ({"x-jira": {"projects": []}}, "x-jira.projects"),
    ],
)
def test_an_unusable_itsm_section_of_the_tenant_file_is_refused(section: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Simulator(tenant([], [], **section))


# -- Jira -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"auth": (JIRA_DEFAULTS["email"], "wrong")},
        {"auth": ("other@contoso.com", JIRA_DEFAULTS["apiToken"])},
        {"headers": {"Authorization": f"Bearer {JIRA_DEFAULTS['apiToken']}"}},
    ],
    ids=["no-auth", "wrong-token", "wrong-email", "bearer"],
)
def test_jira_answers_401_with_error_messages_without_valid_credentials(
    http: httpx.Client, auth: dict[str, Any]
) -> None:
    response = http.post("/rest/api/3/issue", json={"fields": issue_fields()}, **auth)
    assert response.status_code == 401
    assert response.json() == {"errorMessages": ["Client must be authenticated to access this resource."], "errors": {}}


def test_jira_creates_issues_with_keys_ids_and_self_links(sim: Simulator, http: httpx.Client) -> None:
    first = jira_create(http)
    assert set(first) == {"id", "key", "self"}
    assert first["key"] == "SEC-1"
    assert first["self"] == f"{sim.url}/rest/api/3/issue/{first['id']}"
    assert jira_create(http)["key"] == "SEC-2"
    [issue, _] = sim.jira_issues()
    assert issue["fields"]["status"]["statusCategory"]["name"] == "To Do"
    assert issue["fields"]["labels"] == ["rsr-1", "restricted-sender-responder"]
    assert issue["fields"]["description"] == adf("Evidence")


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"project": {"key": "NOPE"}}, "project", "Specify a valid project ID or key"),
        ({"project": None}, "project", "Specify a valid project ID or key"),
        ({"issuetype": {"name": "Epic"}}, "issuetype", "The issue type selected is invalid."),
        ({"issuetype": None}, "issuetype", "Specify an issue type"),
        ({"summary": ""}, "summary", "You must specify a summary of the issue."),
        ({"summary": "s" * 256}, "summary", "Summary must be less than 255 characters."),
        ({"summary": "two\nlines"}, "summary", "The summary is invalid because it contains newline characters."),
        ({"description": "plain text"}, "description", "Atlassian Document"),
        ({"description": adf("")}, "description", "INVALID_INPUT"),
        ({"description": {"type": "doc", "version": 1, "content": [{"type": "bogus"}]}}, "description", "INVALID"),
        ({"labels": ["two words"]}, "labels", "contains spaces"),
        ({"customfield_1": "x"}, "customfield_1", "cannot be set"),
    ],
)
def test_jira_refuses_a_bad_issue_with_a_field_error(
    sim: Simulator, http: httpx.Client, overrides: dict[str, Any], field: str, message: str
) -> None:
    response = http.post("/rest/api/3/issue", json={"fields": issue_fields(**overrides)}, auth=JIRA_AUTH)
    assert response.status_code == 400
    body = response.json()
    assert body["errorMessages"] == []
    assert message in body["errors"][field]
    assert sim.jira_issues() == []


def test_jira_search_finds_open_issues_by_label_newest_first_with_only_the_asked_fields(http: httpx.Client) -> None:
    jira_create(http)
    newer = jira_create(http)
    jira_create(http, labels=["rsr-2"])
    query = 'project = "SEC" AND labels = "rsr-1" AND statusCategory != Done ORDER BY created DESC'
    response = jql(http, query, fields="summary", maxResults="1")
    assert response.status_code == 200
    body = response.json()
    [issue] = body["issues"]
    assert (issue["key"], issue["id"]) == (newer["key"], newer["id"])
    assert issue["fields"] == {"summary": "Compromise suspected: bob@contoso.com"}
    assert body["isLast"] is False
    second = jql(http, query, fields="summary", maxResults="1", nextPageToken=body["nextPageToken"]).json()
    assert [i["key"] for i in second["issues"]] == ["SEC-1"]
    assert second["isLast"] is True
    assert "nextPageToken" not in second


def test_a_done_jira_issue_is_not_found_by_status_category_not_done(sim: Simulator, http: httpx.Client) -> None:
    created = jira_create(http)
    response = http.post(f"/_sim/jira/issues/{created['key']}/close")
    assert response.status_code == 200
    assert response.json()["fields"]["status"]["statusCategory"]["key"] == "done"
    assert jql(http, "project = SEC AND statusCategory != Done").json()["issues"] == []
    assert [i["key"] for i in jql(http, 'project = SEC AND statusCategory = "Done"').json()["issues"]] == ["SEC-1"]
    assert http.post("/_sim/jira/issues/SEC-99/close").status_code == 404


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('project = "NOPE" AND labels = x', "The value 'NOPE' does not exist for the field 'project'."),
        ("project = SEC AND statusCategory != Finished", "does not exist for the field 'statusCategory'"),
        ("project = SEC AND colour = red", "Field 'colour' does not exist"),
        ("project = SEC OR labels = x", "Error in the JQL Query"),
        ("project = SEC AND labels = ", "Error in the JQL Query"),
        ("project = SEC labels = x", "Expecting either 'OR' or 'AND'"),
        ("project = SEC AND labels = 50%", "reserved JQL character"),
        ("project = SEC ORDER BY colour", "Not able to sort using field 'colour'."),
        ("ORDER BY created", "Unbounded JQL queries are not allowed"),
        ("", "Unbounded JQL queries are not allowed"),
    ],
)
def test_jira_answers_400_for_jql_it_cannot_run(http: httpx.Client, query: str, message: str) -> None:
    response = jql(http, query)
    assert response.status_code == 400
    [text] = response.json()["errorMessages"]
    assert message in text


def test_jira_comments_are_recorded_on_the_issue(sim: Simulator, http: httpx.Client) -> None:
    created = jira_create(http)
    response = http.post(f"/rest/api/3/issue/{created['key']}/comment", json={"body": adf("again")}, auth=JIRA_AUTH)
    assert response.status_code == 201
    comment = response.json()
    assert comment["body"] == adf("again")
    assert comment["self"].endswith(f"/rest/api/3/issue/{created['id']}/comment/{comment['id']}")
    [issue] = sim.jira_issues()
    assert [c["body"] for c in issue["x-comments"]] == [adf("again")]


NO_ISSUE = {"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}}


@pytest.mark.parametrize(
    ("key", "body", "status", "expected"),
    [
        ("SEC-99", {"body": adf("x")}, 404, NO_ISSUE),
        ("SEC-1", {}, 400, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}}),
        ("SEC-1", {"body": adf("")}, 400, {"errorMessages": [], "errors": {"comment": "INVALID_INPUT"}}),
    ],
)
def test_jira_refuses_a_comment_on_an_unknown_issue_or_without_a_valid_body(
    http: httpx.Client, key: str, body: dict[str, Any], status: int, expected: dict[str, Any]
) -> None:
    jira_create(http)
    response = http.post(f"/rest/api/3/issue/{key}/comment", json=body, auth=JIRA_AUTH)
    assert (response.status_code, response.json()) == (status, expected)


def test_jira_projects_and_credentials_come_from_the_tenant_file(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
) -> None:
    settings = {"email": "svc@contoso.com", "apiToken": "t", "projects": [{"key": "IR", "issueTypes": ["Incident"]}]}
    sim = simulator_factory(tenant([], [], **{"x-jira": settings}))
    with httpx.Client(base_url=sim.url, timeout=5, auth=("svc@contoso.com", "t")) as http:
        fields = issue_fields(project={"key": "IR"}, issuetype={"name": "Incident"})
        assert http.post("/rest/api/3/issue", json={"fields": fields}).json()["key"] == "IR-1"
        refused = http.post("/rest/api/3/issue", json={"fields": issue_fields()}).json()
        assert refused["errors"]["project"] == "Specify a valid project ID or key"


# -- faults and state -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "method", "path", "expected"),
    [
        ("servicenow.table", "GET", TABLE, {"status": "failure"}),
        ("servicenow.record", "PATCH", f"{TABLE}/{'0' * 32}", {"status": "failure"}),
        ("jira.search", "GET", "/rest/api/3/search/jql", {"errors": {}}),
        ("jira.issue", "POST", "/rest/api/3/issue", {"errors": {}}),
        ("jira.comment", "POST", "/rest/api/3/issue/SEC-1/comment", {"errors": {}}),
    ],
)
def test_injected_faults_answer_in_the_services_own_error_shape(
    sim: Simulator, http: httpx.Client, route: str, method: str, path: str, expected: dict[str, Any]
) -> None:
    sim.inject_fault(route, status=429, retry_after=2)
    response = http.request(method, path)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert expected.items() <= response.json().items()
    assert [r["route"] for r in sim.requests] == [route]


def test_sim_state_lists_servicenow_records_and_jira_issues(http: httpx.Client) -> None:
    sn_create(http)
    jira_create(http)
    state = http.get("/_sim/state").json()
    assert [r["number"] for r in state["servicenowRecords"]] == ["INC0010001"]
    assert [i["key"] for i in state["jiraIssues"]] == ["SEC-1"]
