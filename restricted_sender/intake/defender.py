"""Defender XDR streaming records (Event Hub, or relayed over HTTP) -> :class:`AlertReport`. Pure.

Each message is ``{"records": [{"time", "tenantId", "category": "AdvancedHunting-<Table>", "properties": {row}}]}`` (the
Event Hub form of Defender XDR's streaming API; its AlertInfo and AlertEvidence tables are listed at
https://learn.microsoft.com/defender-xdr/supported-event-types). An alert arrives as an ``AlertInfo`` row (its title)
and ``AlertEvidence`` rows (its entities), joined on ``AlertId``, possibly in different messages and in either order. So
parsing is split from joining: :func:`join` takes what earlier messages left pending and says what to keep pending now.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from restricted_sender.errors import MalformedPayload
from restricted_sender.intake.alerts import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_TIME_CHARS,
    MAX_TITLE_CHARS,
    field_text,
    first_text,
    loose_json_object,
    merge_users,
    user_ref,
)
from restricted_sender.model import SOURCE_DEFENDER, AlertReport, UserRef, object_id_or_error

CATEGORY_INFO = "advancedhunting-alertinfo"
CATEGORY_EVIDENCE = "advancedhunting-alertevidence"


@dataclass(frozen=True, slots=True)
class AlertInfo:
    """An AlertInfo row: what the alert is."""

    alert_id: str
    title: str
    timestamp: str | None = None
    service_source: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertInfo:
        return cls(
            alert_id=_required(data, "alert_id"),
            title=_required(data, "title", blank=True),
            timestamp=_optional(data, "timestamp"),
            service_source=_optional(data, "service_source"),
        )


@dataclass(frozen=True, slots=True)
class UserEvidence:
    """An AlertEvidence row naming a user: whom the alert is about."""

    alert_id: str
    title: str | None  # AlertEvidence has a Title column; None when the row lacks it
    address: str | None
    object_id: str | None
    timestamp: str | None = None

    @property
    def user(self) -> UserRef:
        return UserRef(self.address, self.object_id.lower() if self.object_id else None)

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserEvidence:
        address, object_id = _optional(data, "address"), _optional(data, "object_id")
        if not address and not object_id:
            raise ValueError("user evidence names no user: it needs 'address' or 'object_id'")
        return cls(
            alert_id=_required(data, "alert_id"),
            title=_optional(data, "title"),
            address=address,
            object_id=object_id_or_error(object_id) if object_id else None,
            timestamp=_optional(data, "timestamp"),
        )


@dataclass(frozen=True, slots=True)
class DefenderBatch:
    """The rows of one message that can matter: every AlertInfo, and the evidence rows that name a user."""

    infos: tuple[AlertInfo, ...] = ()
    evidence: tuple[UserEvidence, ...] = ()

    def to_dict(self) -> dict[str, list[dict[str, str | None]]]:
        return {"infos": [i.to_dict() for i in self.infos], "evidence": [e.to_dict() for e in self.evidence]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DefenderBatch:
        infos, evidence = data.get("infos", []), data.get("evidence", [])
        if not isinstance(infos, list) or not isinstance(evidence, list):
            raise ValueError("a Defender batch needs lists 'infos' and 'evidence'")
        return cls(tuple(AlertInfo.from_dict(i) for i in infos), tuple(UserEvidence.from_dict(e) for e in evidence))


@dataclass(frozen=True, slots=True)
class DefenderJoin:
    """What a batch completes, and what the caller should keep pending for later batches."""

    reports: tuple[AlertReport, ...] = ()
    keep_infos: tuple[AlertInfo, ...] = ()  # target alerts from this batch still waiting for their evidence
    keep_evidence: tuple[UserEvidence, ...] = ()  # user rows still waiting for their AlertInfo


def is_defender_batch(payload: object) -> bool:
    return isinstance(payload, dict) and "records" in payload


def parse_records(payload: object) -> DefenderBatch:
    """The AlertInfo and user AlertEvidence rows of one message; other categories are skipped."""
    records = payload.get("records") if isinstance(payload, dict) else None
    if not isinstance(records, list):
        raise MalformedPayload("records: expected a list of Defender streaming records")
    infos: list[AlertInfo] = []
    evidence: list[UserEvidence] = []
    for index, record in enumerate(records):
        where = f"records[{index}]"
        if not isinstance(record, dict):
            raise MalformedPayload(f"{where}: expected a record object")
        category = str(record.get("category") or "").lower()
        if category not in (CATEGORY_INFO, CATEGORY_EVIDENCE):
            continue
        props = record.get("properties")
        if not isinstance(props, dict):
            raise MalformedPayload(f"{where}.properties: expected an object")
        place = f"{where}.properties"
        alert_id = field_text(props, "AlertId", where=place, limit=MAX_ID_CHARS)
        if not alert_id:
            raise MalformedPayload(f"{where}.properties.AlertId: expected a non-empty string")
        timestamp = field_text(props, "Timestamp", where=place, limit=MAX_TIME_CHARS) or field_text(
            record, "time", where=where, limit=MAX_TIME_CHARS
        )
        title = field_text(props, "Title", where=place, limit=MAX_TITLE_CHARS)
        if category == CATEGORY_INFO:
            source = field_text(props, "ServiceSource", where=place, limit=MAX_NAME_CHARS)
            infos.append(AlertInfo(alert_id, title or "", timestamp, source))
        elif (ref := _evidence_user(props, f"{where}.properties")) is not None:
            evidence.append(UserEvidence(alert_id, title, ref.address, ref.object_id, timestamp))
    by_alert: dict[str, list[UserRef]] = {}
    for row in evidence:
        by_alert.setdefault(row.alert_id, []).append(row.user)
    for alert_id, users in by_alert.items():
        merge_users(users, where=f"records (AlertId {alert_id[:80]!r})")  # the cap holds here, before the join
    return DefenderBatch(tuple(infos), tuple(evidence))


def join(
    batch: DefenderBatch,
    *,
    pending_infos: Mapping[str, AlertInfo],
    pending_evidence: Mapping[str, Sequence[UserEvidence]],
    is_target: Callable[[str], bool],
) -> DefenderJoin:
    """Reports for the target alerts this batch completes, with every user known for them so far.

    An evidence row carrying a target Title is enough on its own. Rows of alerts that are not targets produce
    nothing and are not kept. The caller stores ``keep_*`` and passes them back as ``pending_*`` later.
    """
    infos = dict(pending_infos)
    batch_infos = {info.alert_id: info for info in batch.infos}
    infos.update(batch_infos)
    rows: dict[str, list[UserEvidence]] = {alert_id: [] for alert_id in batch_infos}
    for row in batch.evidence:
        rows.setdefault(row.alert_id, []).append(row)

    reports: list[AlertReport] = []
    keep_infos: list[AlertInfo] = []
    keep_evidence: list[UserEvidence] = []
    for alert_id, alert_rows in rows.items():
        info = infos.get(alert_id)
        title = info.title if info and info.title else next((r.title for r in alert_rows if r.title), None)
        if title is not None and not is_target(title):
            continue
        if title is None:
            # Unknown alert so far: keep its rows, so a later AlertInfo still finds its users. Rows that carry a
            # target Title are reported now instead, and not again when the AlertInfo comes.
            keep_evidence.extend(alert_rows)
            continue
        # Each message was held to the cap when it came in: the join of several never fails for their sum.
        users = merge_users((r.user for r in (*pending_evidence.get(alert_id, ()), *alert_rows)), limit=None)
        if users:
            created = info.timestamp if info else next((r.timestamp for r in alert_rows if r.timestamp), None)
            reports.append(AlertReport(SOURCE_DEFENDER, alert_id, title, users, created=created))
        elif alert_id in batch_infos:
            keep_infos.append(batch_infos[alert_id])
    return DefenderJoin(tuple(reports), tuple(keep_infos), tuple(keep_evidence))


def compact(batch: DefenderBatch, is_target: Callable[[str], bool]) -> DefenderBatch:
    """The batch without rows that can never matter, so a relayed batch stays small."""
    other_alerts = {info.alert_id for info in batch.infos if not is_target(info.title)}
    return DefenderBatch(
        tuple(info for info in batch.infos if info.alert_id not in other_alerts),
        tuple(
            row
            for row in batch.evidence
            if row.alert_id not in other_alerts and (row.title is None or is_target(row.title))
        ),
    )


def _evidence_user(props: Mapping[str, Any], where: str) -> UserRef | None:
    extra = loose_json_object(props.get("AdditionalFields"), f"{where}.AdditionalFields")
    entity = str(props.get("EntityType") or "").lower()
    if entity == "user":
        name, suffix = first_text(extra, "Name"), first_text(extra, "UPNSuffix")
        address = first_text(props, "AccountUpn") or (f"{name}@{suffix}" if name and suffix else None)
        return user_ref(address, first_text(props, "AccountObjectId") or first_text(extra, "AadUserId"), where)
    if entity == "mailbox":
        # Unconfirmed: no real AlertEvidence for "User restricted from sending email" has been seen, so whether it
        # names the sender as a User or a Mailbox entity is unknown. Mailbox fields follow the Sentinel entity.
        address = first_text(props, "AccountUpn") or first_text(extra, "Upn", "MailboxPrimaryAddress")
        object_id = first_text(props, "AccountObjectId") or first_text(extra, "ExternalDirectoryObjectId")
        return user_ref(address, object_id, where)
    return None


def _required(data: Mapping[str, Any], key: str, *, blank: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not (blank or value):
        raise ValueError(f"{key!r}: expected a {'' if blank else 'non-empty '}string")
    return value


def _optional(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r}: expected a string or null")
    return value
