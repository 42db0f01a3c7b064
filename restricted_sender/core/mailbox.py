"""Mailbox facts that betray a compromise: inbox rules (Graph ``messageRule``) and mailbox forwarding
(``Get-Mailbox``), parsed once at the boundary and judged here, purely."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from restricted_sender.core.rows import field, note_shape

# Where attackers hide replies and bounces (Microsoft's compromised-account guidance); by display name.
HIDING_FOLDERS = frozenset({"rss feeds", "rss subscriptions", "archive", "deleted items", "junk email",
                            "conversation history"})  # fmt: skip
# The same folders by their well-known names, as a rule's moveToFolder may give them.
_WELL_KNOWN = {
    "rssfeeds": "RSS Feeds",
    "archive": "Archive",
    "deleteditems": "Deleted Items",
    "junkemail": "Junk Email",
    "conversationhistory": "Conversation History",
}


def _addresses(recipients: object) -> tuple[str, ...]:
    found = []
    for recipient in recipients if isinstance(recipients, list) else []:
        email = recipient.get("emailAddress") if isinstance(recipient, dict) else None
        address = email.get("address") if isinstance(email, dict) else None
        if isinstance(address, str) and address.strip():
            found.append(address.strip().lower())
    return tuple(found)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower()


def is_external(address: str, domains: frozenset[str]) -> bool:
    """Outside the tenant: not one of its verified domains (exactly; an unverified subdomain is outside)."""
    return "@" in address and domain_of(address) not in domains


@dataclass(frozen=True, slots=True)
class InboxRule:
    id: str
    name: str
    enabled: bool
    forward_to: tuple[str, ...] = ()
    redirect_to: tuple[str, ...] = ()
    forward_as_attachment_to: tuple[str, ...] = ()
    delete: bool = False
    permanent_delete: bool = False
    move_to_folder: str | None = None

    @classmethod
    def from_graph(cls, rule: Mapping[str, Any]) -> InboxRule:
        actions = rule.get("actions")
        actions = actions if isinstance(actions, dict) else {}
        folder = actions.get("moveToFolder")
        return cls(
            id=str(rule.get("id") or ""),
            name=str(rule.get("displayName") or rule.get("id") or "(unnamed)"),
            enabled=rule.get("isEnabled") is not False,  # Graph omits it rarely; an unknown state counts
            forward_to=_addresses(actions.get("forwardTo")),
            redirect_to=_addresses(actions.get("redirectTo")),
            forward_as_attachment_to=_addresses(actions.get("forwardAsAttachmentTo")),
            delete=actions.get("delete") is True,
            permanent_delete=actions.get("permanentDelete") is True,
            move_to_folder=folder if isinstance(folder, str) and folder else None,
        )

    def folder_name(self, names: Mapping[str, str]) -> str | None:
        if self.move_to_folder is None:
            return None
        return names.get(self.move_to_folder) or _WELL_KNOWN.get(self.move_to_folder.lower())

    def findings(self, domains: frozenset[str], folder_names: Mapping[str, str]) -> tuple[str, ...]:
        """Why this rule is suspicious (empty when it is not). Disabled rules never count."""
        if not self.enabled:
            return ()
        found: list[str] = []
        for verb, targets in (
            ("forwards", self.forward_to),
            ("redirects", self.redirect_to),
            ("forwards as attachment", self.forward_as_attachment_to),
        ):
            outside = [t for t in targets if is_external(t, domains)]
            if outside:
                found.append(f'inbox rule "{self.name}" {verb} to {", ".join(outside)} (outside the tenant)')
        if self.permanent_delete:
            found.append(f'inbox rule "{self.name}" permanently deletes mail')
        elif self.delete:
            found.append(f'inbox rule "{self.name}" deletes mail')
        folder = self.folder_name(folder_names)
        if folder and folder.lower() in HIDING_FOLDERS:
            found.append(f'inbox rule "{self.name}" moves mail to {folder}')
        return tuple(found)

    def to_evidence(self, domains: frozenset[str], folder_names: Mapping[str, str]) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "forward_to": list(self.forward_to),
            "redirect_to": list(self.redirect_to),
            "forward_as_attachment_to": list(self.forward_as_attachment_to),
            "delete": self.delete,
            "permanent_delete": self.permanent_delete,
            "move_to_folder": self.folder_name(folder_names) or self.move_to_folder,
            "suspicious": list(self.findings(domains, folder_names)),
        }


def parse_rules(rules: Iterable[Mapping[str, Any]]) -> tuple[InboxRule, ...]:
    return tuple(InboxRule.from_graph(r) for r in rules if isinstance(r, Mapping))


# Get-Mailbox fields read here; Get-Recipient's (https://learn.microsoft.com/powershell/module/exchange/get-recipient)
MAILBOX_FIELDS = frozenset({"ForwardingSmtpAddress", "ForwardingAddress", "DeliverToMailboxAndForward"})
RECIPIENT_FIELDS = frozenset(
    {"Name", "RecipientType", "RecipientTypeDetails", "PrimarySmtpAddress", "ExternalEmailAddress"}
)


def _smtp(value: object) -> str | None:
    """An address as Exchange prints it (``SMTP:x@y``, ``smtp:x@y`` or bare), lower-cased; ``None`` when empty."""
    text = str(value).strip() if value else ""
    if text.lower().startswith("smtp:"):
        text = text[5:]
    return text.lower() or None


@dataclass(frozen=True, slots=True)
class Recipient:
    """A ``Get-Recipient`` row: what a mailbox's ``ForwardingAddress`` (a name, alias or DN) really is."""

    name: str
    recipient_type: str
    type_details: str | None
    primary_smtp_address: str | None
    external_email_address: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Recipient:
        note_shape("Get-Recipient", row, RECIPIENT_FIELDS, frozenset({"RecipientType"}))
        details = field(row, "RecipientTypeDetails")
        return cls(
            name=str(field(row, "Name") or field(row, "Identity") or ""),
            recipient_type=str(field(row, "RecipientType") or ""),
            type_details=str(details) if details else None,
            primary_smtp_address=_smtp(field(row, "PrimarySmtpAddress")),
            external_email_address=_smtp(field(row, "ExternalEmailAddress")),
        )

    @property
    def delivers_to(self) -> str | None:
        """Where mail for it goes: a mail contact's or mail user's external address, else its primary address."""
        return self.external_email_address or self.primary_smtp_address

    def to_evidence(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "recipient_type": self.recipient_type,
            "recipient_type_details": self.type_details,
            "primary_smtp_address": self.primary_smtp_address,
            "external_email_address": self.external_email_address,
        }


