"""Mailbox facts that betray a compromise: inbox rules (Graph ``messageRule``) and mailbox forwarding
(``Get-Mailbox``), parsed once at the boundary and judged here, purely."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Forwarding:
    """``Get-Mailbox``'s forwarding: an SMTP address (``smtp:x@y``) and/or a recipient in the directory."""

    smtp_address: str | None
    recipient: str | None
    keep_copy: bool

    @classmethod
    def from_mailbox(cls, row: Mapping[str, Any]) -> Forwarding:
        smtp = row.get("ForwardingSmtpAddress")
        recipient = row.get("ForwardingAddress")
        smtp_text = str(smtp).strip() if smtp else ""
        if smtp_text.lower().startswith("smtp:"):
            smtp_text = smtp_text[5:]
        return cls(
            smtp_address=smtp_text.lower() or None,
            recipient=str(recipient).strip() or None if recipient else None,
            keep_copy=row.get("DeliverToMailboxAndForward") is True,
        )

    def findings(self, domains: frozenset[str]) -> tuple[str, ...]:
        found = []
        if self.smtp_address and is_external(self.smtp_address, domains):
            found.append(f"mailbox forwards to {self.smtp_address} (outside the tenant)")
        # ForwardingAddress names a recipient object; only an address that reveals an outside domain can be judged.
        if self.recipient and is_external(self.recipient.lower(), domains):
            found.append(f"mailbox forwards to {self.recipient} (outside the tenant)")
        return tuple(found)

    def to_evidence(self) -> dict[str, Any]:
        return {
            "forwarding_smtp_address": self.smtp_address,
            "forwarding_address": self.recipient,
            "deliver_to_mailbox_and_forward": self.keep_copy,
        }
