"""Intake and processor with the in-memory fakes: the orchestration around the pure decision."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from restricted_sender.core.policy import Policy, load_policy_text
from restricted_sender.errors import MalformedPayload, PolicyError, QueueUnavailable
from restricted_sender.fakes import (
    FakeDirectory,
    FakeExchange,
)
from restricted_sender.model import ActionStatus, DirectoryUser, RestrictionEvent, UnblockEntry, UnblockKind
from restricted_sender.testing import Fakes
from restricted_sender.timeutil import FixedClock, iso
from tests.conftest import alert_v2, blocked

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
POLICY = load_policy_text("mode: enforce\nallow: [{name: staff, domains: [contoso.com]}]\n")
ALICE_ID = "00000000-0000-4000-8000-000000000005"
ALICE = DirectoryUser(id=ALICE_ID, user_principal_name="alice@contoso.com", mail="alice@contoso.com",
                      account_enabled=True)  # fmt: skip


class CountingDirectory(FakeDirectory):
    """Records how many look-ups were in flight at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.most_in_flight = 0
        self.group_calls = 0

    async def _slow(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1

    async def user(self, key: str) -> DirectoryUser | None:
        await self._slow()
        return await super().user(key)

    async def member_groups(self, key: str, group_ids: Sequence[str]) -> frozenset[str]:
        self.group_calls += 1
        await self._slow()
        return await super().member_groups(key, group_ids)


class World:
    def __init__(self, rows: list[dict[str, Any]], users: list[DirectoryUser], policy: Policy | PolicyError = POLICY,
                 *, exchange: type[FakeExchange] = FakeExchange, directory: type[CountingDirectory] = CountingDirectory,
                 **options: Any) -> None:  # fmt: skip
        self.exchange = exchange(rows, **options)
        self.directory = directory(users)
        self.fakes = Fakes(exchange=self.exchange, directory=self.directory)
        self.tickets, self.store, self.verify = self.fakes.tickets, self.fakes.store, self.fakes.verifications
        self.queue = self.fakes.events
        self.clock = FixedClock(NOW)
        bundle = self.fakes.wire(policy, self.clock)
        self.intake = bundle.expander.intake
        self.processor = bundle.processor

    def restart(self, policy: Policy | PolicyError) -> None:
        """A new instance with another policy, on the same tenant and store."""
        self.processor = self.fakes.wire(policy, self.clock).processor

    def run(self, *payloads: dict[str, Any]) -> list[Any]:
        for payload in payloads:
            self.intake.accept(json.dumps(payload).encode())

        async def drain() -> list[Any]:
            return [await self.processor.process(RestrictionEvent.from_message(m)) for m in self.queue.drain()]

        return asyncio.run(drain())


def test_intake_queues_one_event_per_user_even_when_an_alert_names_a_user_twice() -> None:
    world = World([], [])
    result = world.intake.accept(json.dumps(alert_v2("alice@contoso.com", "ALICE@contoso.com", "bob@x.com")).encode())
    assert [e.user.key for e in result.accepted] == ["alice@contoso.com", "bob@x.com"]
    assert len(world.queue.messages) == 2


def test_intake_logs_each_ignored_alert_as_a_decision_record(caplog: pytest.LogCaptureFixture) -> None:
    world = World([], [])
    with caplog.at_level(logging.INFO, logger="restricted_sender.decision"):
        world.intake.accept(json.dumps(alert_v2("a@contoso.com", title="Mail flow issue")).encode())
    [line] = [r.getMessage() for r in caplog.records if r.name == "restricted_sender.decision"]
    record = json.loads(line)
    assert (record["decision"], record["reasons"][0]["code"]) == ("ignore", "not-target-alert")


def test_a_target_alert_without_any_user_is_ignored_loudly(caplog: pytest.LogCaptureFixture) -> None:
    world = World([], [])
    result = world.intake.accept(json.dumps(alert_v2()).encode())
    assert result.to_body()["ignored"][0]["reasons"][0]["code"] == "no-user-evidence"
    assert any(r.levelno == logging.WARNING and "names no user" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("failure", ["malformed", "queue down"])
def test_intake_queues_nothing_on_any_error(failure: str) -> None:
    world = World([], [])
    body = b"{" if failure == "malformed" else json.dumps(alert_v2("a@contoso.com")).encode()
    world.queue.available = failure != "queue down"
    with pytest.raises(MalformedPayload if failure == "malformed" else QueueUnavailable):
        world.intake.accept(body)
    assert world.queue.messages == []


def test_each_decision_is_one_structured_log_line_equal_to_the_audit_row_and_the_blocks_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World([blocked("alice@contoso.com")], [ALICE])
    with caplog.at_level(logging.INFO, logger="restricted_sender.decision"):
        [record] = world.run(alert_v2("alice@contoso.com"))
    [line] = [r.getMessage() for r in caplog.records if r.name == "restricted_sender.decision"]
    [row] = world.store.audit_rows
    logged = json.loads(line)
    block_time = {k: logged.pop(k) for k in ("restriction_at", "restriction_anchor")}
    assert logged == record.to_dict() == {k: v for k, v in row.items() if k not in ("evidence", "delivery_id")}
    restriction = row["evidence"]["restriction"]
    assert block_time == {"restriction_at": restriction["created"], "restriction_anchor": "created"}


def test_facts_are_gathered_concurrently_and_groups_only_when_the_policy_names_some() -> None:
    world = World([blocked("alice@contoso.com")], [ALICE])
    world.run(alert_v2("alice@contoso.com"))
    assert world.directory.group_calls == 0
    grouped = load_policy_text("mode: enforce\nallow: [{name: g, groups: [g1]}]\ndeny: {groups: [g2]}\n")
    world = World([blocked("alice@contoso.com")], [ALICE], policy=grouped)
    world.run(alert_v2("alice@contoso.com"))
    assert world.directory.group_calls == 1
    assert world.directory.most_in_flight == 2


def test_a_user_named_only_by_object_id_is_resolved_through_the_directory() -> None:
    world = World([blocked("alice@contoso.com")], [ALICE])
    alert = alert_v2()
    alert["evidence"] = [{"@odata.type": "#microsoft.graph.security.userEvidence",
                          "userAccount": {"azureAdUserId": "00000000-0000-4000-8000-000000000005"}}]  # fmt: skip
    [record] = world.run(alert)
    assert (record.user, record.decision.outcome.value) == ("alice@contoso.com", "unblock")
    assert world.exchange.removed == ["alice@contoso.com"]


def test_a_mailbox_restricted_under_its_smtp_address_is_found_from_its_upn() -> None:
    grace = DirectoryUser(id="g", user_principal_name="grace.h@contoso.onmicrosoft.com", mail="grace@contoso.com",
                          account_enabled=True)  # fmt: skip
    world = World([blocked("grace@contoso.com")], [grace])
    [record] = world.run(alert_v2("grace.h@contoso.onmicrosoft.com"))
    assert (record.user, record.decision.outcome.value) == ("grace@contoso.com", "unblock")


def test_an_unblock_is_counted_and_a_refused_one_is_not() -> None:
    bob = DirectoryUser(id="b", user_principal_name="bob@contoso.com", mail="bob@contoso.com", account_enabled=True)
    world = World(
        [blocked("alice@contoso.com"), blocked("bob@contoso.com")], [ALICE, bob], limit_reached=["bob@contoso.com"]
    )
    world.run(alert_v2("alice@contoso.com", "bob@contoso.com"))
    statuses = {user: entry.status for (user, _), entry in world.store.history.items()}
    assert statuses == {"alice@contoso.com": "done", "bob@contoso.com": "refused"}
    assert len(world.tickets.tickets) == 1


@pytest.mark.parametrize(
    ("status", "still_listed", "outcome", "codes", "unblock"),
    [
        # Crashed after writing its intent, before the answer: the list decides, Remove is never sent again.
        ("pending", True, "ticket", ("unblock-resumed", "unblock-uncertain"), "failed"),
        ("pending", False, "unblock", ("unblock-resumed",), "done"),
        # Exchange said yes and the process died before the audit row: the entry says so.
        ("done", True, "unblock", ("unblock-resumed",), "done"),
        # Exchange refused (the unblock limit) and the ticket failed: the redelivery tickets, never resends.
        ("refused", True, "ticket", ("unblock-failed",), None),
        # Throttled before the cmdlet ran: the retry sends it, and its own entry does not count against the budget.
        ("not-sent", True, "unblock", ("allow:staff",), "done"),
    ],
)
def test_a_retried_event_that_finds_its_own_unblock_entry_never_sends_remove_twice(
    status: str, still_listed: bool, outcome: str, codes: tuple[str, ...], unblock: str | None
) -> None:
    world = World([blocked("alice@contoso.com")] if still_listed else [], [ALICE])
    world.intake.accept(json.dumps(alert_v2("alice@contoso.com")).encode())
    [message] = world.queue.drain()
    event = RestrictionEvent.from_message(message)
    said = "Exchange said: you have exceeded the unblock limit" if status == "refused" else ""
    entry = UnblockEntry(
        "alice@contoso.com", NOW - timedelta(minutes=5), UnblockKind.AUTO, event.event_id, status, said
    )
    asyncio.run(world.store.record_unblock(entry))
    asyncio.run(world.store.claim(event.claim_key, event.delivery_id, NOW - timedelta(minutes=5)))
    record = asyncio.run(world.processor.process(event))
    assert (record.decision.outcome.value, record.decision.codes) == (outcome, codes)
    assert world.exchange.removed == (["alice@contoso.com"] if status == "not-sent" else [])
    assert record.status_of("unblock") == (None if unblock is None else ActionStatus(unblock))
    if status == "refused":
        assert "you have exceeded the unblock limit" in record.decision.reasons[-1].text


@pytest.mark.parametrize(("mode", "tickets"), [("enforce", 1), ("report-only", 0)])
def test_an_invalid_policy_never_unblocks_and_tickets_only_when_it_asked_to_enforce(mode: str, tickets: int) -> None:
    broken = PolicyError(["allow[0]: rule 'x' names no users, domains or groups"], mode=mode)
    world = World([blocked("alice@contoso.com")], [ALICE], policy=broken)
    [record] = world.run(alert_v2("alice@contoso.com"))
    assert (record.decision.codes, record.mode) == (("policy-invalid",), mode)
    assert world.exchange.removed == []
    assert len(world.tickets.tickets) == tickets


def test_the_ticket_carries_the_record_and_the_evidence() -> None:
    world = World([blocked("bob@fabrikam.com")], [])
    world.run(alert_v2("bob@fabrikam.com"))
    [(correlation, body)] = world.tickets.tickets.items()
    assert correlation.startswith("rsr-")
    assert [r["code"] for r in body["record"]["reasons"]] == ["identity-unbound"]
    assert body["evidence"]["restriction"]["kind"] == "spam"
    assert body["evidence"]["links"]["restricted_entities"] == "https://security.microsoft.com/restrictedentities"
    [note] = body["record"]["notes"]
    assert note == {
        "code": "user-not-in-directory",
        "text": "no directory user owns bob@fabrikam.com: account state, groups, rules and risk unknown",
    }


def test_a_block_lifted_before_the_unblock_ran_spends_nothing() -> None:
    class LiftedMeanwhile(FakeExchange):
        async def remove_blocked_sender(self, address: str) -> tuple[str, ...]:
            self.rows.clear()
            return await super().remove_blocked_sender(address)

    world = World([blocked("alice@contoso.com")], [ALICE], exchange=LiftedMeanwhile)
    [record] = world.run(alert_v2("alice@contoso.com"))
    assert record.decision.outcome.value == "unblock"
    assert [(a.kind, a.status.value) for a in record.actions] == [("unblock", "skipped")]
    assert [e.status for e in world.store.history.values()] == ["not-needed"]
    assert world.tickets.tickets == {}


def test_risk_is_not_asked_for_when_max_risk_level_lets_every_level_through() -> None:
    class NoRiskAsked(CountingDirectory):
        async def risk_level(self, object_id: str) -> str | None:
            raise AssertionError("risk was fetched although the policy does not need it")

    policy = load_policy_text(
        "mode: enforce\nallow: [{name: s, domains: [contoso.com]}]\nguards: {max_risk_level: high}\n"
    )
    world = World([blocked("alice@contoso.com")], [ALICE], policy=policy, directory=NoRiskAsked)
    [record] = world.run(
        alert_v2("alice@contoso.com", object_ids={"alice@contoso.com": "00000000-0000-4000-8000-000000000005"})
    )
    assert record.decision.outcome.value == "unblock"


def without_times(address: str, **times: str) -> dict[str, Any]:
    row = blocked(address)
    del row["CreatedDatetime"], row["ChangedDatetime"]
    return {**row, **times}


def test_a_row_without_a_creation_time_is_keyed_by_its_change_time_and_the_evidence_says_so() -> None:
    world = World([without_times("alice@contoso.com", ChangedDatetime="2026-11-27T09:00:00Z")], [ALICE])
    [record] = world.run(alert_v2("alice@contoso.com"))
    assert record.evidence["restriction"]["anchor"] == "changed"
    assert any(key.endswith("alice@contoso.com|changed:2026-11-27T09:00:00Z") for key in world.store.claims)


def test_blocks_without_any_time_are_told_apart_by_when_they_were_first_seen() -> None:
    world = World([without_times("alice@contoso.com")], [ALICE])
    [first] = world.run(alert_v2("alice@contoso.com", alert_id="a1"))
    assert (first.decision.outcome.value, first.evidence["restriction"]["anchor"]) == ("unblock", "first-seen")
    # Restricted again a day later, again without times: a restriction of its own, decided again.
    world.exchange.rows = [without_times("alice@contoso.com")]
    world.clock.advance(timedelta(days=1))
    [second] = world.run(alert_v2("alice@contoso.com", alert_id="a2"))
    assert second.decision.codes[0] != "duplicate"
    assert second.evidence["restriction"]["first_seen"] == iso(NOW + timedelta(days=1))
    assert first.evidence["restriction"]["first_seen"] == iso(NOW)


def test_two_reports_of_one_block_without_times_share_its_first_seen_key() -> None:
    world = World([without_times("alice@contoso.com")], [ALICE], limit_reached=["alice@contoso.com"])
    records = world.run(alert_v2("alice@contoso.com", alert_id="a1"), alert_v2("alice@contoso.com", alert_id="a2"))
    assert [r.decision.codes[0] for r in records][1] == "duplicate"
    assert world.exchange.removed == ["alice@contoso.com"]