@dataclass(frozen=True, slots=True)
class ForwardingSettings:
    """The three ``Set-Mailbox`` forwarding parameters, exactly as ``Get-Mailbox`` returned them: what a restore puts
    back (https://learn.microsoft.com/powershell/module/exchange/set-mailbox)."""

    forwarding_smtp_address: str | None
    forwarding_address: str | None
    deliver_to_mailbox_and_forward: bool

    @classmethod
    def from_mailbox(cls, row: Mapping[str, Any]) -> ForwardingSettings:
        smtp, recipient = field(row, "ForwardingSmtpAddress"), field(row, "ForwardingAddress")
        return cls(
            forwarding_smtp_address=str(smtp) if smtp else None,
            forwarding_address=str(recipient) if recipient else None,
            deliver_to_mailbox_and_forward=_as_bool(field(row, "DeliverToMailboxAndForward")),
        )

    @property
    def forwards(self) -> bool:
        return self.forwarding_smtp_address is not None or self.forwarding_address is not None

    def same_as(self, other: ForwardingSettings) -> bool:
        """The same forwarding, whatever the case or ``smtp:`` prefix Exchange writes addresses with."""
        return (
            _smtp(self.forwarding_smtp_address) == _smtp(other.forwarding_smtp_address)
            and (self.forwarding_address or "").casefold() == (other.forwarding_address or "").casefold()
            and self.deliver_to_mailbox_and_forward == other.deliver_to_mailbox_and_forward
        )

    def parameters(self) -> dict[str, Any]:
        """``Set-Mailbox``'s parameters for these settings (``None`` is ``$null``: the field is cleared)."""
        return {
            "ForwardingSmtpAddress": self.forwarding_smtp_address,
            "ForwardingAddress": self.forwarding_address,
            "DeliverToMailboxAndForward": self.deliver_to_mailbox_and_forward,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "forwarding_smtp_address": self.forwarding_smtp_address,
            "forwarding_address": self.forwarding_address,
            "deliver_to_mailbox_and_forward": self.deliver_to_mailbox_and_forward,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ForwardingSettings:
        return cls(
            forwarding_smtp_address=value.get("forwarding_smtp_address"),
            forwarding_address=value.get("forwarding_address"),
            deliver_to_mailbox_and_forward=value.get("deliver_to_mailbox_and_forward") is True,
        )


NO_FORWARDING = ForwardingSettings(None, None, False)  # what remediation leaves: forwarding off


@dataclass(frozen=True, slots=True)
class Forwarding:
    """``Get-Mailbox``'s forwarding: an SMTP address (``smtp:x@y``) and/or a recipient in the directory.

    ``ForwardingAddress`` names a recipient object (an id, alias or DN), so the address alone does not show where
    mail goes: ``target`` is that recipient as ``Get-Recipient`` resolved it (``None`` when it could not be).
    """

    smtp_address: str | None
    recipient: str | None
    keep_copy: bool
    target: Recipient | None = None
    settings: ForwardingSettings | None = None  # the fields as read, for remediation's before-state

    @classmethod
    def from_mailbox(cls, row: Mapping[str, Any]) -> Forwarding:
        note_shape("Get-Mailbox", row, MAILBOX_FIELDS | {"PrimarySmtpAddress", "UserPrincipalName"}, MAILBOX_FIELDS)
        recipient = field(row, "ForwardingAddress")
        return cls(
            smtp_address=_smtp(field(row, "ForwardingSmtpAddress")),
            recipient=str(recipient).strip() or None if recipient else None,
            keep_copy=_as_bool(field(row, "DeliverToMailboxAndForward")),
            settings=ForwardingSettings.from_mailbox(row),
        )

    def resolved(self, target: Recipient | None) -> Forwarding:
        return replace(self, target=target)

    @property
    def unresolved(self) -> bool:
        """A ``ForwardingAddress`` whose recipient could not be resolved (it fails the guard: closed)."""
        return self.recipient is not None and (self.target is None or self.target.delivers_to is None)

    def findings(self, domains: frozenset[str]) -> tuple[str, ...]:
        found = []
        if self.smtp_address and is_external(self.smtp_address, domains):
            found.append(f"mailbox forwards to {self.smtp_address} (outside the tenant)")
        if self.recipient:
            target = self.target
            if self.unresolved:
                found.append(
                    f"mailbox forwards to recipient {self.recipient!r}, which Get-Recipient could not resolve: "
                    "its destination is unknown, so it is treated as outside the tenant"
                )
            elif target is not None and target.delivers_to and is_external(target.delivers_to, domains):
                kind = target.type_details or target.recipient_type or "recipient"
                found.append(
                    f"mailbox forwards to {kind} {target.name or self.recipient!r} ({target.delivers_to}, outside "
                    "the tenant)"
                )
        return tuple(found)

    def to_evidence(self) -> dict[str, Any]:
        return {
            "forwarding_smtp_address": self.smtp_address,
            "forwarding_address": self.recipient,
            "forwarding_target": self.target.to_evidence() if self.target else None,
            "forwarding_target_resolved": None if self.recipient is None else not self.unresolved,
            "deliver_to_mailbox_and_forward": self.keep_copy,
        }


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


# -- remediation: what was changed, so that it can be put back ------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleState:
    """One inbox rule as it was before remediation disabled it."""

    id: str
    name: str
    enabled: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "is_enabled": self.enabled}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> RuleState:
        return cls(str(value["id"]), str(value.get("name") or ""), value.get("is_enabled") is not False)


