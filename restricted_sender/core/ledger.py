"""The rules every store follows for claims, ticket ledgers, budgets and pending rows: pure, shared by the
in-memory and Table Storage stores so that each decides alike."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from restricted_sender.model import TicketRef, UnblockEntry
from restricted_sender.ports import BudgetRefusal, ClaimResult, TicketSlot

if TYPE_CHECKING:
    from restricted_sender.core.policy import Budget

TICKET_LEASE = timedelta(minutes=2)
TICKET_NOTED_KEEP = 200  # a ledger row remembers the last 200 events added to its ticket


def resolve_ticket(
    *,
    owner: str,
    started_at: datetime,
    ticket: TicketRef | None,
    noted: Collection[str],
    event_id: str,
    now: datetime,
) -> TicketSlot:
    """What an existing ticket-ledger row means for ``event_id``; one rule shared by every store backend.

    A recorded ticket: ``done`` when ``event_id`` is noted on it, else ``update``. No ticket yet: the owner's own
    retry, or anyone once the owner's lease (``TICKET_LEASE`` from ``started_at``) ran out, gets ``create`` (the
    store then writes itself in as owner, conditionally, so one of several takers wins); everyone else ``wait``.
    """
    if ticket is not None:
        return TicketSlot("done" if event_id in noted else "update", ticket)
    if owner == event_id or now - started_at > TICKET_LEASE:
        return TicketSlot("create")
    return TicketSlot("wait")


def noted_with(noted: Sequence[str], event_id: str) -> list[str]:
    """``noted`` with ``event_id`` added once, keeping the newest ``TICKET_NOTED_KEEP`` ids (oldest first).

    An event pushed out of a busy ticket's window would be added to it again if it were retried after that:
    a repeated work note, never a second ticket.
    """
    kept = list(noted)
    if event_id not in kept:
        kept.append(event_id)
    return kept[-TICKET_NOTED_KEEP:]


CLAIM_LEASE = timedelta(minutes=15)


MAX_PENDING_CHARS = 30_000  # of JSON: what fits in one Table Storage string property (64 KiB of UTF-16)


def pending_text(group: str, key: str, data: Mapping[str, Any]) -> str:
    """``data`` as ASCII JSON, refused with ``ValueError`` when it would not fit; one rule for every store."""
    text = json.dumps(data, separators=(",", ":"))  # ASCII: one UTF-16 unit per character
    if len(text) > MAX_PENDING_CHARS:
        raise ValueError(
            f"pending data for ({group!r}, {key!r}) is {len(text)} characters of JSON: at most {MAX_PENDING_CHARS}"
        )
    return text


def resolve_claim(*, owner: str, state: str, claimed_at: datetime, delivery_id: str, now: datetime) -> ClaimResult:
    """What an existing claim row means for ``delivery_id``; one rule shared by every store backend.

    The owner's own redelivery resumes (its earlier attempt failed before completing; every action is
    idempotent). Another delivery is a duplicate, unless the owner's lease ran out without completing:
    then it takes over, so a crashed processor never strands an event.
    """
    if state == "done":
        return ClaimResult.DUPLICATE
    if owner == delivery_id or now - claimed_at > CLAIM_LEASE:
        return ClaimResult.RESUMED
    return ClaimResult.DUPLICATE


def earlier_unblock(history: Iterable[UnblockEntry], user: str, since: datetime) -> UnblockEntry | None:
    """The latest of ``user``'s entries at or after ``since`` (when the restriction began) that spent Remove: an
    unblock of that very restriction, after which Remove is not sent again."""
    user = user.lower()
    found = [e for e in history if e.user.lower() == user and e.spent and e.at >= since]
    return max(found, key=lambda e: e.at, default=None)


def budget_refusal(
    entry: UnblockEntry,
    history: Iterable[UnblockEntry],
    *,
    user_budget: Budget | None,
    tenant_budget: Budget | None,
    restriction_since: datetime | None = None,
) -> BudgetRefusal | None:
    """Why recording ``entry`` is refused, given the tenant's ``history``; one rule for every store.

    Leaves out entries of ``entry.event_id`` (a retry of the same event never counts against itself). First
    "started": the user already has an entry that spent Remove at or after ``restriction_since`` (an unblock of
    this very restriction, by another event: Remove is never sent twice for one block). Then the budgets, with
    :meth:`Budget.spent_by`: the user's own against ``user_budget``, then everyone's against ``tenant_budget``.
    ``None`` is unlimited. ``history`` may hold more than needed: the rule filters.
    """
    user = entry.user.lower()
    counted = [e for e in history if e.event_id != entry.event_id]

    if restriction_since is not None and earlier_unblock(counted, user, restriction_since) is not None:
        return "started"

    if user_budget is not None and user_budget.is_spent((e for e in counted if e.user.lower() == user), entry.at):
        return "user"
    if tenant_budget is not None and tenant_budget.is_spent(counted, entry.at):
        return "tenant"
    return None
