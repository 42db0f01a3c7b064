"""Gathers the facts one decision needs: concurrently, each once, nothing the policy does not ask for.

Every user-specific fact is about ONE identity. The restricted address is the anchor (the restricted list is what
Microsoft blocked); the directory user is bound to it only when that user owns it (UPN, ``mail`` or an SMTP
``proxyAddresses`` entry). The look-ups start speculatively with what the alert said, and a result is kept only
when it was fetched by the bound user's own key; anything else is fetched again for the bound user. So an alert
that pairs one user's address with another user's object id is decided on the facts of the user who owns the
restricted address (noted ``identity-mismatch``), and a restricted address no user can be bound to is never
unblocked (``decide`` tickets it ``identity-unbound``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from restricted_sender.core.mailbox import Forwarding, InboxRule
from restricted_sender.core.policy import Policy
from restricted_sender.core.restriction import Anchor, BlockedSender
from restricted_sender.errors import ServiceRefused, TransientServiceError
from restricted_sender.model import (
    DirectoryRole,
    DirectoryUser,
    Facts,
    MfaRegistration,
    Note,
    NoteCode,
    RestrictionEvent,
    UnblockEntry,
)
from restricted_sender.ports import Directory, Exchange, Store
from restricted_sender.timeutil import iso, parse_instant

_NO_HISTORY_WINDOW = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class FactSources:
    exchange: Exchange
    directory: Directory
    store: Store


@dataclass(frozen=True, slots=True)
class _Wants:
    """What the policy asks for, and so what is looked up at all."""

    groups: tuple[str, ...] = ()
    risk: bool = False
    rules: bool = False
    forwarding: bool = False
    history: bool = False
    since: datetime | None = None
    roles: bool = False
    mfa: bool = False
    mfa_guard: bool = False

    @property
    def by_id(self) -> bool:
        """Anything Graph answers only by the user's object id."""
        return self.risk or self.roles or self.mfa


@dataclass(frozen=True, slots=True)
class _ById:
    """What Graph answers only by object id: Identity Protection's risk, the directory roles, MFA registration."""

    risk: str | None = None
    roles: tuple[DirectoryRole, ...] = ()
    eligible_known: bool = True
    roles_unread: str | None = None
    mfa: MfaRegistration | None = None
    mfa_refused: str | None = None


@dataclass(frozen=True, slots=True)
class _DirectoryFacts:
    """The directory's facts about the user Graph resolves ``key`` to (``/users/{key}``: an object id or a UPN)."""

    key: str
    user: DirectoryUser | None
    member_of: frozenset[str] = frozenset()
    rules: tuple[InboxRule, ...] | None = None
    by_id: _ById | None = None  # None: not asked (the key was not an object id)

    def about(self, user: DirectoryUser) -> bool:
        """Fetched by ``user``'s own key, so every part of it is about ``user`` (not someone sharing an address)."""
        return (
            self.user is not None
            and self.user.id.lower() == user.id.lower()
            and self.key.lower() in (user.id.lower(), user.user_principal_name.lower())
        )


@dataclass(frozen=True, slots=True)
class _MailboxFacts:
    """Exchange's and our store's facts about one address (the restricted one, once bound)."""

    address: str
    history: tuple[UnblockEntry, ...] = ()
    forwarding: Forwarding | None = None


@dataclass
class _Notes:
    found: list[Note] = field(default_factory=list)

    def add(self, code: NoteCode, text: str) -> None:
        self.found.append(Note(code, text))


