"""The Exchange admin adapter over real HTTP (httpx) against the simulator, with the real identity credential."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from azure.identity.aio import ManagedIdentityCredential

from restricted_sender.adapters.exchange import ExchangeAdmin
from restricted_sender.adapters.identity import EXCHANGE_SCOPE, bearer
from restricted_sender.core.restriction import BlockedSender, BlockKind
from restricted_sender.errors import (
    OutcomeUnknown,
    SenderNotBlocked,
    ServiceRefused,
    TransientServiceError,
    UnblockLimitReached,
)
from restricted_sender.retry import RetryPolicy
from simulator import Simulator
from tests.conftest import TENANT_ID, blocked, tenant, user

T = TypeVar("T")
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=1.0)
LIMIT = (
    "EmailSendingLimitExceeded;InternalRecipientCountToday=4;ExternalRecipientCountToday=396;"
    "ExceedingLimitType=External"
)


def state(**extra: Any) -> dict[str, Any]:
    return tenant(
        [user("alice"), user("bob", **{"x-unblockLimitReached": True}), user("carol")],
        [
            blocked("alice@contoso.com"),
            blocked("bob@contoso.com"),
            blocked("carol@contoso.com", reason=LIMIT, temporary=True),
        ],
        **extra,
    )


@pytest.fixture
def run(
    simulator_factory: Callable[[dict[str, Any]], Simulator], identity_env: Callable[[Simulator], None]
) -> Callable[..., Any]:
    """Run ``scenario(exchange, sim)`` in a fresh loop with a real credential and httpx client, then close them."""

    def go(
        scenario: Callable[[ExchangeAdmin, Simulator], Awaitable[T]],
        *,
        tenant_state: dict[str, Any] | None = None,
        retry: RetryPolicy = FAST,
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> tuple[T, Simulator]:
        sim = simulator_factory(tenant_state or state())
        identity_env(sim)

        async def main() -> T:
            async with ManagedIdentityCredential() as credential, httpx.AsyncClient() as http:
                exchange = ExchangeAdmin(
                    http,
                    tenant_id=TENANT_ID,
                    token=bearer(credential, EXCHANGE_SCOPE),
                    base_url=sim.url,
                    retry=retry,
                    timeout=timeout,
                    **({"sleep": sleep} if sleep else {}),
                )
                return await scenario(exchange, sim)

        return asyncio.run(main()), sim

    return go


def cmdlet_calls(sim: Simulator, cmdlet: str) -> int:
    return sum(1 for r in sim.requests if r["route"] == f"exchange.{cmdlet}")


def test_reads_every_restricted_sender_with_parsed_reasons(run: Callable[..., Any]) -> None:
    rows, _ = run(lambda ex, sim: ex.blocked_senders())
    assert [r.address for r in rows] == ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"]
    assert rows[0].kind is BlockKind.SPAM
    assert rows[0].reason.get("OutboundSpamPercent") == "88"
    assert rows[2].kind is BlockKind.SENDING_LIMIT
    assert rows[2].temporary is True


def test_reads_one_sender_by_address_ignoring_case(run: Callable[..., Any]) -> None:
    rows, sim = run(lambda ex, sim: ex.blocked_senders("ALICE@Contoso.com"))
    assert [r.address for r in rows] == ["alice@contoso.com"]
    body = next(r["body"] for r in sim.requests if r["route"] == "exchange.Get-BlockedSenderAddress")
    assert body == {
        "CmdletInput": {"CmdletName": "Get-BlockedSenderAddress", "Parameters": {"SenderAddress": "ALICE@Contoso.com"}}
    }


def test_follows_next_links_re_posting_the_same_body(run: Callable[..., Any]) -> None:
    many = tenant([], [blocked(f"user{i}@contoso.com") for i in range(7)], **{"x-exchangePageSize": 3})
    rows, sim = run(lambda ex, sim: ex.blocked_senders(), tenant_state=many)
    assert len(rows) == 7
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 3
    bodies = {str(r["body"]) for r in sim.requests if r["route"] == "exchange.Get-BlockedSenderAddress"}
    assert len(bodies) == 1


def test_one_token_is_fetched_and_reused_across_calls(run: Callable[..., Any]) -> None:
    async def three_calls(ex: ExchangeAdmin, sim: Simulator) -> None:
        for _ in range(3):
            await ex.blocked_senders("alice@contoso.com")

    _, sim = run(three_calls)
    token_requests = [r for r in sim.requests if r["route"] == "identity.token"]
    assert len(token_requests) == 1
    assert token_requests[0]["query"]["resource"] == EXCHANGE_SCOPE.removesuffix("/.default")


def test_removes_a_restricted_sender(run: Callable[..., Any]) -> None:
    async def remove(ex: ExchangeAdmin, sim: Simulator) -> list[str]:
        await ex.remove_blocked_sender("alice@contoso.com")
        return [r.address for r in await ex.blocked_senders()]

    remaining, _ = run(remove)
    assert "alice@contoso.com" not in remaining


def test_the_unblock_limit_is_its_own_error_and_never_retried(run: Callable[..., Any]) -> None:
    async def remove(ex: ExchangeAdmin, sim: Simulator) -> BaseException:
        with pytest.raises(UnblockLimitReached) as caught:
            await ex.remove_blocked_sender("bob@contoso.com")
        return caught.value

    error, sim = run(remove)
    assert "unblock limit" in error.message
    assert cmdlet_calls(sim, "Remove-BlockedSenderAddress") == 1


def test_removing_an_address_that_is_not_blocked_says_so_and_is_not_retried(run: Callable[..., Any]) -> None:
    async def remove(ex: ExchangeAdmin, sim: Simulator) -> None:
        with pytest.raises(SenderNotBlocked) as caught:
            await ex.remove_blocked_sender("nobody@contoso.com")
        assert "couldn't be found" in caught.value.message

    _, sim = run(remove)
    assert cmdlet_calls(sim, "Remove-BlockedSenderAddress") == 1


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_and_outages_are_retried_honouring_retry_after(run: Callable[..., Any], status: int) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> float:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=status, retry_after=0.3, times=1)
        started = time.monotonic()
        await ex.blocked_senders("alice@contoso.com")
        return time.monotonic() - started

    elapsed, sim = run(scenario, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=5))
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 2
    assert elapsed >= 0.3


def test_retries_are_bounded(run: Callable[..., Any]) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> None:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=503, times=None)
        with pytest.raises(TransientServiceError) as caught:
            await ex.blocked_senders()
        assert caught.value.http_status == 503

    _, sim = run(scenario)
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == FAST.attempts


def test_a_retry_after_longer_than_the_budget_is_left_to_the_queue(run: Callable[..., Any]) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> None:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=429, retry_after=120, times=1)
        with pytest.raises(TransientServiceError) as caught:
            await ex.blocked_senders()
        assert caught.value.retry_after == 120

    _, sim = run(scenario)
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 1


@pytest.mark.parametrize("kind", ["timeout", "malformed"])
def test_timeouts_and_malformed_answers_are_transient(run: Callable[..., Any], kind: str) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> None:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", kind=kind, seconds=1.0, times=None)
        with pytest.raises(TransientServiceError):
            await ex.blocked_senders()

    run(scenario, retry=RetryPolicy(attempts=2, base_delay=0.01), timeout=0.3)


def test_a_rejected_token_is_refused_with_a_hint_about_permissions(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
) -> None:
    sim = simulator_factory(state())

    async def main() -> None:
        async def wrong_audience(*, fresh: bool = False) -> str:
            return sim.issue_token("https://graph.microsoft.com")

        async with httpx.AsyncClient() as http:
            ex = ExchangeAdmin(http, tenant_id=TENANT_ID, token=wrong_audience, base_url=sim.url, retry=FAST)
            with pytest.raises(ServiceRefused) as caught:
                await ex.blocked_senders()
            assert caught.value.http_status == 401
            assert "Exchange.ManageAsApp" in caught.value.message

    asyncio.run(main())


# -- the endpoint as it really answers: every error shape, both field casings ------------------------------------

NOT_FOUND_DETAIL = (
    "Ex6F9304|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't be "
    "performed because object 'alice@contoso.com' couldn't be found on 'AM0PR01A001DC01.EURPRD01.PROD.OUTLOOK.COM'."
)


def cmdlet_error(code: str, detail: str) -> dict[str, Any]:
    """The body of a failing cmdlet, as the endpoint answers it (see simulator/README.md)."""
    return {
        "error": {
            "code": code,
            "message": "Error executing cmdlet",
            "details": [{"message": detail}],
            "innererror": {"type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"},
        }
    }


LEGACY_NOT_FOUND = {
    "error": {
        "code": "BadRequest",
        "message": "|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't "
        "be performed because object 'alice@contoso.com' couldn't be found.",
    }
}


class Sleeps:
    """The adapter's waits, recorded instead of slept: no test waits on the wall clock."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.mark.parametrize(
    ("status", "body", "found"),
    [
        (404, cmdlet_error("NotFound", NOT_FOUND_DETAIL), []),
        (500, cmdlet_error("InternalServerError", NOT_FOUND_DETAIL), []),
        (400, LEGACY_NOT_FOUND, []),
        (200, {"value": [], "@adminapi.errors": [NOT_FOUND_DETAIL]}, []),
    ],
    ids=["404-details", "500-details", "400-legacy-message", "200-adminapi-errors"],
)
def test_not_found_is_an_answer_whatever_status_carries_it(
    run: Callable[..., Any], status: int, body: dict[str, Any], found: list[str]
) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> list[str]:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=status, body=body)
        return [r.address for r in await ex.blocked_senders("alice@contoso.com")]

    rows, sim = run(scenario)
    assert rows == found
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 1


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "calls", "outcome"),
    [
        # A cmdlet exception decides before the status: a 500 that carries one is a refusal, never retried.
        (500, cmdlet_error("InternalServerError", "Ex1C2D3E|Microsoft.Exchange.Data.DataValidationException|bad"),
         None, 1, ServiceRefused),
        # The transient exceptions the module names are retried, whatever the status.
        (500, cmdlet_error("InternalServerError", "Ex0A1B2C|Microsoft.Exchange.Data.DCOverloadedException|busy"),
         None, 2, "ok"),
        (500, cmdlet_error("InternalServerError", "Ex3D4E5F|Microsoft.Exchange.Data.StorageTransientException|x"),
         None, 2, "ok"),
        # A plain 500 is not retried here: the queue retries the event later.
        (500, {"error": {"code": "InternalServerError", "message": "Something went wrong"}}, None, 1,
         TransientServiceError),
        (503, None, None, 2, "ok"),
        (504, None, None, 2, "ok"),
        (429, None, 0.25, 2, "ok"),
        (403, b"", None, 1, ServiceRefused),
        (403, "<html>Forbidden</html>", None, 1, ServiceRefused),
        (400, {"error": {"code": "BadRequest", "message": "The request is invalid."}}, None, 1, ServiceRefused),
    ],
    ids=["500-cmdlet-refusal", "500-DCOverloaded", "500-StorageTransient", "500-plain", "503", "504",
         "429-fractional", "403-empty", "403-not-json", "400-plain"],
)  # fmt: skip
def test_reads_retry_exactly_what_the_module_retries(
    run: Callable[..., Any], status: int, body: Any, retry_after: float | None, calls: int, outcome: Any
) -> None:
    sleeps = Sleeps()

    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> object:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=status, body=body, retry_after=retry_after)
        try:
            return [r.address for r in await ex.blocked_senders("alice@contoso.com")]
        except Exception as error:
            return error

    result, sim = run(scenario, sleep=sleeps)
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == calls
    if outcome == "ok":
        assert result == ["alice@contoso.com"]
    else:
        assert type(result) is outcome
    if retry_after is not None:
        assert sleeps.delays == [retry_after]


