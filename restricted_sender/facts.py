"""Gathers the facts one decision needs: concurrently, each once, nothing the policy does not ask for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .model import DirectoryUser, Facts, RestrictionEvent, UnblockEntry
from .policy import Policy
from .ports import Directory, Exchange, Store
from .restriction import BlockedSender

_NO_HISTORY_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class FactSources:
    exchange: Exchange
    directory: Directory
    store: Store


async def gather_facts(event: RestrictionEvent, policy: Policy | None, sources: FactSources, now: datetime) -> Facts:
    """One round of concurrent look-ups; a second only when the user turns out to have another address.

    ``policy`` is ``None`` when it failed to load: then only the restriction is looked up (fail closed).
    """
    groups = sorted(policy.group_ids()) if policy else []
    budget = policy.guards.max_unblocks_per_user if policy else None
    since = now - (timedelta(hours=budget.window_hours) if budget else _NO_HISTORY_WINDOW)
    address = event.user.address
    object_id = event.user.object_id
    notes: list[str] = []

    user: DirectoryUser | None
    if address:
        directory_key = object_id or address
        restriction, user, member_of, history = await _all(
            _restriction(sources.exchange, address),
            sources.directory.user(directory_key) if policy else _none(),
            sources.directory.member_groups(directory_key, groups) if groups else _empty_set(),
            sources.store.unblocks(address, since) if policy else _empty_list(),
        )
    else:
        assert object_id is not None, "an event names a user by address or object id"
        # Only the object id is known: the directory must name the mailbox before Exchange can be asked.
        user, member_of = await _all(
            sources.directory.user(object_id),
            sources.directory.member_groups(object_id, groups) if groups else _empty_set(),
        )
        if user is None:
            return Facts(notes=(f"object id {object_id} is not a user in the directory",))
        restriction, history = None, []

    # The restricted list is keyed by the primary SMTP address, which need not be the UPN.
    tried = {address.lower()} if address else set()
    for other in user.addresses() if user else ():
        if restriction is not None:
            break
        if other not in tried:
            tried.add(other)
            restriction = await _restriction(sources.exchange, other)
    if restriction is not None and policy and restriction.address.lower() != (address or "").lower():
        history = [*history, *await sources.store.unblocks(restriction.address, since)]

    if policy and user is None:
        notes.append(f"{address or object_id} was not found in the directory: account state and groups unknown")
    # This event's own pending unblock (a retry after a failure) must not count against its budget.
    counted = tuple(sorted((h for h in history if h.event_id != event.event_id), key=lambda h: h.at))
    return Facts(
        restriction=restriction,
        user=user,
        member_of=frozenset(g.lower() for g in member_of),
        unblocks=counted,
        notes=tuple(notes),
    )


async def _restriction(exchange: Exchange, address: str) -> BlockedSender | None:
    rows = await exchange.blocked_senders(address)
    wanted = address.lower()
    return next((r for r in rows if r.address.lower() == wanted), None)


async def _all(*steps: Awaitable[Any]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest and raise that error itself (not a group)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _none() -> None:
    return None


async def _empty_set() -> frozenset[str]:
    return frozenset()


async def _empty_list() -> Sequence[UnblockEntry]:
    return []
