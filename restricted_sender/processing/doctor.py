"""``doctor``: prove a deployment with the app's own credentials, before the first alert needs it.

Each probe is one read-only call through the product's own adapters (no unblock, no ticket, no mail) and ends in a
:class:`Probe`: ok, a missing permission (which one, and the ``scripts/grant-permissions`` line that grants it,
from :mod:`restricted_sender.entrypoints.permissions`), not licensed, unreachable, an unexpected shape (field names
seen and expected, never values), misconfigured, or skipped (not needed by this policy, or not checkable without
acting).
:func:`classify` and :func:`compare_fields` are pure; :func:`diagnose` runs the probes. Heavy clients are built
by the caller (``compose.doctor_targets``): this module imports nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote

from restricted_sender.core.policy import LoadedPolicy, effective
from restricted_sender.entrypoints.permissions import (
    GRAPH_CALLS,
    PERMISSIONS,
    IntakePaths,
    Permission,
    grant_line,
    required,
)
from restricted_sender.errors import (
    ConfigurationError,
    PolicyError,
    ResponderError,
    ServiceError,
    TransientServiceError,
)
from restricted_sender.ports import ManagementActivity, Store, TicketSystem

TokenProvider = Callable[[], Awaitable[str]]
TICKET_PROBE_ID = "rsr-doctor-probe"  # a correlation id no ticket carries: the search reads, finds nothing
MAX_FIELDS_SHOWN = 12


class Verdict(StrEnum):
    OK = "ok"
    MISSING_PERMISSION = "missing-permission"
    NOT_LICENSED = "not-licensed"  # a note: the product degrades (risk unknown), it does not fail
    UNREACHABLE = "unreachable"
    UNEXPECTED_SHAPE = "unexpected-shape"
    MISCONFIGURED = "misconfigured"
    SKIPPED = "skipped"  # not needed by this policy, or no read-only way to check it


FAILING = frozenset({Verdict.MISSING_PERMISSION, Verdict.UNREACHABLE, Verdict.UNEXPECTED_SHAPE, Verdict.MISCONFIGURED})


@dataclass(frozen=True, slots=True)
class Probe:
    name: str
    verdict: Verdict
    detail: str = ""
    fix: tuple[str, ...] = ()
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.required and self.verdict in FAILING

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "fix": list(self.fix),
            "required": self.required,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Probe:
        return cls(
            name=str(data["name"]),
            verdict=Verdict(data["verdict"]),
            detail=str(data.get("detail") or ""),
            fix=tuple(str(f) for f in data.get("fix") or ()),
            required=bool(data.get("required", True)),
        )


@dataclass(frozen=True, slots=True)
class Report:
    probes: tuple[Probe, ...]

    @property
    def ok(self) -> bool:
        return not any(p.failed for p in self.probes)

    @property
    def failed(self) -> tuple[Probe, ...]:
        return tuple(p for p in self.probes if p.failed)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "probes": [p.to_dict() for p in self.probes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        probes = data.get("probes")
        if not isinstance(probes, list):
            raise ValueError("a doctor report has a list of probes")
        return cls(tuple(Probe.from_dict(p) for p in probes))

    def log_line(self) -> str:
        """One structured line for the daily run (``customDimensions``-friendly JSON, like ``log_decision``)."""
        return json.dumps(
            {
                "doctor": "ok" if self.ok else "failed",
                "failed": [p.name for p in self.failed],
                "verdicts": {p.name: p.verdict.value for p in self.probes},
            },
            separators=(",", ":"),
        )

    def table(self) -> str:
        width = max([len(p.name) for p in self.probes] + [5])
        lines = [f"{'probe':<{width}}  {'verdict':<18}  detail"]
        for p in self.probes:
            marker = p.verdict.value if p.required or p.verdict is Verdict.SKIPPED else f"{p.verdict.value} (note)"
            lines.append(f"{p.name:<{width}}  {marker:<18}  {p.detail}".rstrip())
            lines.extend(f"{'':<{width}}  {'':<18}  fix: {f}" for f in p.fix)
        failed = self.failed
        if failed:
            lines.append(f"FAILED: {len(failed)} probe(s) the policy needs: {', '.join(p.name for p in failed)}")
        else:
            lines.append("OK: everything the policy needs answered")
        return "\n".join(lines) + "\n"


# -- pure rules ----------------------------------------------------------------------------------------------------


def _permission(value: str) -> Permission:
    return next(p for p in PERMISSIONS if p.value == value)


def fixes(values: Iterable[str]) -> tuple[str, ...]:
    """How to grant ``values``: the line ``scripts/grant-permissions`` prints for each, or the Bicep for Azure RBAC."""
    out: list[str] = []
    for value in values:
        permission = _permission(value)
        if permission.granted_by_script:
            out.append(f"scripts/grant-permissions -> {grant_line(permission)}")
        else:
            out.append(f"azd provision (the Bicep template grants {permission.value} on the {permission.resource})")
    return tuple(out)


def classify(error: BaseException, permissions: Sequence[str]) -> tuple[Verdict, str, tuple[str, ...]]:
    """What a probe's failure means: the verdict, a detail without values from the tenant, and the fix."""
    status = getattr(error, "http_status", None)
    if type(error).__name__ == "NotLicensed":  # adapters.graph.NotLicensed: a 403 about the licence, not the app
        what = next((text for p, text in _UNLICENSED.items() if p in permissions), _UNLICENSED[""])
        return Verdict.NOT_LICENSED, f"HTTP {status or 403}: {what}", ()
    if isinstance(error, ServiceError) and status in (401, 403):
        needs = " and ".join(permissions) or "a permission"
        return Verdict.MISSING_PERMISSION, f"HTTP {status}: needs {needs}", fixes(permissions)
    if isinstance(error, PolicyError):
        return Verdict.MISCONFIGURED, error.message, ()
    if isinstance(error, ConfigurationError):
        return Verdict.MISCONFIGURED, error.message, ()
    if isinstance(error, TransientServiceError):
        return Verdict.UNREACHABLE, _cut(error.message), ()
    if isinstance(error, ResponderError):
        return Verdict.UNREACHABLE, _cut(f"refused: {error.message}"), ()
    return Verdict.UNREACHABLE, _cut(f"{type(error).__name__}: {error}"), ()


