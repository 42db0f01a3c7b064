"""The ServiceNow and Jira ticket adapters over real HTTP against the simulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from restricted_sender.adapters.jira import JiraTickets, adf_document, description_document
from restricted_sender.adapters.servicenow import ServiceNowTickets
from restricted_sender.errors import ConfigurationError, ServiceRefused, TransientServiceError
from restricted_sender.model import TicketContent, TicketRef
from restricted_sender.ports import TicketSystem
from restricted_sender.retry import RetryPolicy
from restricted_sender.settings import Secret
from simulator import Simulator
from simulator.itsm import JIRA_DEFAULTS, SERVICENOW_DEFAULTS, document_problem
from tests.conftest import tenant

T = TypeVar("T")
SYSTEMS = ["servicenow", "jira"]
FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=5)
CID = "rsr-0a1b2c3d"
RECORD: dict[str, Any] = {
    "correlation_id": CID,
    "record": {"decision": "ticket", "user": "bob@contoso.com", "reasons": [{"code": "no-allow-rule", "text": "…"}]},
    "evidence": {"restriction": {"Reason": "OutboundSpamLast24Hours=212"}, "inbox_rules": []},
}
TEXT = """Compromise suspected
====================
bob@contoso.com was restricted from sending mail.
No allow rule covers this user.

## Evidence
- 212 of 240 messages in 24 hours were spam
- an Inbox rule moves mail to RSS Feeds

See the decision record below."""
CREATE_ROUTE = {"servicenow": "servicenow.table", "jira": "jira.issue"}
FIND_ROUTE = {"servicenow": "servicenow.table", "jira": "jira.search"}
UPDATE_ROUTE = {"servicenow": "servicenow.record", "jira": "jira.comment"}


def content(
    correlation_id: str = CID, *, title: str = "Compromise suspected: bob@contoso.com", severity: str = "high"
) -> TicketContent:
    return TicketContent(
        correlation_id=correlation_id,
        title=title,
        text=TEXT,
        html="<p>unused here</p>",
        record=RECORD,
        update="Reported again by alert-2 at 09:14.",
        severity=severity,
    )


def make(
    system: str, http: httpx.AsyncClient, sim: Simulator, *, wrong: bool = False, retry: RetryPolicy = FAST, **opts: Any
) -> TicketSystem:
    if system == "servicenow":
        password = "wrong-password" if wrong else SERVICENOW_DEFAULTS["password"]
        return ServiceNowTickets(
            http,
            instance_url=sim.servicenow_url,
            username=SERVICENOW_DEFAULTS["username"],
            password=Secret(password),
            retry=retry,
            **opts,
        )
    if system == "servicenow-token":
        token = "wrong-token" if wrong else SERVICENOW_DEFAULTS["token"]
        return ServiceNowTickets(http, instance_url=sim.servicenow_url, token=Secret(token), retry=retry, **opts)
    api_token = "wrong-api-token" if wrong else JIRA_DEFAULTS["apiToken"]
    return JiraTickets(
        http,
        site_url=sim.jira_url,
        project=opts.pop("project", "SEC"),
        email=JIRA_DEFAULTS["email"],
        api_token=Secret(api_token),
        retry=retry,
        **opts,
    )


def run(action: Callable[[httpx.AsyncClient], Awaitable[T]], *, timeout: float = 5) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(timeout=timeout) as http:
            return await action(http)

    return asyncio.run(main())


def create(system: str, sim: Simulator, ticket: TicketContent | None = None, **opts: Any) -> TicketRef:
    return run(lambda http: make(system, http, sim, **opts).create(ticket or content()))


def find_open(system: str, sim: Simulator, correlation_id: str = CID, **opts: Any) -> TicketRef | None:
    return run(lambda http: make(system, http, sim, **opts).find_open(correlation_id))


def texts(node: Any) -> Iterator[str]:
    """Every text node's text in an ADF tree, in order."""
    if isinstance(node, dict):
        if node.get("type") == "text":
            yield node["text"]
        for child in node.get("content", []):
            yield from texts(child)


