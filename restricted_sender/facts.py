"""Gathers the facts one decision needs: concurrently, each once, nothing the policy does not ask for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .model import Facts, RestrictionEvent, UnblockEntry
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
    """At most two rounds of concurrent look-ups before deciding: the second only for what the first revealed
    (the user's object id for risk, another address, folders that inbox rules move mail to).

    ``policy`` is ``None`` when it failed to load: then only the restriction is looked up (fail closed).
    """
    exchange, directory, store = sources.exchange, sources.directory, sources.store
    guards = policy.guards if policy else None
    groups = sorted(policy.group_ids()) if policy else []
    user_budget = guards.max_unblocks_per_user if guards else None
    tenant_budget = guards.max_unblocks_per_tenant if guards else None
    since = now - (timedelta(hours=user_budget.window_hours) if user_budget else _NO_HISTORY_WINDOW)
    # "high" lets every level through: nothing to ask Identity Protection then.
    want_risk = guards is not None and guards.max_risk_level not in (None, "high")
    want_rules = guards is not None and guards.suspicious_inbox_rules
    want_forwarding = guards is not None and guards.external_forwarding
    address, object_id = event.user.address, event.user.object_id
    key = object_id or address
    assert key is not None, "an event names a user by address or object id"

    restriction, user, member_of, history, tenant_history, rules, domains, forwarding, risk = await _all(
        _restriction(exchange, address) if address else _none(),
        directory.user(key) if policy or not address else _none(),
        directory.member_groups(key, groups) if groups else _empty_set(),
        store.unblocks(address, since) if policy and address else _empty_list(),
        store.tenant_unblocks(now - timedelta(hours=tenant_budget.window_hours)) if tenant_budget else _empty_list(),
        directory.inbox_rules(key) if want_rules else _none(),
        directory.verified_domains() if want_rules or want_forwarding else _empty_set(),
        exchange.mailbox_forwarding(address) if want_forwarding and address else _none(),
        directory.risk_level(object_id) if want_risk and object_id else _none(),
    )
    if user is None and not address:
        return Facts(notes=(f"object id {object_id} is not a user in the directory",))

    # The restricted list is keyed by the primary SMTP address, which need not be the UPN.
    tried = {address.lower()} if address else set()
    for other in user.addresses() if user else ():
        if restriction is not None:
            break
        if other not in tried:
            tried.add(other)
            restriction = await _restriction(exchange, other)

    second: dict[str, Awaitable[Any]] = {}
    if restriction is not None and policy and restriction.address.lower() != (address or "").lower():
        second["history"] = store.unblocks(restriction.address, since)
    if want_forwarding and not address and restriction is not None:
        second["forwarding"] = exchange.mailbox_forwarding(restriction.address)
    if want_risk and not object_id and user is not None:
        second["risk"] = directory.risk_level(user.id)
    folders = sorted(
        {r.move_to_folder for r in rules or () if r.enabled and r.move_to_folder and not r.folder_name({})}
    )
    for folder in folders:
        second[f"folder:{folder}"] = directory.folder_name(key, folder)
    found = dict(zip(second, await _all(*second.values()), strict=True)) if second else {}
    history = [*history, *found.get("history", [])]
    forwarding = found.get("forwarding", forwarding)
    risk = found.get("risk", risk)
    folder_names = {f: found[f"folder:{f}"] for f in folders if found.get(f"folder:{f}")}

    notes: list[str] = []
    if policy and user is None:
        notes.append(f"{address or object_id} was not found in the directory: account state and groups unknown")
    if want_risk and risk is None:
        notes.append("risk-unknown: Identity Protection gave no risk level (no Entra ID P2, or no risk record)")
    if want_rules and rules is None:
        notes.append("inbox rules could not be read: the user has no mailbox in Exchange Online")
    # This event's own pending unblock (a retry after a failure) must not count against its budget.
    counted = tuple(sorted((h for h in history if h.event_id != event.event_id), key=lambda h: h.at))
    # This event's own entry is its intent record: an earlier try decided to unblock and may have sent it.
    own = max((h for h in history if h.event_id == event.event_id), key=lambda h: h.at, default=None)
    return Facts(
        own_unblock=own,
        restriction=restriction,
        user=user,
        member_of=frozenset(g.lower() for g in member_of),
        unblocks=counted,
        notes=tuple(notes),
        tenant_unblocks=tuple(h for h in tenant_history if h.event_id != event.event_id),
        risk_level=risk,
        inbox_rules=rules,
        folder_names=folder_names,
        forwarding=forwarding,
        tenant_domains=frozenset(domains),
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
