"""Verification of an unblock: the check schedule and the verdict are pure; the verifier runs them on fakes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from restricted_sender.core.policy import load_policy_text
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.core.verify import VerifyTask, check_at, judge
from restricted_sender.errors import TicketNotFiled
from restricted_sender.fakes import FakeExchange
from restricted_sender.testing import Fakes
from restricted_sender.timeutil import FixedClock, iso

UNBLOCKED = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CREATED = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
TASK = VerifyTask(
    event_id="e1",
    address="alice@contoso.com",
    restriction_created=CREATED,
    unblocked_at=UNBLOCKED,
    attempt=1,
    source="alerts_v2",
    alert_id="a1",
    correlation_id="rsr-abc",
)


def row(created: datetime = CREATED, address: str = "alice@contoso.com") -> BlockedSender:
    return BlockedSender.from_row(
        {"SenderAddress": address, "Reason": "OutboundSpamLast24Hours=120", "CreatedDatetime": iso(created)}
    )


def test_checks_back_off_from_verify_after_to_exactly_24_hours_after_the_unblock() -> None:
    times = [check_at(UNBLOCKED, attempt, HOUR) for attempt in range(1, 9)]
    assert [(t - UNBLOCKED) / HOUR if t else None for t in times] == [1, 2, 4, 8, 16, 24, None, None]


def test_a_short_verify_after_still_ends_at_24_hours() -> None:
    delays = []
    attempt = 1
    while (at := check_at(UNBLOCKED, attempt, timedelta(minutes=10))) is not None:
        delays.append(at - UNBLOCKED)
        attempt += 1
    assert delays[-1] == timedelta(hours=24)
    assert len(delays) == 9


def test_the_message_round_trips_and_a_foreign_message_is_refused() -> None:
    assert VerifyTask.from_message(TASK.to_message()) == TASK
    with pytest.raises(ValueError, match="verification message"):
        VerifyTask.from_message('{"schema": 1, "event_id": "x"}')


@pytest.mark.parametrize(
    ("rows", "after", "kind", "says"),
    [
        ([], HOUR, "verified", "off Restricted entities, checked 1 h 0 min after"),
        ([row(address="bob@contoso.com")], HOUR, "verified", "off Restricted entities"),
        ([row()], HOUR, "verify-pending", "still on Restricted entities 1 h 0 min after the unblock; next check"),
        ([row()], 24 * HOUR, "not-lifted", "still on Restricted entities 24 h 0 min after the unblock"),
        ([row(created=UNBLOCKED + HOUR)], 2 * HOUR, "not-lifted", "restricted again at 2026-11-27T10:00:00Z"),
    ],
    ids=["gone", "only someone else listed", "still there early", "still there after 24 h", "restricted again"],
)
def test_the_verdict(rows: list[BlockedSender], after: timedelta, kind: str, says: str) -> None:
    verdict = judge(TASK, rows, UNBLOCKED + after, HOUR)
    assert verdict.kind == kind
    assert says in verdict.reason.text
    assert verdict.reason.code == kind


def test_a_pending_check_names_the_next_one() -> None:
    verdict = judge(TASK, [row()], UNBLOCKED + HOUR, HOUR)
    assert verdict.next_check == UNBLOCKED + 2 * HOUR


class VerifyWorld:
    def __init__(self, rows: list[dict[str, object]], now: datetime, policy: str = "mode: enforce\n") -> None:
        fakes = Fakes(exchange=FakeExchange(rows))
        self.exchange, self.tickets, self.store = fakes.exchange, fakes.tickets, fakes.store
        self.queue, self.directory = fakes.verifications, fakes.directory
        bundle = fakes.wire(load_policy_text(policy), FixedClock(now), ticket_wait_seconds=0.2)
        self.verifier = bundle.verifier

    def verify(self, task: VerifyTask = TASK, attempt: int = 1) -> object:
        return asyncio.run(self.verifier.verify(task, attempt=attempt))


def blocked_row(created: datetime = CREATED) -> dict[str, object]:
    return {
        "SenderAddress": "alice@contoso.com",
        "Reason": "OutboundSpamLast24Hours=120",
        "CreatedDatetime": iso(created),
    }


def test_a_lifted_block_is_recorded_as_verified_and_nothing_more_is_scheduled() -> None:
    world = VerifyWorld([], UNBLOCKED + HOUR)
    record = world.verify()
    assert record is not None
    assert [r["reasons"][0]["code"] for r in world.store.audit_rows] == ["verified"]
    assert world.queue.scheduled == []
    assert world.tickets.created == []


def test_a_block_still_there_schedules_the_next_check_and_records_it() -> None:
    world = VerifyWorld([blocked_row()], UNBLOCKED + HOUR)
    world.verify()
    [(message, delay)] = world.queue.scheduled
    assert VerifyTask.from_message(message).attempt == 2
    assert delay == HOUR
    assert world.store.audit_rows[0]["reasons"][0]["code"] == "verify-pending"


def test_a_block_still_there_after_24_hours_opens_a_not_lifted_ticket() -> None:
    world = VerifyWorld([blocked_row()], UNBLOCKED + 24 * HOUR)
    world.verify(VerifyTask.from_message(TASK.to_message().replace('"attempt":1', '"attempt":6')))
    [content] = world.tickets.created
    assert content.correlation_id == "rsr-abc"  # the restriction we removed: one ticket per incident
    assert "not-lifted" in content.text
    [audit] = world.store.audit_rows
    assert audit["decision"] == "ticket"
    assert [a["kind"] for a in audit["actions"]] == ["verify", "ticket"]


def test_a_check_that_already_ran_is_not_run_again() -> None:
    world = VerifyWorld([blocked_row()], UNBLOCKED + HOUR)
    world.verify()
    assert world.verify() is None
    assert len(world.queue.scheduled) == 1
    assert len(world.store.audit_rows) == 1


def test_a_failing_ticket_system_fails_the_check_so_the_queue_retries_it() -> None:
    world = VerifyWorld([blocked_row(created=UNBLOCKED + HOUR)], UNBLOCKED + 2 * HOUR)
    from restricted_sender.errors import TransientServiceError

    world.tickets.fail_create = TransientServiceError("tickets", "HTTP 503")
    with pytest.raises(TicketNotFiled):
        world.verify(attempt=5)
    [audit] = world.store.audit_rows
    ticket = next(a for a in audit["actions"] if a["kind"] == "ticket")
    assert ticket["status"] == "failed"
    assert "poison queue" in ticket["detail"]
    world.tickets.fail_create = None
    world.verify(attempt=6)
    assert len(world.tickets.created) == 1


def test_report_only_records_the_verdict_but_opens_no_ticket() -> None:
    world = VerifyWorld([blocked_row()], UNBLOCKED + 24 * HOUR, policy="mode: report-only\n")
    world.verify(VerifyTask.from_message(TASK.to_message().replace('"attempt":1', '"attempt":6')))
    assert world.tickets.created == []
    assert world.store.audit_rows[0]["actions"][-1]["status"] == "skipped"


def test_a_delisted_audit_record_since_the_unblock_is_cited_by_the_verification() -> None:
    from restricted_sender.model import Source
    from restricted_sender.processing.pipeline import delisted_key

    world = VerifyWorld([], UNBLOCKED + HOUR)
    for record_id, at in (("before", UNBLOCKED - HOUR), ("after", UNBLOCKED + timedelta(minutes=20))):
        asyncio.run(world.store.add_report(delisted_key("alice@contoso.com", at), Source("o365", record_id, at)))
    world.verify()
    [row] = world.store.audit_rows
    assert [d["record_id"] for d in row["evidence"]["delisted"]] == ["after"]
    assert "Delisted record at" in row["actions"][0]["detail"]