def notes(system: str, sim: Simulator) -> list[str]:
    if system == "servicenow":
        [record] = sim.servicenow_records()
        return [note["value"] for note in record["x-work_notes"]]
    [issue] = sim.jira_issues()
    return ["".join(texts(comment["body"])) for comment in issue["x-comments"]]


def routed(sim: Simulator, route: str) -> list[int | None]:
    return [r["status"] for r in sim.requests if r["route"] == route]


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(tenant([], []))


# -- the TicketSystem behaviour, both systems ------------------------------------------------------------------


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_created_ticket_is_found_open_by_its_correlation_id(sim: Simulator, system: str) -> None:
    ref = create(system, sim)
    assert find_open(system, sim) == ref
    assert find_open(system, sim, "rsr-someone-else") is None
    if system == "servicenow":
        [record] = sim.servicenow_records()
        assert (ref.id, ref.label) == (record["sys_id"], "INC0010001")
        assert ref.url == f"{sim.url}/nav_to.do?uri=incident.do?sys_id={record['sys_id']}"
    else:
        assert (ref.id, ref.label, ref.url) == ("SEC-1", "SEC-1", f"{sim.url}/browse/SEC-1")


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_closed_ticket_is_not_found_open(sim: Simulator, system: str) -> None:
    ref = create(system, sim)
    if system == "servicenow":
        sim.close_servicenow_record(ref.id)
    else:
        sim.close_jira_issue(ref.id)
    assert find_open(system, sim) is None


@pytest.mark.parametrize("system", SYSTEMS)
def test_update_adds_the_short_note_as_a_work_note_or_comment(sim: Simulator, system: str) -> None:
    ticket = content()

    async def create_then_update(http: httpx.AsyncClient) -> None:
        tickets = make(system, http, sim)
        await tickets.update(await tickets.create(ticket), ticket)

    run(create_then_update)
    assert notes(system, sim)[-1] == ticket.update


@pytest.mark.parametrize(
    ("system", "message", "secret"),
    [
        ("servicenow", "User Not Authenticated (Required to provide Auth information)", "wrong-password"),
        ("servicenow-token", "User Not Authenticated (Required to provide Auth information)", "wrong-token"),
        ("jira", "Client must be authenticated to access this resource.", "wrong-api-token"),
    ],
)
@pytest.mark.parametrize("operation", ["create", "find_open"])
def test_wrong_credentials_are_refused_with_the_services_message_and_without_the_secret(
    sim: Simulator, system: str, message: str, secret: str, operation: str
) -> None:
    async def attempt(http: httpx.AsyncClient) -> object:
        tickets = make(system, http, sim, wrong=True)
        return await (tickets.create(content()) if operation == "create" else tickets.find_open(CID))

    with pytest.raises(ServiceRefused) as caught:
        run(attempt)
    assert caught.value.http_status == 401
    assert caught.value.service == "tickets"
    assert message in caught.value.message
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value)
    assert len(sim.requests) == 1  # a refusal is not retried


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_429_with_retry_after_is_waited_out_and_the_create_succeeds_once(sim: Simulator, system: str) -> None:
    sim.inject_fault(CREATE_ROUTE[system], status=429, retry_after=1)
    started = time.monotonic()
    ref = create(system, sim)
    assert time.monotonic() - started >= 0.9  # Retry-After, not the policy's millisecond backoff
    assert find_open(system, sim) == ref
    tickets = sim.servicenow_records() if system == "servicenow" else sim.jira_issues()
    assert len(tickets) == 1
    assert 429 in routed(sim, CREATE_ROUTE[system])


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("operation", ["find_open", "create", "update"])
def test_a_503_that_never_ends_is_a_transient_error_after_the_policys_attempts(
    sim: Simulator, system: str, operation: str
) -> None:
    route = {"find_open": FIND_ROUTE, "create": CREATE_ROUTE, "update": UPDATE_ROUTE}[operation][system]
    ticket_id = "0" * 32 if system == "servicenow" else "SEC-1"
    sim.inject_fault(route, status=503, times=None)

    async def attempt(http: httpx.AsyncClient) -> object:
        tickets = make(system, http, sim, retry=RetryPolicy(attempts=3, base_delay=0.001))
        if operation == "find_open":
            return await tickets.find_open(CID)
        if operation == "create":
            return await tickets.create(content())
        await tickets.update(TicketRef(ticket_id, ticket_id), content())
        return None

    with pytest.raises(TransientServiceError) as caught:
        run(attempt)
    assert caught.value.http_status == 503
    assert routed(sim, route) == [503, 503, 503]
    assert sim.servicenow_records() == sim.jira_issues() == []


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("correlation_id", ["rsr-1^active=false", 'rsr-1" OR labels = "x', "rsr 1", ""])
def test_a_correlation_id_that_could_change_the_query_is_refused_before_any_request(
    sim: Simulator, system: str, correlation_id: str
) -> None:
    with pytest.raises(ServiceRefused, match="correlation id"):
        find_open(system, sim, correlation_id)
    with pytest.raises(ServiceRefused, match="correlation id"):
        create(system, sim, content(correlation_id))
    assert sim.requests == []