def test_a_forbidden_answer_without_a_body_names_the_missing_role(run: Callable[..., Any]) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> ServiceRefused:
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=403, body=b"")
        with pytest.raises(ServiceRefused) as caught:
            await ex.blocked_senders()
        return caught.value

    error, _ = run(scenario)
    assert error.http_status == 403
    assert "Exchange.ManageAsApp" in error.message
    assert "scripts/grant-permissions" in error.message


def test_one_401_is_retried_with_a_fresh_token(run: Callable[..., Any]) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> list[str]:
        await ex.blocked_senders("alice@contoso.com")  # a token is cached now
        sim.inject_fault("exchange.Get-BlockedSenderAddress", status=401)
        return [r.address for r in await ex.blocked_senders("alice@contoso.com")]

    rows, sim = run(scenario)
    assert rows == ["alice@contoso.com"]
    assert cmdlet_calls(sim, "Get-BlockedSenderAddress") == 3
    assert len([r for r in sim.requests if r["route"] == "identity.token"]) == 2


@pytest.mark.parametrize(
    ("fault", "raised", "removed"),
    [
        ({"kind": "timeout", "seconds": 1.0, "apply": True}, OutcomeUnknown, True),
        ({"kind": "reset"}, OutcomeUnknown, False),
        ({"status": 500, "body": cmdlet_error("InternalServerError",
                                              "Ex5E6F70|Microsoft.Exchange.Management.Tasks.TaskException|failed")},
         ServiceRefused, False),
        ({"status": 500, "body": {"error": {"code": "InternalServerError", "message": "oops"}}, "apply": True},
         OutcomeUnknown, True),
        ({"status": 503}, OutcomeUnknown, False),
        ({"status": 504, "apply": True}, OutcomeUnknown, True),
        ({"status": 200, "body": {"value": [], "@adminapi.errors": ["Ex1|Microsoft.Exchange.Foo.BarException|no"]}},
         OutcomeUnknown, False),
    ],
    ids=["timeout", "transport-error", "500-cmdlet-exception", "500-plain", "503-without-retry-after", "504",
         "200-adminapi-errors"],
)  # fmt: skip
def test_remove_is_sent_once_whatever_the_answer(
    run: Callable[..., Any], fault: dict[str, Any], raised: type[Exception], removed: bool
) -> None:
    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> BaseException:
        sim.inject_fault("exchange.Remove-BlockedSenderAddress", times=None, **fault)
        with pytest.raises(raised) as caught:
            await ex.remove_blocked_sender("alice@contoso.com")
        return caught.value

    error, sim = run(scenario, timeout=0.3)
    assert type(error) is raised
    assert cmdlet_calls(sim, "Remove-BlockedSenderAddress") == 1
    listed = "alice@contoso.com" in [r["SenderAddress"] for r in sim.blocked_senders]
    assert listed is not removed
    if isinstance(error, ServiceRefused):
        assert error.http_status == 500


