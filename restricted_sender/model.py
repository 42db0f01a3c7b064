"""The product's frozen, typed values: events, facts, decisions and the decision record."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from restricted_sender.core.mailbox import Forwarding, InboxRule, MailboxBefore
from restricted_sender.core.restriction import BlockedSender
from restricted_sender.timeutil import iso, parse_instant

EVENT_SCHEMA = 1


def stable_id(*parts: str, length: int = 32) -> str:
    """A deterministic id of its parts (case-folded): the same report always gets the same id."""
    digest = hashlib.sha256("\x1f".join(p.lower() for p in parts).encode("utf-8")).hexdigest()
    return digest[:length]


_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def object_id_or_error(value: str) -> str:
    """An Entra object id, lower-cased; ``ValueError`` when it is not a GUID (Graph ids always are)."""
    text = value.strip().lower()
    if not _GUID.match(text):
        raise ValueError(f"object id {value[:80]!r} is not a GUID")
    return text


@dataclass(frozen=True, slots=True)
class UserRef:
    """A user named by an alert: a UPN / SMTP address, an Entra object id (a GUID), or both.

    Which user the two name together is only settled when the facts are gathered (see ``facts.gather_facts``):
    an alert may pair one user's address with another's object id.
    """

    address: str | None = None
    object_id: str | None = None

    def __post_init__(self) -> None:
        if self.object_id is not None and object_id_or_error(self.object_id) != self.object_id:
            raise ValueError(f"object id {self.object_id[:80]!r} is not a lower-case GUID")

    @property
    def key(self) -> str:
        return (self.address or self.object_id or "").lower()


class Net(StrEnum):
    """The safety nets: timers that find a restriction no alert source reported. Each names its events' source."""

    POLL = "poll"  # the alerts_v2 poller
    SWEEP = "sweep"  # the restricted-list sweep: no alert at all


# Every way a restriction reaches the product (the decision record's ``sources[].kind``).
SOURCE_SENTINEL = "sentinel"  # a Sentinel incident or alert posted by a Logic App playbook
SOURCE_O365 = "o365"  # the Office 365 Management Activity API (alert audit records, HygieneEvent Listed)
SOURCE_DEFENDER = "defender"  # Defender XDR streaming (AlertInfo + AlertEvidence), Event Hub or HTTP
SOURCE_ALERTS_V2 = "alerts_v2"  # a Graph alerts_v2 object posted to the webhook
SOURCE_POLL = Net.POLL.value  # the alerts_v2 poller (a timer)
SOURCE_SWEEP = Net.SWEEP.value  # the restricted-list sweep (a timer): no alert at all
SOURCE_KINDS = (SOURCE_SENTINEL, SOURCE_O365, SOURCE_DEFENDER, SOURCE_ALERTS_V2, SOURCE_POLL, SOURCE_SWEEP)


@dataclass(frozen=True, slots=True)
class AlertReport:
    """One alert as it arrived, parsed once at the boundary."""

    source: str  # one of SOURCE_KINDS
    alert_id: str
    title: str
    users: tuple[UserRef, ...]
    web_url: str | None = None
    created: str | None = None
    # The report is the restriction itself (the restricted list, a HygieneEvent "Listed" record), not an alert:
    # no alert name has to match the policy's.
    direct: bool = False