async def gather_facts(event: RestrictionEvent, policy: Policy | None, sources: FactSources, now: datetime) -> Facts:
    """Usually two rounds of concurrent look-ups before deciding: the second only for what the first revealed (the
    user's object id for risk, folders that inbox rules move mail to). An alert whose address is not the restricted
    one, or whose object id is not the address's owner, costs a round or two more.

    ``policy`` is ``None`` when it failed to load: then only the restriction is looked up (fail closed).
    """
    exchange, directory, store = sources.exchange, sources.directory, sources.store
    guards = policy.guards if policy else None
    user_budget = guards.max_unblocks_per_user if guards else None
    tenant_budget = guards.max_unblocks_per_tenant if guards else None
    wants = _Wants(
        groups=tuple(sorted(policy.group_ids())) if policy else (),
        # "high" lets every level through: nothing to ask Identity Protection then.
        risk=guards is not None and guards.max_risk_level not in (None, "high"),
        rules=guards is not None and guards.suspicious_inbox_rules,
        forwarding=guards is not None and guards.external_forwarding,
        history=policy is not None,
        roles=guards is not None and bool(guards.privileged_roles),
        # Evidence whatever the guard says (README: Permissions explains why it is always asked).
        mfa=policy is not None,
        mfa_guard=guards is not None and guards.require_mfa_registered,
        since=now - (timedelta(hours=user_budget.window_hours) if user_budget else _NO_HISTORY_WINDOW),
    )
    address, object_id = event.user.address, event.user.object_id
    key = object_id or address
    assert key is not None, "an event names a user by address or object id"
    notes = _Notes()

    # Round 1: the restriction by the alert's address and, speculatively, everything about the user the alert names.
    restriction, named, mailbox, tenant_history, domains = await _all(
        _restriction(exchange, address) if address else _none(),
        _directory_facts(directory, key, wants, object_id=object_id) if policy or not address else _none(),
        _mailbox_facts(exchange, store, address, wants) if address and policy else _none(),
        store.tenant_unblocks(now - timedelta(hours=tenant_budget.window_hours)) if tenant_budget else _empty_list(),
        directory.verified_domains() if wants.rules or wants.forwarding else _empty_set(),
    )
    named_user = named.user if named else None
    if named_user is None and not address:
        return Facts(
            notes=(Note(NoteCode.USER_NOT_IN_DIRECTORY, f"object id {object_id} is not a user in the directory"),)
        )

    owner: DirectoryUser | None = None
    if restriction is None:
        # The restricted list is keyed by the primary SMTP address, which need not be the address the alert gave:
        # look for the other addresses of the user who owns the alert's address (never of someone else).
        owner = named_user if named_user is not None and (not address or named_user.owns(address)) else None
        if owner is None and policy and address and (named is None or named.key.lower() != address.lower()):
            owner = _owning(await directory.user(address), address)
        if owner is not None:
            tried = {address.lower()} if address else set()
            others = [a for a in dict.fromkeys((owner.primary_smtp(), *owner.addresses())) if a and a not in tried]
            listed = await _all(*(_restriction(exchange, a) for a in others))
            restriction = next((r for r in listed if r is not None), None)
    restriction = await anchored(store, restriction, now)
    if restriction is None or policy is None:
        own = _own(event, mailbox.history if mailbox else ())
        if own is None and policy and owner is not None:
            # Not listed now: if an earlier try of this event sent the unblock, its intent is under the address it
            # removed, which may be another of the owner's addresses than the alert's.
            others = [a for a in owner.addresses() if not address or a != address.lower()]
            histories = await _all(*(store.unblocks(a, wants.since or now - _NO_HISTORY_WINDOW) for a in others))
            own = _own(event, [h for entries in histories for h in entries])
        return Facts(restriction=restriction, user=owner if policy else None, own_unblock=own)

    # Bind: the one directory user who owns the restricted address.
    anchor = restriction.address.lower()
    user = _owning(named_user, anchor)
    if user is None and not (named is not None and named.key.lower() == anchor):
        user = _owning(await directory.user(anchor), anchor)
    if object_id and (user is None or user.id.lower() != object_id):
        who = f"{named_user.user_principal_name} ({object_id})" if named_user else f"object id {object_id}"
        bound = f"{user.user_principal_name} ({user.id})" if user else "no directory user"
        notes.add(
            NoteCode.IDENTITY_MISMATCH,
            f"the alert names {who}, but the restricted address {anchor} belongs to {bound}: "
            + (f"the facts are those of {bound}" if user else "nothing about the named user was used"),
        )
    if user is None:
        notes.add(
            NoteCode.USER_NOT_IN_DIRECTORY,
            f"no directory user owns {anchor}: account state, groups, rules and risk unknown",
        )

    # Keep what was fetched by the bound identity's own keys; fetch the rest for it now.
    directory_facts = named if named is not None and user is not None and named.about(user) else None
    folder_names: dict[str, str | None] = {}
    second: dict[str, Awaitable[Any]] = {}
    if user is not None and directory_facts is None:
        second["directory"] = _directory_facts(directory, user.id, wants, object_id=user.id, user=user)
    elif user is not None and directory_facts is not None:
        if wants.by_id and directory_facts.by_id is None:
            second["by_id"] = _by_id(directory, user.id, wants)
        for folder in _folders(directory_facts.rules):
            second[f"folder:{folder}"] = directory.folder_name(user.id, folder)
    if mailbox is None or mailbox.address.lower() != anchor:
        second["mailbox"] = _mailbox_facts(exchange, store, restriction.address, wants)
    found = dict(zip(second, await _all(*second.values()), strict=True)) if second else {}
    folder_names.update({k[7:]: v for k, v in found.items() if k.startswith("folder:")})
    if "by_id" in found and directory_facts is not None:
        directory_facts = replace(directory_facts, by_id=found["by_id"])
    if "directory" in found and user is not None:
        directory_facts = found["directory"]
        folders = _folders(directory_facts.rules)
        names = await _all(*(directory.folder_name(user.id, f) for f in folders))
        folder_names.update(zip(folders, names, strict=True))
    mailbox = found.get("mailbox", mailbox)
    assert mailbox is not None
    rules = directory_facts.rules if directory_facts else None

    # Never asked (no path should lead here for a bound user): privilege is then unknown, and the guard fails closed.
    unasked = _ById(roles_unread="not asked" if wants.roles else None)
    by_id = directory_facts.by_id if directory_facts and directory_facts.by_id else unasked
    risk = by_id.risk
    if wants.risk and user is not None and risk is None:
        notes.add(NoteCode.RISK_UNKNOWN, "Identity Protection gave no risk level (no Entra ID P2, or no risk record)")
    if wants.roles and user is not None:
        if by_id.roles_unread is not None:
            notes.add(NoteCode.ROLES_UNREAD, f"the directory roles could not be read ({by_id.roles_unread}): the "
                      "privileged guard fails closed")  # fmt: skip
        elif not by_id.eligible_known:
            notes.add(NoteCode.ELIGIBLE_ROLES_UNKNOWN, "eligible (PIM) directory roles are unknown without Entra ID "
                      "P2: only active role assignments were checked")  # fmt: skip
    if wants.mfa_guard and user is not None and by_id.mfa is None:
        why = by_id.mfa_refused or "no Entra ID P1/P2, or no registration record"
        notes.add(NoteCode.MFA_UNKNOWN, f"the MFA registration is unknown ({why})")
    if mailbox.forwarding is not None and mailbox.forwarding.unresolved:
        notes.add(
            NoteCode.FORWARDING_UNRESOLVED,
            f"the mailbox forwards to recipient {mailbox.forwarding.recipient!r}, which Get-Recipient could not "
            "resolve: where that mail goes is unknown, so the forwarding guard fails closed",
        )
    if wants.rules and user is not None and rules is None:
        notes.add(NoteCode.INBOX_RULES_UNREAD, "the inbox rules could not be read: the user has no mailbox to read")
    for folder, name in folder_names.items():
        if name is None:
            using = ", ".join(f'"{r.name}"' for r in rules or () if r.move_to_folder == folder)
            notes.add(NoteCode.FOLDER_UNREAD, f"inbox rule {using} moves mail to folder {folder}, whose name could "
                      "not be read: whether it hides mail was not checked")  # fmt: skip
    # This event's own pending unblock (a retry after a failure) must not count against its budget.
    counted = tuple(sorted((h for h in mailbox.history if h.event_id != event.event_id), key=lambda h: h.at))
    # This event's own entry is its intent record: an earlier try decided to unblock and may have sent it.
    own = _own(event, mailbox.history)
    return Facts(
        own_unblock=own,
        restriction=restriction,
        user=user,
        member_of=directory_facts.member_of if directory_facts else frozenset(),
        unblocks=counted,
        notes=tuple(notes.found),
        tenant_unblocks=tuple(h for h in tenant_history if h.event_id != event.event_id),
        risk_level=risk,
        inbox_rules=rules,
        folder_names={f: n for f, n in folder_names.items() if n},
        forwarding=mailbox.forwarding,
        tenant_domains=frozenset(domains),
        roles=by_id.roles,
        roles_unread=by_id.roles_unread if user is not None else None,
        mfa=by_id.mfa,
        mfa_unread=by_id.mfa_refused if user is not None else None,
    )


