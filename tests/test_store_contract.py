"""One contract, two stores: the in-memory one (replay, demo, tests) and Azure Table Storage (on Azurite) behave alike.

No pytest-asyncio: each test runs its scenario with ``asyncio.run``, opening the store inside that loop and
closing it before the loop ends (the aio Table clients belong to the loop that made them).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

from restricted_sender.adapters.tables import (
    MAX_ENTRY_CHUNKS,
    MAX_RECORD_CHARS,
    TableStore,
    pack_entries,
    unpack_entries,
)
from restricted_sender.core.ledger import (
    CLAIM_LEASE,
    MAX_PENDING_CHARS,
    TICKET_LEASE,
    TICKET_NOTED_KEEP,
    noted_with,
    resolve_ticket,
)
from restricted_sender.core.policy import Budget
from restricted_sender.errors import TransientServiceError
from restricted_sender.fakes import MemoryStore
from restricted_sender.model import Source, TicketRef, UnblockEntry, UnblockKind
from restricted_sender.ports import (
    MAX_REPORTS,
    PENDING_TTL,
    BudgetRefusal,
    ClaimResult,
    ClaimState,
    Cursor,
    Store,
    TicketSlot,
)
from simulator.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, free_port

T = TypeVar("T")
OpenStore = Callable[[], Store]
Scenario = Callable[[Store], Awaitable[T]]

T0 = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
KEY = "3f9a0c1d2e4b5a6978c0d1e2f3a4b5c6"
ALICE = "alice@contoso.com"
BOB = "bob@contoso.com"
UNUSUAL_USERS = [  # guest UPNs carry #EXT#; Table keys may not hold / \ # ?
    "zoe_fabrikam.com#EXT#@contoso.onmicrosoft.com",
    "odd/name?x=1@contoso.com",
    "back\\slash%25@contoso.com",
    "o'brien@contoso.com",
]
NEW, RESUMED, DUPLICATE = ClaimResult.NEW, ClaimResult.RESUMED, ClaimResult.DUPLICATE


def run(open_store: OpenStore, scenario: Scenario[T]) -> T:
    async def main() -> T:
        store = open_store()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture(
    params=[
        "memory",
        pytest.param("tables", marks=pytest.mark.azurite),
    ]
)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """A factory of one store kind; call it inside the loop that will use the store."""
    kind: str = request.param
    if kind == "memory":
        return MemoryStore
    connection = request.getfixturevalue("azurite").connection_string
    prefix = request.getfixturevalue("table_prefix")
    return lambda: TableStore.from_connection_string(connection, prefix=prefix)


@pytest.fixture
def open_table_store(azurite: Azurite, table_prefix: str) -> OpenStore:
    return lambda: TableStore.from_connection_string(azurite.connection_string, prefix=table_prefix)


def claims(open_store: OpenStore, *steps: tuple[str, datetime]) -> list[ClaimResult]:
    """Claim ``KEY`` once per (delivery, now) step, in order, against one store."""

    async def scenario(store: Store) -> list[ClaimResult]:
        return [await store.claim(KEY, delivery, now) for delivery, now in steps]

    return run(open_store, scenario)


# Claims: exactly-once effects ------------------------------------------------------------------------------


def test_the_first_claim_of_an_event_is_new(open_store: OpenStore) -> None:
    assert claims(open_store, ("d1", T0)) == [NEW]


def test_the_same_delivery_claiming_again_resumes_as_a_queue_retry(open_store: OpenStore) -> None:
    assert claims(open_store, ("d1", T0), ("d1", T0 + timedelta(minutes=1))) == [NEW, RESUMED]


@pytest.mark.parametrize("later", [timedelta(0), CLAIM_LEASE], ids=["at-once", "at-the-lease-end"])
def test_another_delivery_is_a_duplicate_while_the_claim_is_live(open_store: OpenStore, later: timedelta) -> None:
    assert claims(open_store, ("d1", T0), ("d2", T0 + later)) == [NEW, DUPLICATE]


@pytest.mark.parametrize("delivery", ["d1", "d2"], ids=["the-owner", "another-delivery"])
@pytest.mark.parametrize("later", [timedelta(0), 2 * CLAIM_LEASE], ids=["at-once", "after-the-lease"])
def test_after_completion_every_delivery_is_a_duplicate(open_store: OpenStore, delivery: str, later: timedelta) -> None:
    async def scenario(store: Store) -> list[ClaimResult]:
        first = await store.claim(KEY, "d1", T0)
        await store.complete(KEY, "d1", "unblock", T0 + timedelta(seconds=5))
        return [first, await store.claim(KEY, delivery, T0 + later)]

    assert run(open_store, scenario) == [NEW, DUPLICATE]


def test_another_delivery_takes_over_when_the_lease_ran_out(open_store: OpenStore) -> None:
    expired = T0 + CLAIM_LEASE + timedelta(seconds=1)
    assert claims(open_store, ("d1", T0), ("d2", expired)) == [NEW, RESUMED]


def test_after_a_take_over_the_original_owner_is_a_duplicate(open_store: OpenStore) -> None:
    expired = T0 + CLAIM_LEASE + timedelta(seconds=1)
    after = expired + timedelta(seconds=1)
    steps = [("d1", T0), ("d2", expired), ("d1", after), ("d2", after)]  # the new owner may still retry
    assert claims(open_store, *steps) == [NEW, RESUMED, DUPLICATE, RESUMED]


def test_a_completed_take_over_is_a_duplicate_for_everyone(open_store: OpenStore) -> None:
    expired = T0 + CLAIM_LEASE + timedelta(seconds=1)

    async def scenario(store: Store) -> list[ClaimResult]:
        results = [await store.claim(KEY, "d1", T0), await store.claim(KEY, "d2", expired)]
        await store.complete(KEY, "d2", "ticket", expired)
        return [*results, *[await store.claim(KEY, d, expired + CLAIM_LEASE * 2) for d in ("d1", "d2", "d3")]]

    assert run(open_store, scenario) == [NEW, RESUMED, DUPLICATE, DUPLICATE, DUPLICATE]


def test_claims_of_different_events_are_independent(open_store: OpenStore) -> None:
    async def scenario(store: Store) -> list[ClaimResult]:
        return [await store.claim(key, "d1", T0) for key in ("event-a", "event-b", "event-a")]

    assert run(open_store, scenario) == [NEW, NEW, RESUMED]


# Unblock history: what the budget guard counts -----------------------------------------------------------


def unblock(user: str, event_id: str, at: datetime, status: str = "done") -> UnblockEntry:
    return UnblockEntry(user=user, at=at, kind=UnblockKind.AUTO, event_id=event_id, status=status)


def test_recording_an_unblock_again_replaces_it_and_never_counts_twice(open_store: OpenStore) -> None:
    async def scenario(store: Store) -> list[UnblockEntry]:
        await store.record_unblock(unblock(ALICE, "e1", T0, status="pending"))
        await store.record_unblock(unblock(ALICE.upper(), "e1", T0, status="pending"))  # a retry, any case
        await store.record_unblock(unblock(ALICE, "e1", T0 + timedelta(seconds=3), status="failed"))
        return list(await store.unblocks(ALICE, T0 - timedelta(days=1)))

    assert run(open_store, scenario) == [unblock(ALICE, "e1", T0 + timedelta(seconds=3), status="failed")]


def test_unblocks_match_the_user_in_any_case_and_come_sorted_by_time_since_the_given_instant(
    open_store: OpenStore,
) -> None:
    since = T0 - timedelta(days=7)
    recorded = [
        unblock(ALICE, "e3", T0),
        unblock(ALICE, "e1", since - timedelta(seconds=1)),  # too old
        unblock(ALICE, "e2", since),  # exactly at the boundary: counts
        unblock(ALICE, "e4", T0 - timedelta(hours=1)),
        unblock(BOB, "e5", T0 - timedelta(minutes=1)),  # someone else
    ]

    async def scenario(store: Store) -> list[UnblockEntry]:
        for entry in recorded:
            await store.record_unblock(entry)
        return list(await store.unblocks("Alice@Contoso.COM", since))

    assert run(open_store, scenario) == [recorded[2], recorded[3], recorded[0]]


@pytest.mark.parametrize(
    "at",
    [T0, datetime(2026, 11, 27, 10, 30, 15, tzinfo=timezone(timedelta(hours=2)))],
    ids=["utc", "plus-two-hours"],
)
def test_unblock_times_come_back_timezone_aware_and_equal_to_what_was_stored(
    open_store: OpenStore, at: datetime
) -> None:
    async def scenario(store: Store) -> list[UnblockEntry]:
        await store.record_unblock(unblock(ALICE, "e1", at))
        return list(await store.unblocks(ALICE, at - timedelta(seconds=1)))

    (entry,) = run(open_store, scenario)
    assert entry.at == at
    assert entry.at.utcoffset() is not None


@pytest.mark.parametrize("odd_user", UNUSUAL_USERS)
def test_users_with_reserved_key_characters_work_everywhere(open_store: OpenStore, odd_user: str) -> None:
    record = {"event_id": "e1", "user": odd_user, "at": "2026-11-27T08:00:00Z", "decision": "unblock"}

    async def scenario(store: Store) -> tuple[Any, ...]:
        await store.record_unblock(unblock(odd_user, "e1", T0))
        await store.record_unblock(unblock(ALICE, "e2", T0))
        await store.append_audit(record)
        await store.append_audit({**record, "user": ALICE})
        return (
            await store.claim(odd_user, "d1", T0),
            await store.claim(odd_user, "d2", T0),
            await store.unblocks(odd_user.upper(), T0),
            await store.audit(odd_user.upper()),
        )

    new, duplicate, unblocks, audit = run(open_store, scenario)
    assert (new, duplicate) == (NEW, DUPLICATE)
    assert unblocks == [unblock(odd_user.lower(), "e1", T0)]
    assert audit == [record]


# Budgets: reserving an unblock atomically ------------------------------------------------------------------

WEEK = Budget(count=1, window_hours=7 * 24)  # per user
HOUR = Budget(count=2, window_hours=1)  # per tenant


def reserve(
    open_store: OpenStore,
    seeded: list[UnblockEntry],
    entry: UnblockEntry,
    *,
    user_budget: Budget | None = WEEK,
    tenant_budget: Budget | None = HOUR,
    restriction_since: datetime | None = None,
) -> tuple[BudgetRefusal | None, list[UnblockEntry]]:
    """Seed the history, reserve ``entry``; the refusal and then everything the store holds, oldest first."""

    async def scenario(store: Store) -> tuple[BudgetRefusal | None, list[UnblockEntry]]:
        for seed in seeded:
            await store.record_unblock(seed)
        refusal = await store.reserve_unblock(
            entry, user_budget=user_budget, tenant_budget=tenant_budget, restriction_since=restriction_since
        )
        return refusal, list(await store.tenant_unblocks(T0 - timedelta(days=29)))

    return run(open_store, scenario)


def test_a_reservation_within_budget_records_the_entry_like_record_unblock(open_store: OpenStore) -> None:
    seeded = [unblock(ALICE, "e0", T0 - timedelta(days=8)), unblock(BOB, "e1", T0 - timedelta(minutes=30))]
    refusal, held = reserve(open_store, seeded, unblock(ALICE.upper(), "e2", T0, status="pending"))
    assert refusal is None
    assert held == [*seeded, unblock(ALICE, "e2", T0, status="pending")]  # lower-cased, as record_unblock keeps it


def test_a_user_at_budget_is_refused_as_user_and_nothing_is_written(open_store: OpenStore) -> None:
    seeded = [unblock(ALICE, "e0", T0 - timedelta(days=6))]
    assert reserve(open_store, seeded, unblock("Alice@Contoso.COM", "e1", T0)) == ("user", seeded)


def test_a_tenant_at_budget_is_refused_as_tenant_and_nothing_is_written(open_store: OpenStore) -> None:
    seeded = [unblock(BOB, "e0", T0 - timedelta(minutes=59)), unblock("carol@contoso.com", "e1", T0)]
    assert reserve(open_store, seeded, unblock(ALICE, "e2", T0)) == ("tenant", seeded)


def test_the_user_budget_is_checked_before_the_tenant_budget(open_store: OpenStore) -> None:
    seeded = [unblock(ALICE, "e0", T0 - timedelta(minutes=10)), unblock(BOB, "e1", T0 - timedelta(minutes=5))]
    assert reserve(open_store, seeded, unblock(ALICE, "e2", T0)) == ("user", seeded)


@pytest.mark.parametrize(
    ("seed", "expected"),
    [
        (unblock(ALICE, "e0", T0 - timedelta(minutes=1), status="failed"), None),
        (unblock(ALICE, "e0", T0 - timedelta(days=7)), None),  # exactly one window ago: outside
        (unblock(ALICE, "e0", T0 - timedelta(days=7) + timedelta(seconds=1)), "user"),
        (unblock(ALICE, "e0", T0 - timedelta(minutes=1), status="pending"), "user"),  # in flight: counts
        (unblock(ALICE, "e0", T0 + timedelta(seconds=5)), "user"),  # another processor's clock ran ahead
        (unblock(BOB, "e0", T0 - timedelta(days=1)), None),  # someone else, outside the tenant's hour
    ],
    ids=["failed", "at-the-window-start", "just-inside", "pending", "later-than-the-entry", "other-user"],
)
def test_what_counts_against_the_user_budget(
    open_store: OpenStore, seed: UnblockEntry, expected: BudgetRefusal | None
) -> None:
    refusal, _ = reserve(open_store, [seed], unblock(ALICE, "e1", T0))
    assert refusal == expected


BLOCKED_AT = T0 - timedelta(minutes=30)  # when the restriction being unblocked began


@pytest.mark.parametrize(
    ("seed", "expected"),
    [
        (unblock(ALICE, "e0", T0 - timedelta(minutes=1)), "started"),  # sent, accepted: this block's unblock
        (unblock(ALICE, "e0", T0 - timedelta(minutes=1), status="pending"), "started"),  # in flight
        (unblock(ALICE, "e0", T0 - timedelta(minutes=1), status="uncertain"), "started"),
        (unblock(ALICE, "e0", BLOCKED_AT), "started"),  # at the block's own instant: already this block
        (unblock(ALICE, "e0", BLOCKED_AT - timedelta(seconds=1)), None),  # an earlier block's unblock
        (unblock(ALICE, "e0", T0 - timedelta(minutes=1), status="refused"), None),  # Remove never took
        (unblock(ALICE, "e0", T0 - timedelta(minutes=1), status="not-needed"), None),
        (unblock(ALICE, "e1", T0 - timedelta(minutes=1), status="pending"), None),  # this event's own retry
        (unblock(BOB, "e0", T0 - timedelta(minutes=1)), None),  # someone else
    ],
    ids=["done", "pending", "uncertain", "at-the-block", "before-the-block", "refused", "not-needed", "same-event",
         "other-user"],
)  # fmt: skip
def test_a_second_unblock_of_one_restriction_is_refused_as_started_and_nothing_is_written(
    open_store: OpenStore, seed: UnblockEntry, expected: BudgetRefusal | None
) -> None:
    entry = unblock(ALICE, "e1", T0, status="pending")
    refusal, held = reserve(
        open_store, [seed], entry, user_budget=None, tenant_budget=None, restriction_since=BLOCKED_AT
    )
    assert refusal == expected
    if expected == "started":
        assert held == [seed]


def test_failed_and_old_entries_do_not_count_against_the_tenant_budget(open_store: OpenStore) -> None:
    seeded = [
        unblock(BOB, "e0", T0 - timedelta(hours=1)),  # exactly one window ago
        unblock("dave@contoso.com", "e2", T0 - timedelta(minutes=2)),
        unblock("carol@contoso.com", "e1", T0 - timedelta(minutes=1), status="failed"),
    ]
    refusal, held = reserve(open_store, seeded, unblock(ALICE, "e3", T0))
    assert refusal is None
    assert held == [*seeded, unblock(ALICE, "e3", T0)]


def test_a_retry_of_the_same_event_never_counts_against_itself(open_store: OpenStore) -> None:
    first = unblock(ALICE, "e1", T0 - timedelta(seconds=30), status="pending")
    retry = unblock(ALICE, "e1", T0)
    tight = Budget(count=1, window_hours=1)
    refusal, held = reserve(open_store, [first], retry, tenant_budget=tight)
    assert (refusal, held) == (None, [retry])  # replaced, not added


def test_a_budget_of_none_is_unlimited(open_store: OpenStore) -> None:
    seeded = [unblock(ALICE, f"e{i}", T0 - timedelta(minutes=i + 1)) for i in range(5)]
    refusal, held = reserve(open_store, seeded, unblock(ALICE, "e9", T0), user_budget=None, tenant_budget=None)
    assert refusal is None
    assert held == [*reversed(seeded), unblock(ALICE, "e9", T0)]


def test_a_count_of_zero_refuses_every_reservation(open_store: OpenStore) -> None:
    zero = Budget(count=0, window_hours=1)
    assert reserve(open_store, [], unblock(ALICE, "e1", T0), user_budget=None, tenant_budget=zero) == ("tenant", [])


def test_tenant_unblocks_sees_every_users_entries_oldest_first_consistent_with_unblocks(
    open_store: OpenStore,
) -> None:
    since = T0 - timedelta(hours=1)

    async def scenario(store: Store) -> tuple[list[UnblockEntry], ...]:
        await store.record_unblock(unblock(ALICE, "e1", since - timedelta(seconds=1)))  # before ``since``
        await store.record_unblock(unblock(UNUSUAL_USERS[0], "e2", since))  # at ``since``: included
        await store.record_unblock(unblock(BOB, "e3", T0 - timedelta(minutes=10), status="pending"))
        assert (
            await store.reserve_unblock(
                unblock(ALICE.upper(), "e4", T0 - timedelta(minutes=20)), user_budget=None, tenant_budget=None
            )
            is None
        )
        assert (
            await store.reserve_unblock(unblock(UNUSUAL_USERS[1], "e5", T0), user_budget=WEEK, tenant_budget=None)
            is None
        )
        await store.record_unblock(unblock(BOB.upper(), "e3", T0 - timedelta(minutes=10)))  # pending -> done
        return (
            list(await store.tenant_unblocks(since)),
            list(await store.unblocks(ALICE, since)),
            list(await store.unblocks(BOB, since)),
            list(await store.unblocks(UNUSUAL_USERS[1].upper(), since)),
        )

    everyone, alice, bob, odd = run(open_store, scenario)
    assert everyone == [
        unblock(UNUSUAL_USERS[0].lower(), "e2", since),
        unblock(ALICE, "e4", T0 - timedelta(minutes=20)),
        unblock(BOB, "e3", T0 - timedelta(minutes=10)),
        unblock(UNUSUAL_USERS[1].lower(), "e5", T0),
    ]
    assert alice == [everyone[1]]
    assert bob == [everyone[2]]
    assert odd == [everyone[3]]


def test_table_rows_keep_thirty_days_of_tenant_entries_and_drop_the_oldest_past_the_size_limit() -> None:
    recent = [unblock(f"user{i:05d}@contoso.com", f"{i:032x}", T0 - timedelta(minutes=i)) for i in range(4000)]
    stale = unblock(ALICE, "old", T0 - timedelta(days=31))
    row = pack_entries([stale, *recent], timedelta(days=30))
    assert len(row) == MAX_ENTRY_CHUNKS
    assert all(len(text) <= MAX_RECORD_CHARS and text.isascii() for text in row.values())
    kept = unpack_entries(row)
    assert kept == sorted(recent, key=lambda e: e.at)[-len(kept) :]  # the newest, oldest first
    assert 1000 < len(kept) < 4000
    assert unpack_entries(pack_entries([stale, recent[0]], timedelta(days=30))) == [recent[0]]
    assert unpack_entries({}) == []


# Audit trail: append-only ---------------------------------------------------------------------------------


def audit_record(event_id: str, user: str, at: str, decision: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user": user, "at": at, "decision": decision, **extra}


def test_the_audit_trail_is_append_only_and_keeps_every_row_in_order(open_store: OpenStore) -> None:
    # A retry within the same second: same event, same instant, different outcome. Both rows stay, in order.
    rows = [audit_record("e1", ALICE, "2026-11-27T08:00:00Z", d) for d in ("wait", "unblock", "ticket")]

    async def scenario(store: Store) -> list[Any]:
        for row in rows:
            await store.append_audit(row)
        return list(await store.audit(ALICE))

    assert run(open_store, scenario) == rows


def test_the_audit_trail_filters_by_user_in_any_case_and_lists_everyone_in_order(open_store: OpenStore) -> None:
    rows = [
        audit_record("e1", ALICE, "2026-11-27T08:00:00Z", "wait"),
        audit_record("e2", BOB, "2026-11-27T08:00:01Z", "unblock"),
        audit_record("e1", ALICE, "2026-11-27T08:05:00Z", "unblock"),
        audit_record("e3", "carol@contoso.com", "2026-11-27T09:00:00Z", "ticket"),
    ]

    async def scenario(store: Store) -> tuple[list[Any], list[Any], list[Any]]:
        for row in rows:
            await store.append_audit(row)
        return list(await store.audit("ALICE@contoso.com")), list(await store.audit()), list(await store.audit(BOB))

    alice, everyone, bob = run(open_store, scenario)
    assert alice == [rows[0], rows[2]]
    assert everyone == rows
    assert bob == [rows[1]]


def test_an_audit_record_with_nested_evidence_round_trips_as_equal_json(open_store: OpenStore) -> None:
    record = audit_record(
        "e1",
        ALICE,
        "2026-11-27T08:00:00Z",
        "unblock",
        reasons=[{"code": "budget:ok", "text": "1 of 3 this week"}],
        actions=[{"kind": "unblock", "status": "done", "detail": ""}],
        evidence={
            "restriction": {"SenderAddress": ALICE, "TemporaryBlock": False, "Reason": "OutboundSpamPercent=88"},
            "member_of": [],
            "history": [{"at": "2026-11-20T08:00:00Z", "kind": "auto"}],
            "ratio": 0.88,
            "note": "Zoë — ✉ 日本",
            "nothing": None,
        },
    )

    async def scenario(store: Store) -> list[Any]:
        await store.append_audit(record)
        return list(await store.audit())

    assert run(open_store, scenario) == [json.loads(json.dumps(record))]


# The ticket ledger: one ticket per restriction ----------------------------------------------------------

CORRELATION = "rsr-5db33eddd557cf420a66c5732be18eaa"
TICKET = TicketRef(id="a1b2c3", label="INC0010001", url="https://contoso.service-now.com/incident/a1b2c3")
CREATE, WAIT = TicketSlot("create"), TicketSlot("wait")
UPDATE, DONE = TicketSlot("update", TICKET), TicketSlot("done", TICKET)
ODD_CORRELATIONS = [  # ours are rsr-<hex>; Table keys may not hold / \ # ? and keys are case-sensitive
    "rsr-odd/one?x=1#frag\\end",
    "RSR-ODD/ONE?X=1#FRAG\\END",
    "rsr-~7E41",
    "rsr-~41",
    "rsr-A",
    "rsr-a",
    "rsr-zoë ✉ %41",
    "rsr-tab\tnewline\n",
]


def begin(correlation_id: str, event_id: str, now: datetime) -> Callable[[Store], Awaitable[TicketSlot]]:
    return lambda store: store.begin_ticket(correlation_id, event_id, now)


def test_the_first_event_creates_the_next_waits_and_after_the_ticket_is_recorded_updates_it_once(
    open_store: OpenStore,
) -> None:
    async def scenario(store: Store) -> list[TicketSlot]:
        slots = [await store.begin_ticket(CORRELATION, "e1", T0), await store.begin_ticket(CORRELATION, "e2", T0)]
        await store.ticket_opened(CORRELATION, "e1", TICKET, T0 + timedelta(seconds=3))
        later = T0 + timedelta(seconds=10)
        slots += [await store.begin_ticket(CORRELATION, e, later) for e in ("e1", "e2")]
        await store.ticket_noted(CORRELATION, "e2", later)
        await store.ticket_noted(CORRELATION, "e2", later)  # a retry: harmless
        slots += [await store.begin_ticket(CORRELATION, e, later) for e in ("e2", "e1", "e3")]
        return slots

    assert run(open_store, scenario) == [CREATE, WAIT, DONE, UPDATE, DONE, DONE, UPDATE]


def test_the_owners_retry_creates_again_and_renews_its_lease(open_store: OpenStore) -> None:
    retried = T0 + timedelta(seconds=90)
    steps = [
        ("e1", T0),
        ("e1", retried),  # its own retry: create again (it never recorded a ticket)
        ("e2", T0 + TICKET_LEASE + timedelta(seconds=1)),  # the first lease ran out, the renewed one did not
        ("e2", retried + TICKET_LEASE + timedelta(seconds=1)),
    ]

    async def scenario(store: Store) -> list[TicketSlot]:
        return [await store.begin_ticket(CORRELATION, event, now) for event, now in steps]

    assert run(open_store, scenario) == [CREATE, CREATE, WAIT, CREATE]


def test_another_event_takes_over_only_after_the_lease_and_then_the_first_owner_waits(open_store: OpenStore) -> None:
    expired = T0 + TICKET_LEASE + timedelta(seconds=1)

    async def scenario(store: Store) -> list[TicketSlot]:
        slots = [
            await store.begin_ticket(CORRELATION, "crashed", T0),
            await store.begin_ticket(CORRELATION, "e2", T0 + TICKET_LEASE),  # exactly at the lease end: still held
            await store.begin_ticket(CORRELATION, "e2", expired),
            await store.begin_ticket(CORRELATION, "crashed", expired),
        ]
        await store.ticket_opened(CORRELATION, "e2", TICKET, expired)
        return [*slots, await store.begin_ticket(CORRELATION, "crashed", expired)]

    assert run(open_store, scenario) == [CREATE, WAIT, CREATE, WAIT, UPDATE]


def test_the_first_ticket_recorded_stays_the_restrictions_ticket(open_store: OpenStore) -> None:
    # The crashed owner's slow create and the taker's both landed: the ledger keeps pointing at one of them.
    second = TicketRef(id="d4e5f6", label="INC0010002")

    async def scenario(store: Store) -> list[TicketSlot]:
        await store.begin_ticket(CORRELATION, "e1", T0)
        await store.begin_ticket(CORRELATION, "e2", T0 + 2 * TICKET_LEASE)
        await store.ticket_opened(CORRELATION, "e1", TICKET, T0 + 2 * TICKET_LEASE)
        await store.ticket_opened(CORRELATION, "e2", second, T0 + 2 * TICKET_LEASE)
        return [await store.begin_ticket(CORRELATION, e, T0 + 3 * TICKET_LEASE) for e in ("e1", "e2", "e3")]

    assert run(open_store, scenario) == [DONE, DONE, UPDATE]


def test_a_ticket_recorded_without_a_slot_is_kept_and_a_url_is_optional(open_store: OpenStore) -> None:
    bare = TicketRef(id="42", label="42")  # e.g. found again by find_open after a crash

    async def scenario(store: Store) -> list[TicketSlot]:
        await store.ticket_opened(CORRELATION, "e1", bare, T0)
        return [await store.begin_ticket(CORRELATION, e, T0) for e in ("e1", "e2")]

    assert run(open_store, scenario) == [TicketSlot("done", bare), TicketSlot("update", bare)]


def test_noting_an_event_before_any_ticket_is_recorded_changes_nothing(open_store: OpenStore) -> None:
    async def scenario(store: Store) -> list[TicketSlot]:
        await store.ticket_noted("rsr-unknown", "e1", T0)
        slots = [await store.begin_ticket(CORRELATION, "e1", T0)]
        await store.ticket_noted(CORRELATION, "e2", T0)
        await store.ticket_opened(CORRELATION, "e1", TICKET, T0)
        return [
            *slots,
            await store.begin_ticket(CORRELATION, "e2", T0),
            await store.begin_ticket("rsr-unknown", "e1", T0),
        ]

    assert run(open_store, scenario) == [CREATE, UPDATE, CREATE]


def test_the_noted_set_keeps_the_newest_events_only(open_store: OpenStore) -> None:
    events = [f"{i:032x}" for i in range(TICKET_NOTED_KEEP + 5)]

    async def scenario(store: Store) -> list[TicketSlot]:
        await store.begin_ticket(CORRELATION, events[0], T0)
        await store.ticket_opened(CORRELATION, events[0], TICKET, T0)
        for event in events[1:]:
            await store.ticket_noted(CORRELATION, event, T0)
        return [await store.begin_ticket(CORRELATION, e, T0) for e in (events[4], events[5], events[-1])]

    # The oldest five fell out (a late retry of one of them would add a second note, never a second ticket).
    assert run(open_store, scenario) == [UPDATE, DONE, DONE]


def test_correlation_ids_with_reserved_or_odd_characters_are_distinct_and_safe(open_store: OpenStore) -> None:
    tickets = {c: TicketRef(id=str(i), label=f"T-{i}") for i, c in enumerate(ODD_CORRELATIONS)}

    async def scenario(store: Store) -> tuple[list[TicketSlot], list[TicketSlot]]:
        first = [await store.begin_ticket(c, "e1", T0) for c in ODD_CORRELATIONS]
        for correlation, ticket in tickets.items():
            await store.ticket_opened(correlation, "e1", ticket, T0)
        return first, [await store.begin_ticket(c, "e2", T0) for c in ODD_CORRELATIONS]

    first, second = run(open_store, scenario)
    assert first == [CREATE] * len(ODD_CORRELATIONS)
    assert second == [TicketSlot("update", tickets[c]) for c in ODD_CORRELATIONS]


def test_two_events_beginning_at_once_get_exactly_one_create(open_store: OpenStore) -> None:
    async def scenario(store: Store) -> list[list[str]]:
        rounds: list[list[str]] = []
        for i in range(3):
            slots = await asyncio.gather(*(store.begin_ticket(f"rsr-fresh-{i}", e, T0) for e in ("e1", "e2")))
            rounds.append(sorted(slot.action for slot in slots))
        return rounds

    assert run(open_store, scenario) == [["create", "wait"]] * 3


def test_many_takers_after_the_lease_get_exactly_one_create(open_store: OpenStore) -> None:
    expired = T0 + TICKET_LEASE + timedelta(minutes=1)

    async def scenario(store: Store) -> list[str]:
        await store.begin_ticket(CORRELATION, "crashed", T0)
        slots = await asyncio.gather(*(store.begin_ticket(CORRELATION, f"e{i}", expired) for i in range(RACERS)))
        return sorted(slot.action for slot in slots)

    assert run(open_store, scenario) == ["create"] + ["wait"] * (RACERS - 1)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"owner": "e1", "started_at": T0, "ticket": None, "noted": []}, CREATE),
        ({"owner": "e0", "started_at": T0, "ticket": None, "noted": []}, WAIT),
        ({"owner": "e0", "started_at": T0 - TICKET_LEASE, "ticket": None, "noted": []}, WAIT),
        (
            {"owner": "e0", "started_at": T0 - TICKET_LEASE - timedelta(microseconds=1), "ticket": None, "noted": []},
            CREATE,
        ),
        ({"owner": "e0", "started_at": T0, "ticket": TICKET, "noted": ["e0"]}, UPDATE),
        ({"owner": "e0", "started_at": T0 - 9 * TICKET_LEASE, "ticket": TICKET, "noted": ["e0", "e1"]}, DONE),
        ({"owner": "e1", "started_at": T0, "ticket": TICKET, "noted": []}, UPDATE),  # recorded by a taker
    ],
    ids=["own-retry", "held", "at-the-lease-end", "past-the-lease", "recorded", "noted", "owner-not-noted"],
)
def test_what_a_ledger_row_means_for_event_e1(row: dict[str, Any], expected: TicketSlot) -> None:
    assert resolve_ticket(**row, event_id="e1", now=T0) == expected


def test_noting_adds_once_and_keeps_the_newest() -> None:
    assert noted_with(["a", "b"], "b") == ["a", "b"]
    assert noted_with(["a", "b"], "c") == ["a", "b", "c"]
    full = [str(i) for i in range(TICKET_NOTED_KEEP)]
    assert noted_with(full, "new") == [*full[1:], "new"]


# Intake bookkeeping: claim state, reports, cursors, pending rows -----------------------------------------

RESTRICTION = "restriction|alice@contoso.com|2026-11-27T08:02:11Z"
ODD_KEYS = [f"restriction|{user}|2026-11-27T08:02:11Z" for user in UNUSUAL_USERS]
ODD_IDS = [  # Table keys may not hold / \ # ? or control characters, and hold at most 1 KiB
    "A/b#c?d\\e",
    "a/b#c?d\\e",  # differs only in case: another report
    "tab\tnewline\n",
    "zoë ✉ %41 ~41",
    "x" * 600,
    "x" * 600 + "y",
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_claim_state_follows_a_claim_through_a_take_over_to_completion(open_store: OpenStore) -> None:
    expired = T0 + CLAIM_LEASE + timedelta(seconds=1, microseconds=250)
    done = expired + timedelta(seconds=3, microseconds=7)

    async def scenario(store: Store) -> list[ClaimState | None]:
        states = [await store.claim_state(KEY)]
        await store.claim(KEY, "d1", T0)
        states.append(await store.claim_state(KEY))
        await store.claim(KEY, "d2", at(60))  # a duplicate changes nothing
        states.append(await store.claim_state(KEY))
        await store.claim(KEY, "d2", expired)
        states.append(await store.claim_state(KEY))
        await store.complete(KEY, "d2", "ticket", done)
        return [*states, await store.claim_state(KEY), await store.claim_state("never-claimed")]

    assert run(open_store, scenario) == [
        None,
        ClaimState("d1", "claimed", T0),
        ClaimState("d1", "claimed", T0),
        ClaimState("d2", "claimed", expired),
        ClaimState("d2", "done", done, "ticket"),
        None,
    ]


@pytest.mark.parametrize(
    "done",
    [at(0.123456), datetime(2026, 11, 27, 10, 30, 15, 250, tzinfo=timezone(timedelta(hours=2)))],
    ids=["utc-microseconds", "plus-two-hours"],
)
def test_claim_state_times_come_back_timezone_aware_and_equal_to_what_was_stored(
    open_store: OpenStore, done: datetime
) -> None:
    async def scenario(store: Store) -> ClaimState | None:
        await store.complete(KEY, "d1", "unblock", done)  # completing unclaimed: a crashed claim's row was lost
        return await store.claim_state(KEY)

    state = run(open_store, scenario)
    assert state == ClaimState("d1", "done", done, "unblock")
    assert state.claimed_at.utcoffset() is not None


def test_a_repeated_report_keeps_its_first_time_and_reports_come_oldest_first_then_by_kind_and_id(
    open_store: OpenStore,
) -> None:
    added = [
        Source("sentinel", "inc-2", at(2)),
        Source("defender", "da-1", at(0)),
        Source("sentinel", "inc-1", at(2)),
        Source("poll", "alert-1", at(2)),
        Source("defender", "da-1", at(-3600)),  # reported again, with an earlier time: the first one stays
        Source("sentinel", "inc-1", at(9)),
        Source("alerts_v2", "alert-1", at(2.5)),
    ]

    async def scenario(store: Store) -> tuple[tuple[Source, ...], ...]:
        for source in added:
            await store.add_report(RESTRICTION, source)
        await store.add_report("restriction|bob@contoso.com|2026-11-27T08:02:11Z", Source("poll", "other", at(1)))
        return await store.reports(RESTRICTION), await store.reports("restriction|nobody|unknown")

    assert run(open_store, scenario) == (
        (
            Source("defender", "da-1", at(0)),
            Source("poll", "alert-1", at(2)),
            Source("sentinel", "inc-1", at(2)),
            Source("sentinel", "inc-2", at(2)),
            Source("alerts_v2", "alert-1", at(2.5)),
        ),
        (),
    )


def test_reports_stop_at_max_reports_even_when_writers_race_for_the_last_places(open_store: OpenStore) -> None:
    seeded = [Source("o365", f"r{i:03d}", at(i)) for i in range(MAX_REPORTS - 2)]
    racing = [Source("poll", f"p{i}", at(100 + i)) for i in range(6)]

    async def scenario(store: Store) -> tuple[Source, ...]:
        for source in seeded:
            await store.add_report(RESTRICTION, source)
        await asyncio.gather(*(store.add_report(RESTRICTION, source) for source in racing))  # six for two places
        await store.add_report(RESTRICTION, Source("sentinel", "late", at(-60)))  # full: dropped
        await store.add_report(RESTRICTION, Source("o365", "r000", at(-60)))  # a repeat: changes nothing
        return await store.reports(RESTRICTION)

    kept = run(open_store, scenario)
    assert len(kept) == MAX_REPORTS
    assert kept[: MAX_REPORTS - 2] == tuple(seeded)
    assert set(kept[MAX_REPORTS - 2 :]) <= set(racing)  # which two win is open


@pytest.mark.parametrize("odd_key", ODD_KEYS, ids=UNUSUAL_USERS)
def test_reports_keys_and_source_ids_with_reserved_characters_are_distinct_and_safe(
    open_store: OpenStore, odd_key: str
) -> None:
    added = [Source("sentinel", source_id, at(i)) for i, source_id in enumerate(ODD_IDS)]

    async def scenario(store: Store) -> tuple[tuple[Source, ...], ...]:
        for source in added:
            await store.add_report(odd_key, source)
        await store.add_report(odd_key.upper(), Source("poll", "upper", T0))
        return await store.reports(odd_key), await store.reports(odd_key.upper())

    assert run(open_store, scenario) == (tuple(added), (Source("poll", "upper", T0),))


def test_a_cursor_is_created_once_and_each_write_reads_back_with_a_new_version(open_store: OpenStore) -> None:
    async def scenario(store: Store) -> list[Any]:
        steps: list[Any] = [await store.read_cursor("alerts_v2"), await store.write_cursor("alerts_v2", "w1", None)]
        first = await store.read_cursor("alerts_v2")
        assert first is not None
        steps += [first.value, await store.write_cursor("alerts_v2", "w2", first.version)]
        second = await store.read_cursor("alerts_v2")
        assert second is not None
        return [*steps, second.value, second.version != first.version, await store.read_cursor("Alerts_V2")]

    assert run(open_store, scenario) == [None, True, "w1", True, "w2", True, None]


@pytest.mark.parametrize("losing", ["create-over-existing", "stale-version", "made-up-version", "wildcard"])
def test_a_write_from_a_version_that_is_not_the_cursors_loses_and_writes_nothing(
    open_store: OpenStore, losing: str
) -> None:
    async def scenario(store: Store) -> tuple[bool, Cursor | None, Cursor | None, bool]:
        await store.write_cursor("poll", "w1", None)
        stale = await store.read_cursor("poll")
        assert stale is not None
        await store.write_cursor("poll", "w2", stale.version)
        before = await store.read_cursor("poll")
        version = {
            "create-over-existing": None,
            "stale-version": stale.version,
            "made-up-version": "7",
            "wildcard": "*",  # If-Match: * would match any ETag
        }[losing]
        lost = await store.write_cursor("poll", "late", version)
        missing = await store.write_cursor("missing", "late", stale.version)  # a version cannot create a cursor
        return lost, before, await store.read_cursor("poll"), missing or await store.read_cursor("missing") is not None

    lost, before, after, missing = run(open_store, scenario)
    assert (lost, missing) == (False, False)
    assert before is not None
    assert after == before
    assert after.value == "w2"


def test_concurrent_writers_of_one_cursor_version_get_exactly_one_true(open_store: OpenStore) -> None:
    async def scenario(store: Store) -> tuple[list[bool], list[bool], Cursor | None]:
        created = await asyncio.gather(*(store.write_cursor("poll", f"c{i}", None) for i in range(3)))
        read = await store.read_cursor("poll")
        assert read is not None
        moved = await asyncio.gather(*(store.write_cursor("poll", f"m{i}", read.version) for i in range(3)))
        return sorted(created), sorted(moved), await store.read_cursor("poll")

    created, moved, cursor = run(open_store, scenario)
    assert created == moved == [False, False, True]
    assert cursor is not None
    assert cursor.value in {"m0", "m1", "m2"}


DEFENDER = "defender-evidence"


def test_pending_returns_the_latest_data_of_the_asked_keys_of_the_group_only(open_store: OpenStore) -> None:
    async def scenario(store: Store) -> list[dict[str, Any]]:
        await store.keep_pending(DEFENDER, "a1", {"title": "first", "evidence": [1]}, T0)
        await store.keep_pending(DEFENDER, "a2", {"title": "second"}, T0)
        await store.keep_pending(DEFENDER, "a1", {"user": "alice"}, at(5))  # replaced, not merged
        await store.keep_pending("defender-info", "a3", {"title": "other group"}, T0)
        return [
            dict(await store.pending(DEFENDER, ["a1", "a2", "a3", "unknown", "a1"], at(10))),
            dict(await store.pending(DEFENDER, [], at(10))),
            dict(await store.pending("no-such-group", ["a1"], at(10))),
        ]

    assert run(open_store, scenario) == [{"a1": {"user": "alice"}, "a2": {"title": "second"}}, {}, {}]


@pytest.mark.parametrize(
    ("written", "read", "kept"),
    [
        (T0, T0 + PENDING_TTL - timedelta(microseconds=1), True),
        (T0, T0 + PENDING_TTL, False),  # the TTL's end is already past it
        (at(0.5), at(0.5) + PENDING_TTL, False),  # to the microsecond, not the second
        (T0 + timedelta(hours=1), T0 + PENDING_TTL + timedelta(seconds=1), True),  # a rewrite starts it again
    ],
    ids=["just-before-the-ttl", "at-the-ttl", "at-the-ttl-of-a-fraction", "rewritten"],
)
def test_pending_data_expires_at_the_ttl_after_its_last_write(
    open_store: OpenStore, written: datetime, read: datetime, kept: bool
) -> None:
    async def scenario(store: Store) -> dict[str, Any]:
        await store.keep_pending(DEFENDER, "a1", {"n": 1}, T0)
        await store.keep_pending(DEFENDER, "a1", {"n": 2}, written)
        return dict(await store.pending(DEFENDER, ["a1"], read))

    assert run(open_store, scenario) == ({"a1": {"n": 2}} if kept else {})


@pytest.mark.parametrize("odd", UNUSUAL_USERS)
def test_pending_data_round_trips_as_equal_json_under_any_group_and_key(open_store: OpenStore, odd: str) -> None:
    data = {
        "AlertId": "da638123",
        "Evidence": [{"EntityType": "User", "AccountUpn": odd, "Roles": []}, {"EntityType": "MailMessage"}],
        "Severity": 3,
        "Score": 0.88,
        "Big": 2**53 + 1,
        "Flags": {"direct": True, "seen": False, "nothing": None},
        "note": "Zoë — ✉ 日本 😀 \t\n",
        "pair": (1, 2),  # JSON has no tuples: a list comes back, as it would from the queue
    }

    async def scenario(store: Store) -> dict[str, Any]:
        await store.keep_pending(odd, odd.upper(), data, T0)
        return dict(await store.pending(odd, [odd.upper(), odd], T0))

    assert run(open_store, scenario) == {odd.upper(): json.loads(json.dumps(data))}


@pytest.mark.parametrize(
    ("data", "fits"),
    [
        ({"x": "a" * (MAX_PENDING_CHARS - 8)}, True),  # {"x":"…"} is exactly MAX_PENDING_CHARS of JSON
        ({"x": "a" * (MAX_PENDING_CHARS - 7)}, False),
        ({"x": "✉" * 5_000}, False),  # escaped as \u2709: 30,008 characters of JSON
    ],
    ids=["at-the-limit", "one-over", "escaped-over"],
)
def test_pending_data_too_large_for_a_table_property_is_refused_and_keeps_what_was_there(
    open_store: OpenStore, data: dict[str, str], fits: bool
) -> None:
    async def scenario(store: Store) -> dict[str, Any]:
        await store.keep_pending(DEFENDER, "a1", {"small": True}, T0)
        with nullcontext() if fits else pytest.raises(ValueError, match="pending data"):
            await store.keep_pending(DEFENDER, "a1", data, T0)
        return dict(await store.pending(DEFENDER, ["a1"], T0))

    assert run(open_store, scenario) == {"a1": data if fits else {"small": True}}


# Azure Table Storage only: races between instances, and errors --------------------------------------------


def race(open_store: OpenStore, calls: list[Callable[[Store, str], Awaitable[T]]]) -> list[list[T]]:
    """Two instances, each a thread with its own loop and store, make each call at the same moment.

    Each instance is one delivery (``d-0``, ``d-1``); the result lists each call's pair of outcomes.
    """
    barrier = threading.Barrier(2, timeout=10)

    def instance(delivery: str) -> list[T]:
        async def scenario(store: Store) -> list[T]:
            await store.audit("nobody")  # create the tables first: the race is the call itself
            results = []
            for call in calls:
                barrier.wait()
                results.append(await call(store, delivery))
            return results

        return run(open_store, scenario)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(instance, ["d-0", "d-1"])
    return [[a, b] for a, b in zip(first, second, strict=True)]


def claim_at(key: str, now: datetime) -> Callable[[Store, str], Awaitable[ClaimResult]]:
    return lambda store, delivery: store.claim(key, delivery, now)


@pytest.mark.azurite
def test_two_instances_racing_for_a_fresh_event_get_exactly_one_new(open_table_store: OpenStore) -> None:
    pairs = race(open_table_store, [claim_at(f"fresh-{i}", T0) for i in range(5)])
    assert [sorted(pair) for pair in pairs] == [sorted([NEW, DUPLICATE])] * 5


@pytest.mark.azurite
def test_two_deliveries_racing_to_take_over_an_expired_lease_get_exactly_one_resumed(
    open_table_store: OpenStore,
) -> None:
    keys = [f"stale-{i}" for i in range(5)]

    async def crashed_holder(store: Store) -> list[ClaimResult]:
        return [await store.claim(key, "crashed", T0) for key in keys]

    assert run(open_table_store, crashed_holder) == [NEW] * 5
    expired = T0 + CLAIM_LEASE + timedelta(minutes=1)
    pairs = race(open_table_store, [claim_at(key, expired) for key in keys])
    assert [sorted(pair) for pair in pairs] == [sorted([RESUMED, DUPLICATE])] * 5


def begin_at(correlation_id: str, now: datetime) -> Callable[[Store, str], Awaitable[str]]:
    async def call(store: Store, event_id: str) -> str:
        return (await store.begin_ticket(correlation_id, event_id, now)).action

    return call


@pytest.mark.azurite
def test_two_instances_racing_for_a_new_ticket_get_exactly_one_create(open_table_store: OpenStore) -> None:
    pairs = race(open_table_store, [begin_at(f"rsr-fresh-{i}", T0) for i in range(5)])
    assert [sorted(pair) for pair in pairs] == [["create", "wait"]] * 5


def race_rounds(open_store: OpenStore, rounds: list[list[Callable[[Store], Awaitable[T]]]]) -> list[list[T]]:
    """One instance per call of a round, each a thread with its own loop and store; each round starts at once.

    The result lists, per round, each instance's outcome.
    """
    instances = len(rounds[0])
    barrier = threading.Barrier(instances, timeout=30)

    def instance(index: int) -> list[T]:
        async def scenario(store: Store) -> list[T]:
            await store.tenant_unblocks(T0)  # connect first: the race is the call itself
            results = []
            for calls in rounds:
                barrier.wait()
                results.append(await calls[index](store))
            return results

        return run(open_store, scenario)

    run(open_store, lambda store: store.tenant_unblocks(T0))  # tables and schema exist before anyone races
    with ThreadPoolExecutor(instances) as pool:
        outcomes = list(pool.map(instance, range(instances)))
    return [[outcomes[i][r] for i in range(instances)] for r in range(len(rounds))]


def reserving(
    entry: UnblockEntry, user_budget: Budget | None, tenant_budget: Budget | None
) -> Callable[[Store], Awaitable[BudgetRefusal | None]]:
    return lambda store: store.reserve_unblock(entry, user_budget=user_budget, tenant_budget=tenant_budget)


RACERS, ROUNDS = 6, 3


def round_start(number: int) -> datetime:
    return T0 + timedelta(days=40 * number)  # rounds far apart: each has a fresh window


@pytest.mark.azurite
def test_racing_instances_never_spend_more_than_the_tenant_budget(open_table_store: OpenStore) -> None:
    # Different users; each instance's clock a second apart, so the later reservations carry earlier instants too.
    rounds = [
        [
            reserving(unblock(f"user{i}@contoso.com", f"r{r}-e{i}", round_start(r) + timedelta(seconds=i)), WEEK, HOUR)
            for i in range(RACERS)
        ]
        for r in range(ROUNDS)
    ]
    results = race_rounds(open_table_store, rounds)
    assert [sorted(map(str, outcome)) for outcome in results] == [["None"] * 2 + ["tenant"] * 4] * ROUNDS

    async def written(store: Store) -> list[UnblockEntry]:
        return list(await store.tenant_unblocks(T0))

    entries = run(open_table_store, written)  # the tenant row keeps 30 days: only the last round on Tables
    last = {f"user{i}@contoso.com" for i, refusal in enumerate(results[-1]) if refusal is None}
    assert {e.user for e in entries if e.at >= round_start(ROUNDS - 1)} == last


@pytest.mark.azurite
def test_racing_instances_never_spend_more_than_one_users_budget(open_table_store: OpenStore) -> None:
    rounds = [
        [
            reserving(unblock(ALICE, f"r{r}-e{i}", round_start(r) + timedelta(seconds=i)), WEEK, None)
            for i in range(RACERS)
        ]
        for r in range(ROUNDS)
    ]
    results = race_rounds(open_table_store, rounds)
    assert [sorted(map(str, outcome)) for outcome in results] == [["None"] + ["user"] * 5] * ROUNDS

    async def alice(store: Store) -> list[UnblockEntry]:
        return list(await store.unblocks(ALICE, T0))

    assert len(run(open_table_store, alice)) == ROUNDS


@pytest.mark.azurite
def test_racing_instances_never_send_two_unblocks_for_one_restriction(open_table_store: OpenStore) -> None:
    # No budgets at all: only the restriction rule stands between the racers (operators retrying at once).
    rounds = [
        [
            lambda store, r=r, i=i: store.reserve_unblock(
                unblock(ALICE, f"r{r}-e{i}", round_start(r) + timedelta(seconds=i)),
                user_budget=None,
                tenant_budget=None,
                restriction_since=round_start(r) - timedelta(minutes=5),
            )
            for i in range(RACERS)
        ]
        for r in range(ROUNDS)
    ]
    results = race_rounds(open_table_store, rounds)
    assert [sorted(map(str, outcome)) for outcome in results] == [["None"] + ["started"] * (RACERS - 1)] * ROUNDS


@pytest.mark.azurite
def test_racing_instances_take_over_an_expired_ticket_lease_exactly_once(open_table_store: OpenStore) -> None:
    correlations = [f"rsr-stale-{r}" for r in range(ROUNDS)]

    async def crashed_holder(store: Store) -> list[TicketSlot]:
        return [await store.begin_ticket(c, "crashed", T0) for c in correlations]

    assert run(open_table_store, crashed_holder) == [CREATE] * ROUNDS
    expired = T0 + TICKET_LEASE + timedelta(minutes=1)
    rounds = [[begin(c, f"e{i}", expired) for i in range(RACERS)] for c in correlations]
    results = race_rounds(open_table_store, rounds)
    assert [sorted(slot.action for slot in outcome) for outcome in results] == [
        ["create"] + ["wait"] * (RACERS - 1)
    ] * ROUNDS


def test_racing_instances_move_a_cursor_from_one_version_exactly_once(open_table_store: OpenStore) -> None:
    async def setup(store: Store) -> str:
        assert await store.write_cursor("moved", "start", None)
        start = await store.read_cursor("moved")
        assert start is not None
        return start.version

    def writing(name: str, value: str, version: str | None) -> Callable[[Store], Awaitable[bool]]:
        return lambda store: store.write_cursor(name, value, version)

    version = run(open_table_store, setup)
    rounds = [
        [writing("created", f"c{i}", None) for i in range(2)],
        [writing("moved", f"m{i}", version) for i in range(2)],
    ]
    assert [sorted(outcome) for outcome in race_rounds(open_table_store, rounds)] == [[False, True]] * 2


def closed_port_store() -> TableStore:
    from azure.data.tables.aio import TableServiceClient

    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint=http://127.0.0.1:{free_port()}/{DEV_ACCOUNT};"
    )
    return TableStore(TableServiceClient.from_connection_string(connection, retry_total=0, connection_timeout=1))


OPERATIONS: dict[str, Callable[[Store], Awaitable[object]]] = {
    "claim": lambda s: s.claim(KEY, "d1", T0),
    "complete": lambda s: s.complete(KEY, "d1", "unblock", T0),
    "record_unblock": lambda s: s.record_unblock(unblock(ALICE, "e1", T0)),
    "unblocks": lambda s: s.unblocks(ALICE, T0),
    "tenant_unblocks": lambda s: s.tenant_unblocks(T0),
    "reserve_unblock": lambda s: s.reserve_unblock(unblock(ALICE, "e1", T0), user_budget=WEEK, tenant_budget=HOUR),
    "append_audit": lambda s: s.append_audit(audit_record("e1", ALICE, "2026-11-27T08:00:00Z", "wait")),
    "audit": lambda s: s.audit(),
    "begin_ticket": lambda s: s.begin_ticket(CORRELATION, "e1", T0),
    "ticket_opened": lambda s: s.ticket_opened(CORRELATION, "e1", TICKET, T0),
    "ticket_noted": lambda s: s.ticket_noted(CORRELATION, "e1", T0),
    "claim_state": lambda s: s.claim_state(KEY),
    "add_report": lambda s: s.add_report(RESTRICTION, Source("poll", "a1", T0)),
    "reports": lambda s: s.reports(RESTRICTION),
    "read_cursor": lambda s: s.read_cursor("poll"),
    "write_cursor": lambda s: s.write_cursor("poll", "w1", None),
    "keep_pending": lambda s: s.keep_pending(DEFENDER, "a1", {}, T0),
    "pending": lambda s: s.pending(DEFENDER, ["a1", "a2"], T0),
}


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_unreachable_table_storage_is_a_transient_service_error(
    operation: Callable[[Store], Awaitable[object]],
) -> None:
    with pytest.raises(TransientServiceError) as caught:
        run(closed_port_store, operation)
    assert caught.value.service == "store"
