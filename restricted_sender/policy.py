"""The admin's policy file (design §5): load, validate with located messages, normalize, version.

A policy that fails to load never leads to an unblock: callers get a :class:`PolicyError` and the
processor turns every event into a ``ticket`` with ``policy-invalid``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .errors import PolicyError
from .model import UnblockEntry

DEFAULT_ALERT_NAMES = ("User restricted from sending email",)
MODES = ("report-only", "enforce")
RISK_LEVELS = ("none", "low", "medium", "high")
TICKET_SYSTEMS = ("webhook", "servicenow", "jira", "email")
SUPPORTED_TICKET_SYSTEMS = ("webhook",)

# Budget windows beyond ten years are a mistake (and overflow date arithmetic); a day block lifts within 24 h.
# The tenant window ("hours") stops at 30 days: the Table store keeps the tenant's entries that long.
_MAX_WINDOW = {"days": 3650.0, "hours": 720.0}

# Keys this version reads but does not act on yet; loading a policy that turns them on says so.
_NOT_YET_ENFORCED = {
    ("containment", "revoke_sessions"),
    ("containment", "confirm_compromised"),
    ("containment", "disable_account"),
    ("notify", "user"),
    ("notify", "recipients"),
}


@dataclass(frozen=True, slots=True)
class Selector:
    users: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    groups: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.users or self.domains or self.groups)


@dataclass(frozen=True, slots=True)
class AllowRule:
    name: str
    selector: Selector


@dataclass(frozen=True, slots=True)
class Budget:
    count: int
    window_hours: float

    def spent_by(self, entries: Iterable[UnblockEntry], at: datetime) -> list[UnblockEntry]:
        """The unblocks that count against this budget at ``at``, oldest first: not refused, and inside the window.

        One rule for the decision and for every store's atomic reservation. An entry *later* than ``at`` counts
        too: two processors take ``now`` a moment before reserving, so the one reserving second may carry the
        earlier instant, and must still see the other's unblock.
        """
        start = at - timedelta(hours=self.window_hours)
        return sorted((e for e in entries if e.status != "failed" and e.at > start), key=lambda e: e.at)

    def is_spent(self, entries: Iterable[UnblockEntry], at: datetime) -> bool:
        return len(self.spent_by(entries, at)) >= self.count


@dataclass(frozen=True, slots=True)
class Guards:
    max_unblocks_per_user: Budget | None = Budget(count=1, window_hours=7 * 24)
    max_unblocks_per_tenant: Budget | None = Budget(count=10, window_hours=1)
    max_risk_level: str | None = "low"
    suspicious_inbox_rules: bool = True
    external_forwarding: bool = True
    account_enabled: bool = True
    min_hours_to_auto_release: float = 2.0


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str = "report-only"
    alert_names: tuple[str, ...] = DEFAULT_ALERT_NAMES
    allow: tuple[AllowRule, ...] = ()
    deny: Selector = Selector()
    guards: Guards = Guards()
    ticket_system: str = "webhook"
    ticket: Mapping[str, Any] = field(default_factory=dict)
    version: str = ""
    notes: tuple[str, ...] = ()

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    def is_target_alert(self, title: str) -> bool:
        wanted = title.strip().casefold()
        return any(wanted == name.strip().casefold() for name in self.alert_names)

    def group_ids(self) -> frozenset[str]:
        """Every group the policy names: the only groups worth asking Graph about."""
        ids = set(self.deny.groups)
        for rule in self.allow:
            ids.update(rule.selector.groups)
        return frozenset(ids)


@cache
def default_policy() -> Policy:
    return parse_policy({}, source="default policy")


def load_policy_file(path: str | Path) -> Policy:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read policy file: {exc.strerror or exc}"], source=str(file)) from exc
    return load_policy_text(text, source=str(file))


def load_policy_text(text: str, *, source: str = "policy") -> Policy:
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"], source=source) from exc
    return parse_policy(data, source=source)


def parse_policy(data: object, *, source: str = "policy") -> Policy:
    problems: list[str] = []
    checker = _Checker(problems)
    policy = checker.policy(data)
    if problems:
        mode = data.get("mode") if isinstance(data, dict) else None
        raise PolicyError(problems, source=source, mode=mode if mode in MODES else "report-only")
    assert policy is not None
    return policy


def _version(normalized: Mapping[str, Any]) -> str:
    canonical = json.dumps(normalized, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


class _Checker:
    """Walks the raw YAML once, collecting every problem with its location."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}" if where else message)

    def mapping(self, value: object, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                self.fail(
                    f"{where}.{key}" if where else str(key),
                    f"unknown key (expected one of {', '.join(allowed)})",
                )
        return value

    def strings(self, value: object, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(where, "expected a list of non-empty strings")
            return []
        return [v.strip() for v in value]

    def boolean(self, value: object, where: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")
            return default
        return value

    def number(self, value: object, where: str, default: float, *, minimum: float = 0, maximum: float) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= maximum:
            self.fail(where, f"expected a number from {minimum:g} to {maximum:g}, got {value!r}")
            return default
        return float(value)

    def choice(self, value: object, where: str, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def selector(self, value: Mapping[str, Any], where: str) -> Selector:
        users = self.strings(value.get("users"), f"{where}.users")
        domains = self.strings(value.get("domains"), f"{where}.domains")
        groups = self.strings(value.get("groups"), f"{where}.groups")
        for index, domain in enumerate(domains):
            bare = domain[2:] if domain.startswith("*.") else domain
            if "@" in domain or "*" in bare or "." not in bare:
                self.fail(f"{where}.domains[{index}]", f"{domain!r} is not a domain or *.domain")
        return Selector(
            users=frozenset(u.lower() for u in users),
            domains=tuple(d.lower() for d in domains),
            groups=frozenset(g.lower() for g in groups),
        )

    def budget(self, value: object, where: str, unit: str, default: Budget | None) -> Budget | None:
        if value is None:
            return default
        raw = self.mapping(value, where, ("count", unit))
        count = raw.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            self.fail(f"{where}.count", f"expected a whole number >= 0, got {count!r}")
            count = 0
        span = self.number(raw.get(unit), f"{where}.{unit}", 0, minimum=0, maximum=_MAX_WINDOW[unit])
        if span <= 0 and raw.get(unit) is not None:
            self.fail(f"{where}.{unit}", "must be greater than 0")
        if raw.get(unit) is None:
            self.fail(f"{where}.{unit}", "is required")
        hours = span * 24 if unit == "days" else span
        return Budget(count=count, window_hours=hours)

    def policy(self, data: object) -> Policy | None:
        if data is None:
            data = {}
        top = self.mapping(
            data, "", ("mode", "alert_names", "allow", "deny", "guards", "containment", "notify", "ticket")
        )
        mode = self.choice(top.get("mode"), "mode", MODES, "report-only")
        alert_names = tuple(self.strings(top.get("alert_names"), "alert_names")) or DEFAULT_ALERT_NAMES
        if any("tenant restricted" in name.casefold() for name in alert_names):
            self.fail("alert_names", "tenant-level alerts need Microsoft Support, never a user unblock")

        allow: list[AllowRule] = []
        raw_allow = top.get("allow")
        if raw_allow is not None and not isinstance(raw_allow, list):
            self.fail("allow", "expected a list of rules")
            raw_allow = []
        seen: set[str] = set()
        for index, raw_rule in enumerate(raw_allow or []):
            where = f"allow[{index}]"
            rule = self.mapping(raw_rule, where, ("name", "users", "domains", "groups"))
            name = rule.get("name")
            if not isinstance(name, str) or not name.strip():
                self.fail(f"{where}.name", "is required")
                continue
            if name in seen:
                self.fail(f"{where}.name", f"duplicate rule name {name!r}")
            seen.add(name)
            selector = self.selector(rule, where)
            if selector.empty:
                self.fail(where, f"rule {name!r} names no users, domains or groups")
            allow.append(AllowRule(name=name, selector=selector))

        deny = self.selector(self.mapping(top.get("deny"), "deny", ("users", "domains", "groups")), "deny")

        raw_guards = self.mapping(
            top.get("guards"),
            "guards",
            (
                "max_unblocks_per_user",
                "max_unblocks_per_tenant",
                "max_risk_level",
                "suspicious_inbox_rules",
                "external_forwarding",
                "account_enabled",
                "min_hours_to_auto_release",
            ),
        )
        base = Guards()
        guards = Guards(
            max_unblocks_per_user=self.budget(
                raw_guards.get("max_unblocks_per_user"),
                "guards.max_unblocks_per_user",
                "days",
                base.max_unblocks_per_user,
            ),
            max_unblocks_per_tenant=self.budget(
                raw_guards.get("max_unblocks_per_tenant"),
                "guards.max_unblocks_per_tenant",
                "hours",
                base.max_unblocks_per_tenant,
            ),
            max_risk_level=self.choice(raw_guards.get("max_risk_level"), "guards.max_risk_level", RISK_LEVELS, "low"),
            suspicious_inbox_rules=self.boolean(
                raw_guards.get("suspicious_inbox_rules"), "guards.suspicious_inbox_rules", True
            ),
            external_forwarding=self.boolean(raw_guards.get("external_forwarding"), "guards.external_forwarding", True),
            account_enabled=self.boolean(raw_guards.get("account_enabled"), "guards.account_enabled", True),
            min_hours_to_auto_release=self.number(
                raw_guards.get("min_hours_to_auto_release"), "guards.min_hours_to_auto_release", 2.0, maximum=24
            ),
        )

        containment = self.mapping(
            top.get("containment"),
            "containment",
            ("revoke_sessions", "confirm_compromised", "disable_account"),
        )
        for key, value in containment.items():
            self.boolean(value, f"containment.{key}", False)
        notify = self.mapping(top.get("notify"), "notify", ("user", "recipients"))
        self.boolean(notify.get("user"), "notify.user", False)
        self.strings(notify.get("recipients"), "notify.recipients")

        ticket = dict(self.mapping(top.get("ticket"), "ticket", ("system", "webhook", "servicenow", "jira", "email")))
        system = self.choice(ticket.get("system"), "ticket.system", TICKET_SYSTEMS, "webhook")
        if system not in SUPPORTED_TICKET_SYSTEMS:
            self.fail("ticket.system", f"{system!r} is not supported by this version (supported: webhook)")

        notes = tuple(
            f"{section}.{key} is read but not enforced by this version"
            for section, key in sorted(_NOT_YET_ENFORCED)
            if isinstance(top.get(section), dict) and _turned_on(top[section].get(key))
        )
        normalized = {
            "mode": mode,
            "alert_names": sorted(n.casefold() for n in alert_names),
            "allow": [
                {
                    "name": r.name,
                    "users": sorted(r.selector.users),
                    "domains": sorted(r.selector.domains),
                    "groups": sorted(r.selector.groups),
                }
                for r in allow
            ],
            "deny": {
                "users": sorted(deny.users),
                "domains": sorted(deny.domains),
                "groups": sorted(deny.groups),
            },
            "guards": _guards_dict(guards),
            "containment": {k: containment[k] for k in sorted(containment)},
            "notify": {
                "user": notify.get("user", False),
                "recipients": sorted(notify.get("recipients") or []),
            },
            "ticket": _jsonable(ticket | {"system": system}),
        }
        if self.problems:
            return None
        return Policy(
            mode=mode,
            alert_names=alert_names,
            allow=tuple(allow),
            deny=deny,
            guards=guards,
            ticket_system=system,
            ticket=ticket,
            version=_version(normalized),
            notes=notes,
        )


def _turned_on(value: object) -> bool:
    return value not in (None, False, [], "none")


def _guards_dict(guards: Guards) -> dict[str, Any]:
    def budget(b: Budget | None) -> dict[str, float] | None:
        return None if b is None else {"count": b.count, "hours": b.window_hours}

    return {
        "max_unblocks_per_user": budget(guards.max_unblocks_per_user),
        "max_unblocks_per_tenant": budget(guards.max_unblocks_per_tenant),
        "max_risk_level": guards.max_risk_level,
        "suspicious_inbox_rules": guards.suspicious_inbox_rules,
        "external_forwarding": guards.external_forwarding,
        "account_enabled": guards.account_enabled,
        "min_hours_to_auto_release": guards.min_hours_to_auto_release,
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))