@pytest.mark.parametrize("fault", [{"status": 429, "retry_after": 0.5}, {"status": 503, "retry_after": 0.75}])
def test_remove_is_resent_only_when_the_answer_proves_it_never_ran(
    run: Callable[..., Any], fault: dict[str, Any]
) -> None:
    sleeps = Sleeps()

    async def scenario(ex: ExchangeAdmin, sim: Simulator) -> tuple[str, ...]:
        sim.inject_fault("exchange.Remove-BlockedSenderAddress", times=1, **fault)
        return await ex.remove_blocked_sender("alice@contoso.com")

    warnings, sim = run(scenario, sleep=sleeps)
    assert warnings == ()
    assert cmdlet_calls(sim, "Remove-BlockedSenderAddress") == 2
    assert sleeps.delays == [fault["retry_after"]]


def test_remove_returns_the_services_warnings(run: Callable[..., Any]) -> None:
    doc = state()
    doc["blockedSenders"][0]["x-removeWarnings"] = ["The sender will be able to send mail within an hour."]
    warnings, _ = run(lambda ex, sim: ex.remove_blocked_sender("alice@contoso.com"), tenant_state=doc)
    assert warnings == ("The sender will be able to send mail within an hour.",)


def test_the_unblock_limit_keeps_the_services_exact_words(run: Callable[..., Any]) -> None:
    async def remove(ex: ExchangeAdmin, sim: Simulator) -> str:
        with pytest.raises(UnblockLimitReached) as caught:
            await ex.remove_blocked_sender("bob@contoso.com")
        return caught.value.message

    message, _ = run(remove)
    assert message == (
        "exchange: ValidationException: You have exceeded the unblock limit for this user. "
        "Contact Microsoft Support to unblock the user."
    )


