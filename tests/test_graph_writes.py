"""Graph writes (revoke sessions, confirm compromised, disable account, sendMail): the real msgraph-sdk adapter with
the real managed-identity credential against the simulator, the simulator's write endpoints, and the fake."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from restricted_sender.adapters.graph import GraphDirectory
from restricted_sender.errors import ServiceRefused
from restricted_sender.fakes import FakeDirectory
from restricted_sender.model import DirectoryUser, Mail
from simulator import Simulator
from tests.conftest import TLS, on_graph, tenant, user

T = TypeVar("T")
ALICE = user("alice", **{"x-riskLevel": "low"})  # a tenant with Entra ID P2 marks risk on its users
BOB = user("bob")  # no x-riskLevel: stands for a tenant without Entra ID P2
ROBOT = {**user("robot"), "mail": None}  # no mail: no Exchange Online mailbox
NOBODY = "00000000-0000-4000-8000-000000000000"
NOTICE = Mail(to=("soc@contoso.com", "alice@contoso.com"), subject="Account contained", body="Sessions revoked.")

Write = Callable[[GraphDirectory, str], Awaitable[object]]
WRITES: dict[str, Write] = {
    "revoke_sessions": lambda d, key: d.revoke_sessions(key),
    "confirm_compromised": lambda d, key: d.confirm_compromised(key),
    "disable_account": lambda d, key: d.disable_account(key),
    "send_mail": lambda d, key: d.send_mail(key, NOTICE),
}
ROUTES = {
    "revoke_sessions": "graph.revokeSignInSessions",
    "confirm_compromised": "graph.confirmCompromised",
    "disable_account": "graph.updateUser",
    "send_mail": "graph.sendMail",
}
PERMISSIONS = {
    "revoke_sessions": "User.RevokeSessions.All",
    "confirm_compromised": "IdentityRiskyUser.ReadWrite.All",
    "disable_account": "User.EnableDisableAccount.All",
    "send_mail": "Mail.Send",
}


@pytest.fixture
def run(
    simulator_factory: Callable[[dict[str, Any]], Simulator], identity_env: Callable[[Simulator], None]
) -> Callable[..., tuple[Any, Simulator]]:
    def go(scenario: Callable[[GraphDirectory, Simulator], Awaitable[T]]) -> tuple[T, Simulator]:
        sim = simulator_factory(tenant([ALICE, BOB, ROBOT], []))
        identity_env(sim)

        return on_graph(sim, scenario), sim

    return go


def graph_get(sim: Simulator, path: str, resource: str = "https://graph.microsoft.com") -> httpx.Response:
    headers = {"Authorization": f"Bearer {sim.issue_token(resource)}"}
    return httpx.get(f"{sim.graph_url}{path}", headers=headers, verify=TLS)


def graph_call(
    sim: Simulator, method: str, path: str, body: Any, *, resource: str = "https://graph.microsoft.com"
) -> Any:
    headers = {"Authorization": f"Bearer {sim.issue_token(resource)}"}
    return httpx.request(method, f"{sim.graph_url}{path}", json=body, headers=headers, verify=TLS)


def logged(sim: Simulator, route: str) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["route"] == route]


# -- the adapter against the simulator --------------------------------------------------------------------


def test_revoking_sessions_moves_the_users_sessions_valid_from_to_now(run: Callable[..., Any]) -> None:
    _, sim = run(lambda d, sim: d.revoke_sessions(ALICE["id"]))

    served = graph_get(sim, f"/users/{ALICE['id']}").json()
    assert served["signInSessionsValidFromDateTime"].endswith("Z")
    assert [(r["method"], r["status"]) for r in logged(sim, "graph.revokeSignInSessions")] == [("POST", 200)]


def test_disabling_an_account_serves_the_user_disabled(run: Callable[..., Any]) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> DirectoryUser | None:
        await directory.disable_account(ALICE["id"])
        return await directory.user(ALICE["id"])

    found, sim = run(scenario)

    assert found is not None
    assert found.account_enabled is False
    assert graph_get(sim, f"/users/{ALICE['id']}").json()["accountEnabled"] is False
    [patch] = logged(sim, "graph.updateUser")
    assert (patch["method"], patch["status"]) == ("PATCH", 204)
    assert {k: v for k, v in patch["body"].items() if not k.startswith("@")} == {"accountEnabled": False}


def test_confirming_a_compromise_raises_the_users_risk_to_high(run: Callable[..., Any]) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> tuple[bool, str | None]:
        return await directory.confirm_compromised(ALICE["id"]), await directory.risk_level(ALICE["id"])

    (confirmed, level), sim = run(scenario)

    assert (confirmed, level) == (True, "high")
    risky = graph_get(sim, f"/identityProtection/riskyUsers/{ALICE['id']}").json()
    assert (risky["riskState"], risky["riskDetail"]) == ("confirmedCompromised", "adminConfirmedUserCompromised")
    assert logged(sim, "graph.confirmCompromised")[0]["body"] == {"userIds": [ALICE["id"]]}


def test_without_entra_id_p2_confirming_a_compromise_answers_false_and_changes_nothing(
    run: Callable[..., Any],
) -> None:
    confirmed, sim = run(lambda d, sim: d.confirm_compromised(BOB["id"]))

    assert confirmed is False
    assert [r["status"] for r in logged(sim, "graph.confirmCompromised")] == [403]
    unlicensed = graph_call(sim, "POST", "/identityProtection/riskyUsers/confirmCompromised", {"userIds": [BOB["id"]]})
    assert unlicensed.json()["error"]["code"] == "Forbidden"
    assert unlicensed.json()["error"]["message"] == "Your tenant is not licensed for this feature."
    assert graph_get(sim, f"/identityProtection/riskyUsers/{BOB['id']}").status_code == 403


@pytest.mark.parametrize(
    ("write", "code", "message"),
    [
        ("revoke_sessions", "Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
        ("disable_account", "Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
        ("send_mail", "ErrorAccessDenied", "Access is denied. Check credentials and try again."),
        # Identity Protection says "Forbidden" for a missing permission too: only a licence message means "no P2".
        (
            "confirm_compromised",
            "Forbidden",
            "You cannot perform the requested operation, required scopes are missing in the token.",
        ),
        ("confirm_compromised", "Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    ],
)
def test_a_missing_permission_is_refused_with_graphs_own_message(
    run: Callable[..., Any], write: str, code: str, message: str
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> ServiceRefused:
        sim.inject_fault("graph.*", status=403, body={"error": {"code": code, "message": message}})
        with pytest.raises(ServiceRefused) as refused:
            await WRITES[write](directory, ALICE["id"])
        return refused.value

    refused, sim = run(scenario)

    assert refused.http_status == 403
    assert f"{code}: {message}" in refused.message
    assert PERMISSIONS[write] in refused.message
    assert graph_get(sim, f"/users/{ALICE['id']}").json()["accountEnabled"] is True
    assert sim.sent_mail() == []


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_throttled_write_is_sent_again_after_retry_after(run: Callable[..., Any], write: str) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> object:
        sim.inject_fault("graph.*", status=429, retry_after=0.2, times=1)
        return await WRITES[write](directory, ALICE["id"])

    _, sim = run(scenario)

    attempts = logged(sim, ROUTES[write])
    assert [r["status"] for r in attempts] == [429, attempts[-1]["status"]]
    assert attempts[-1]["status"] in (200, 202, 204)
    assert attempts[1]["started"] - attempts[0]["ended"] >= 0.15
    assert len(sim.sent_mail()) == (1 if write == "send_mail" else 0)


@pytest.mark.parametrize(("html", "content_type"), [(True, "html"), (False, "text")])
def test_sent_mail_reaches_the_simulator_with_its_body_type_recipients_and_importance(
    run: Callable[..., Any], html: bool, content_type: str
) -> None:
    mail = Mail(
        to=("soc@contoso.com", "bob@contoso.com"),
        subject="Alice was restricted from sending",
        body="<p>Blocked</p>" if html else "Blocked",
        html=html,
        importance="high",
    )
    _, sim = run(lambda d, sim: d.send_mail(ALICE["userPrincipalName"], mail))

    [sent] = sim.sent_mail()
    assert sent["from"] == ALICE["mail"]
    assert sent["saveToSentItems"] is True
    message = sent["message"]
    assert message["subject"] == mail.subject
    assert message["body"] == {"contentType": content_type, "content": mail.body}
    assert [r["emailAddress"]["address"] for r in message["toRecipients"]] == list(mail.to)
    assert message["importance"] == "high"
    assert [r["status"] for r in logged(sim, "graph.sendMail")] == [202]
    state = httpx.get(f"{sim.url}/_sim/state", verify=TLS).json()
    assert state["sentMail"] == [sent]


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_to_a_user_that_does_not_exist_is_refused_not_ignored(run: Callable[..., Any], write: str) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> ServiceRefused:
        with pytest.raises(ServiceRefused) as refused:
            await WRITES[write](directory, NOBODY)
        return refused.value

    refused, _ = run(scenario)

    assert refused.http_status == 404


@pytest.mark.parametrize(
    ("sender", "mail", "status", "code"),
    [
        (ROBOT["id"], NOTICE, 404, "MailboxNotEnabledForRESTAPI"),
        (ALICE["id"], Mail(to=(), subject="To nobody", body="..."), 400, "ErrorInvalidRecipients"),
    ],
    ids=["sender-without-mailbox", "no-recipients"],
)
def test_mail_the_service_cannot_send_is_refused(
    run: Callable[..., Any], sender: str, mail: Mail, status: int, code: str
) -> None:
    async def scenario(directory: GraphDirectory, sim: Simulator) -> ServiceRefused:
        with pytest.raises(ServiceRefused) as refused:
            await directory.send_mail(sender, mail)
        return refused.value

    refused, sim = run(scenario)

    assert (refused.http_status, code in refused.message) == (status, True)
    assert sim.sent_mail() == []


# -- the simulator's write endpoints, over plain HTTP -------------------------------------------------------


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(tenant([ALICE, BOB, ROBOT], []))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"id": "x"}, "Property 'id' is read-only and cannot be set."),
        ({"createdDateTime": "2020-01-01T00:00:00Z"}, "Property 'createdDateTime' is read-only and cannot be set."),
        ({"accountEnabled": False, "favouriteColour": "red"}, "Invalid property 'favouriteColour'."),
        ({"accountEnabled": "false"}, "Invalid value specified for property 'accountEnabled' of resource 'User'."),
    ],
)
def test_patching_a_user_refuses_read_only_unknown_and_mistyped_properties_and_changes_nothing(
    sim: Simulator, body: dict[str, Any], message: str
) -> None:
    answer = graph_call(sim, "PATCH", f"/users/{ALICE['id']}", body)

    assert answer.status_code == 400
    assert (answer.json()["error"]["code"], answer.json()["error"]["message"]) == ("Request_BadRequest", message)
    assert graph_get(sim, f"/users/{ALICE['id']}").json()["accountEnabled"] is True


def test_patching_a_user_changes_only_what_was_sent(sim: Simulator) -> None:
    answer = graph_call(sim, "PATCH", f"/users/{ALICE['userPrincipalName']}", {"jobTitle": "Analyst"})

    assert (answer.status_code, answer.content) == (204, b"")
    served = graph_get(sim, f"/users/{ALICE['id']}").json()
    assert (served["jobTitle"], served["accountEnabled"], served["displayName"]) == ("Analyst", True, "Alice")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", f"/users/{ALICE['id']}/sendMail", {"message": {"toRecipients": []}}),
        ("POST", f"/users/{ALICE['id']}/revokeSignInSessions", None),
        ("PATCH", f"/users/{ALICE['id']}", {"accountEnabled": False}),
        ("POST", "/identityProtection/riskyUsers/confirmCompromised", {"userIds": [ALICE["id"]]}),
    ],
)
def test_writes_need_a_token_for_graph_not_one_for_exchange(sim: Simulator, method: str, path: str, body: Any) -> None:
    answer = graph_call(sim, method, path, body, resource="https://outlook.office365.com")

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert graph_get(sim, f"/users/{ALICE['id']}").json()["accountEnabled"] is True


def test_confirming_a_compromise_for_several_users_changes_none_when_one_is_unlicensed(sim: Simulator) -> None:
    answer = graph_call(
        sim, "POST", "/identityProtection/riskyUsers/confirmCompromised", {"userIds": [ALICE["id"], BOB["id"]]}
    )

    assert answer.status_code == 403
    assert graph_get(sim, f"/identityProtection/riskyUsers/{ALICE['id']}").json()["riskLevel"] == "low"


# -- the fake ------------------------------------------------------------------------------------------------


def fake() -> FakeDirectory:
    return FakeDirectory([DirectoryUser("id-alice", "alice@contoso.com", "alice@contoso.com", account_enabled=True)])


async def fake_write(directory: FakeDirectory, write: str, key: str = "id-alice") -> object:
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "revoke_sessions": lambda: directory.revoke_sessions(key),
        "confirm_compromised": lambda: directory.confirm_compromised(key),
        "disable_account": lambda: directory.disable_account(key),
        "send_mail": lambda: directory.send_mail(key, NOTICE),
    }
    return await calls[write]()


def test_the_fake_records_each_write_and_its_effect() -> None:
    directory = fake()

    async def scenario() -> None:
        await directory.revoke_sessions("id-alice")
        assert await directory.confirm_compromised("id-alice") is True
        await directory.disable_account("id-alice")
        await directory.send_mail("alice@contoso.com", NOTICE)

    asyncio.run(scenario())

    assert (directory.revoked, directory.confirmed, directory.disabled) == (["id-alice"], ["id-alice"], ["id-alice"])
    assert directory.sent == [("alice@contoso.com", NOTICE)]
    assert directory.risk["id-alice"] == "high"
    assert directory.users[0].account_enabled is False


@pytest.mark.parametrize("write", sorted(WRITES))
def test_the_fake_fails_a_write_on_demand_and_records_nothing(write: str) -> None:
    directory = fake()
    directory.failures[write] = ServiceRefused("graph", "HTTP 403: no", http_status=403)

    with pytest.raises(ServiceRefused):
        asyncio.run(fake_write(directory, write))

    assert (directory.revoked, directory.confirmed, directory.disabled, directory.sent) == ([], [], [], [])
    assert directory.users[0].account_enabled is True


@pytest.mark.parametrize("write", sorted(WRITES))
def test_the_fake_refuses_a_write_to_an_unknown_user_as_the_service_does(write: str) -> None:
    with pytest.raises(ServiceRefused) as refused:
        asyncio.run(fake_write(fake(), write, key="nobody"))

    assert refused.value.http_status == 404


def test_the_fake_without_p2_confirms_nothing() -> None:
    directory = fake()
    directory.p2 = False

    assert asyncio.run(directory.confirm_compromised("id-alice")) is False
    assert (directory.confirmed, directory.risk) == ([], {})
