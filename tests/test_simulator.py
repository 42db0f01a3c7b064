"""The simulator over real HTTP: wire shapes, auth, paging, faults, latency and its own bookkeeping."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from simulator import ROUTES, Simulator, Tenant, load_tenant
from simulator.state import TenantState
from tests.conftest import TLS

FIXTURES = Path(__file__).parent / "fixtures"
TENANT_FILE = FIXTURES / "tenant_basic.yaml"
TENANT_ID = "8f0c2a52-6a4e-4b8e-9a62-1d2f3c4b5a69"
ALICE_ID = "5b7c6a1e-2f3d-4c8b-9e0a-1d2c3b4a5f60"
BOB_ID = "6c8d7b2f-3a4e-4d9c-8f1b-2e3d4c5b6a71"
CAROL_ID = "7d9e8c3a-4b5f-4eab-9a2c-3f4e5d6c7b82"
HIDDEN_FOLDER = "AAMkADhiZGJjLWhpZGRlbi1yZXBsaWVzAC4AAAAAAA=="
METADATA = "https://graph.microsoft.com/v1.0/$metadata"
BULK_GROUP = "0e7f4a2b-8c1d-4e6f-a3b5-c7d9e1f20304"
FINANCE_GROUP = "1f8a5b3c-9d2e-4f70-b4c6-d8e0f2a31415"
GRAPH = "https://graph.microsoft.com"
EXCHANGE = "https://outlook.office365.com"
INVOKE = f"/adminapi/beta/{TENANT_ID}/InvokeCommand"


TENANT = load_tenant(TENANT_FILE)


def tenant_doc() -> dict[str, Any]:
    """A fresh, mutable copy of the fixture tenant document."""
    return copy.deepcopy(TENANT.raw)


def http_client(sim: Simulator, **options: Any) -> httpx.Client:
    return httpx.Client(base_url=sim.url, verify=TLS, **options)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(TENANT) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with http_client(sim, timeout=5) as http:
        yield http


def graph_headers(sim: Simulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {sim.issue_token(GRAPH)}"}


def exchange_headers(sim: Simulator, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {sim.issue_token(EXCHANGE)}",
        "X-AnchorMailbox": sim.anchor_mailbox,
        "X-ResponseFormat": "json",
        **extra,
    }


def cmdlet(name: str, **parameters: Any) -> dict[str, Any]:
    return {"CmdletInput": {"CmdletName": name, "Parameters": parameters}}


def invoke(client: httpx.Client, sim: Simulator, name: str, **parameters: Any) -> httpx.Response:
    return client.post(INVOKE, headers=exchange_headers(sim), json=cmdlet(name, **parameters))


def started(tenant: dict[str, Any]) -> Simulator:
    return Simulator(tenant).start()


# -- the tenant file -------------------------------------------------------------------------------------


def test_yaml_and_json_tenant_files_load_to_the_same_tenant(tmp_path: Path) -> None:
    json_file = tmp_path / "tenant.json"
    json_file.write_text(json.dumps(yaml.safe_load(TENANT_FILE.read_text(encoding="utf-8"))), encoding="utf-8")

    from_yaml, from_json = load_tenant(TENANT_FILE), load_tenant(json_file)

    assert isinstance(from_yaml, Tenant)
    assert from_yaml.tenant_id == from_json.tenant_id == TENANT_ID
    assert from_yaml.users == from_json.users
    assert [len(from_yaml.users), len(from_yaml.groups), len(from_yaml.domains)] == [3, 2, 2]
    assert [row["SenderAddress"] for row in from_yaml.blocked_senders][:1] == ["alice@contoso.com"]
    assert load_tenant(tenant_doc()).alerts == from_yaml.alerts


def test_history_is_handed_over_untouched() -> None:
    assert TENANT.history == [{"user": "alice@contoso.com", "at": "2026-11-20T10:00:00Z", "kind": "auto"}]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("tenantId"), "missing tenantId"),
        (lambda d: d["users"][1].pop("id"), r"users\[1\] has no id"),
        (lambda d: d["users"][0].pop("userPrincipalName"), r"users\[0\] has no userPrincipalName"),
        (lambda d: d["users"].append(dict(d["users"][0], id="other")), "userPrincipalName 'alice@contoso.com' repeats"),
        (lambda d: d["blockedSenders"].append({"Reason": "x"}), r"blockedSenders\[3\] has no SenderAddress"),
        (lambda d: d.update(users={"id": "x"}), "users must be a list"),
        (lambda d: d["users"][0].update({"x-memberOf": "group"}), "x-memberOf must be a list"),
        (lambda d: d.update({"x-exchangePageSize": 0}), "x-exchangePageSize must be a whole number"),
        (lambda d: d.update({"x-faults": [{"route": "graph.user", "kind": "slow"}]}), r"x-faults\[0\]: fault kind"),
        (lambda d: d.update({"x-latency": {"graph.usr": 1}}), "x-latency: unknown route 'graph.usr'"),
        (lambda d: d["users"][0].update({"x-riskLevel": "severe"}), r"users\[0\].x-riskLevel must be one of none"),
        (lambda d: d["users"][0].update({"x-inboxRules": "forward"}), "x-inboxRules must be a list"),
        (lambda d: d["users"][1]["x-inboxRules"][0].update(id=""), r"x-inboxRules\[0\].id must be a non-empty"),
        (lambda d: d["users"][1]["x-mailFolders"][0].pop("displayName"), r"x-mailFolders\[0\] has no displayName"),
        (
            lambda d: d["users"][1]["x-mailFolders"].append(dict(d["users"][1]["x-mailFolders"][0])),
            r"x-mailFolders\[1\].id .* repeats",
        ),
    ],
)
def test_an_unusable_tenant_is_refused_with_a_clear_message(change: Any, message: str) -> None:
    doc = tenant_doc()
    change(doc)
    with pytest.raises(ValueError, match=message):
        load_tenant(doc)


def test_a_tenant_file_that_is_not_a_mapping_or_not_there_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_tenant(listing)
    with pytest.raises(ValueError, match="cannot read tenant file"):
        load_tenant(tmp_path / "missing.yaml")


def test_unquoted_yaml_timestamps_are_served_as_iso_strings(tmp_path: Path) -> None:
    path = tmp_path / "tenant.yaml"
    path.write_text(
        f"tenantId: {TENANT_ID}\n"
        "blockedSenders:\n"
        "  - {SenderAddress: a@contoso.com, CreatedDatetime: 2026-11-27T08:02:11Z}\n",
        encoding="utf-8",
    )
    assert load_tenant(path).blocked_senders[0]["CreatedDatetime"] == "2026-11-27T08:02:11Z"


# -- managed identity ------------------------------------------------------------------------------------


def test_the_real_managed_identity_credential_gets_tokens_the_services_accept(
    sim: Simulator, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", sim.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", sim.identity_header)
    from azure.identity.aio import ManagedIdentityCredential

    async def tokens() -> tuple[str, str, int]:
        async with ManagedIdentityCredential(client_id="0f1e2d3c-4b5a-4697-8877-665544332211") as credential:
            graph = await credential.get_token(f"{GRAPH}/.default")
            exchange = await credential.get_token(f"{EXCHANGE}/.default")
            return graph.token, exchange.token, graph.expires_on

    graph_token, exchange_token, expires_on = asyncio.run(tokens())

    assert 3500 < expires_on - time.time() <= 3600
    user = client.get(f"/v1.0/users/{ALICE_ID}", headers={"Authorization": f"Bearer {graph_token}"})
    assert user.status_code == 200
    rows = client.post(
        INVOKE,
        headers={"Authorization": f"Bearer {exchange_token}", "X-AnchorMailbox": sim.anchor_mailbox},
        json=cmdlet("Get-BlockedSenderAddress"),
    )
    assert rows.status_code == 200
    token_calls = [r for r in sim.requests if r["route"] == "identity.token"]
    assert [r["query"]["resource"] for r in token_calls] == [GRAPH, EXCHANGE]
    assert {r["query"]["client_id"] for r in token_calls} == {"0f1e2d3c-4b5a-4697-8877-665544332211"}


def test_the_token_endpoint_answers_in_the_app_service_shape(sim: Simulator, client: httpx.Client) -> None:
    response = client.get(
        "/msi/token",
        params={"resource": GRAPH, "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": sim.identity_header},
    )

    body = response.json()
    assert response.status_code == 200
    assert {"access_token", "expires_on", "resource", "token_type"} <= set(body)
    assert body["resource"] == GRAPH
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_on"], str)
    assert abs(int(body["expires_on"]) - (time.time() + 3600)) < 5


@pytest.mark.parametrize("identity_header", [None, "not-the-secret"])
def test_the_token_endpoint_refuses_a_missing_or_wrong_identity_header(
    client: httpx.Client, identity_header: str | None
) -> None:
    headers = {"X-IDENTITY-HEADER": identity_header} if identity_header else {}
    response = client.get("/msi/token", params={"resource": GRAPH, "api-version": "2019-08-01"}, headers=headers)

    assert response.status_code == 401
    assert response.json()["statusCode"] == 401
    assert "X-IDENTITY-HEADER" in response.json()["message"]


# -- authentication on the services ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Access token is empty."),
        ("exchange", "Access token validation failure. Invalid audience."),
        ("Bearer not-a-token", "IDX14100: JWT is not well formed, there are no dots (.)."),
        ("foreign", "Access token validation failure. Invalid signature."),
        ("expired", "Lifetime validation failed, the token is expired."),
    ],
)
def test_graph_refuses_a_request_without_a_valid_graph_token(
    sim: Simulator, client: httpx.Client, authorization: str | None, message: str
) -> None:
    if authorization == "exchange":
        authorization = f"Bearer {sim.issue_token(EXCHANGE)}"
    elif authorization == "foreign":
        with Simulator(TENANT_FILE) as other:
            authorization = f"Bearer {other.issue_token(GRAPH)}"
    elif authorization == "expired":
        authorization = f"Bearer {sim.issue_token(GRAPH, lifetime=-1)}"
    headers = {"Authorization": authorization} if authorization else {}

    response = client.get(f"/v1.0/users/{ALICE_ID}", headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert response.json()["error"]["message"] == message
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token_for", [None, GRAPH])
def test_exchange_refuses_a_request_without_an_exchange_token(
    sim: Simulator, client: httpx.Client, token_for: str | None
) -> None:
    headers = {"X-AnchorMailbox": sim.anchor_mailbox}
    if token_for:
        headers["Authorization"] = f"Bearer {sim.issue_token(token_for)}"

    response = client.post(INVOKE, headers=headers, json=cmdlet("Get-BlockedSenderAddress"))

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "Unauthorized"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


# -- Graph -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [ALICE_ID, "alice@contoso.com", "ALICE@Contoso.COM"])
def test_a_user_is_found_by_object_id_or_case_insensitive_upn(sim: Simulator, client: httpx.Client, key: str) -> None:
    response = client.get(f"/v1.0/users/{key}", headers=graph_headers(sim))

    user = response.json()
    assert response.status_code == 200
    assert user["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#users/$entity"
    assert user["id"] == ALICE_ID
    assert user["proxyAddresses"] == ["SMTP:alice@contoso.com", "smtp:news@contoso.com"]
    assert not [k for k in user if k.startswith("x-")]


def test_select_returns_only_the_selected_properties(sim: Simulator, client: httpx.Client) -> None:
    response = client.get(
        "/v1.0/users/alice@contoso.com",
        params={"$select": "id,accountEnabled,mail,onPremisesSyncEnabled"},
        headers=graph_headers(sim),
    )

    assert response.json() == {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(id,accountEnabled,mail,onPremisesSyncEnabled)/$entity",
        "id": ALICE_ID,
        "accountEnabled": True,
        "mail": "alice@contoso.com",
        "onPremisesSyncEnabled": None,
    }


@pytest.mark.parametrize(
    ("method", "path", "key"),
    [
        ("GET", "/v1.0/users/nobody@contoso.com", "nobody@contoso.com"),
        ("POST", "/v1.0/users/nobody@contoso.com/checkMemberGroups", "nobody@contoso.com"),
        ("GET", "/v1.0/security/alerts_v2/no-such-alert", "no-such-alert"),
        (
            "GET",
            "/v1.0/identityProtection/riskyUsers/99999999-0000-4000-8000-000000000000",
            "99999999-0000-4000-8000-000000000000",
        ),
        # riskyUsers are addressed by object id only, never by userPrincipalName.
        ("GET", "/v1.0/identityProtection/riskyUsers/bob@contoso.com", "bob@contoso.com"),
    ],
)
def test_an_unknown_object_gets_graphs_not_found_body(
    sim: Simulator, client: httpx.Client, method: str, path: str, key: str
) -> None:
    headers = {**graph_headers(sim), "client-request-id": "11111111-2222-4333-8444-555555555555"}
    response = client.request(method, path, headers=headers, json={"groupIds": [BULK_GROUP]})

    error = response.json()["error"]
    assert response.status_code == 404
    assert error["code"] == "Request_ResourceNotFound"
    assert error["message"] == (
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present."
    )
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}
    assert error["innerError"]["client-request-id"] == "11111111-2222-4333-8444-555555555555"
    assert response.headers["request-id"] == error["innerError"]["request-id"]


def test_a_user_is_not_addressable_by_mail_alone(sim: Simulator, client: httpx.Client) -> None:
    assert client.get("/v1.0/users/news@contoso.com", headers=graph_headers(sim)).status_code == 404


def test_check_member_groups_answers_the_given_groups_the_user_is_in(sim: Simulator, client: httpx.Client) -> None:
    response = client.post(
        "/v1.0/users/carol@contoso.com/checkMemberGroups",
        headers=graph_headers(sim),
        json={"groupIds": [FINANCE_GROUP, "99999999-0000-4000-8000-000000000000", BULK_GROUP]},
    )

    assert response.status_code == 200
    assert response.json() == {
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
        "value": [FINANCE_GROUP, BULK_GROUP],
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "Request_BadRequest"),
        ({"groupIds": BULK_GROUP}, "Request_BadRequest"),
        ({"groupIds": [f"00000000-0000-4000-8000-{i:012d}" for i in range(21)]}, "Request_BadRequest"),
        ("{not json", "BadRequest"),
    ],
)
def test_check_member_groups_refuses_a_bad_group_list(
    sim: Simulator, client: httpx.Client, body: Any, code: str
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post(
        f"/v1.0/users/{ALICE_ID}/checkMemberGroups",
        headers={**graph_headers(sim), "Content-Type": "application/json"},
        content=content,
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_domains_are_listed_as_graph_domains(sim: Simulator, client: httpx.Client) -> None:
    response = client.get("/v1.0/domains", headers=graph_headers(sim))

    assert response.json()["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#domains"
    assert [d["id"] for d in response.json()["value"]] == ["contoso.com", "contoso.onmicrosoft.com"]


@pytest.mark.parametrize(("user_id", "level", "risk_state"), [(ALICE_ID, "none", "none"), (BOB_ID, "high", "atRisk")])
def test_a_risky_user_reports_the_users_risk_level(
    sim: Simulator, client: httpx.Client, user_id: str, level: str, risk_state: str
) -> None:
    response = client.get(f"/v1.0/identityProtection/riskyUsers/{user_id}", headers=graph_headers(sim))
    again = client.get(f"/v1.0/identityProtection/riskyUsers/{user_id.upper()}", headers=graph_headers(sim))

    risky = response.json()
    user = sim.tenant.find_user(user_id)
    assert user is not None
    assert response.status_code == 200
    assert {k: v for k, v in risky.items() if k != "riskLastUpdatedDateTime"} == {
        "@odata.context": f"{METADATA}#identityProtection/riskyUsers/$entity",
        "id": user_id,
        "isDeleted": False,
        "isProcessing": False,
        "riskLevel": level,
        "riskState": risk_state,
        "riskDetail": "none",
        "userDisplayName": user["displayName"],
        "userPrincipalName": user["userPrincipalName"],
    }
    assert risky["riskLastUpdatedDateTime"].endswith("Z")
    assert again.json()["riskLastUpdatedDateTime"] == risky["riskLastUpdatedDateTime"]


def test_a_user_without_a_risk_level_is_refused_as_by_a_tenant_without_entra_id_p2(
    sim: Simulator, client: httpx.Client
) -> None:
    response = client.get(f"/v1.0/identityProtection/riskyUsers/{CAROL_ID}", headers=graph_headers(sim))

    error = response.json()["error"]
    assert response.status_code == 403
    assert (error["code"], error["message"]) == ("Forbidden", "Your tenant is not licensed for this feature.")
    assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}


@pytest.mark.parametrize("key", [BOB_ID, "bob@contoso.com"])
def test_inbox_rules_are_served_as_given_with_a_stable_id_for_rules_without_one(
    sim: Simulator, client: httpx.Client, key: str
) -> None:
    path = f"/v1.0/users/{key}/mailFolders/inbox/messageRules"
    first = client.get(path, headers=graph_headers(sim))
    second = client.get(path, headers=graph_headers(sim)).json()

    body = first.json()
    given = sim.tenant.find_user(BOB_ID)["x-inboxRules"]  # type: ignore[index]
    encoded = key.replace("@", "%40")
    assert first.status_code == 200
    assert body["@odata.context"] == f"{METADATA}#users('{encoded}')/mailFolders('inbox')/messageRules"
    assert body["value"][0] == given[0]
    generated = body["value"][1]
    assert {k: v for k, v in generated.items() if k != "id"} == given[1]
    assert generated["id"].startswith("AQAAA")
    assert [r["id"] for r in second["value"]] == [r["id"] for r in body["value"]]


def test_a_user_without_inbox_rules_has_an_empty_list(sim: Simulator, client: httpx.Client) -> None:
    for key in ("alice@contoso.com", CAROL_ID):
        response = client.get(f"/v1.0/users/{key}/mailFolders/Inbox/messageRules", headers=graph_headers(sim))
        assert (response.status_code, response.json()["value"]) == (200, [])


@pytest.mark.parametrize(
    ("name", "display_name"),
    [
        ("inbox", "Inbox"),
        ("archive", "Archive"),
        ("deleteditems", "Deleted Items"),
        ("JunkEmail", "Junk Email"),
        ("conversationhistory", "Conversation History"),
        ("rssfeeds", "RSS Feeds"),
        ("sentitems", "Sent Items"),
        ("drafts", "Drafts"),
    ],
)
def test_a_well_known_folder_is_found_by_name_or_by_its_id(
    sim: Simulator, client: httpx.Client, name: str, display_name: str
) -> None:
    by_name = client.get(f"/v1.0/users/alice@contoso.com/mailFolders/{name}", headers=graph_headers(sim))
    folder = by_name.json()
    by_id = client.get(f"/v1.0/users/{ALICE_ID}/mailFolders/{folder['id']}", headers=graph_headers(sim)).json()

    assert by_name.status_code == 200
    assert folder["@odata.context"] == f"{METADATA}#users('alice%40contoso.com')/mailFolders/$entity"
    assert folder["displayName"] == display_name
    assert {k: folder[k] for k in ("childFolderCount", "unreadItemCount", "totalItemCount", "isHidden")} == {
        "childFolderCount": 0,
        "unreadItemCount": 0,
        "totalItemCount": 0,
        "isHidden": False,
    }
    assert folder["parentFolderId"]
    assert folder["parentFolderId"] != folder["id"]
    assert {k: v for k, v in by_id.items() if k != "@odata.context"} == {
        k: v for k, v in folder.items() if k != "@odata.context"
    }
    assert not [k for k in folder if k.startswith("x-")]


def test_folder_ids_are_stable_per_user_and_differ_between_users(sim: Simulator, client: httpx.Client) -> None:
    def inbox_id(server: Simulator, http: httpx.Client, key: str) -> str:
        return str(http.get(f"/v1.0/users/{key}/mailFolders/inbox", headers=graph_headers(server)).json()["id"])

    with Simulator(TENANT_FILE) as other, http_client(other) as other_client:
        elsewhere = inbox_id(other, other_client, ALICE_ID)

    assert inbox_id(sim, client, ALICE_ID) == elsewhere
    assert inbox_id(sim, client, BOB_ID) != elsewhere


def test_a_rules_move_to_folder_id_resolves_to_the_users_custom_folder(sim: Simulator, client: httpx.Client) -> None:
    rules = client.get(f"/v1.0/users/{BOB_ID}/mailFolders/inbox/messageRules", headers=graph_headers(sim)).json()
    target = rules["value"][1]["actions"]["moveToFolder"]

    folder = client.get(f"/v1.0/users/{BOB_ID}/mailFolders/{target}", headers=graph_headers(sim)).json()
    root = client.get(f"/v1.0/users/{BOB_ID}/mailFolders/inbox", headers=graph_headers(sim)).json()["parentFolderId"]

    assert target == HIDDEN_FOLDER
    assert {k: v for k, v in folder.items() if k != "@odata.context"} == {
        "id": HIDDEN_FOLDER,
        "displayName": "RSS Subscriptions",
        "parentFolderId": root,
        "childFolderCount": 0,
        "unreadItemCount": 0,
        "totalItemCount": 0,
        "isHidden": False,
    }


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        (
            "/v1.0/users/nobody@contoso.com/mailFolders/inbox",
            "ErrorInvalidUser",
            "The requested user 'nobody@contoso.com' is invalid.",
        ),
        (
            "/v1.0/users/nobody@contoso.com/mailFolders/inbox/messageRules",
            "ErrorInvalidUser",
            "The requested user 'nobody@contoso.com' is invalid.",
        ),
        (f"/v1.0/users/{ALICE_ID}/mailFolders/outbox2", "ErrorItemNotFound", "not found in the store"),
        # A folder id is exact (Exchange ids are case-sensitive), and one user's folder is not another's.
        (f"/v1.0/users/{ALICE_ID}/mailFolders/{HIDDEN_FOLDER}", "ErrorItemNotFound", "not found in the store"),
        (f"/v1.0/users/{BOB_ID}/mailFolders/{HIDDEN_FOLDER.lower()}", "ErrorItemNotFound", "not found in the store"),
        # Inbox rules live on the Inbox only.
        (f"/v1.0/users/{BOB_ID}/mailFolders/sentitems/messageRules", "ErrorItemNotFound", "not found in the store"),
    ],
)
def test_mailbox_endpoints_answer_an_unknown_user_or_folder_with_404(
    sim: Simulator, client: httpx.Client, path: str, code: str, message: str
) -> None:
    response = client.get(path, headers=graph_headers(sim))

    error = response.json()["error"]
    assert response.status_code == 404
    assert error["code"] == code
    assert message in error["message"]


NEW_GRAPH_ROUTES = [
    ("graph.riskyUser", f"/v1.0/identityProtection/riskyUsers/{BOB_ID}"),
    ("graph.messageRules", f"/v1.0/users/{BOB_ID}/mailFolders/inbox/messageRules"),
    ("graph.mailFolder", f"/v1.0/users/{BOB_ID}/mailFolders/inbox"),
]


@pytest.mark.parametrize(("route", "path"), NEW_GRAPH_ROUTES)
def test_risk_and_mailbox_routes_need_a_graph_token(
    sim: Simulator, client: httpx.Client, route: str, path: str
) -> None:
    response = client.get(path, headers={"Authorization": f"Bearer {sim.issue_token(EXCHANGE)}"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert [r["route"] for r in sim.requests] == [route]


@pytest.mark.parametrize(("route", "path"), NEW_GRAPH_ROUTES)
def test_risk_and_mailbox_routes_are_logged_and_take_faults_and_latency(
    sim: Simulator, client: httpx.Client, route: str, path: str
) -> None:
    sim.inject_fault(route, status=429, retry_after=1)
    sim.set_latency(route, 0.1)

    throttled = client.get(path, headers=graph_headers(sim))
    start = time.perf_counter()
    served = client.get(path, headers=graph_headers(sim))
    elapsed = time.perf_counter() - start
    delete = client.delete(path, headers=graph_headers(sim))

    assert (throttled.status_code, throttled.json()["error"]["code"]) == (429, "TooManyRequests")
    assert throttled.headers["Retry-After"] == "1"
    assert served.status_code == 200
    assert elapsed >= 0.1
    assert (delete.status_code, delete.headers["Allow"]) == (405, "GET")
    assert [(r["route"], r["status"]) for r in sim.requests] == [(route, 429), (route, 200), (route, 405)]


def test_alerts_are_paged_with_a_skiptoken_next_link(sim: Simulator, client: httpx.Client) -> None:
    first = client.get("/v1.0/security/alerts_v2", params={"$top": "2"}, headers=graph_headers(sim)).json()
    next_link = first["@odata.nextLink"]
    second = client.get(next_link, headers=graph_headers(sim)).json()

    assert next_link.startswith(f"{sim.url}/v1.0/security/alerts_v2?")
    assert "$skiptoken=" in next_link
    assert [a["id"] for a in first["value"] + second["value"]] == [a["id"] for a in TENANT.alerts]
    assert "@odata.nextLink" not in second


def test_alerts_can_be_filtered_on_service_source(sim: Simulator, client: httpx.Client) -> None:
    response = client.get(
        "/v1.0/security/alerts_v2",
        params={
            "$filter": "serviceSource eq 'microsoftDefenderForOffice365' and createdDateTime ge 2026-11-27T08:00:00Z"
        },
        headers=graph_headers(sim),
    )

    assert [a["title"] for a in response.json()["value"]] == ["User restricted from sending email"]
    assert response.json()["value"][0]["evidence"][0]["userAccount"]["userPrincipalName"] == "alice@contoso.com"


def test_one_alert_is_served_by_id(sim: Simulator, client: httpx.Client) -> None:
    response = client.get("/v1.0/security/alerts_v2/fa3c5e7d-1b2a-4c3d-8e9f-0a1b2c3d4e5f", headers=graph_headers(sim))

    assert response.json()["@odata.context"].endswith("#security/alerts_v2/$entity")
    assert response.json()["title"] == "User restricted from sending email"


@pytest.mark.parametrize("top", ["0", "abc", "2001"])
def test_an_invalid_top_is_a_bad_request(sim: Simulator, client: httpx.Client, top: str) -> None:
    response = client.get("/v1.0/security/alerts_v2", params={"$top": top}, headers=graph_headers(sim))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"


# -- Exchange admin --------------------------------------------------------------------------------------


def test_blocked_senders_are_served_as_stored_rows(sim: Simulator, client: httpx.Client) -> None:
    response = invoke(client, sim, "Get-BlockedSenderAddress")

    body = response.json()
    assert response.status_code == 200
    assert body["@odata.context"] == (
        f"https://outlook.office365.com/adminapi/beta/{TENANT_ID}/$metadata#Collection(Exchange.GenericHashTable)"
    )
    assert body["@adminapi.warnings"] == []
    assert body["value"] == TENANT.blocked_senders


def test_one_blocked_sender_is_found_case_insensitively(sim: Simulator, client: httpx.Client) -> None:
    rows = invoke(client, sim, "Get-BlockedSenderAddress", SenderAddress="BOB@contoso.com").json()["value"]
    none = invoke(client, sim, "Get-BlockedSenderAddress", SenderAddress="dave@contoso.com").json()["value"]

    assert [row["SenderAddress"] for row in rows] == ["bob@contoso.com"]
    assert none == []


def test_blocked_senders_are_paged_by_the_prefer_header_and_the_next_link(sim: Simulator, client: httpx.Client) -> None:
    headers = exchange_headers(sim, Prefer="odata.maxpagesize=2")
    body = cmdlet("Get-BlockedSenderAddress")

    first = client.post(INVOKE, headers=headers, json=body)
    next_link = first.json()["@odata.nextLink"]
    second = client.post(next_link, headers=headers, json=body).json()

    assert next_link == f"{sim.url}{INVOKE}?$skiptoken=2"
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    assert [r["SenderAddress"] for r in first.json()["value"] + second["value"]] == [
        "alice@contoso.com",
        "bob@contoso.com",
        "carol@contoso.com",
    ]
    assert "@odata.nextLink" not in second


def test_the_tenant_page_size_applies_without_a_prefer_header() -> None:
    with Simulator({**tenant_doc(), "x-exchangePageSize": 1}) as sim, http_client(sim) as client:
        body = invoke(client, sim, "Get-BlockedSenderAddress").json()

    assert len(body["value"]) == 1
    assert body["@odata.nextLink"].endswith("?$skiptoken=1")


def test_remove_lifts_the_block_at_once_by_default(sim: Simulator, client: httpx.Client) -> None:
    response = invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="Alice@Contoso.com")

    assert response.status_code == 200
    assert response.json()["value"] == []
    assert response.json()["@adminapi.warnings"] == []
    assert "alice@contoso.com" not in [row["SenderAddress"] for row in sim.blocked_senders]


@pytest.mark.parametrize("where", ["user", "row"])
def test_remove_fails_like_the_service_when_the_unblock_limit_is_reached(where: str) -> None:
    doc = tenant_doc()
    target = doc["users"][0] if where == "user" else doc["blockedSenders"][0]
    target["x-unblockLimitReached"] = True
    with Simulator(doc) as sim, http_client(sim) as client:
        response = invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")
        still_blocked = [row["SenderAddress"] for row in sim.blocked_senders]
        served = invoke(client, sim, "Get-BlockedSenderAddress").json()["value"]

    text = "You have exceeded the unblock limit for this user. Contact Microsoft Support to unblock the user."
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "InternalServerError",
            "message": "Error executing cmdlet",
            "details": [
                {
                    "code": "",
                    "target": "",
                    "message": f"Ex6F9304|Microsoft.Exchange.Management.Tasks.ValidationException|{text}",
                }
            ],
            "innererror": {
                "message": "Error executing cmdlet",
                "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
            },
        }
    }
    assert "alice@contoso.com" in still_blocked
    assert not [key for row in served for key in row if key.startswith("x-")]


def test_remove_of_an_address_that_is_not_blocked_fails_with_object_not_found(
    sim: Simulator, client: httpx.Client
) -> None:
    first = invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")
    again = invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")

    error = again.json()["error"]
    assert first.status_code == 200
    assert again.status_code == 404
    assert (error["code"], error["message"]) == ("NotFound", "Error executing cmdlet")
    assert error["details"][0]["message"].endswith(
        "|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|"
        "The operation couldn't be performed because object 'alice@contoso.com' couldn't be found."
    )
    assert error["innererror"]["type"] == "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"


def test_a_delayed_removal_keeps_the_row_until_the_delay_has_passed() -> None:
    doc = tenant_doc()
    doc["blockedSenders"][0]["x-removalDelaySeconds"] = 600
    with Simulator(doc) as sim, http_client(sim) as client:
        removed = invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")
        pending = invoke(client, sim, "Get-BlockedSenderAddress", SenderAddress="alice@contoso.com").json()["value"]
        repeated = invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")

    assert (removed.status_code, repeated.status_code) == (200, 200)
    assert [row["SenderAddress"] for row in pending] == ["alice@contoso.com"]
    assert "x-removalDelaySeconds" not in pending[0]


def test_a_delayed_removal_lifts_the_row_once_the_delay_has_passed_on_the_delays_clock() -> None:
    doc = tenant_doc()
    doc["blockedSenders"][0]["x-removalDelaySeconds"] = 0.25
    elapsed = [100.0]
    state = TenantState(load_tenant(doc), delays=lambda: elapsed[0])

    assert state.schedule_removal("alice@contoso.com")
    elapsed[0] += 0.2
    assert state.schedule_removal("ALICE@contoso.com")  # a repeat keeps the first due time
    pending = state.find_blocked("alice@contoso.com")
    elapsed[0] += 0.05
    lifted = state.find_blocked("alice@contoso.com")

    assert pending is not None
    assert lifted is None
    assert [row["SenderAddress"] for row in state.blocked_rows()] == ["bob@contoso.com", "carol@contoso.com"]


@pytest.mark.parametrize("identity", ["bob@contoso.com", "6c8d7b2f-3a4e-4d9c-8f1b-2e3d4c5b6a71"])
def test_get_mailbox_serves_the_forwarding_settings(sim: Simulator, client: httpx.Client, identity: str) -> None:
    rows = invoke(client, sim, "Get-Mailbox", Identity=identity).json()["value"]

    assert rows == [
        {
            "ForwardingSmtpAddress": "smtp:drop@evil.example",
            "ForwardingAddress": None,
            "DeliverToMailboxAndForward": True,
            "PrimarySmtpAddress": "bob@contoso.com",
            "UserPrincipalName": "bob@contoso.com",
        }
    ]


def test_get_mailbox_finds_a_proxy_address_and_refuses_an_unknown_one(sim: Simulator, client: httpx.Client) -> None:
    by_alias = invoke(client, sim, "Get-Mailbox", Identity="news@contoso.com").json()["value"]
    unknown = invoke(client, sim, "Get-Mailbox", Identity="nobody@contoso.com")

    assert by_alias[0]["UserPrincipalName"] == "alice@contoso.com"
    assert unknown.status_code == 404
    assert "ManagementObjectNotFoundException" in unknown.json()["error"]["details"][0]["message"]


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "fragment"),
    [
        ("/adminapi/beta/00000000-0000-0000-0000-000000000000/InvokeCommand", {}, None, 404, "was not found"),
        (INVOKE, {"X-AnchorMailbox": None}, None, 400, "X-AnchorMailbox"),
        (INVOKE, {"X-AnchorMailbox": "UPN:SystemMailbox@contoso.onmicrosoft.com"}, None, 400, "X-AnchorMailbox"),
        (INVOKE, {}, cmdlet("Remove-BlockedSenderAddress"), 400, "missing mandatory parameters: SenderAddress"),
        (INVOKE, {}, cmdlet("Get-BlockedSenderAddress", Sender="a@b.c"), 400, "parameter name 'Sender'"),
        (INVOKE, {}, {"Cmdlet": "Get-BlockedSenderAddress"}, 400, "CmdletInput"),
        (INVOKE, {}, "{oops", 400, "not valid JSON"),
    ],
)
def test_invoke_command_refuses_a_malformed_call_with_the_exchange_error_shape(
    sim: Simulator,
    client: httpx.Client,
    path: str,
    headers: dict[str, str | None],
    body: Any,
    status: int,
    fragment: str,
) -> None:
    merged = {k: v for k, v in {**exchange_headers(sim), **headers}.items() if v is not None}
    payload = body if body is not None else cmdlet("Get-BlockedSenderAddress")
    content = payload if isinstance(payload, str) else json.dumps(payload)

    response = client.post(path, headers={**merged, "Content-Type": "application/json"}, content=content)

    error = response.json()["error"]
    assert response.status_code == status
    assert {"code", "message", "details"} <= set(error)
    assert fragment in " ".join([error["message"], *(d["message"] for d in error["details"])])


def test_a_cmdlet_outside_the_apps_role_is_refused_with_403_and_no_body(sim: Simulator, client: httpx.Client) -> None:
    response = invoke(client, sim, "Remove-Mailbox", Identity="alice@contoso.com")

    assert (response.status_code, response.content) == (403, b"")


# -- ticket webhook --------------------------------------------------------------------------------------


def test_the_ticket_webhook_creates_one_ticket_per_idempotency_key(sim: Simulator, client: httpx.Client) -> None:
    def deliver(key: str, summary: str) -> httpx.Response:
        return client.post(
            "/tickets/webhook",
            headers={"Idempotency-Key": key, "X-Signature": f"sha256={key}"},
            json={"summary": summary},
        )

    first, repeat, other = deliver("k-1", "alice"), deliver("k-1", "alice again"), deliver("k-2", "bob")

    assert (first.status_code, first.json()) == (201, {"id": "SIM-0001", "status": "created"})
    assert (repeat.status_code, repeat.json()) == (200, {"id": "SIM-0001", "status": "existing"})
    assert other.json() == {"id": "SIM-0002", "status": "created"}
    tickets = sim.tickets
    assert [(t["id"], t["idempotency_key"], t["deliveries"]) for t in tickets] == [
        ("SIM-0001", "k-1", 2),
        ("SIM-0002", "k-2", 1),
    ]
    assert tickets[0]["body"] == {"summary": "alice"}
    assert tickets[0]["signature"] == "sha256=k-1"


def test_the_ticket_webhook_refuses_a_body_that_is_not_json(sim: Simulator, client: httpx.Client) -> None:
    response = client.post("/tickets/webhook", content=b"summary=alice", headers={"Idempotency-Key": "k"})

    assert response.status_code == 400
    assert sim.tickets == []


# -- faults and latency ----------------------------------------------------------------------------------


def test_a_429_with_retry_after_is_followed_by_success(sim: Simulator, client: httpx.Client) -> None:
    sim.inject_fault("graph.user", status=429, retry_after=2)

    throttled = client.get(f"/v1.0/users/{ALICE_ID}", headers=graph_headers(sim))
    retried = client.get(f"/v1.0/users/{ALICE_ID}", headers=graph_headers(sim))

    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2"
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert retried.status_code == 200
    assert sim.faults == []


@pytest.mark.parametrize(("route", "expected"), [("exchange.Remove-BlockedSenderAddress", 200), ("exchange.*", 503)])
def test_an_exchange_fault_matches_on_the_cmdlet_name(
    sim: Simulator, client: httpx.Client, route: str, expected: int
) -> None:
    sim.inject_fault(route, status=503)

    listed = invoke(client, sim, "Get-BlockedSenderAddress")
    removed = invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")

    assert listed.status_code == expected
    assert removed.status_code == (503 if expected == 200 else 200)
    failed = listed if expected == 503 else removed
    assert failed.json()["error"]["message"] == "Simulated failure: HTTP 503."


def test_a_timeout_fault_holds_the_request_then_drops_the_connection(sim: Simulator, client: httpx.Client) -> None:
    sim.inject_fault("graph.domains", kind="timeout", seconds=0.05)
    sim.inject_fault("graph.domains", kind="timeout", seconds=2)

    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/v1.0/domains", headers=graph_headers(sim))
    with pytest.raises(httpx.ReadTimeout):
        client.get("/v1.0/domains", headers=graph_headers(sim), timeout=0.2)
    assert client.get("/v1.0/domains", headers=graph_headers(sim)).status_code == 200
    assert [r["status"] for r in sim.requests] == [None, None, 200]


def test_a_malformed_fault_answers_200_with_a_body_that_is_not_json(sim: Simulator, client: httpx.Client) -> None:
    sim.inject_fault("exchange.Get-BlockedSenderAddress", kind="malformed")

    response = invoke(client, sim, "Get-BlockedSenderAddress")

    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_a_fault_without_a_count_fires_until_cleared(sim: Simulator, client: httpx.Client) -> None:
    sim.inject_fault("identity.token", status=500, times=None)
    params = {"resource": GRAPH, "api-version": "2019-08-01"}
    headers = {"X-IDENTITY-HEADER": sim.identity_header}

    failures = [client.get("/msi/token", params=params, headers=headers).status_code for _ in range(3)]
    sim.clear_faults()

    assert failures == [500, 500, 500]
    assert client.get("/msi/token", params=params, headers=headers).status_code == 200


def test_a_fault_can_carry_its_own_body(sim: Simulator, client: httpx.Client) -> None:
    sim.inject_fault("tickets.webhook", status=502, body="<html>Bad gateway</html>")

    response = client.post("/tickets/webhook", json={})

    assert (response.status_code, response.text) == (502, "<html>Bad gateway</html>")
    assert response.headers["Content-Type"].startswith("text/plain")


def test_latency_delays_only_its_route(sim: Simulator, client: httpx.Client) -> None:
    sim.set_latency("graph.domains", 0.2)

    def timed(path: str) -> float:
        start = time.perf_counter()
        client.get(path, headers=graph_headers(sim)).raise_for_status()
        return time.perf_counter() - start

    assert timed("/v1.0/domains") >= 0.2
    assert timed(f"/v1.0/users/{ALICE_ID}") < 0.2


def test_faults_and_latency_can_come_from_the_tenant_file() -> None:
    doc = {
        **tenant_doc(),
        "x-faults": [{"route": "graph.user", "status": 503, "retry_after": 1, "times": 2}],
        "x-latency": {"graph.domains": 0.1},
    }
    with Simulator(doc) as sim, http_client(sim) as client:
        statuses = [client.get(f"/v1.0/users/{ALICE_ID}", headers=graph_headers(sim)).status_code for _ in range(3)]
        start = time.perf_counter()
        client.get("/v1.0/domains", headers=graph_headers(sim))
        elapsed = time.perf_counter() - start

    assert statuses == [503, 503, 200]
    assert elapsed >= 0.1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"route": "graph.groups"}, "unknown route 'graph.groups'"),
        ({"route": "exchange-*"}, "matches none"),
        ({"route": "graph.user", "kind": "slow"}, "fault kind must be one of"),
        ({"route": "graph.user", "status": 99}, "HTTP status code"),
        ({"route": "graph.user", "times": 0}, "times must be"),
    ],
)
def test_a_fault_that_could_never_fire_is_refused(sim: Simulator, arguments: dict[str, Any], message: str) -> None:
    route = arguments.pop("route")
    with pytest.raises(ValueError, match=message):
        sim.inject_fault(route, **arguments)


def test_every_documented_route_accepts_faults(sim: Simulator) -> None:
    for route in ROUTES:
        sim.inject_fault(route)
    assert [f.route for f in sim.faults] == list(ROUTES)


# -- bookkeeping and control -----------------------------------------------------------------------------


def test_requests_are_logged_in_arrival_order_with_route_status_and_parsed_body(
    sim: Simulator, client: httpx.Client
) -> None:
    client.get("/v1.0/users/alice@contoso.com", params={"$select": "mail"}, headers=graph_headers(sim))
    invoke(client, sim, "Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")
    client.post("/tickets/webhook", content=b"plain text")
    client.get("/nowhere")

    log = sim.requests
    assert [(r["method"], r["path"], r["route"], r["status"]) for r in log] == [
        ("GET", "/v1.0/users/alice@contoso.com", "graph.user", 200),
        ("POST", INVOKE, "exchange.Remove-BlockedSenderAddress", 200),
        ("POST", "/tickets/webhook", "tickets.webhook", 400),
        ("GET", "/nowhere", "unknown", 404),
    ]
    assert log[0]["query"] == {"$select": "mail"}
    assert log[0]["body"] is None
    assert log[1]["body"] == cmdlet("Remove-BlockedSenderAddress", SenderAddress="alice@contoso.com")
    assert log[2]["body"] == "plain text"
    sim.clear_requests()
    assert sim.requests == []


def test_the_control_endpoints_drive_a_standalone_simulator(sim: Simulator, client: httpx.Client) -> None:
    added = client.post("/_sim/faults", json={"route": "graph.domains", "status": 429, "retry_after": 1, "times": 1})
    state = client.get("/_sim/state").json()
    throttled = client.get("/v1.0/domains", headers=graph_headers(sim))
    logged = client.get("/_sim/requests").json()["value"]
    client.post("/_sim/faults", json={"route": "graph.domains", "times": None})
    cleared = client.delete("/_sim/faults").json()
    reset = client.post("/_sim/reset-requests").json()

    assert added.status_code == 201
    assert [f["status"] for f in state["faults"]] == [429]
    assert state["blockedSenders"][0]["SenderAddress"] == "alice@contoso.com"
    assert state["tickets"] == []
    assert throttled.status_code == 429
    assert [r["route"] for r in logged] == ["graph.domains"]
    assert cleared == {"cleared": 1}
    assert reset == {"cleared": 1}
    assert client.post("/_sim/faults", json={"route": "nope"}).status_code == 400


def test_a_sender_can_be_restricted_during_a_test(sim: Simulator, client: httpx.Client) -> None:
    sim.add_blocked_sender({"SenderAddress": "dave@contoso.com", "Reason": "OutboundSpamLast24Hours=1", "x-note": 1})

    rows = invoke(client, sim, "Get-BlockedSenderAddress", SenderAddress="dave@contoso.com").json()["value"]

    assert rows == [{"SenderAddress": "dave@contoso.com", "Reason": "OutboundSpamLast24Hours=1"}]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/v1.0/groups", 404),
        ("GET", "/adminapi/beta/x/Other", 404),
        ("DELETE", f"/v1.0/users/{ALICE_ID}", 405),
        ("GET", INVOKE, 405),
    ],
)
def test_other_paths_and_methods_get_a_json_error(
    sim: Simulator, client: httpx.Client, method: str, path: str, status: int
) -> None:
    response = client.request(method, path, headers=graph_headers(sim))

    assert response.status_code == status
    assert "error" in response.json()


def test_concurrent_requests_are_all_answered_and_logged(sim: Simulator, client: httpx.Client) -> None:
    headers = graph_headers(sim)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: client.get("/v1.0/domains", headers=headers).status_code, range(40)))

    assert statuses == [200] * 40
    assert len(sim.requests) == 40


def test_a_stopped_simulator_has_no_url() -> None:
    simulator = Simulator(TENANT_FILE)
    with pytest.raises(RuntimeError, match="not running"):
        _ = simulator.url
    simulator.stop()


def test_serve_prints_where_it_listens_and_stops_on_sigterm() -> None:
    code = f"import simulator; simulator.serve({str(TENANT_FILE)!r}, '127.0.0.1', 0)"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        url = line.split(" ")[3]
        secret = line.rsplit(" ", 1)[1].rstrip(")")
        token = httpx.get(
            f"{url}/msi/token",
            params={"resource": GRAPH, "api-version": "2019-08-01"},
            headers={"X-IDENTITY-HEADER": secret},
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    assert line.startswith("simulator listening on http://127.0.0.1:")
    assert f"(tenant {TENANT_ID}, identity header " in line
    assert token.status_code == 200


def test_users_can_be_found_by_mail_ignoring_case(sim: Simulator) -> None:
    with httpx.Client(base_url=sim.url) as client:
        wanted = sim.tenant.users[0]["mail"].upper()
        answer = client.get(
            "/v1.0/users", params={"$filter": f"mail eq '{wanted}'", "$select": "id,mail"}, headers=graph_headers(sim)
        )
    assert answer.status_code == 200
    assert [u["mail"] for u in answer.json()["value"]] == [sim.tenant.users[0]["mail"]]