# What a missing licence means, by the permission of the call that met it.
_UNLICENSED = {
    "RoleManagement.Read.Directory": "no Entra ID P2 in the tenant: eligible (PIM) roles are unknown, only active "
    "roles are checked",
    "AuditLog.Read.All": "no Entra ID P1/P2 in the tenant: MFA registration stays unknown (a note, not a failure)",
    "": "no Entra ID P2 in the tenant: risk stays unknown, the risk guard cannot act",
}


def compare_fields(seen: Iterable[str], expected: Iterable[str]) -> tuple[Verdict, str]:
    """OK when every expected field name is there; else the names missing and the names seen (never values)."""
    names = sorted(set(seen))
    missing = [name for name in expected if name not in names]
    if not missing:
        return Verdict.OK, ""
    shown = ", ".join(names[:MAX_FIELDS_SHOWN]) + (", ..." if len(names) > MAX_FIELDS_SHOWN else "")
    return Verdict.UNEXPECTED_SHAPE, f"expected {', '.join(missing)}; seen {shown or 'no fields'}"


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- what the probes read through ------------------------------------------------------------------------------------


class CmdletRows(Protocol):
    @property
    def rows(self) -> Sequence[Mapping[str, Any]]: ...


class ExchangeReader(Protocol):
    async def invoke(self, cmdlet: str, parameters: dict[str, Any], *, pages: int | None = None) -> CmdletRows: ...


class GraphReader(Protocol):
    async def read(self, path: str, *, permission: str) -> Any: ...

    async def member_groups(self, key: str, group_ids: Sequence[str]) -> frozenset[str]: ...


class QueueReader(Protocol):
    async def exists(self) -> bool: ...


