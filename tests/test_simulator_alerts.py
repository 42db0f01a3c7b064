"""The simulator's ``GET /security/alerts_v2`` $filter: the documented filterable properties only, over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from simulator import Simulator, load_tenant
from tests.conftest import alert_v2, tenant

GRAPH = "https://graph.microsoft.com"
MDO = "microsoftDefenderForOffice365"
ALERTS = "/v1.0/security/alerts_v2"


def alert(alert_id: str, **properties: Any) -> dict[str, Any]:
    return {**alert_v2("alice@contoso.com", alert_id=alert_id), **properties}


ALERT_LIST = [
    alert(
        "a1",
        status="new",
        severity="high",
        classification=None,
        assignedTo=None,
        createdDateTime="2026-11-27T08:02:30.1234567Z",
        lastUpdateDateTime="2026-11-27T08:02:31.1234567Z",
    ),
    alert(
        "a2",
        title="Tenant restricted from sending email",
        status="resolved",
        severity="medium",
        classification="truePositive",
        determination="compromisedAccount",
        assignedTo="soc@contoso.com",
        createdDateTime="2026-11-26T10:00:00Z",
        lastUpdateDateTime="2026-11-27T09:00:00Z",
    ),
    alert(
        "a3",
        serviceSource="microsoftDefenderForEndpoint",
        status="inProgress",
        severity="low",
        createdDateTime="2026-11-25T10:00:00Z",
        lastUpdateDateTime="2026-11-25T10:00:00Z",
    ),
]


@pytest.fixture
def start(
    simulator_factory: Callable[[dict[str, Any]], Simulator], sim_client: Callable[..., httpx.Client]
) -> Callable[..., httpx.Client]:
    def run(**extra: Any) -> httpx.Client:
        sim = simulator_factory(tenant([], [], alerts=ALERT_LIST, **extra))
        return sim_client(sim, sim.issue_token(GRAPH))

    return run


@pytest.fixture
def graph(start: Callable[..., httpx.Client]) -> httpx.Client:
    return start()


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()["value"]]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("status eq 'new'", ["a1"]),
        ("severity ne 'high'", ["a2", "a3"]),
        (f"serviceSource eq '{MDO}'", ["a1", "a2"]),
        ("classification eq 'truePositive'", ["a2"]),
        ("determination eq 'compromisedAccount'", ["a2"]),
        ("assignedTo eq null", ["a1", "a3"]),
        ("createdDateTime lt 2026-11-26T10:00:00Z", ["a3"]),
        ("lastUpdateDateTime ge 2026-11-27T00:00:00Z", ["a1", "a2"]),
        ("Status eq 'resolved'", ["a2"]),  # property names are matched regardless of case, as Graph does
    ],
)
def test_each_documented_property_filters(graph: httpx.Client, expression: str, expected: list[str]) -> None:
    assert ids(graph.get(ALERTS, params={"$filter": expression})) == expected


@pytest.mark.parametrize(
    ("literal", "operator", "expected"),
    [
        ("2026-11-27T08:02:31.1234567Z", "ge", ["a1", "a2"]),
        ("2026-11-27T08:02:31.1234567Z", "gt", ["a2"]),
        ("2026-11-27T08:02:31.1234568Z", "ge", ["a2"]),
        ("2026-11-27T08:02:31Z", "ge", ["a1", "a2"]),
    ],
)
def test_last_update_watermarks_compare_seven_digit_fractions(
    graph: httpx.Client, literal: str, operator: str, expected: list[str]
) -> None:
    response = graph.get(ALERTS, params={"$filter": f"lastUpdateDateTime {operator} {literal}"})

    assert ids(response) == expected


def test_clauses_joined_by_and_all_apply_and_survive_paging(graph: httpx.Client) -> None:
    expression = f"serviceSource eq '{MDO}' and lastUpdateDateTime ge 2026-11-27T08:00:00.0000000Z"

    first = graph.get(ALERTS, params={"$filter": expression, "$top": "1"})
    second = graph.get(first.json()["@odata.nextLink"])

    assert ids(first) + ids(second) == ["a1", "a2"]
    assert "@odata.nextLink" not in second.json()


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("title eq 'User restricted from sending email'", "'title'"),
        (f"serviceSource eq '{MDO}' and title eq 'x'", "'title'"),
        ("contains(title, 'restricted')", "'title'"),
        ("evidence/any(e: e/microsoft.graph.security.userEvidence/userAccount/userPrincipalName eq 'a')", "'evidence'"),
        ("id eq 'a1'", "'id'"),
    ],
)
def test_a_clause_on_an_undocumented_property_is_a_bad_request_naming_it(
    graph: httpx.Client, expression: str, named: str
) -> None:
    response = graph.get(ALERTS, params={"$filter": expression})

    body = response.json()["error"]
    assert (response.status_code, body["code"]) == (400, "BadRequest")
    assert named in body["message"]
    assert "innerError" in body


@pytest.mark.parametrize(
    "expression",
    ["status eq 'new' or status eq 'resolved'", "(status eq 'new')", "status in ('new', 'resolved')", "status eq"],
)
def test_syntax_the_simulator_does_not_evaluate_is_refused_not_ignored(graph: httpx.Client, expression: str) -> None:
    response = graph.get(ALERTS, params={"$filter": expression})

    assert response.status_code == 400
    assert "does not evaluate" in response.json()["error"]["message"]


def test_and_inside_a_quoted_literal_is_part_of_the_value(start: Callable[..., httpx.Client]) -> None:
    graph = start(**{"x-alertsCombinedFilterRefused": True})

    response = graph.get(ALERTS, params={"$filter": "assignedTo eq 'soc and ''it''@contoso.com'"})

    assert ids(response) == []


def test_a_tenant_that_refuses_combined_filters_answers_only_single_clauses(
    start: Callable[..., httpx.Client],
) -> None:
    graph = start(**{"x-alertsCombinedFilterRefused": True})

    combined = graph.get(ALERTS, params={"$filter": f"serviceSource eq '{MDO}' and status eq 'new'"})
    single = graph.get(ALERTS, params={"$filter": f"serviceSource eq '{MDO}'"})

    assert (combined.status_code, combined.json()["error"]["code"]) == (400, "BadRequest")
    assert ids(single) == ["a1", "a2"]


@pytest.mark.parametrize("value", ["yes", 1])
def test_the_combined_filter_switch_must_be_a_boolean(value: object) -> None:
    with pytest.raises(ValueError, match="x-alertsCombinedFilterRefused must be true or false"):
        load_tenant(tenant([], [], **{"x-alertsCombinedFilterRefused": value}))