# -- ServiceNow specifics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("severity", "impact"), [("high", "1"), ("medium", "2")])
def test_the_servicenow_record_carries_the_text_the_record_and_the_severity(
    sim: Simulator, severity: str, impact: str
) -> None:
    ticket = content(title="Compromise suspected:\n" + "x" * 300, severity=severity)
    create("servicenow", sim, ticket, fields={"assignment_group": "SOC", "category": "security"})
    [record] = sim.servicenow_records()
    assert record["short_description"].startswith("Compromise suspected: xxx")
    assert len(record["short_description"]) == 160
    assert record["description"] == TEXT
    assert (record["correlation_id"], record["correlation_display"]) == (CID, "Restricted Sender Responder")
    assert (record["impact"], record["urgency"]) == (impact, impact)
    assert (record["assignment_group"], record["category"]) == ("SOC", "security")
    [note] = record["x-work_notes"]
    heading, _, body = note["value"].partition("\n")
    assert heading == "Decision record (JSON):"
    assert json.loads(body) == RECORD


def test_servicenow_with_an_oauth_token_creates_and_finds(sim: Simulator) -> None:
    ref = create("servicenow-token", sim)
    assert find_open("servicenow-token", sim) == ref
    assert sim.requests[0]["headers"]["Authorization"].startswith("Bearer ")


def test_servicenow_sends_json_and_asks_for_json(sim: Simulator) -> None:
    create("servicenow", sim)
    [post] = sim.requests
    assert (post["method"], post["path"]) == ("POST", "/api/now/table/incident")
    assert post["headers"]["Accept"] == "application/json"
    assert post["headers"]["Content-Type"] == "application/json"


def test_a_servicenow_table_the_instance_lacks_is_refused_with_its_message(sim: Simulator) -> None:
    with pytest.raises(ServiceRefused, match="Invalid table problem") as caught:
        find_open("servicenow", sim, table="problem")
    assert caught.value.http_status == 400


# -- Jira specifics ----------------------------------------------------------------------------------------------


def test_an_unknown_jira_project_is_refused_carrying_jiras_field_error(sim: Simulator) -> None:
    with pytest.raises(ServiceRefused) as caught:
        create("jira", sim, project="NOPE")
    assert caught.value.http_status == 400
    assert "project: Specify a valid project ID or key" in caught.value.message
    assert len(sim.requests) == 1
    with pytest.raises(ServiceRefused, match="The value 'NOPE' does not exist for the field 'project'"):
        find_open("jira", sim, project="NOPE")


def test_an_issue_type_the_project_lacks_is_refused_carrying_jiras_field_error(sim: Simulator) -> None:
    with pytest.raises(ServiceRefused, match="issuetype: The issue type selected is invalid"):
        create("jira", sim, issue_type="Epic")


def test_the_jira_issue_has_a_one_line_summary_and_the_correlation_and_product_labels(sim: Simulator) -> None:
    create("jira", sim, content(title="Compromise\nsuspected: " + "x" * 300), labels=["soc", "email"])
    [issue] = sim.jira_issues()
    summary = issue["fields"]["summary"]
    assert summary.startswith("Compromise suspected: xxx")
    assert len(summary) == 255
    assert issue["fields"]["labels"] == [CID, "restricted-sender-responder", "soc", "email"]
    assert issue["fields"]["issuetype"]["name"] == "Task"