@dataclass(frozen=True, slots=True)
class RestrictionEvent:
    """One (alert, user) pair to process. This is the queue message."""

    event_id: str  # deterministic: source + alert + user, so redeliveries and re-posts share it
    delivery_id: str  # unique per accepted POST: tells a retry of this message from a second report
    source: str
    alert_id: str
    alert_name: str
    user: UserRef
    received_at: datetime
    alert_url: str | None = None
    alert_created: str | None = None
    direct: bool = False  # see AlertReport.direct

    @classmethod
    def for_alert(
        cls, report: AlertReport, user: UserRef, *, delivery_id: str, received_at: datetime
    ) -> RestrictionEvent:
        return cls(
            event_id=stable_id(report.source, report.alert_id, user.key),
            delivery_id=delivery_id,
            source=report.source,
            alert_id=report.alert_id,
            alert_name=report.title,
            user=user,
            received_at=received_at,
            alert_url=report.web_url,
            alert_created=report.created,
            direct=report.direct,
        )

    @property
    def claim_key(self) -> str:
        return self.event_id

    def to_message(self) -> str:
        return json.dumps(
            {
                "schema": EVENT_SCHEMA,
                "event_id": self.event_id,
                "delivery_id": self.delivery_id,
                "source": self.source,
                "alert_id": self.alert_id,
                "alert_name": self.alert_name,
                "user": {"address": self.user.address, "object_id": self.user.object_id},
                "received_at": iso(self.received_at),
                "alert_url": self.alert_url,
                "alert_created": self.alert_created,
                "direct": self.direct,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_message(cls, text: str) -> RestrictionEvent:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != EVENT_SCHEMA:
            raise ValueError("not a restriction event message of a known schema")
        user = data.get("user") or {}
        return cls(
            event_id=str(data["event_id"]),
            delivery_id=str(data["delivery_id"]),
            source=str(data["source"]),
            alert_id=str(data["alert_id"]),
            alert_name=str(data["alert_name"]),
            user=UserRef(address=user.get("address"), object_id=user.get("object_id")),
            received_at=parse_instant(str(data["received_at"])),
            alert_url=data.get("alert_url"),
            alert_created=data.get("alert_created"),
            direct=data.get("direct") is True,
        )


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    """The Graph user, reduced to what decisions need."""

    id: str
    user_principal_name: str
    mail: str | None
    account_enabled: bool | None
    user_type: str | None = None
    created: str | None = None
    # Graph ``proxyAddresses``: "SMTP:primary@x" (the primary SMTP address), "smtp:alias@y", and other kinds
    # (``SIP:``, ``X500:``) that are not mail addresses. https://learn.microsoft.com/graph/api/resources/user
    proxy_addresses: tuple[str, ...] = ()

    def addresses(self) -> tuple[str, ...]:
        """The UPN and ``mail``, lower-cased: what the policy's users and domains are matched against."""
        return tuple(a.lower() for a in (self.user_principal_name, self.mail) if a)

    def smtp_addresses(self) -> tuple[str, ...]:
        """Every SMTP address of the user's mailbox (``proxyAddresses`` of kind smtp), lower-cased."""
        return tuple(p[5:].strip().lower() for p in self.proxy_addresses if p[:5].lower() == "smtp:" and p[5:].strip())

    def primary_smtp(self) -> str | None:
        """The primary SMTP address (``SMTP:`` in upper case), which keys the restricted list."""
        return next((p[5:].strip().lower() for p in self.proxy_addresses if p.startswith("SMTP:")), None)

    def owns(self, address: str) -> bool:
        """``address`` is this user's UPN, ``mail`` or one of its SMTP proxy addresses (case-insensitive)."""
        return address.strip().lower() in {*self.addresses(), *self.smtp_addresses()}


class UnblockKind(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class UnblockStatus(StrEnum):
    """Where one of our unblocks stands. The entry is written ``pending`` *before* Remove is sent: the intent record
    that stops any later try of the same event from sending it again."""

    PENDING = "pending"  # Remove is about to be sent, or was sent and its answer is not recorded
    NOT_SENT = "not-sent"  # the answer proved Remove never ran (throttled, no token): a later try may send it
    DONE = "done"  # Exchange accepted it, or the restricted list no longer lists the user
    UNCERTAIN = "uncertain"  # the answer was ambiguous and the user is still listed: a person decides
    REFUSED = "refused"  # Exchange said no (``detail`` has its exact words): nothing was spent
    NOT_NEEDED = "not-needed"  # the user was no longer restricted when Remove arrived: nothing was spent
    FAILED = "failed"  # written by earlier versions for both refused and not-needed


NOT_SPENT = frozenset({UnblockStatus.NOT_SENT, UnblockStatus.REFUSED, UnblockStatus.NOT_NEEDED, UnblockStatus.FAILED})
MAX_UNBLOCK_DETAIL = 1000  # characters of the service's message kept with an entry


@dataclass(frozen=True, slots=True)
class UnblockEntry:
    """One of our own unblocks (the budget guard counts these)."""

    user: str
    at: datetime
    kind: UnblockKind
    event_id: str
    status: str = "done"  # an UnblockStatus; "pending" and "uncertain" count too: spend conservatively
    detail: str = ""  # how it was learned, or the service's refusal

    @property
    def spent(self) -> bool:
        return self.status not in NOT_SPENT


class NoteCode(StrEnum):
    """What could not be checked, or was not as the alert said: each fact that did not take part in the decision
    is named in the record's ``notes`` (and so in the audit row, the log line, ``replay --json``, the ticket and the
    SOC notice). One line per code; README "Notes" lists them."""

    RISK_UNKNOWN = "risk-unknown"  # the risk guard is on and Identity Protection gave no level (no P2, no record)
    INBOX_RULES_UNREAD = "inbox-rules-unread"  # the rules guard is on and the rules could not be read
    FOLDER_UNREAD = "folder-unread"  # a rule moves mail to a folder whose name could not be read
    USER_NOT_IN_DIRECTORY = "user-not-in-directory"  # no directory user owns the restricted address
    IDENTITY_MISMATCH = "identity-mismatch"  # the alert's object id is not the user who owns the restricted address
    FORWARDING_UNRESOLVED = "forwarding-unresolved"  # ForwardingAddress names a recipient Get-Recipient did not find
    ROLES_UNREAD = "roles-unread"  # the directory roles could not be read: the privileged guard fails closed
    ELIGIBLE_ROLES_UNKNOWN = "eligible-roles-unknown"  # no Entra ID P2 (PIM): only active roles were checked
    MFA_UNKNOWN = "mfa-unknown"  # the MFA registration could not be read (no Entra ID P1/P2, or not permitted)


@dataclass(frozen=True, slots=True)
class DirectoryRole:
    """An Entra directory role the user holds: active (assigned) or only eligible (PIM, activated on demand)."""

    role_id: str  # roleDefinitionId: for a built-in role, its template id (the same in every tenant)
    name: str | None  # the role definition's displayName, when Graph gave it
    eligible: bool = False

    def matches(self, wanted: frozenset[str]) -> bool:
        """Named in ``wanted`` (lower-cased template ids and display names)."""
        return self.role_id.lower() in wanted or (self.name or "").strip().lower() in wanted

    def label(self) -> str:
        return f"{self.name or self.role_id} ({'eligible' if self.eligible else 'active'})"

    def to_evidence(self) -> dict[str, Any]:
        return {"role_id": self.role_id, "name": self.name, "eligible": self.eligible}


@dataclass(frozen=True, slots=True)
class MfaRegistration:
    """Graph ``userRegistrationDetails``: whether the user registered a strong (MFA) authentication method."""

    registered: bool  # isMfaRegistered
    methods: tuple[str, ...] = ()  # methodsRegistered, e.g. microsoftAuthenticatorPush, fido2, mobilePhone, email
    updated: str | None = None  # lastUpdatedDateTime: the report lags behind registrations

    def to_evidence(self) -> dict[str, Any]:
        return {"known": True, "registered": self.registered, "methods": list(self.methods), "updated": self.updated}


@dataclass(frozen=True, slots=True)
class Note:
    code: NoteCode | str  # a str only when read back from a record a later version wrote
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "text": self.text}

    @classmethod
    def from_dict(cls, value: object) -> Note:
        """A note as :meth:`to_dict` wrote it; a plain string (evidence notes of earlier versions) has no code."""
        if isinstance(value, Mapping):
            code = str(value.get("code") or "note")
            known = {c.value: c for c in NoteCode}
            return cls(known.get(code, code), str(value.get("text") or ""))
        return cls("note", str(value))


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything ``decide`` may look at, gathered before deciding."""

    restriction: BlockedSender | None = None
    user: DirectoryUser | None = None
    member_of: frozenset[str] = frozenset()
    unblocks: tuple[UnblockEntry, ...] = ()
    first_report: bool = True
    notes: tuple[Note, ...] = ()
    tenant_unblocks: tuple[UnblockEntry, ...] = ()
    own_unblock: UnblockEntry | None = None  # this event's own unblock entry: an earlier try started the unblock

    @property
    def unblock_started(self) -> UnblockEntry | None:
        """This event's own unblock entry when an earlier try may have sent Remove (then it is never sent again)."""
        own = self.own_unblock
        return own if own is not None and own.status != UnblockStatus.NOT_SENT else None

    risk_level: str | None = None  # None: not asked, or unknown (no Entra ID P2)
    inbox_rules: tuple[InboxRule, ...] | None = None  # None: not read
    folder_names: Mapping[str, str] = field(default_factory=dict)  # moveToFolder id -> display name
    forwarding: Forwarding | None = None
    tenant_domains: frozenset[str] = frozenset()
    roles: tuple[DirectoryRole, ...] = ()  # active and eligible directory roles (those that could be read)
    roles_unread: str | None = None  # why the roles could not be read: the privileged guard then fails closed
    mfa: MfaRegistration | None = None  # None: not read, or unknown (no Entra ID P1/P2)
    mfa_unread: str | None = None  # the read was refused (not a missing licence): require_mfa_registered fails

    def identities(self) -> frozenset[str]:
        """Every address of the one identity the facts are about, lower-cased: the restricted address and the bound
        user's UPN and mail. Never the alert's own words: an alert may name someone else."""
        found: set[str] = set()
        if self.user:
            found.update(self.user.addresses())
        if self.restriction:
            found.add(self.restriction.address.lower())
        return frozenset(found)


class Outcome(StrEnum):
    UNBLOCK = "unblock"
    WAIT = "wait"
    TICKET = "ticket"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"code": str(self.code), "text": self.text}


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reasons: tuple[Reason, ...]
    release_at: datetime | None = None

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)


class ActionStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class ActionKind(StrEnum):
    """What the responder did (or would have done) about one decision: the record's ``actions[].kind``."""

    UNBLOCK = "unblock"
    VERIFY = "verify"
    TICKET = "ticket"
    NOTIFY = "notify"
    # Containment steps, in the order they run (the policy's ``containment`` switches have the same names).
    REVOKE_SESSIONS = "revoke_sessions"
    CONFIRM_COMPROMISED = "confirm_compromised"
    DISABLE_ACCOUNT = "disable_account"
    # Mailbox remediation (the policy's ``remediation`` switches), after containment; and putting it back.
    DISABLE_INBOX_RULE = "disable_inbox_rule"
    REMOVE_FORWARDING = "remove_forwarding"
    RESTORE_INBOX_RULE = "restore_inbox_rule"
    RESTORE_FORWARDING = "restore_forwarding"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind | str  # a str only when read back from a record a later version wrote
    status: ActionStatus
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": str(self.kind), "status": self.status.value, "detail": self.detail}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Action:
        kind = str(row["kind"])
        known = {k.value: k for k in ActionKind}
        return cls(known.get(kind, kind), ActionStatus(row["status"]), row["detail"])


@dataclass(frozen=True, slots=True)
class Source:
    kind: str
    id: str
    at: datetime

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "at": iso(self.at)}


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A decision's record (README: Decisions): the audit row, the log line, the ticket and ``--json`` carry it."""

    event_id: str
    alert_id: str
    source: str
    sources: tuple[Source, ...]
    user: str
    decision: Decision
    actions: tuple[Action, ...]
    mode: str
    policy_version: str
    at: datetime
    evidence: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()  # what could not be checked (Facts.notes)
    remediation: MailboxBefore | None = None  # the before-state of what mailbox remediation changed

    def with_actions(self, *actions: Action) -> DecisionRecord:
        return replace(self, actions=self.actions + actions)

    def status_of(self, kind: ActionKind) -> ActionStatus | None:
        """How the (last) action of ``kind`` went; ``None`` when there was none."""
        return next((a.status for a in reversed(self.actions) if a.kind == kind), None)

    def with_decision(self, decision: Decision) -> DecisionRecord:
        return replace(self, decision=decision)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> DecisionRecord:
        """The record back from :meth:`to_dict`'s shape (an audit row); the evidence is not read back."""
        return cls(
            event_id=row["event_id"],
            alert_id=row["alert_id"],
            source=row["source"],
            sources=tuple(Source(s["kind"], s["id"], parse_instant(s["at"])) for s in row["sources"]),
            user=row["user"],
            decision=Decision(Outcome(row["decision"]), tuple(Reason(r["code"], r["text"]) for r in row["reasons"])),
            actions=tuple(Action.from_dict(a) for a in row["actions"]),
            mode=row["mode"],
            policy_version=row["policy_version"],
            at=parse_instant(row["at"]),
            # Rows written before notes were part of the record have none.
            notes=tuple(Note.from_dict(n) for n in row.get("notes") or ()),
            remediation=MailboxBefore.from_dict(row["remediation"]) if row.get("remediation") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        # "remediation" only when something was changed: rows without it read as they always did.
        remediated = {} if self.remediation is None else {"remediation": self.remediation.to_dict()}
        return {
            "event_id": self.event_id,
            "alert_id": self.alert_id,
            "source": self.source,
            "sources": [s.to_dict() for s in self.sources],
            "user": self.user,
            "decision": self.decision.outcome.value,
            "reasons": [r.to_dict() for r in self.decision.reasons],
            "actions": [a.to_dict() for a in self.actions],
            "mode": self.mode,
            "policy_version": self.policy_version,
            "at": iso(self.at),
            "notes": [n.to_dict() for n in self.notes],
            **remediated,
        }


@dataclass(frozen=True, slots=True)
class TicketRef:
    """A ticket in some system: ``id`` is what the system updates by, ``label`` what a person reads."""

    id: str
    label: str
    url: str | None = None

    def __str__(self) -> str:
        return self.label if self.label == self.id else f"{self.label} ({self.id})"


@dataclass(frozen=True, slots=True)
class TicketContent:
    """One ticket's text, rendered once from the decision record and its evidence.

    ``text`` is for a person (plain text with simple headings); ``html`` is the same for mail; ``record`` is the
    complete machine-readable ``{"correlation_id", "record", "evidence"}``; ``update`` is the short note added
    to an existing ticket when a later report of the same restriction arrives.
    """

    correlation_id: str
    title: str
    text: str
    html: str
    record: Mapping[str, Any]
    update: str
    severity: str = "high"  # high: compromise suspected; medium: escalated for another reason


@dataclass(frozen=True, slots=True)
class Mail:
    """One message sent through Graph ``sendMail``; ``html`` picks the body's content type."""

    to: tuple[str, ...]
    subject: str
    body: str
    html: bool = False
    importance: str = "normal"  # low | normal | high


@dataclass(frozen=True, slots=True)
class Operator:
    """The person or app behind a manual request, from a validated Entra ID token."""

    object_id: str
    name: str  # the UPN (delegated token) or the app id (app-only token)
    roles: frozenset[str] = frozenset()
    app_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"object_id": self.object_id, "name": self.name, "app_id": self.app_id}