@dataclass(frozen=True, slots=True)
class MailboxBefore:
    """The before-state of everything remediation changed (the audit row's ``remediation``): a restore puts back
    exactly this, and nothing else."""

    mailbox: str  # the address Set-Mailbox and Graph were given
    user_id: str  # the directory object id the rules belong to
    rules: tuple[RuleState, ...] = ()
    forwarding: ForwardingSettings | None = None  # None: forwarding was not changed

    @property
    def empty(self) -> bool:
        return not self.rules and self.forwarding is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "user_id": self.user_id,
            "rules": [r.to_dict() for r in self.rules],
            "forwarding": None if self.forwarding is None else self.forwarding.to_dict(),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> MailboxBefore:
        forwarding = value.get("forwarding")
        return cls(
            mailbox=str(value["mailbox"]),
            user_id=str(value["user_id"]),
            rules=tuple(RuleState.from_dict(r) for r in value.get("rules") or ()),
            forwarding=ForwardingSettings.from_dict(forwarding) if isinstance(forwarding, Mapping) else None,
        )


def suspicious_rules(
    rules: Iterable[InboxRule], domains: frozenset[str], folder_names: Mapping[str, str]
) -> tuple[InboxRule, ...]:
    """The rules that fail the inbox-rule guard: exactly those its reason names (same :meth:`InboxRule.findings`)."""
    return tuple(r for r in rules if r.findings(domains, folder_names))