@dataclass
class Targets:
    """Everything the doctor probes, built with the app's own credentials."""

    policy: LoadedPolicy
    intake: IntakePaths
    tokens: Mapping[str, tuple[TokenProvider, tuple[str, ...]]]  # label -> (token, the permissions it carries)
    exchange: ExchangeReader
    graph: GraphReader
    tickets: TicketSystem
    management: ManagementActivity | None = None
    store: Store | None = None
    queues: Mapping[str, QueueReader] | None = None  # None: not checked here (the simulated run keeps them in memory)
    store_note: str = ""
    notes: list[str] = field(default_factory=list)
    teams_url_set: bool = False  # TEAMS_WEBHOOK_URL has a value (never the value: it carries the flow's key)


EXCHANGE_PERMISSIONS = ("Exchange.ManageAsApp", "Exchange Administrator")
BLOCKED_FIELDS = ("SenderAddress", "Reason", "CreatedDatetime")
MAILBOX_FIELDS = ("UserPrincipalName", "ForwardingAddress", "ForwardingSmtpAddress", "DeliverToMailboxAndForward")
RECIPIENT_FIELDS = ("RecipientType", "PrimarySmtpAddress", "ExternalDirectoryObjectId")
USER_FIELDS = ("id", "userPrincipalName", "mail", "accountEnabled", "userType", "createdDateTime")
RISKY_USER_FIELDS = ("id", "riskLevel")
ROLE_FIELDS = ("roleDefinitionId", "principalId")
REGISTRATION_FIELDS = ("id", "isMfaRegistered", "methodsRegistered")
FOLDER_FIELDS = ("id", "displayName")
DOMAIN_FIELDS = ("id", "isVerified")
ALERT_FIELDS = ("id", "title", "createdDateTime", "lastUpdateDateTime")
SUBSCRIPTION_FIELDS = ("contentType", "status")
LIST_FIELDS = ("value",)


_NO_USER = "no user to ask about"
_NO_OBJECT_ID = "no user object id to ask about"


class _Run:
    def __init__(self, targets: Targets) -> None:
        self.t = targets
        self.policy = effective(targets.policy)
        self.needed = {p.value for p in required(targets.policy, targets.intake)}
        self.probes: list[Probe] = []

    def add(self, probe: Probe) -> None:
        self.probes.append(probe)

    def skip_unless(self, name: str, permission: str) -> bool:
        """Record ``name`` as skipped when this policy does not need ``permission``; ``True`` when skipped."""
        if permission in self.needed:
            return False
        self.add(Probe(name, Verdict.SKIPPED, f"not needed: {_permission(permission).when}", required=False))
        return True

    def who_to_ask(self, name: str, permission: str, user: str | None, missing: str) -> str | None:
        """``user``, whom probe ``name`` asks about; ``None``, the probe recorded as skipped, when this policy does
        not need ``permission`` (``skip_unless``) or there is no user (``missing`` says which key is missing)."""
        if self.skip_unless(name, permission):
            return None
        if user is None:
            self.add(Probe(name, Verdict.SKIPPED, missing, required=False))
        return user

    async def attempt(
        self,
        name: str,
        call: Callable[[], Awaitable[Any]],
        permissions: Sequence[str],
        check: Callable[[Any], tuple[Verdict, str]] | None = None,
        *,
        required: bool = True,
    ) -> Any:
        """Run one probe; its result when it answered, else ``None`` (the probe is recorded either way)."""
        try:
            result = await call()
        except Exception as error:
            verdict, detail, fix = classify(error, permissions)
            self.add(Probe(name, verdict, detail, fix, required=required))
            return None
        verdict, detail = check(result) if check is not None else (Verdict.OK, "")
        self.add(Probe(name, verdict, detail, required=required))
        return result


def _row_check(expected: Sequence[str], empty: str) -> Callable[[Any], tuple[Verdict, str]]:
    """The first row of a list (Exchange rows, or a Graph ``value``) against ``expected``."""

    def check(result: Any) -> tuple[Verdict, str]:
        rows = result.get("value") if isinstance(result, dict) else result
        if not isinstance(rows, list):
            return compare_fields(result if isinstance(result, dict) else (), LIST_FIELDS)
        first = next((r for r in rows if isinstance(r, dict)), None)
        if first is None:
            return Verdict.OK, empty
        return compare_fields(first, expected)

    return check


