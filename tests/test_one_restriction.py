"""One restriction (user + the block's CreatedDatetime) is decided and acted on once, whatever reports it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from restricted_sender.core.policy import load_policy_text
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.errors import StillDeciding
from restricted_sender.model import (
    SOURCE_DEFENDER,
    SOURCE_O365,
    SOURCE_POLL,
    SOURCE_SENTINEL,
    SOURCE_SWEEP,
    ActionStatus,
    AlertReport,
    DecisionRecord,
    RestrictionEvent,
    UserRef,
)
from restricted_sender.processing.pipeline import restriction_claim_key
from tests.conftest import blocked
from tests.test_pipeline import ALICE, NOW, World
from tests.test_pipeline import POLICY as POLICY_ENFORCE

LIMIT = "EmailSendingLimitExceeded;InternalRecipientCountToday=4;ExternalRecipientCountToday=396"
TARGET = "User restricted from sending email"
ROW = blocked("alice@contoso.com")
TICKETING = load_policy_text("mode: enforce\nallow: []\n")
FOUR = (SOURCE_SENTINEL, SOURCE_O365, SOURCE_DEFENDER, SOURCE_POLL)


def event(source: str, *, title: str = TARGET, direct: bool = False) -> RestrictionEvent:
    user = UserRef(address="alice@contoso.com")
    report = AlertReport(source, f"{source}-alert", title, (user,), direct=direct)
    return RestrictionEvent.for_alert(report, user, delivery_id=f"d-{source}", received_at=NOW)


def run_together(world: World, *events: RestrictionEvent) -> list[DecisionRecord]:
    async def main() -> list[DecisionRecord]:
        return list(await asyncio.gather(*(world.processor.process(e) for e in events)))

    return asyncio.run(main())


def deciders(records: list[DecisionRecord]) -> list[DecisionRecord]:
    return [r for r in records if "duplicate" not in r.decision.codes]


def stored_sources(world: World) -> set[str]:
    key = restriction_claim_key(BlockedSender.from_row(ROW), "enforce")
    return {s.kind for s in world.store.report_rows[key].values()}


def test_four_sources_at_the_same_moment_unblock_once_and_every_record_says_who_decided() -> None:
    world = World([ROW], [ALICE])
    records = run_together(world, *(event(s) for s in FOUR))
    [winner] = deciders(records)
    assert winner.decision.outcome.value == "unblock"
    assert world.exchange.removed == ["alice@contoso.com"]
    assert len(world.verify.scheduled) == 1
    for other in records:
        if other is not winner:
            assert other.decision.outcome.value == "ignore"
            assert other.actions == ()
            assert winner.event_id in other.decision.reasons[0].text
    assert stored_sources(world) == set(FOUR)
    assert {s.kind for s in records[-1].sources} == set(FOUR)


def test_four_sources_of_a_ticketed_restriction_open_one_ticket_and_add_each_other_report_to_it() -> None:
    world = World([ROW], [ALICE], policy=TICKETING)
    records = run_together(world, *(event(s) for s in FOUR))
    [winner] = deciders(records)
    assert winner.decision.outcome.value == "ticket"
    assert len(world.tickets.created) == 1
    assert len(world.tickets.updates) == 3
    assert all(r.status_of("ticket") is not None for r in records)


def test_a_later_report_of_a_ticketed_restriction_lists_both_sources_and_notes_the_ticket_once() -> None:
    world = World([ROW], [ALICE], policy=TICKETING)
    [first] = run_together(world, event(SOURCE_O365))
    [later] = run_together(world, event(SOURCE_SENTINEL))
    again = run_together(world, event(SOURCE_SENTINEL))  # the same alert redelivered: the event's own claim stops it
    assert "duplicate" in later.decision.codes
    assert first.event_id in later.decision.reasons[0].text
    assert [s.kind for s in later.sources] == [SOURCE_O365, SOURCE_SENTINEL]
    assert (len(world.tickets.created), len(world.tickets.updates)) == (1, 1)
    assert again[0].actions == ()


def test_an_alert_the_policy_does_not_target_never_claims_the_restriction() -> None:
    world = World([ROW], [ALICE])
    [other] = run_together(world, event(SOURCE_SENTINEL, title="Suspicious email sending patterns detected"))
    [target] = run_together(world, event(SOURCE_POLL))
    assert other.decision.codes == ("not-target-alert",)
    assert target.decision.outcome.value == "unblock"


@pytest.mark.parametrize("direct", [True, False], ids=["the-restricted-list-itself", "an-alert-named-otherwise"])
def test_a_direct_report_needs_no_alert_name_but_an_alert_does(direct: bool) -> None:
    world = World([ROW], [ALICE])
    [record] = run_together(world, event(SOURCE_SWEEP, title="Restricted entities", direct=direct))
    assert record.decision.outcome.value == ("unblock" if direct else "ignore")


def test_a_report_while_another_event_still_decides_fails_unrecorded_and_its_retry_records_the_decision() -> None:
    world = World([ROW], [ALICE])
    world.processor.decided_wait = 0.05
    key = restriction_claim_key(BlockedSender.from_row(ROW), "enforce")
    asyncio.run(world.store.claim(key, "evt-elsewhere", NOW))
    report = event(SOURCE_DEFENDER)
    with pytest.raises(StillDeciding, match="evt-elsewhere"):
        run_together(world, report)
    # Nothing recorded: had it completed "in progress", nothing would act if evt-elsewhere were then poisoned.
    assert (world.store.audit_rows, world.exchange.removed) == ([], [])
    assert "defender" in stored_sources(world)  # the decider's record and ticket still name this report
    asyncio.run(world.store.complete(key, "evt-elsewhere", "unblock", NOW))
    record = asyncio.run(world.processor.process(report, attempt=2))
    assert record.decision.codes == ("duplicate",)
    assert "by event evt-elsewhere (unblock)" in record.decision.reasons[0].text
    assert world.store.audit_rows[-1]["event_id"] == record.event_id


def test_a_decider_that_crashed_is_taken_over_after_its_lease(monkeypatch: Any) -> None:
    world = World([ROW], [ALICE])
    key = restriction_claim_key(BlockedSender.from_row(ROW), "enforce")
    from restricted_sender.core.ledger import CLAIM_LEASE

    asyncio.run(world.store.claim(key, "evt-crashed", NOW - CLAIM_LEASE * 2))
    [record] = run_together(world, event(SOURCE_SWEEP, direct=True))
    assert record.decision.outcome.value == "unblock"
    assert world.exchange.removed == ["alice@contoso.com"]


def test_what_report_only_decided_is_decided_again_for_real_once_the_policy_says_enforce() -> None:
    world = World(
        [ROW], [ALICE], policy=load_policy_text("mode: report-only\nallow: [{name: s, domains: [contoso.com]}]\n")
    )
    [rehearsal] = run_together(world, event(SOURCE_SWEEP, direct=True))
    world.restart(POLICY_ENFORCE)  # the admin switched the policy to enforce
    [real] = run_together(world, event(SOURCE_POLL))
    assert rehearsal.status_of("unblock") is ActionStatus.SKIPPED
    assert real.decision.outcome.value == "unblock"
    assert world.exchange.removed == ["alice@contoso.com"]


def test_a_wait_whose_block_should_have_lifted_but_did_not_is_decided_again() -> None:
    limit = blocked("alice@contoso.com", reason=LIMIT, created="2026-11-27T07:00:00Z")
    world = World([limit], [ALICE])
    [waited] = run_together(world, event(SOURCE_SWEEP, direct=True))
    [soon] = run_together(world, event(SOURCE_POLL))  # the same day: still the wait's restriction
    world.clock.advance(timedelta(days=2))
    [again] = run_together(world, event(SOURCE_O365))
    assert waited.decision.outcome.value == "wait"
    assert "duplicate" in soon.decision.codes
    assert (again.decision.outcome.value, again.decision.codes[-1]) == ("ticket", "release-overdue")


def test_the_deciding_events_retry_after_a_crash_returns_its_own_record_and_adds_none() -> None:
    world = World([ROW], [ALICE])
    first = event(SOURCE_POLL)
    [record] = run_together(world, first)
    claim = world.store.claims[first.claim_key]
    claim.update(state="claimed", claimed_at=NOW)  # as if it crashed after its audit row, before completing the claim
    [retry] = run_together(world, first)
    assert retry.event_id == record.event_id
    assert retry.decision.outcome.value == "unblock"
    assert len(world.store.audit_rows) == 1
    assert world.exchange.removed == ["alice@contoso.com"]
