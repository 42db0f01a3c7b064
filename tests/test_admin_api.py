"""The admin API through the function app's own handlers: Entra ID tokens minted and signed by the simulator,
validated by the app against the simulator's OpenID metadata; Azurite for the store; Exchange in the simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest

from restricted_sender.entrypoints.edge import runtime
from simulator import Simulator
from simulator.azurite import Azurite
from tests.conftest import Audit, blocked, tenant, user

pytestmark = pytest.mark.azurite
FORCE = "Sender.Unblock.Force"

POLICY = """
mode: report-only
allow: [{name: staff, domains: [contoso.com]}]
deny: {users: [carol@contoso.com]}
"""


@pytest.fixture
def sim(simulator_factory: Callable[[dict[str, Any]], Simulator]) -> Simulator:
    return simulator_factory(
        tenant(
            [user("alice"), user("carol"), user("dave")],
            [blocked("alice@contoso.com"), blocked("carol@contoso.com")],
        )
    )


@pytest.fixture
def configure(app_runtime: Callable[..., dict[str, str]], sim: Simulator) -> Callable[..., None]:
    def apply(**extra: str) -> None:
        app_runtime(sim, POLICY_YAML=POLICY, **extra)

    apply()
    return apply


def call(
    handlers: dict[str, Callable[..., Any]],
    function: str,
    *,
    method: str = "GET",
    route: dict[str, str] | None = None,
    body: dict[str, Any] | bytes | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = func.HttpRequest(method=method, url="/api/x", body=raw, headers=headers, route_params=route or {})

    async def run() -> Any:
        try:
            return await handlers[function](request)
        finally:
            await runtime.aclose()

    response = asyncio.run(run())
    assert response.mimetype == "application/json"
    return response.status_code, json.loads(response.get_body())


def unblock(
    handlers: dict[str, Callable[..., Any]], upn: str, token: str | None, **body: Any
) -> tuple[int, dict[str, Any]]:
    payload = {"justification": "user confirmed the mail was theirs", **body}
    return call(handlers, "unblock_user", method="POST", route={"upn": upn}, body=payload, token=token)


def removals(sim: Simulator) -> int:
    return len([r for r in sim.requests if r["route"] == "exchange.Remove-BlockedSenderAddress"])


def test_a_valid_token_with_the_role_unblocks_and_records_the_operator(
    handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator, audit: Audit
) -> None:
    token = sim.mint_token(upn="admin@contoso.com", object_id="0b7c7a4e-8d0e-4d2f-9c1a-5b6e7f8a9b0c")
    status, answer = unblock(handlers, "alice@contoso.com", token)
    assert status == 200, answer
    assert answer["decision"] == "unblock"
    assert [a["kind"] for a in answer["actions"]] == ["unblock", "verify"]
    assert "alice@contoso.com" not in [r["SenderAddress"] for r in sim.blocked_senders]
    [row] = audit()
    assert row["evidence"]["operator"] == {
        "object_id": "0b7c7a4e-8d0e-4d2f-9c1a-5b6e7f8a9b0c",
        "name": "admin@contoso.com",
        "app_id": row["evidence"]["operator"]["app_id"],
    }
    assert row["evidence"]["justification"] == "user confirmed the mail was theirs"
    assert row["source"] == "manual"  # acts although the policy is report-only: an operator asked for it


@pytest.mark.parametrize(
    ("variant", "status"),
    [
        ("expired", 401),
        ("not-yet-valid", 401),
        ("wrong-issuer", 401),
        ("wrong-audience", 401),
        ("wrong-key", 401),
        ("alg-none", 401),
        ("hs256", 401),
        ("other-tenant", 401),
        ("no-role", 403),
    ],
)
def test_every_bad_token_is_refused_and_nothing_is_done(
    handlers: dict[str, Callable[..., Any]],
    configure: Any,
    sim: Simulator,
    audit: Audit,
    variant: str,
    status: int,
) -> None:
    token = sim.mint_token(variant=variant)
    got, answer = unblock(handlers, "alice@contoso.com", token)
    assert got == status
    assert answer["error"]["code"] == ("forbidden" if status == 403 else "unauthorized")
    assert token not in json.dumps(answer)
    assert removals(sim) == 0
    assert audit() == []


def test_a_missing_token_is_401(handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator) -> None:
    got, answer = unblock(handlers, "alice@contoso.com", None)
    assert (got, answer["error"]["code"]) == (401, "unauthorized")
    assert removals(sim) == 0


def test_a_reader_can_read_but_not_unblock(
    handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator
) -> None:
    reader = sim.mint_token(roles=("Sender.Read",))
    assert unblock(handlers, "alice@contoso.com", reader)[0] == 403
    status, answer = call(handlers, "user_status", route={"upn": "alice@contoso.com"}, token=reader)
    assert status == 200
    assert answer["restricted"] is True
    assert answer["restriction"]["kind"] == "spam"


def test_a_deny_listed_user_needs_force_and_force_is_recorded(
    handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator, audit: Audit
) -> None:
    token = sim.mint_token(roles=(FORCE,))
    status, answer = unblock(handlers, "carol@contoso.com", token)
    assert status == 409
    assert answer["error"]["code"] == "force-required"
    assert [w["code"] for w in answer["error"]["warnings"]] == ["deny:user"]
    assert removals(sim) == 0
    status, answer = unblock(handlers, "carol@contoso.com", token, force=True)
    assert status == 200
    assert [w["code"] for w in answer["warnings"]] == ["manual:forced", "deny:user"]
    assert [r["decision"] for r in audit()] == ["ignore", "unblock"]


@pytest.mark.parametrize(
    ("upn", "body", "status", "code"),
    [
        ("dave@contoso.com", None, 409, "not-restricted"),
        ("alice@contoso.com", b"{", 400, "malformed-payload"),
        ("alice@contoso.com", {"force": True}, 400, "malformed-payload"),
        ("not an address", None, 400, "malformed-payload"),
    ],
    ids=["not restricted", "not json", "no justification", "not an address"],
)
def test_requests_that_cannot_be_done_get_a_clear_4xx_and_change_nothing(
    handlers: dict[str, Callable[..., Any]],
    configure: Any,
    sim: Simulator,
    upn: str,
    body: Any,
    status: int,
    code: str,
) -> None:
    payload = {"justification": "helpdesk ticket 42"} if body is None else body
    got, answer = call(
        handlers, "unblock_user", method="POST", route={"upn": upn}, body=payload, token=sim.mint_token()
    )
    assert (got, answer["error"]["code"]) == (status, code)
    assert removals(sim) == 0


def test_the_restricted_list_shows_parsed_reasons_and_last_decisions(
    handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator
) -> None:
    token = sim.mint_token(roles=("Sender.Read",))
    assert unblock(handlers, "carol@contoso.com", sim.mint_token())[0] == 409
    status, answer = call(handlers, "restricted_users", token=token)
    assert status == 200
    assert answer["count"] == 2
    rows = {r["user"]: r for r in answer["restricted"]}
    assert rows["alice@contoso.com"]["last_decision"] is None
    assert rows["carol@contoso.com"]["last_decision"]["decision"] == "ignore"
    assert rows["carol@contoso.com"]["restriction"]["parsed_reason"]["values"]["OutboundSpamPercent"] == "88"


def test_an_unknown_user_is_404(handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator) -> None:
    status, answer = call(handlers, "user_status", route={"upn": "nobody@contoso.com"}, token=sim.mint_token())
    assert (status, answer["error"]["code"]) == (404, "not-found")


def test_without_an_audience_setting_the_admin_api_says_what_to_set(
    handlers: dict[str, Callable[..., Any]], configure: Callable[..., None], sim: Simulator
) -> None:
    configure(ADMIN_API_AUDIENCE="")
    status, answer = unblock(handlers, "alice@contoso.com", sim.mint_token())
    assert status == 500
    assert "ADMIN_API_AUDIENCE" in answer["error"]["message"]
    assert removals(sim) == 0


@pytest.mark.parametrize("force", [False, True])
def test_an_address_no_directory_user_owns_is_never_unblocked_by_hand(
    handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator, audit: Audit, force: bool
) -> None:
    sim.add_blocked_sender(blocked("ghost@contoso.com"))
    status, answer = unblock(handlers, "ghost@contoso.com", sim.mint_token(roles=(FORCE,)), force=force)
    assert (status, answer["error"]["code"]) == (409, "identity-unbound")
    assert removals(sim) == 0
    [row] = audit()
    assert [n["code"] for n in row["notes"]] == ["user-not-in-directory"]
    status, answer = call(handlers, "user_status", route={"upn": "ghost@contoso.com"}, token=sim.mint_token())
    assert (status, answer["directory"], [n["code"] for n in answer["notes"]]) == (200, None, ["user-not-in-directory"])


def test_a_caller_retrying_an_unblock_whose_answer_it_missed_gets_409_and_no_second_remove(
    handlers: dict[str, Callable[..., Any]], configure: Any, sim: Simulator, audit: Audit
) -> None:
    # Exchange accepted the first Remove but the list still shows alice (Remove takes a while to land): exactly
    # what a caller whose request timed out sees when it tries again.
    sim.add_blocked_sender({**blocked("alice@contoso.com"), "x-removalDelaySeconds": 600})
    assert unblock(handlers, "alice@contoso.com", sim.mint_token())[0] == 200
    status, answer = unblock(handlers, "alice@contoso.com", sim.mint_token())
    assert (status, answer["error"]["code"]) == (409, "manual:already-started")
    assert answer["error"]["unblock"]["status"] == "done"
    assert "force" in answer["error"]["message"]
    assert removals(sim) == 1
    assert [r["decision"] for r in audit()] == ["unblock", "ignore"]
    # The SOC may send it again on purpose: force, with its own role, recorded.
    status, answer = unblock(handlers, "alice@contoso.com", sim.mint_token(roles=(FORCE,)), force=True)
    assert status == 200, answer
    assert removals(sim) == 2


@pytest.mark.parametrize("force", [False, True])
def test_an_unblock_whose_answer_is_not_recorded_yet_is_never_sent_again_even_with_force(
    handlers: dict[str, Callable[..., Any]],
    configure: Any,
    sim: Simulator,
    azurite: Azurite,
    table_prefix: str,
    force: bool,
) -> None:
    from restricted_sender.adapters.tables import TableStore
    from restricted_sender.model import UnblockEntry, UnblockKind, UnblockStatus

    async def started_elsewhere() -> None:  # another request's intent record: Remove is in flight
        store = TableStore.from_connection_string(azurite.connection_string, prefix=table_prefix)
        try:
            at = datetime(2026, 11, 27, 8, 30, tzinfo=UTC)  # after alice's block was created
            entry = UnblockEntry("alice@contoso.com", at, UnblockKind.MANUAL, "earlier", UnblockStatus.PENDING)
            await store.record_unblock(entry)
        finally:
            await store.close()

    asyncio.run(started_elsewhere())
    status, answer = unblock(handlers, "alice@contoso.com", sim.mint_token(roles=(FORCE,)), force=force)
    assert (status, answer["error"]["code"], answer["error"]["unblock"]["status"]) == (
        409,
        "manual:already-started",
        "pending",
    )
    assert "force" not in answer["error"]["message"]
    assert removals(sim) == 0


def test_an_unblock_of_an_earlier_block_does_not_stop_unblocking_a_new_one(
    handlers: dict[str, Callable[..., Any]], app_runtime: Callable[..., dict[str, str]], sim: Simulator
) -> None:
    app_runtime(sim, POLICY_YAML=POLICY + "guards: {max_unblocks_per_user: {count: 2, days: 7}}\n")
    status, first = unblock(handlers, "alice@contoso.com", sim.mint_token())
    assert status == 200
    again = datetime.fromisoformat(first["record"]["at"]) + timedelta(minutes=5)  # restricted again after that unblock
    sim.add_blocked_sender(blocked("alice@contoso.com", created=again.isoformat().replace("+00:00", "Z")))
    status, answer = unblock(handlers, "alice@contoso.com", sim.mint_token())
    assert status == 200, answer
    assert removals(sim) == 2