def _object_check(expected: Sequence[str], absent: str) -> Callable[[Any], tuple[Verdict, str]]:
    def check(result: Any) -> tuple[Verdict, str]:
        if result is None:
            return Verdict.OK, absent
        return compare_fields(result if isinstance(result, dict) else (), expected)

    return check


def _path(key: str) -> str:
    return quote(key, safe="@")


async def diagnose(targets: Targets) -> Report:
    """Run every probe the policy and intake paths call for; never raises for what a probe finds."""
    run = _Run(targets)
    policy = run.policy
    if isinstance(targets.policy, PolicyError):
        run.add(Probe("policy", Verdict.MISCONFIGURED, _cut(targets.policy.message)))
    else:
        run.add(Probe("policy", Verdict.OK, f"mode {policy.mode}, version {policy.version}"))

    for label, (token, carries) in targets.tokens.items():
        await run.attempt(f"token: {label}", token, carries)

    # The mailbox the per-user probes ask about: a sender the policy names, else the first Exchange returns.
    senders = [s for s in (policy.notify.sender, policy.ticket.email_sender) if s]
    mailbox: str | None = senders[0] if senders else None
    await run.attempt(
        "exchange: Get-BlockedSenderAddress",
        lambda: _rows(targets.exchange.invoke("Get-BlockedSenderAddress", {}, pages=1)),
        EXCHANGE_PERMISSIONS,
        _row_check(BLOCKED_FIELDS, "no restricted sender now: no row to compare"),
    )
    params: dict[str, Any] = {"Identity": mailbox} if mailbox else {"ResultSize": 1}
    mailboxes = await run.attempt(
        "exchange: Get-Mailbox",
        lambda: _rows(targets.exchange.invoke("Get-Mailbox", params, pages=1)),
        EXCHANGE_PERMISSIONS,
        _row_check(MAILBOX_FIELDS, "no mailbox returned"),
    )
    if mailbox is None and mailboxes:
        upn = mailboxes[0].get("UserPrincipalName")
        mailbox = upn if isinstance(upn, str) and upn else None
    object_id: str | None = None
    if mailbox is None:
        run.add(Probe("exchange: Get-Recipient", Verdict.SKIPPED, "no mailbox to ask about", required=False))
    else:
        recipients = await run.attempt(
            "exchange: Get-Recipient",
            lambda: _rows(targets.exchange.invoke("Get-Recipient", {"Identity": mailbox}, pages=1)),
            EXCHANGE_PERMISSIONS,
            _row_check(RECIPIENT_FIELDS, "no recipient returned"),
        )
        if recipients and isinstance(recipients[0].get("ExternalDirectoryObjectId"), str):
            object_id = recipients[0]["ExternalDirectoryObjectId"]

    await _graph_probes(run, targets, mailbox, object_id)
    await _other_probes(run, targets, senders)
    return Report(tuple(run.probes))


async def _rows(answer: Awaitable[CmdletRows]) -> list[Mapping[str, Any]]:
    return list((await answer).rows)