async def _directory_facts(
    directory: Directory, key: str, wants: _Wants, *, object_id: str | None, user: DirectoryUser | None = None
) -> _DirectoryFacts:
    """The user ``key`` names and, concurrently, its groups and rules (and its risk, roles and MFA registration,
    when the key is its object id)."""
    found_user, member_of, rules, by_id = await _all(
        _value(user) if user is not None else directory.user(key),
        directory.member_groups(key, wants.groups) if wants.groups else _empty_set(),
        directory.inbox_rules(key) if wants.rules else _none(),
        _by_id(directory, object_id, wants) if wants.by_id and object_id else _none(),
    )
    return _DirectoryFacts(key, found_user, frozenset(g.lower() for g in member_of), rules, by_id)


@dataclass(frozen=True, slots=True)
class _Refused:
    message: str


async def _or_refused(step: Awaitable[Any]) -> Any:
    """``step``'s value, or why the service refused it (a missing permission or licence): such a fact is unknown,
    and the guard that needs it decides what unknown means. Transient failures still raise (the queue retries)."""
    try:
        return await step
    except ServiceRefused as refused:
        return _Refused(refused.message)


async def _by_id(directory: Directory, object_id: str, wants: _Wants) -> _ById:
    """Concurrently: risk, active and eligible directory roles, MFA registration (each only when wanted)."""
    risk, active, eligible, mfa = await _all(
        directory.risk_level(object_id) if wants.risk else _none(),
        _or_refused(directory.active_roles(object_id)) if wants.roles else _value(()),
        _or_refused(directory.eligible_roles(object_id)) if wants.roles else _value(()),
        _or_refused(directory.mfa_registration(object_id)) if wants.mfa else _none(),
    )
    refusals = [r.message for r in (active, eligible) if isinstance(r, _Refused)]
    roles = () if refusals else (*active, *(eligible or ()))
    return _ById(
        risk=risk,
        roles=roles,
        eligible_known=eligible is not None,
        roles_unread="; ".join(refusals) or None,
        mfa=mfa if isinstance(mfa, MfaRegistration) else None,
        mfa_refused=mfa.message if isinstance(mfa, _Refused) else None,
    )