def test_the_jira_description_is_valid_adf_with_the_record_in_a_json_code_block(sim: Simulator) -> None:
    create("jira", sim)
    [issue] = sim.jira_issues()
    document = issue["fields"]["description"]
    assert document_problem(document) is None
    assert "" not in list(texts(document))
    kinds = [node["type"] for node in document["content"]]
    assert kinds == ["heading", "paragraph", "heading", "bulletList", "paragraph", "codeBlock"]
    assert [n["attrs"]["level"] for n in document["content"] if n["type"] == "heading"] == [1, 2]
    code = document["content"][-1]
    assert code["attrs"] == {"language": "json"}
    assert json.loads("".join(texts(code))) == RECORD


@pytest.mark.parametrize(
    "text",
    ["", "   \n\n \t", "#", "# ", "-", "- ", "---", "===", "a\n\n\n\nb", "line\n   \nline", "x\n===\n- \n##  "],
)
def test_adf_documents_never_hold_empty_text_nodes(text: str) -> None:
    for document in (adf_document(text), adf_document(text, code="{}"), description_document(text, {})):
        assert document_problem(document) is None, document
        assert all(t for t in texts(document))


def test_a_record_too_large_for_the_description_is_left_out_with_a_note() -> None:
    huge = {"evidence": ["x" * 100] * 400}
    document = description_document("Summary", huge)
    assert document_problem(document) is None
    assert "codeBlock" not in [node["type"] for node in document["content"]]
    assert "too long for this field" in "".join(texts(document))
    fits = description_document("Summary", {"evidence": ["x" * 100] * 250})
    assert json.loads("".join(texts(fits["content"][-1]))) == {"evidence": ["x" * 100] * 250}


def test_a_jira_create_whose_answer_was_lost_finds_the_issue_instead_of_opening_another(sim: Simulator) -> None:
    # The issue is created while the client has already given up on the answer; the retry must not duplicate it.
    sim.set_latency("jira.issue", 0.3)
    ref = run(
        lambda http: make("jira", http, sim, retry=RetryPolicy(attempts=2, base_delay=1.5)).create(content()),
        timeout=0.15,
    )
    assert ref.id == "SEC-1"
    assert len(sim.jira_issues()) == 1
    assert [r["route"] for r in sim.requests] == ["jira.issue", "jira.search"]


# -- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda http: ServiceNowTickets(http, instance_url="https://x"), "username and password, or an OAuth token"),
        (lambda http: ServiceNowTickets(http, instance_url="https://x", username="u"), "username and password"),
        (
            lambda http: ServiceNowTickets(
                http, instance_url="https://x", token=Secret("t"), fields={"correlation_id": "x"}
            ),
            "may not set correlation_id",
        ),
        (lambda http: ServiceNowTickets(http, instance_url="https://x", token=Secret("t"), table="a/b"), "table"),
        (
            lambda http: JiraTickets(http, site_url="https://x", project="sec", email="e", api_token=Secret("t")),
            "project key",
        ),
        (
            lambda http: JiraTickets(
                http, site_url="https://x", project="SEC", email="e", api_token=Secret("t"), labels=["a b"]
            ),
            "label",
        ),
    ],
)
def test_unusable_settings_are_a_configuration_error(
    build: Callable[[httpx.AsyncClient], object], problem: str
) -> None:
    async def attempt(http: httpx.AsyncClient) -> object:
        return build(http)

    with pytest.raises(ConfigurationError, match=problem):
        run(attempt)


def test_the_adapters_do_not_show_their_secrets(sim: Simulator) -> None:
    async def show(http: httpx.AsyncClient) -> str:
        return (
            repr(make("servicenow", http, sim))
            + repr(make("servicenow-token", http, sim))
            + repr(make("jira", http, sim))
        )

    shown = run(show)
    for secret in (SERVICENOW_DEFAULTS["password"], SERVICENOW_DEFAULTS["token"], JIRA_DEFAULTS["apiToken"]):
        assert secret not in shown