@pytest.mark.parametrize("casing", ["as-written", "DateTime", "camelCase"])
def test_rows_read_the_same_whatever_the_field_casing(run: Callable[..., Any], casing: str) -> None:
    rows, _ = run(lambda ex, sim: ex.blocked_senders(), tenant_state=state(**{"x-exchangeFieldCasing": casing}))
    assert [(r.address, r.kind, r.temporary, r.created, r.changed, r.restriction_key()) for r in rows] == [
        (r.address, r.kind, r.temporary, r.created, r.changed, r.restriction_key())
        for r in [BlockedSender.from_row(row) for row in state()["blockedSenders"]]
    ]


def test_a_forwarding_address_is_resolved_to_the_mail_contact_it_names(run: Callable[..., Any]) -> None:
    contact = {
        "Name": "Travel Desk", "Alias": "traveldesk", "RecipientType": "MailContact",
        "RecipientTypeDetails": "MailContact", "PrimarySmtpAddress": "traveldesk@contoso.com",
        "ExternalEmailAddress": "SMTP:m.travel@freemail.example",
    }  # fmt: skip
    doc = tenant(
        [user("alice", **{"x-mailbox": {"ForwardingAddress": "Travel Desk", "DeliverToMailboxAndForward": True}})],
        [blocked("alice@contoso.com")],
        recipients=[contact],
    )
    forwarding, sim = run(lambda ex, sim: ex.mailbox_forwarding("alice@contoso.com"), tenant_state=doc)
    assert forwarding is not None
    assert forwarding.target is not None
    assert (forwarding.target.recipient_type, forwarding.target.delivers_to) == (
        "MailContact",
        "m.travel@freemail.example",
    )
    assert forwarding.findings(frozenset({"contoso.com"})) == (
        "mailbox forwards to MailContact 'Travel Desk' (m.travel@freemail.example, outside the tenant)",
    )
    assert cmdlet_calls(sim, "Get-Recipient") == 1


def test_a_forwarding_address_that_cannot_be_resolved_fails_closed(run: Callable[..., Any]) -> None:
    doc = tenant(
        [user("alice", **{"x-mailbox": {"ForwardingAddress": "Gone Contact"}})], [blocked("alice@contoso.com")]
    )
    forwarding, _ = run(lambda ex, sim: ex.mailbox_forwarding("alice@contoso.com"), tenant_state=doc)
    assert forwarding is not None
    assert forwarding.unresolved
    assert "could not resolve" in forwarding.findings(frozenset({"contoso.com"}))[0]