async def _graph_probes(run: _Run, targets: Targets, mailbox: str | None, object_id: str | None) -> None:
    graph, policy = targets.graph, run.policy
    select = ",".join(USER_FIELDS)
    user_read = GRAPH_CALLS["user"]
    if mailbox is not None:
        found = await run.attempt(
            "graph: user",
            partial(graph.read, f"users/{_path(mailbox)}?$select={select}", permission=user_read[0]),
            user_read,
            _object_check(USER_FIELDS, "no such user"),
        )
    else:
        page = await run.attempt(
            "graph: user",
            lambda: graph.read(f"users?$top=1&$select={select}", permission=user_read[0]),
            user_read,
            _row_check(USER_FIELDS, "the directory has no user"),
        )
        rows = page.get("value") if isinstance(page, dict) else None
        found = rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else None
        if isinstance(found, dict) and isinstance(found.get("userPrincipalName"), str):
            mailbox = found["userPrincipalName"]
    if isinstance(found, dict) and isinstance(found.get("id"), str):
        object_id = found["id"]
    key = object_id or mailbox

    groups = sorted(policy.group_ids())
    asked = run.who_to_ask("graph: checkMemberGroups", "GroupMember.Read.All", key, _NO_USER)
    if asked is not None:
        await run.attempt(
            "graph: checkMemberGroups", partial(graph.member_groups, asked, groups[:20]), GRAPH_CALLS["member_groups"]
        )

    permission = GRAPH_CALLS["risk_level"][0]
    asked = run.who_to_ask("graph: riskyUsers", permission, object_id, _NO_OBJECT_ID)
    if asked is not None:
        await run.attempt(
            "graph: riskyUsers",
            partial(graph.read, f"identityProtection/riskyUsers/{asked}", permission=permission),
            GRAPH_CALLS["risk_level"],
            _object_check(RISKY_USER_FIELDS, "no risk record for this user (never at risk)"),
        )

    await _privilege_probes(run, targets, object_id)

    for name, call, path, expected in (
        ("graph: messageRules", "inbox_rules", "mailFolders/inbox/messageRules", LIST_FIELDS),
        ("graph: mailFolders", "folder_name", "mailFolders/inbox", FOLDER_FIELDS),
    ):
        permission = GRAPH_CALLS[call][0]
        asked = run.who_to_ask(name, permission, key, _NO_USER)
        if asked is None:
            continue
        user_path = f"users/{_path(asked)}/{path}"
        await run.attempt(
            name,
            partial(graph.read, user_path, permission=permission),
            GRAPH_CALLS[call],
            _object_check(expected, "the user has no mailbox"),
        )

    for name, call, path, check in (
        ("graph: domains", "verified_domains", "domains", _row_check(DOMAIN_FIELDS, "no domain returned")),
        (
            "graph: alerts_v2",
            "alerts_page",
            "security/alerts_v2?$top=1",
            _row_check(ALERT_FIELDS, "no alert now: no row to compare"),
        ),
    ):
        permission = GRAPH_CALLS[call][0]
        if not run.skip_unless(name, permission):
            await run.attempt(name, partial(graph.read, path, permission=permission), GRAPH_CALLS[call], check)


async def _privilege_probes(run: _Run, targets: Targets, object_id: str | None) -> None:
    """The privileged guard's role reads and the MFA evidence, both asked by object id."""
    graph = targets.graph
    role_permission = GRAPH_CALLS["active_roles"][0]
    for name, call, listing in (
        ("graph: roleAssignments", "active_roles", "roleAssignments"),
        ("graph: roleEligibilities (PIM)", "eligible_roles", "roleEligibilityScheduleInstances"),
    ):
        asked = run.who_to_ask(name, role_permission, object_id, _NO_OBJECT_ID)
        if asked is None:
            continue
        where = quote(f"principalId eq '{asked}'", safe="")
        await run.attempt(
            name,
            partial(graph.read, f"roleManagement/directory/{listing}?$filter={where}", permission=role_permission),
            GRAPH_CALLS[call],
            _row_check(ROLE_FIELDS, "the user holds no such role"),
        )
    name, permission = "graph: userRegistrationDetails", GRAPH_CALLS["mfa_registration"][0]
    asked = run.who_to_ask(name, permission, object_id, _NO_OBJECT_ID)
    if asked is None:
        return
    await run.attempt(
        name,
        partial(graph.read, f"reports/authenticationMethods/userRegistrationDetails/{asked}", permission=permission),
        GRAPH_CALLS["mfa_registration"],
        _object_check(REGISTRATION_FIELDS, "no registration record for this user"),
        required=run.policy.guards.require_mfa_registered,
    )


