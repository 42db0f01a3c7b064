"""The tenant file: the seed state of the simulator.

A tenant file holds wire shapes (Graph user, group, domain and alert JSON; Exchange
Get-BlockedSenderAddress rows) so fixtures stay honest. Keys that only the simulator understands start
with ``x-`` and are never served.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulator import o365, permissions
from simulator.faults import Fault, validate_route

Json = dict[str, Any]
# The C loader reads a tenant file about ten times faster; both build plain data only (safe YAML).
_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DEFAULT_EXCHANGE_PAGE_SIZE = 1000
DEFAULT_GRAPH_PAGE_SIZE = 100
EXCHANGE_CASINGS = ("as-written", "DateTime", "camelCase")


@dataclass
class Tenant:
    """A loaded, minimally validated tenant file.

    ``history`` is the ``x-history`` list exactly as written: the product loads it into its own store.
    ``raw`` is the whole document (after YAML timestamps were turned back into strings).
    """

    tenant_id: str
    users: list[Json] = field(default_factory=list)
    groups: list[Json] = field(default_factory=list)
    domains: list[Json] = field(default_factory=list)
    blocked_senders: list[Json] = field(default_factory=list)
    alerts: list[Json] = field(default_factory=list)
    # Mail contacts and mail users (Get-Recipient rows): what a mailbox's ForwardingAddress can name.
    recipients: list[Json] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)
    raw: Json = field(default_factory=dict)
    exchange_page_size: int = DEFAULT_EXCHANGE_PAGE_SIZE
    exchange_field_casing: str = "as-written"  # x-exchangeFieldCasing: as-written | DateTime | camelCase
    graph_page_size: int = DEFAULT_GRAPH_PAGE_SIZE
    removal_delay_seconds: float = 0.0
    faults: list[Json] = field(default_factory=list)
    latency: dict[str, float] = field(default_factory=dict)
    alerts_combined_filter_refused: bool = False
    audit_subscriptions: list[str] = field(default_factory=list)
    audit_content: list[Json] = field(default_factory=list)
    withheld_permissions: list[str] = field(default_factory=list)
    entra_id_p2: bool = True
    entra_id_p1: bool = True  # x-entraIdP1: the authentication methods reports need P1 or P2
    source: str = "<dict>"

    def find_user(self, key: str) -> Json | None:
        """The user whose id, userPrincipalName or mail equals ``key`` (case-insensitive)."""
        return find_user(self.users, key)


TenantSource = Tenant | Mapping[str, Any] | str | os.PathLike[str]
Fail = Callable[[str], ValueError]


def find_user(users: list[Json], key: str) -> Json | None:
    wanted = key.casefold()
    for user in users:
        for prop in ("id", "userPrincipalName", "mail"):
            value = user.get(prop)
            if isinstance(value, str) and value.casefold() == wanted:
                return user
    return None


def load_tenant(source: TenantSource) -> Tenant:
    """Load a tenant from a YAML or JSON file path, or from an already parsed mapping.

    Raises ``ValueError`` with the location of the problem when the document is not a usable tenant.
    """
    if isinstance(source, Tenant):
        return source
    if isinstance(source, Mapping):
        return _build(dict(source), "<dict>")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read tenant file {path}: {exc.strerror or exc}") from exc
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, Loader=_YamlLoader)  # noqa: S506
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"tenant file {path} is not valid {_format_name(path)}: {exc}") from exc
    if not isinstance(document, Mapping):
        raise ValueError(f"tenant file {path}: the top level must be a mapping, got {_kind(document)}")
    return _build(dict(document), str(path))


def _format_name(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "YAML"


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return type(value).__name__


def _build(document: Json, where: str) -> Tenant:
    document = _json_safe(copy.deepcopy(document))

    def fail(message: str) -> ValueError:
        return ValueError(f"tenant file {where}: {message}")

    tenant_id = document.get("tenantId")
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        raise fail("missing tenantId (the directory id GUID, a non-empty string)")

    def object_list(key: str, required: tuple[str, ...]) -> list[Json]:
        value = document.get(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            raise fail(f"{key} must be a list, got {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise fail(f"{key}[{index}] must be a mapping, got {_kind(item)}")
            for prop in required:
                if not isinstance(item.get(prop), str) or not item[prop]:
                    raise fail(f"{key}[{index}] has no {prop} (a non-empty string)")
        return value

    users = object_list("users", ("id", "userPrincipalName"))
    groups = object_list("groups", ("id",))
    domains = object_list("domains", ("id",))
    blocked = object_list("blockedSenders", ("SenderAddress",))
    alerts = object_list("alerts", ("id",))
    recipients = object_list("recipients", ("Name", "RecipientType"))

    _unique(users, "users", "id", fail)
    _unique(users, "users", "userPrincipalName", fail)
    _unique(blocked, "blockedSenders", "SenderAddress", fail)
    _unique(alerts, "alerts", "id", fail)
    _unique(recipients, "recipients", "Name", fail)
    for index, user in enumerate(users):
        member_of = user.get("x-memberOf", [])
        if not isinstance(member_of, list) or not all(isinstance(g, str) for g in member_of):
            raise fail(f"users[{index}].x-memberOf must be a list of group ids")
        _check_mail_keys(user, f"users[{index}]", fail)
        mailbox = user.get("x-mailbox")
        if mailbox is not None and not isinstance(mailbox, dict):
            raise fail(f"users[{index}].x-mailbox must be a mapping of Get-Mailbox properties")

    history = document.get("x-history", [])
    if history is None:
        history = []
    if not isinstance(history, list):
        raise fail(f"x-history must be a list, got {_kind(history)}")

    faults = object_list("x-faults", ("route",))
    for index, spec in enumerate(faults):
        try:
            Fault.from_mapping(spec)
        except (TypeError, ValueError) as exc:
            raise fail(f"x-faults[{index}]: {exc}") from exc
    latency_doc = document.get("x-latency", {}) or {}
    if not isinstance(latency_doc, dict):
        raise fail(f"x-latency must be a mapping of route to seconds, got {_kind(latency_doc)}")
    latency: dict[str, float] = {}
    for route, seconds in latency_doc.items():
        try:
            validate_route(str(route))
        except ValueError as exc:
            raise fail(f"x-latency: {exc}") from exc
        latency[str(route)] = _number(seconds, f"x-latency.{route}", fail)

    for index, row in enumerate(blocked):
        if "x-removalDelaySeconds" in row:
            _number(row["x-removalDelaySeconds"], f"blockedSenders[{index}].x-removalDelaySeconds", fail)

    casing = document.get("x-exchangeFieldCasing", "as-written")
    if casing not in EXCHANGE_CASINGS:
        raise fail(f"x-exchangeFieldCasing must be one of {', '.join(EXCHANGE_CASINGS)}, got {casing!r}")
    for index, row in enumerate(blocked):
        for key in ("x-removeWarnings", "x-removeErrors"):
            if not isinstance(row.get(key, []), list) or not all(isinstance(t, str) for t in row.get(key, [])):
                raise fail(f"blockedSenders[{index}].{key} must be a list of messages")

    combined_refused = document.get("x-alertsCombinedFilterRefused") or False
    if not isinstance(combined_refused, bool):
        raise fail(f"x-alertsCombinedFilterRefused must be true or false, got {combined_refused!r}")

    withheld = document.get("x-withheldPermissions", []) or []
    if not isinstance(withheld, list):
        raise fail(f"x-withheldPermissions must be a list of permission names, got {_kind(withheld)}")
    try:
        withheld = permissions.check_names(withheld)
    except ValueError as exc:
        raise fail(f"x-withheldPermissions: {exc}") from exc
    p2 = document.get("x-entraIdP2", True)
    if not isinstance(p2, bool):
        raise fail(f"x-entraIdP2 must be true or false, got {p2!r}")
    p1 = document.get("x-entraIdP1", True)
    if not isinstance(p1, bool):
        raise fail(f"x-entraIdP1 must be true or false, got {p1!r}")

    return Tenant(
        tenant_id=tenant_id.strip(),
        users=users,
        groups=groups,
        domains=domains,
        blocked_senders=blocked,
        alerts=alerts,
        recipients=recipients,
        history=history,
        raw=document,
        exchange_page_size=_page_size(document, "x-exchangePageSize", DEFAULT_EXCHANGE_PAGE_SIZE, fail),
        exchange_field_casing=casing,
        graph_page_size=_page_size(document, "x-graphPageSize", DEFAULT_GRAPH_PAGE_SIZE, fail),
        removal_delay_seconds=_number(document.get("x-removalDelaySeconds", 0), "x-removalDelaySeconds", fail),
        faults=faults,
        latency=latency,
        alerts_combined_filter_refused=combined_refused,
        audit_subscriptions=_audit_subscriptions(document, fail),
        audit_content=_audit_content(document, tenant_id.strip(), fail),
        withheld_permissions=withheld,
        entra_id_p2=p2,
        entra_id_p1=p1,
        source=where,
    )


def _audit_subscriptions(document: Json, fail: Fail) -> list[str]:
    """``x-auditSubscriptions``: content types whose Management Activity subscription starts enabled."""
    value = document.get("x-auditSubscriptions", []) or []
    if not isinstance(value, list):
        raise fail(f"x-auditSubscriptions must be a list of content types, got {_kind(value)}")
    started: list[str] = []
    for index, name in enumerate(value):
        content_type = o365.canonical_content_type(name)
        if content_type is None:
            raise fail(f"x-auditSubscriptions[{index}] must be one of {', '.join(o365.CONTENT_TYPES)}, got {name!r}")
        if content_type not in started:
            started.append(content_type)
    return started


_UNDATED = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # only to check a blob without contentCreated; never served


def _audit_content(document: Json, tenant_id: str, fail: Fail) -> list[Json]:
    """``x-auditContent``: content blobs ``{contentId?, contentType?, contentCreated?, records}``, defaults filled
    (but for an undated blob's time and generated id, which the simulator's clock gives when it starts)."""
    value = document.get("x-auditContent", []) or []
    if not isinstance(value, list):
        raise fail(f"x-auditContent must be a list of content blobs, got {_kind(value)}")
    blobs: list[Json] = []
    for index, spec in enumerate(value):
        if not isinstance(spec, dict):
            raise fail(f"x-auditContent[{index}] must be a mapping, got {_kind(spec)}")
        try:
            blob = o365.normalize_content(spec, tenant_id=tenant_id, ordinal=index, now=_UNDATED)
        except ValueError as exc:
            raise fail(f"x-auditContent[{index}]: {exc}") from exc
        if spec.get("contentCreated") is None:
            # Published when the simulator starts, on its clock (a replay's --now, never the machine's date): the
            # time, and the id derived from it, are filled in then.
            del blob["contentCreated"]
            if spec.get("contentId") is None:
                del blob["contentId"]
                blobs.append(blob)
                continue
        if any(b.get("contentId") == blob["contentId"] for b in blobs):
            raise fail(f"x-auditContent[{index}].contentId {blob['contentId']!r} repeats")
        blobs.append(blob)
    return blobs


RISK_LEVELS = ("none", "low", "medium", "high")


def _check_mail_keys(user: Json, where: str, fail: Fail) -> None:
    """``x-riskLevel``, ``x-inboxRules`` (Graph messageRule JSON) and ``x-mailFolders`` ({id, displayName})."""
    if user.get("x-riskLevel") is not None and user["x-riskLevel"] not in RISK_LEVELS:
        raise fail(f"{where}.x-riskLevel must be one of {', '.join(RISK_LEVELS)}, got {user['x-riskLevel']!r}")
    rules = user.get("x-inboxRules", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise fail(f"{where}.x-inboxRules must be a list of Graph messageRule mappings")
    for number, rule in enumerate(rules):
        if "id" in rule and (not isinstance(rule["id"], str) or not rule["id"]):
            raise fail(f"{where}.x-inboxRules[{number}].id must be a non-empty string (or left out)")
    for key in ("x-directoryRoles", "x-eligibleRoles", "x-methodsRegistered"):
        names = user.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise fail(f"{where}.{key} must be a list of non-empty strings")
    if not isinstance(user.get("x-mfaRegistered", False), bool):
        raise fail(f"{where}.x-mfaRegistered must be true or false")
    folders = user.get("x-mailFolders", [])
    if not isinstance(folders, list) or not all(isinstance(f, dict) for f in folders):
        raise fail(f"{where}.x-mailFolders must be a list of {{id, displayName}} mappings")
    seen: set[str] = set()
    for number, folder in enumerate(folders):
        for prop in ("id", "displayName"):
            if not isinstance(folder.get(prop), str) or not folder[prop]:
                raise fail(f"{where}.x-mailFolders[{number}] has no {prop} (a non-empty string)")
        if folder["id"] in seen:
            raise fail(f"{where}.x-mailFolders[{number}].id {folder['id']!r} repeats")
        seen.add(folder["id"])


def _unique(items: list[Json], key: str, prop: str, fail: Fail) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        value = str(item[prop]).casefold()
        if value in seen:
            raise fail(f"{key}[{index}].{prop} {item[prop]!r} repeats {key}[{seen[value]}]")
        seen[value] = index


def _number(value: object, where: str, fail: Fail) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise fail(f"{where} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _page_size(document: Json, key: str, default: int, fail: Fail) -> int:
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(f"{key} must be a whole number >= 1, got {value!r}")
    return value


def _json_safe(value: Any) -> Any:
    """Turn YAML timestamps back into the ISO strings the wire carries.

    An unquoted ``2026-11-27T08:02:11Z`` in YAML loads as a datetime, which JSON cannot carry.
    """
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        text = value.astimezone(dt.UTC).isoformat()
        return text.replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def strip_private(value: Any) -> Any:
    """A deep copy of ``value`` without the simulator-only ``x-`` keys, at any depth."""
    if isinstance(value, dict):
        return {k: strip_private(v) for k, v in value.items() if not str(k).startswith("x-")}
    if isinstance(value, list):
        return [strip_private(v) for v in value]
    return value
