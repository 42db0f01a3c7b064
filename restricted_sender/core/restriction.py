"""A row of ``Get-BlockedSenderAddress``: its ``Reason``, the kind of block, and when it lifts by itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from restricted_sender.core.rows import field, note_shape
from restricted_sender.timeutil import iso, parse_instant

# The fields community clients see in Get-BlockedSenderAddress rows (the cmdlet's documentation lists none): CIPP's
# Invoke-ListRestrictedUsers.ps1 reads these.
ROW_FIELDS = frozenset({"SenderAddress", "Reason", "CreatedDatetime", "ChangedDatetime", "TemporaryBlock"})


class BlockKind(StrEnum):
    SPAM = "spam"  # outbound spam: usually a compromised account
    SENDING_LIMIT = "sending-limit"  # recipient rate limit: lifts by itself, admins cannot override
    UNKNOWN = "unknown"


# Keys that only appear in recipient-rate-limit blocks (an assumption: README, Unverified assumptions about the
# services). The sending limits themselves, per day, are Exchange Online's "Sending limits":
# https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits
_LIMIT_MARKERS = ("emailsendinglimitexceeded", "exceedinglimittype")
_SPAM_MARKERS = ("outboundspamlast24hours", "outboundspampercent", "outboundmaillast24hours")
_PAIR = re.compile(r"^\s*([^=:]+?)\s*[=:]\s*(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class BlockReason:
    """``Reason`` parsed defensively: ``key=value`` or ``key:value`` pairs separated by ``;``.

    Bare words (``EmailSendingLimitExceeded``) are kept as flags; unknown keys are kept, never fatal.
    """

    raw: str
    values: tuple[tuple[str, str], ...]
    flags: tuple[str, ...]

    @classmethod
    def parse(cls, raw: str | None) -> BlockReason:
        text = raw or ""
        values: list[tuple[str, str]] = []
        flags: list[str] = []
        for part in text.split(";"):
            if not part.strip():
                continue
            match = _PAIR.match(part)
            if match and match.group(1).strip():
                values.append((match.group(1).strip(), match.group(2)))
            else:
                flags.append(part.strip())
        return cls(raw=text, values=tuple(values), flags=tuple(flags))

    def get(self, key: str) -> str | None:
        wanted = key.lower()
        for name, value in self.values:
            if name.lower() == wanted:
                return value
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "flags": list(self.flags)}

    @property
    def kind(self) -> BlockKind:
        names = {name.lower() for name, _ in self.values} | {flag.lower() for flag in self.flags}
        if any(marker in names for marker in _LIMIT_MARKERS):
            return BlockKind.SENDING_LIMIT
        if any(marker in names for marker in _SPAM_MARKERS):
            return BlockKind.SPAM
        return BlockKind.UNKNOWN


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return False


class Anchor(StrEnum):
    """Which instant tells this block from another block of the same user (the evidence says which)."""

    CREATED = "created"  # the row's CreatedDatetime
    CHANGED = "changed"  # no CreatedDatetime: its ChangedDatetime
    FIRST_SEEN = "first-seen"  # neither: when the product first saw the user restricted (kept in the store)
    NONE = "none"  # neither, and not yet anchored: must be anchored before it is claimed


@dataclass(frozen=True, slots=True)
class BlockedSender:
    address: str
    reason: BlockReason
    temporary: bool
    created: datetime | None
    changed: datetime | None
    row: Mapping[str, Any]
    first_seen: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BlockedSender:
        address = str(field(row, "SenderAddress") or "").strip()
        if not address:
            raise ValueError("Get-BlockedSenderAddress row without SenderAddress")
        note_shape("Get-BlockedSenderAddress", row, ROW_FIELDS, ROW_FIELDS)
        return cls(
            address=address,
            reason=BlockReason.parse(_str_or_none(field(row, "Reason"))),
            temporary=_as_bool(field(row, "TemporaryBlock")),
            created=_instant_or_none(field(row, "CreatedDatetime")),
            changed=_instant_or_none(field(row, "ChangedDatetime")),
            row=dict(row),
        )

    @property
    def kind(self) -> BlockKind:
        return self.reason.kind

    @property
    def anchor(self) -> tuple[Anchor, datetime | None]:
        if self.created:
            return Anchor.CREATED, self.created
        if self.changed:
            return Anchor.CHANGED, self.changed
        if self.first_seen:
            return Anchor.FIRST_SEEN, self.first_seen
        return Anchor.NONE, None

    def seen_first_at(self, at: datetime) -> BlockedSender:
        return replace(self, first_seen=at)

    def restriction_key(self) -> str:
        """What identifies this restriction of this user: one per block, so re-blocks are new incidents.

        A row without CreatedDatetime never shares the key of another block of the same user: its ChangedDatetime,
        else the time the product first saw it, stands in (``anchor``).
        """
        kind, at = self.anchor
        if kind is Anchor.CREATED:
            return f"{self.address.lower()}|{iso(at) if at else 'unknown'}"
        return f"{self.address.lower()}|{kind.value}:{iso(at) if at else 'unknown'}"

    def expected_release(self) -> datetime | None:
        """When the block lifts by itself, or ``None`` when only an admin can lift it."""
        _, placed = self.anchor
        if self.kind is BlockKind.SENDING_LIMIT:
            # Recipient-rate-limit blocks self-release within 24 hours, the limits being per day (README, Unverified
            # assumptions about the services; the limits: the URL above _LIMIT_MARKERS).
            return (placed + timedelta(hours=24)) if placed else None
        if self.temporary and placed:
            # Day blocks (BlockUserForToday) lift at the next 00:00 UTC after they were placed.
            start = placed.astimezone(UTC)
            return datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(days=1)
        return None

    def to_evidence(self) -> dict[str, Any]:
        release = self.expected_release()
        return {
            "sender_address": self.address,
            "reason": self.reason.raw,
            "parsed_reason": self.reason.as_dict(),
            "kind": self.kind.value,
            "temporary_block": self.temporary,
            "created": iso(self.created) if self.created else None,
            "changed": iso(self.changed) if self.changed else None,
            "anchor": self.anchor[0].value,
            "first_seen": iso(self.first_seen) if self.first_seen else None,
            "expected_release": iso(release) if release else None,
        }


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _instant_or_none(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        return parse_instant(str(value))
    except ValueError:
        return None