async def _other_probes(run: _Run, targets: Targets, senders: Sequence[str]) -> None:
    policy = run.policy
    management = targets.management
    if not run.skip_unless("o365: subscriptions", "ActivityFeed.Read"):
        if management is None:
            run.add(Probe("o365: subscriptions", Verdict.MISCONFIGURED, "the Management Activity API is not set up"))
        else:
            await run.attempt(
                "o365: subscriptions",
                management.subscriptions,
                ("ActivityFeed.Read",),
                _row_check(SUBSCRIPTION_FIELDS, "no subscription yet: run `o365 subscribe`"),
            )

    system = policy.ticket.system
    name = f"tickets: {system}"
    if system == "webhook":
        run.add(Probe(name, Verdict.SKIPPED, "a webhook has no read: only a POST would test it", required=False))
    elif system == "email":
        run.add(Probe(name, Verdict.SKIPPED, "tickets are mail: see the sender probe", required=False))
    elif system == "teams":
        run.add(Probe(name, Verdict.SKIPPED, "tickets are Teams cards: see the teams probe", required=False))
    else:

        async def search() -> None:
            await targets.tickets.find_open(TICKET_PROBE_ID)

        await run.attempt(name, search, ())

    if system == "teams" or policy.notify.teams:
        if targets.teams_url_set:
            why = "TEAMS_WEBHOOK_URL is set; a Workflows webhook has no read: only a POST would test it"
            run.add(Probe("teams: channel", Verdict.SKIPPED, why, required=False))
        else:
            run.add(Probe("teams: channel", Verdict.MISCONFIGURED, "the policy posts to Teams: set TEAMS_WEBHOOK_URL"))

    if "Mail.Send" in run.needed:
        for sender in dict.fromkeys(senders):
            await run.attempt(
                f"mail sender: {sender}",
                partial(targets.graph.read, f"users/{_path(sender)}?$select=id,mail", permission="User.Read.All"),
                GRAPH_CALLS["user"],
                _sender_check,
            )
        if not senders:
            run.add(Probe("mail sender", Verdict.MISCONFIGURED, "the policy sends mail but names no sender"))
    else:
        run.add(Probe("mail sender", Verdict.SKIPPED, f"not needed: {_permission('Mail.Send').when}", required=False))

    _remediation_probe(run)

    if targets.store is None:
        run.add(Probe("store: tables", Verdict.SKIPPED, targets.store_note or "no store", required=False))
    else:
        store = targets.store
        await run.attempt(
            "store: tables", lambda: store.read_cursor("doctor"), ("Storage Table Data Contributor",), None
        )
    if targets.queues is None:
        run.add(Probe("store: queues", Verdict.SKIPPED, targets.store_note or "no queues", required=False))
    else:
        for queue_name, queue in targets.queues.items():
            await run.attempt(
                f"queue: {queue_name}",
                queue.exists,
                ("Storage Queue Data Contributor",),
                lambda exists: (Verdict.OK, "" if exists else "not created yet (created on first use)"),
            )


def _remediation_probe(run: _Run) -> None:
    """Mailbox remediation's writes (inbox rules, Set-Mailbox), named only when the policy turns them on. A write has
    no read-only probe, so the doctor says what it needs and how to grant it."""
    remediation = run.policy.remediation
    permission = GRAPH_CALLS["set_inbox_rule_enabled"][0]
    if remediation.disable_inbox_rules:
        run.add(Probe("remediation: inbox rule writes", Verdict.SKIPPED,
                      f"needs {permission}; a write is proven only by writing", fixes((permission,)),
                      required=False))  # fmt: skip
    if remediation.remove_forwarding:
        run.add(Probe("remediation: Set-Mailbox", Verdict.SKIPPED, "needs the Exchange Administrator role (Set-Mailbox"
                      " is in it); a write is proven only by writing", required=False))  # fmt: skip


def _sender_check(result: Any) -> tuple[Verdict, str]:
    if result is None:
        return Verdict.MISCONFIGURED, "no such user: the mail would fail"
    verdict, detail = compare_fields(result if isinstance(result, dict) else (), ("id", "mail"))
    return verdict, detail or "exists; Mail.Send itself is proven only by sending"
