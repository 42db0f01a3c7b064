"""The admin's policy file (design §5): load, validate with located messages, normalize, version.

A policy that fails to load never leads to an unblock: callers get a :class:`PolicyError` and the
processor turns every event into a ``ticket`` with ``policy-invalid``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
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

# Budget windows beyond ten years are a mistake (and overflow date arithmetic); a day block lifts within 24 h.
# The tenant window ("hours") stops at 30 days: the Table store keeps the tenant's entries that long.
_MAX_WINDOW = {"days": 3650.0, "hours": 720.0}
_JIRA_PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]{1,9}$")
_MAILBOX = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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
        return sorted((e for e in entries if e.spent and e.at > start), key=lambda e: e.at)

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
class Containment:
    """Steps taken on ``ticket`` decisions only, each off unless the policy turns it on."""

    revoke_sessions: bool = False
    confirm_compromised: bool = False
    disable_account: bool = False

    @property
    def any(self) -> bool:
        return self.revoke_sessions or self.confirm_compromised or self.disable_account


@dataclass(frozen=True, slots=True)
class Notify:
    user: bool = False
    recipients: tuple[str, ...] = ()
    sender: str | None = None  # the mailbox Graph sendMail sends from (required when anything is notified)


@dataclass(frozen=True, slots=True)
class TicketOptions:
    """The ticket system and its non-secret options. Endpoints and credentials are app settings."""

    system: str = "webhook"
    servicenow_table: str = "incident"
    servicenow_fields: Mapping[str, str] = field(default_factory=dict)
    jira_project: str | None = None
    jira_issue_type: str = "Task"
    jira_labels: tuple[str, ...] = ()
    email_sender: str | None = None
    email_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str = "report-only"
    alert_names: tuple[str, ...] = DEFAULT_ALERT_NAMES
    allow: tuple[AllowRule, ...] = ()
    deny: Selector = Selector()
    guards: Guards = Guards()
    containment: Containment = Containment()
    notify: Notify = Notify()
    ticket: TicketOptions = TicketOptions()
    version: str = ""
    notes: tuple[str, ...] = ()

    @property
    def ticket_system(self) -> str:
        return self.ticket.system

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

        raw_containment = self.mapping(
            top.get("containment"),
            "containment",
            ("revoke_sessions", "confirm_compromised", "disable_account"),
        )
        containment = Containment(
            **{
                key: self.boolean(raw_containment.get(key), f"containment.{key}", False)
                for key in ("revoke_sessions", "confirm_compromised", "disable_account")
            }
        )
        raw_notify = self.mapping(top.get("notify"), "notify", ("user", "recipients", "sender"))
        notify = Notify(
            user=self.boolean(raw_notify.get("user"), "notify.user", False),
            recipients=tuple(
                sorted({r.lower() for r in self.mailboxes(raw_notify.get("recipients"), "notify.recipients")})
            ),
            sender=self.mailbox(raw_notify.get("sender"), "notify.sender"),
        )
        if (notify.user or notify.recipients) and notify.sender is None:
            self.fail(
                "notify.sender", "is required when notify.user or notify.recipients is set (the mailbox to send from)"
            )
        ticket = self.ticket_options(top.get("ticket"))

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
            "containment": _jsonable(asdict(containment)),
            "notify": _jsonable(asdict(notify)),
            "ticket": _jsonable(asdict(ticket)),
        }
        if self.problems:
            return None
        return Policy(
            mode=mode,
            alert_names=alert_names,
            allow=tuple(allow),
            deny=deny,
            guards=guards,
            containment=containment,
            notify=notify,
            ticket=ticket,
            version=_version(normalized),
        )

    def mailbox(self, value: object, where: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not _MAILBOX.match(value.strip()):
            self.fail(where, f"expected a mailbox address, got {value!r}")
            return None
        return value.strip().lower()

    def mailboxes(self, value: object, where: str) -> list[str]:
        found = self.strings(value, where)
        for index, address in enumerate(found):
            if not _MAILBOX.match(address):
                self.fail(f"{where}[{index}]", f"expected a mailbox address, got {address!r}")
        return found

    def ticket_options(self, value: object) -> TicketOptions:
        raw = self.mapping(value, "ticket", ("system", "webhook", "servicenow", "jira", "email"))
        system = self.choice(raw.get("system"), "ticket.system", TICKET_SYSTEMS, "webhook")
        self.mapping(raw.get("webhook"), "ticket.webhook", ())
        now = self.mapping(raw.get("servicenow"), "ticket.servicenow", ("table", "fields"))
        table = now.get("table", "incident")
        if not isinstance(table, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", table):
            self.fail("ticket.servicenow.table", f"expected a table name such as incident, got {table!r}")
            table = "incident"
        fields = self.mapping(now.get("fields"), "ticket.servicenow.fields", tuple(now.get("fields") or ()))
        for name, field_value in fields.items():
            if not isinstance(field_value, str):
                self.fail(f"ticket.servicenow.fields.{name}", f"expected a string, got {field_value!r}")
        jira = self.mapping(raw.get("jira"), "ticket.jira", ("project", "issue_type", "labels"))
        project = jira.get("project")
        if project is not None and (not isinstance(project, str) or not _JIRA_PROJECT_KEY.match(project)):
            self.fail("ticket.jira.project", f"expected a Jira project key such as SEC, got {project!r}")
            project = None
        if system == "jira" and project is None and "project" not in jira:
            self.fail("ticket.jira.project", "is required when ticket.system is jira")
        issue_type = jira.get("issue_type", "Task")
        if not isinstance(issue_type, str) or not issue_type.strip():
            self.fail("ticket.jira.issue_type", f"expected an issue type name, got {issue_type!r}")
            issue_type = "Task"
        labels = self.strings(jira.get("labels"), "ticket.jira.labels")
        for index, label in enumerate(labels):
            if any(c.isspace() for c in label):
                self.fail(f"ticket.jira.labels[{index}]", f"Jira labels cannot contain spaces: {label!r}")
        email = self.mapping(raw.get("email"), "ticket.email", ("sender", "to"))
        sender = self.mailbox(email.get("sender"), "ticket.email.sender")
        to = self.mailboxes(email.get("to"), "ticket.email.to")
        if system == "email":
            if sender is None and "sender" not in email:
                self.fail("ticket.email.sender", "is required when ticket.system is email")
            if not to and "to" not in email:
                self.fail("ticket.email.to", "is required when ticket.system is email")
        return TicketOptions(
            system=system,
            servicenow_table=table,
            servicenow_fields={k: v for k, v in fields.items() if isinstance(v, str)},
            jira_project=project if isinstance(project, str) else None,
            jira_issue_type=issue_type.strip(),
            jira_labels=tuple(labels),
            email_sender=sender,
            email_to=tuple(sorted({t.lower() for t in to})),
        )


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