async def _mailbox_facts(exchange: Exchange, store: Store, address: str, wants: _Wants) -> _MailboxFacts:
    assert wants.since is not None
    history, forwarding = await _all(
        store.unblocks(address, wants.since) if wants.history else _empty_list(),
        exchange.mailbox_forwarding(address) if wants.forwarding else _none(),
    )
    return _MailboxFacts(address, tuple(history), forwarding)


def _folders(rules: Sequence[InboxRule] | None) -> list[str]:
    """Folder ids enabled rules move mail to, whose display name is needed to judge them."""
    return sorted({r.move_to_folder for r in rules or () if r.enabled and r.move_to_folder and not r.folder_name({})})


def _owning(user: DirectoryUser | None, address: str) -> DirectoryUser | None:
    return user if user is not None and user.owns(address) else None


def first_seen_cursor(address: str) -> str:
    return f"first-seen|{address.lower()}"


async def anchored(store: Store, restriction: BlockedSender | None, now: datetime) -> BlockedSender | None:
    """``restriction`` with an instant that tells it from other blocks of the same user.

    A row without ``CreatedDatetime`` or ``ChangedDatetime`` is anchored at the time the product first saw the user
    restricted, kept in the store (written once, whoever sees it first), so every report of it shares one key. An
    unblock of it clears the mark (``clear_first_seen``): the next such block gets a time of its own.
    """
    if restriction is None or restriction.anchor[0] is not Anchor.NONE:
        return restriction
    name = first_seen_cursor(restriction.address)
    for _ in range(3):
        cursor = await store.read_cursor(name)
        if cursor is not None and cursor.value:
            return restriction.seen_first_at(parse_instant(cursor.value))
        if await store.write_cursor(name, iso(now), cursor.version if cursor else None):
            return restriction.seen_first_at(now)
    raise TransientServiceError("store", f"the first-seen time of {restriction.address} keeps changing")


async def clear_first_seen(store: Store, restriction: BlockedSender) -> None:
    """Forget when a block without times was first seen, once it is unblocked."""
    if restriction.anchor[0] is not Anchor.FIRST_SEEN:
        return
    name = first_seen_cursor(restriction.address)
    cursor = await store.read_cursor(name)
    if cursor is not None and cursor.value:
        await store.write_cursor(name, "", cursor.version)  # lost to a newer writer: theirs stands


def _own(event: RestrictionEvent, history: Iterable[UnblockEntry]) -> UnblockEntry | None:
    """This event's own unblock entry, the newest: its intent record (an earlier try decided to unblock)."""
    return max((h for h in history if h.event_id == event.event_id), key=lambda h: h.at, default=None)


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


async def _value(value: Any) -> Any:
    return value


async def _none() -> None:
    return None


async def _empty_set() -> frozenset[str]:
    return frozenset()


async def _empty_list() -> Sequence[UnblockEntry]:
    return []
