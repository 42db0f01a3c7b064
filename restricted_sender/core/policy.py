"""The admin's policy file (README "The policy file"): load, validate with located messages, normalize, version.

A policy that fails to load never leads to an unblock: callers get a :class:`PolicyError` and the
processor turns every event into a ``ticket`` with ``policy-invalid``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from restricted_sender.errors import PolicyError
from restricted_sender.model import UnblockEntry

DEFAULT_ALERT_NAMES = ("User restricted from sending email",)
MODES = ("report-only", "enforce")
RISK_LEVELS = ("none", "low", "medium", "high")
TICKET_SYSTEMS = ("webhook", "servicenow", "jira", "email", "teams")


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


# The default set of the privileged guard: built-in Entra roles that can take over the tenant, its mail or its
# identities (most carry the "privileged" label in https://learn.microsoft.com/entra/identity/role-based-access-control/permissions-reference,
# where these template ids are listed). Exchange Administrator and Exchange Recipient Administrator are added:
# an attacker holding them controls every mailbox's rules and forwarding.
PRIVILEGED_ROLES: Mapping[str, str] = {
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "e8611ab8-c189-46e8-94e1-60213ab1f814": "Privileged Role Administrator",
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13": "Privileged Authentication Administrator",
    "194ae4cb-b126-40b2-bd5b-6091b380977d": "Security Administrator",
    "5f2222b1-57c3-48ba-8ad5-d4759f1fde6f": "Security Operator",
    "29232cdf-9323-42fd-ade2-1d097af3e4de": "Exchange Administrator",
    "31392ffb-586c-42d1-9346-e59415a2cc4e": "Exchange Recipient Administrator",
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f": "Authentication Administrator",
    "729827e3-9c14-49f7-bb1b-9608f156bbb8": "Helpdesk Administrator",
    "966707d0-3269-4727-9be2-8c3a10f19b9d": "Password Administrator",
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": "Application Administrator",
    "158c047a-c907-4556-b7ef-446551a6b5f7": "Cloud Application Administrator",
    "b1be1c3e-b65d-4f19-8427-f6fa0d97feb9": "Conditional Access Administrator",
    "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2": "Hybrid Identity Administrator",
    "be2f45a1-457d-42af-a067-6ec1fa63bc45": "External Identity Provider Administrator",
    "8329153b-31d0-4727-b945-745eb3bc5f31": "Domain Name Administrator",
    "9360feb5-f418-4baa-8175-e2a00bac4301": "Directory Writers",
    "3a2c62db-5318-420d-8d74-23affee5d9d5": "Intune Administrator",
    "f28a1f50-f6e7-4571-818b-6a12f2af6b6c": "SharePoint Administrator",
    "69091246-20e8-4a56-aa4d-066075b2a7a8": "Teams Administrator",
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451": "Global Reader",
    "e00e864a-17c5-4a4b-9c06-f5b95a8d5bd8": "Partner Tier2 Support",
}


@dataclass(frozen=True, slots=True)
class Guards:
    max_unblocks_per_user: Budget | None = Budget(count=1, window_hours=7 * 24)
    max_unblocks_per_tenant: Budget | None = Budget(count=10, window_hours=1)
    max_risk_level: str | None = "low"
    suspicious_inbox_rules: bool = True
    external_forwarding: bool = True
    account_enabled: bool = True
    min_hours_to_auto_release: float = 2.0
    # Lower-cased role template ids and display names; empty: the privileged guard is off.
    privileged_roles: tuple[str, ...] = tuple(sorted(PRIVILEGED_ROLES))
    require_mfa_registered: bool = False


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
class Remediation:
    """Mailbox remediation on ``ticket`` decisions only, each step off unless the policy turns it on (README:
    Mailbox remediation): the steps of Microsoft's "Responding to a compromised email account"
    (https://learn.microsoft.com/defender-office-365/responding-to-a-compromised-email-account). Every change is
    recorded with its before-state, and ``restore`` puts that back."""

    disable_inbox_rules: bool = False  # the rules that fail guard:inbox-rule: isEnabled false (never deleted)
    remove_forwarding: bool = False  # guard:forwarding: Set-Mailbox clears ForwardingSmtpAddress/ForwardingAddress

    @property
    def any(self) -> bool:
        return self.disable_inbox_rules or self.remove_forwarding


@dataclass(frozen=True, slots=True)
class Notify:
    user: bool = False
    recipients: tuple[str, ...] = ()
    sender: str | None = None  # the mailbox Graph sendMail sends from (required when anyone is mailed)
    teams: bool = False  # post each decision's card to the Teams channel of TEAMS_WEBHOOK_URL


@dataclass(frozen=True, slots=True)
class TicketOptions:
    """The ticket system and its non-secret options. Endpoints and credentials are app settings."""

    system: str = "webhook"
    servicenow_table: str = "incident"
    servicenow_fields: Mapping[str, str] = field(default_factory=dict)
    jira_project: str | None = None
    jira_issue_type: str = "Task"
    jira_labels: tuple[str, ...] = ()
    jira_high_priority: str | None = "High"  # set on high-severity issues; None: the priority is left to Jira
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
    remediation: Remediation = Remediation()
    notify: Notify = Notify()
    ticket: TicketOptions = TicketOptions()
    version: str = ""
    notes: tuple[str, ...] = ()

    @property
    def ticket_system(self) -> str:
        return self.ticket.system

    @property
    def valid(self) -> bool:
        """A loaded policy answers ``.mode``, ``.version`` and ``.valid`` whether it loaded or not (``PolicyError``)."""
        return True

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


# The one loaded-policy value: the policy that loaded, or why it did not. Both answer ``.mode``, ``.version`` and
# ``.valid``; what only a valid policy has is reached through the two functions below, never an isinstance test.
LoadedPolicy = Policy | PolicyError


def usable(policy: LoadedPolicy) -> Policy | None:
    """The policy when it loaded; ``None`` when it did not (fail closed: nothing is unblocked)."""
    return policy if isinstance(policy, Policy) else None


def effective(policy: LoadedPolicy) -> Policy:
    """The policy when it loaded, else the defaults: what names the target alerts and the permissions either way."""
    return policy if isinstance(policy, Policy) else default_policy()


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
    raw = {} if data is None else data
    values = POLICY_MODEL.read(raw, "", problems)
    if problems:
        mode = data.get("mode") if isinstance(data, dict) else None
        raise PolicyError(problems, source=source, mode=mode if mode in MODES else "report-only")
    return _build(values)


# -- the model ---------------------------------------------------------------------------------------------------
# The file's shape is declared once below. Each node reads its part of the YAML (collecting located problems such as
# ``allow[0].domains[1]: ...``, falling back to its default) and describes itself as JSON Schema; the published
# ``policy.schema.json`` is generated from the same nodes (``python -m restricted_sender policy schema``). Defaults
# come from the frozen dataclasses above, so each is written once. The nodes are plain dataclasses, built once at
# import: frozen ones (generated __eq__, __hash__, __setattr__...) would cost the webhook's cold start ~5 ms more.

Problems = list[str]
Schema = dict[str, Any]


def _fail(problems: Problems, where: str, message: str) -> None:
    problems.append(f"{where}: {message}" if where else message)


class Node:
    """One value of the policy file: how it reads (with located problems) and how the schema describes it."""

    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> Any:
        raise NotImplementedError

    def own_schema(self) -> Schema:
        raise NotImplementedError

    def schema(self) -> Schema:
        described = {"description": self.description} if self.description else {}
        return {**self.own_schema(), **described}


@dataclass(eq=False, repr=False)
class Flag(Node):
    default: bool
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> bool:
        if value is None:
            return self.default
        if not isinstance(value, bool):
            _fail(problems, where, f"expected true or false, got {value!r}")
            return self.default
        return value

    def own_schema(self) -> Schema:
        return {"type": "boolean", "default": self.default}


@dataclass(eq=False, repr=False)
class OneOf(Node):
    choices: tuple[str, ...]
    default: str
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> str:
        if value is None:
            return self.default
        if not isinstance(value, str) or value not in self.choices:
            _fail(problems, where, f"{value!r} is not one of {', '.join(self.choices)}")
            return self.default
        return value

    def own_schema(self) -> Schema:
        return {"enum": list(self.choices), "default": self.default}


@dataclass(eq=False, repr=False)
class Number(Node):
    default: float
    maximum: float
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> float:
        if value is None:
            return self.default
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= self.maximum:
            _fail(problems, where, f"expected a number from 0 to {self.maximum:g}, got {value!r}")
            return self.default
        return float(value)

    def own_schema(self) -> Schema:
        return {"type": "number", "minimum": 0, "maximum": self.maximum, "default": self.default}


@dataclass(eq=False, repr=False)
class Text(Node):
    """One string matching ``pattern`` (``None`` when absent unless there is a default)."""

    pattern: str
    message: str  # formatted with the value's repr
    default: str | None = None
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> str | None:
        if value is None:
            return self.default
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value.strip()):
            _fail(problems, where, self.message.format(repr(value)))
            return self.default
        return value.strip()

    def own_schema(self) -> Schema:
        default = {} if self.default is None else {"default": self.default}
        return {"type": "string", "pattern": f"^{self.pattern}$", **default}


@dataclass(eq=False, repr=False)
class Strings(Node):
    """A list of non-empty strings (stripped); ``item`` (a :class:`Text`) checks each one at ``where[i]``."""

    item: Text | None = None
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            _fail(problems, where, "expected a list of non-empty strings")
            return []
        found = [v.strip() for v in value]
        if self.item is not None:
            for index, text in enumerate(found):
                self.item.read(text, f"{where}[{index}]", problems)
        return found

    def own_schema(self) -> Schema:
        items = {"type": "string", "minLength": 1} if self.item is None else self.item.own_schema()
        return {"type": "array", "items": items}


@dataclass(eq=False, repr=False)
class RoleNames(Node):
    """Directory roles by template id or display name, read lower-cased, sorted and unique. Absent: the default
    set; an empty list turns the guard off."""

    default: tuple[str, ...]
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> tuple[str, ...]:
        if value is None:
            return self.default
        names = Strings().read(value, where, problems)
        return tuple(sorted({n.lower() for n in names}))

    def own_schema(self) -> Schema:
        return {**Strings().own_schema(), "default": list(self.default)}


@dataclass(eq=False, repr=False)
class StringMap(Node):
    """A mapping of any names to strings."""

    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            _fail(problems, where, f"expected a mapping, got {type(value).__name__}")
            return {}
        for name, text in value.items():
            if not isinstance(text, str):
                _fail(problems, f"{where}.{name}", f"expected a string, got {text!r}")
        return {str(k): v for k, v in value.items() if isinstance(v, str)}

    def own_schema(self) -> Schema:
        return {"type": "object", "additionalProperties": {"type": "string"}}


@dataclass(eq=False, repr=False)
class Window(Node):
    """A budget: ``{count, <unit>}``, read as a :class:`Budget` counted in hours."""

    unit: str  # "days" or "hours"
    maximum: float
    default: Budget | None
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> Budget | None:
        if value is None:
            return self.default
        raw = _mapping(value, where, ("count", self.unit), problems)
        count = raw.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            _fail(problems, f"{where}.count", f"expected a whole number >= 0, got {count!r}")
            count = 0
        span = Number(0, self.maximum).read(raw.get(self.unit), f"{where}.{self.unit}", problems)
        if raw.get(self.unit) is None:
            _fail(problems, f"{where}.{self.unit}", "is required")
        elif span <= 0:
            _fail(problems, f"{where}.{self.unit}", "must be greater than 0")
        return Budget(count=count, window_hours=span * 24 if self.unit == "days" else span)

    def own_schema(self) -> Schema:
        default: Schema = {}
        if self.default is not None:
            span = self.default.window_hours / 24 if self.unit == "days" else self.default.window_hours
            default = {"default": {"count": self.default.count, self.unit: span}}
        return {
            **default,
            "type": "object",
            "additionalProperties": False,
            "required": ["count", self.unit],
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                self.unit: {"type": "number", "exclusiveMinimum": 0, "maximum": self.maximum},
            },
        }


class Rule:
    """A condition across a section's keys: checked on the values read, and stated in the schema too."""

    def check(self, raw: Mapping[str, Any], values: Mapping[str, Any], where: str, problems: Problems) -> None:
        raise NotImplementedError

    def schema(self, fields: Mapping[str, Node]) -> Schema:
        raise NotImplementedError


@dataclass(eq=False, repr=False)
class RequiredWhenSet(Rule):
    """``required`` must be given when any of ``triggers`` is set (true, or a non-empty list)."""

    required: str
    triggers: tuple[str, ...]
    why: str

    def check(self, raw: Mapping[str, Any], values: Mapping[str, Any], where: str, problems: Problems) -> None:
        if any(values[t] for t in self.triggers) and values[self.required] is None:
            _fail(problems, f"{where}.{self.required}", f"is required when {self.why}")

    def schema(self, fields: Mapping[str, Node]) -> Schema:
        def is_set(key: str) -> Schema:
            value: Schema = {"const": True} if isinstance(fields[key], Flag) else {"minItems": 1}
            return {"required": [key], "properties": {key: value}}

        return {"if": {"anyOf": [is_set(t) for t in self.triggers]}, "then": {"required": [self.required]}}


@dataclass(eq=False, repr=False)
class RequiredForChoice(Rule):
    """When ``switch`` is ``choice``, the ``choice`` sub-section must give ``keys``."""

    switch: str
    choice: str
    keys: tuple[str, ...]

    def check(self, raw: Mapping[str, Any], values: Mapping[str, Any], where: str, problems: Problems) -> None:
        if values[self.switch] != self.choice:
            return
        given = raw.get(self.choice)
        given = given if isinstance(given, dict) else {}
        for key in self.keys:
            # A key given but refused already has its own problem.
            if key not in given and not values[self.choice][key]:
                _fail(
                    problems, f"{where}.{self.choice}.{key}", f"is required when {where}.{self.switch} is {self.choice}"
                )

    def schema(self, fields: Mapping[str, Node]) -> Schema:
        return {
            "if": {"required": [self.switch], "properties": {self.switch: {"const": self.choice}}},
            "then": {"required": [self.choice], "properties": {self.choice: {"required": list(self.keys)}}},
        }


@dataclass(eq=False, repr=False)
class NeedsFlag(Rule):
    """``when`` (a flag of one section) set true needs the flag ``needs`` (of another) left on."""

    when: tuple[str, str]
    needs: tuple[str, str]

    def check(self, raw: Mapping[str, Any], values: Mapping[str, Any], where: str, problems: Problems) -> None:
        (section, key), (other, flag) = self.when, self.needs
        if values[section][key] and not values[other][flag]:
            at = f"{where}.{section}.{key}" if where else f"{section}.{key}"
            _fail(problems, at, f"needs {other}.{flag}: true (it changes only what that guard finds)")

    def schema(self, fields: Mapping[str, Node]) -> Schema:
        (section, key), (other, flag) = self.when, self.needs
        return {
            "if": {
                "required": [section],
                "properties": {section: {"required": [key], "properties": {key: {"const": True}}}},
            },
            "then": {"properties": {other: {"properties": {flag: {"const": True}}}}},
        }


def _mapping(value: object, where: str, allowed: tuple[str, ...], problems: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(problems, where, f"expected a mapping, got {type(value).__name__}")
        return {}
    for key in value:
        if key not in allowed:
            _fail(
                problems, f"{where}.{key}" if where else str(key), f"unknown key (expected one of {', '.join(allowed)})"
            )
    return value


@dataclass(eq=False, repr=False)
class Section(Node):
    """A mapping with known keys, read into a dict of values (every key present, defaults filled in)."""

    fields: Mapping[str, Node]
    rules: tuple[Rule, ...] = ()
    description: str | None = None
    required: tuple[str, ...] = ()

    def read(self, value: object, where: str, problems: Problems) -> dict[str, Any]:
        raw = _mapping(value, where, tuple(self.fields), problems)
        values = {
            key: node.read(raw.get(key), f"{where}.{key}" if where else key, problems)
            for key, node in self.fields.items()
        }
        for rule in self.rules:
            rule.check(raw, values, where, problems)
        return values

    def own_schema(self) -> Schema:
        schema: Schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {key: node.schema() for key, node in self.fields.items()},
        }
        if self.required:
            schema["required"] = list(self.required)
        conditions = [rule.schema(self.fields) for rule in self.rules]
        if len(conditions) == 1:
            schema.update(conditions[0])
        elif conditions:
            schema["allOf"] = conditions
        return schema


_MAILBOX = Text(r"[^@\s]+@[^@\s]+\.[^@\s]+", "expected a mailbox address, got {}")
_DOMAIN = Text(r"(\*\.)?[^@*\s]+\.[^@*\s]+", "{} is not a domain or *.domain")
_SELECTOR: dict[str, Node] = {
    "users": Strings(),
    "domains": Strings(
        _DOMAIN, 'Domains of the address: "contoso.com" exactly, "*.contoso.com" for its subdomains only.'
    ),
    "groups": Strings(description="Group object ids (transitive membership)."),
}


@dataclass(eq=False, repr=False)
class AllowRules(Node):
    """``allow``: named rules, each naming users, domains or groups."""

    rule: Section
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> list[AllowRule]:
        if value is not None and not isinstance(value, list):
            _fail(problems, where, "expected a list of rules")
            return []
        rules: list[AllowRule] = []
        seen: set[str] = set()
        for index, raw in enumerate(value or []):
            at = f"{where}[{index}]"
            name = raw.get("name") if isinstance(raw, dict) else None
            if not isinstance(name, str) or not name.strip():
                _mapping(raw, at, tuple(self.rule.fields), problems)
                _fail(problems, f"{at}.name", "is required")
                continue
            values = self.rule.read(raw, at, problems)
            if name in seen:
                _fail(problems, f"{at}.name", f"duplicate rule name {name!r}")
            seen.add(name)
            selector = _selector(values)
            if selector.empty:
                _fail(problems, at, f"rule {name!r} names no users, domains or groups")
            rules.append(AllowRule(name=name, selector=selector))
        return rules

    def own_schema(self) -> Schema:
        item = self.rule.own_schema()
        item["anyOf"] = [{"required": [key]} for key in _SELECTOR]
        return {"type": "array", "items": item}


@dataclass(eq=False, repr=False)
class AlertNames(Node):
    default: tuple[str, ...]
    description: str | None = None

    def read(self, value: object, where: str, problems: Problems) -> tuple[str, ...]:
        names = tuple(Strings().read(value, where, problems)) or self.default
        if any("tenant restricted" in name.casefold() for name in names):
            _fail(problems, where, "tenant-level alerts need Microsoft Support, never a user unblock")
        return names

    def own_schema(self) -> Schema:
        return {**Strings().own_schema(), "default": list(self.default)}


_POLICY, _GUARDS, _CONTAINMENT, _TICKET, _NOTIFY = Policy(), Guards(), Containment(), TicketOptions(), Notify()
_REMEDIATION = Remediation()

POLICY_MODEL = Section(
    {
        "mode": OneOf(MODES, _POLICY.mode, "report-only decides and records but never acts."),
        "alert_names": AlertNames(
            DEFAULT_ALERT_NAMES, "Alert titles to act on, matched exactly and case-insensitively."
        ),
        "allow": AllowRules(
            Section(
                {"name": Text(r".*\S.*", "expected a rule name, got {}", description="Unique rule name."), **_SELECTOR},
                required=("name",),
            ),
            "A user is eligible for an automatic unblock when ANY rule matches.",
        ),
        "deny": Section(_SELECTOR, description="Never unblock automatically, whatever allow says."),
        "guards": Section(
            {
                # A window beyond ten years is a mistake (and overflows date arithmetic).
                "max_unblocks_per_user": Window(
                    "days", 3650, _GUARDS.max_unblocks_per_user, "Our own unblocks of one user in the window."
                ),
                # The Table store keeps the tenant's entries 30 days: a longer window would count too few.
                "max_unblocks_per_tenant": Window(
                    "hours",
                    720,
                    _GUARDS.max_unblocks_per_tenant,
                    "Circuit breaker for a mass-compromise wave (at most 30 days).",
                ),
                "max_risk_level": OneOf(RISK_LEVELS, str(_GUARDS.max_risk_level)),
                "suspicious_inbox_rules": Flag(_GUARDS.suspicious_inbox_rules),
                "external_forwarding": Flag(_GUARDS.external_forwarding),
                "account_enabled": Flag(_GUARDS.account_enabled),
                # A day block lifts within 24 h: waiting longer than that is never needed.
                "min_hours_to_auto_release": Number(_GUARDS.min_hours_to_auto_release, 24),
                "privileged_roles": RoleNames(
                    _GUARDS.privileged_roles,
                    "Entra directory roles (template ids or display names) whose holders, active or eligible, are "
                    "never unblocked automatically. Default: the built-in privileged admin roles; [] turns it off.",
                ),
                "require_mfa_registered": Flag(
                    _GUARDS.require_mfa_registered,
                    "Never unblock a user who has registered no strong (MFA) authentication method.",
                ),
            }
        ),
        "containment": Section({f.name: Flag(getattr(_CONTAINMENT, f.name)) for f in fields(Containment)}),
        "remediation": Section(
            {
                "disable_inbox_rules": Flag(
                    _REMEDIATION.disable_inbox_rules,
                    "On a ticket, disable (never delete) the inbox rules that fail guards.suspicious_inbox_rules.",
                ),
                "remove_forwarding": Flag(
                    _REMEDIATION.remove_forwarding,
                    "On a ticket, clear the mailbox forwarding that fails guards.external_forwarding (Set-Mailbox).",
                ),
            },
            description="Mailbox remediation on ticket decisions; each change is recorded and `restore` undoes it.",
        ),
        "notify": Section(
            {
                "user": Flag(_NOTIFY.user, "Tell the user what happened and when mail flows again."),
                "recipients": Strings(_MAILBOX, "Helpdesk / SOC mailboxes told of every decision."),
                "sender": _MAILBOX,
                "teams": Flag(_NOTIFY.teams, "Post each decision's card to the Teams channel (TEAMS_WEBHOOK_URL)."),
            },
            rules=(
                RequiredWhenSet(
                    "sender",
                    ("user", "recipients"),
                    "notify.user or notify.recipients is set (the mailbox to send from)",
                ),
            ),
            description="Mail through Graph sendMail from the sender mailbox (never evidence in the user's mail); "
            "a card to the Teams channel with teams.",
        ),
        "ticket": Section(
            {
                "system": OneOf(TICKET_SYSTEMS, _TICKET.system),
                "webhook": Section({}),
                "servicenow": Section(
                    {
                        "table": Text(
                            "[a-z][a-z0-9_]*",
                            "expected a table name such as incident, got {}",
                            _TICKET.servicenow_table,
                        ),
                        "fields": StringMap("Extra fields set on every record, e.g. assignment_group."),
                    }
                ),
                "jira": Section(
                    {
                        "project": Text("[A-Z][A-Z0-9_]{1,9}", "expected a Jira project key such as SEC, got {}"),
                        "issue_type": Text(r".*\S.*", "expected an issue type name, got {}", _TICKET.jira_issue_type),
                        "labels": Strings(Text(r"\S+", "Jira labels cannot contain spaces: {}")),
                        "high_priority": Text(
                            r"(.*\S.*)?",
                            "expected a priority name such as High, got {}",
                            _TICKET.jira_high_priority,
                            'The priority of high-severity issues (a privileged account, compromise signs); "" '
                            "leaves it to Jira (when priority is not on the project's create screen).",
                        ),
                    }
                ),
                "email": Section({"sender": _MAILBOX, "to": Strings(_MAILBOX)}),
                "teams": Section({}),
            },
            rules=(
                RequiredForChoice("system", "jira", ("project",)),
                RequiredForChoice("system", "email", ("sender", "to")),
            ),
            description="Endpoints and credentials are app settings, never this file.",
        ),
    },
    rules=(
        # Remediation changes only what a guard found: with the guard off it would silently do nothing.
        NeedsFlag(("remediation", "disable_inbox_rules"), ("guards", "suspicious_inbox_rules")),
        NeedsFlag(("remediation", "remove_forwarding"), ("guards", "external_forwarding")),
    ),
)


def _selector(values: Mapping[str, list[str]]) -> Selector:
    return Selector(
        users=frozenset(u.lower() for u in values["users"]),
        domains=tuple(d.lower() for d in values["domains"]),
        groups=frozenset(g.lower() for g in values["groups"]),
    )


def _build(values: Mapping[str, Any]) -> Policy:
    guards = Guards(**values["guards"])
    notify_values, ticket_values = values["notify"], values["ticket"]
    notify = Notify(
        user=notify_values["user"],
        recipients=tuple(sorted({r.lower() for r in notify_values["recipients"]})),
        sender=None if notify_values["sender"] is None else notify_values["sender"].lower(),
        teams=notify_values["teams"],
    )
    email = ticket_values["email"]
    ticket = TicketOptions(
        system=ticket_values["system"],
        servicenow_table=ticket_values["servicenow"]["table"],
        servicenow_fields=ticket_values["servicenow"]["fields"],
        jira_project=ticket_values["jira"]["project"],
        jira_issue_type=ticket_values["jira"]["issue_type"],
        jira_labels=tuple(ticket_values["jira"]["labels"]),
        jira_high_priority=ticket_values["jira"]["high_priority"] or None,
        email_sender=None if email["sender"] is None else email["sender"].lower(),
        email_to=tuple(sorted({t.lower() for t in email["to"]})),
    )
    policy = Policy(
        mode=values["mode"],
        alert_names=values["alert_names"],
        allow=tuple(values["allow"]),
        deny=_selector(values["deny"]),
        guards=guards,
        containment=Containment(**values["containment"]),
        remediation=Remediation(**values["remediation"]),
        notify=notify,
        ticket=ticket,
    )
    return replace(policy, version=_version(_normalized(policy)))


def _normalized(policy: Policy) -> dict[str, Any]:
    """The policy's canonical content: what its version hashes (formatting, order and case do not count)."""

    def selector(s: Selector) -> dict[str, list[str]]:
        return {"users": sorted(s.users), "domains": sorted(s.domains), "groups": sorted(s.groups)}

    def budget(b: Budget | None) -> dict[str, float] | None:
        # float: a default written out (``days: 7``) must hash as the built-in default does.
        return None if b is None else {"count": b.count, "hours": float(b.window_hours)}

    guards = asdict(policy.guards)
    guards.update(
        max_unblocks_per_user=budget(policy.guards.max_unblocks_per_user),
        max_unblocks_per_tenant=budget(policy.guards.max_unblocks_per_tenant),
    )
    return {
        "mode": policy.mode,
        "alert_names": sorted(n.casefold() for n in policy.alert_names),
        "allow": [{"name": r.name, **selector(r.selector)} for r in policy.allow],
        "deny": selector(policy.deny),
        "guards": guards,
        "containment": _jsonable(asdict(policy.containment)),
        # Only when on: policies that never mention remediation keep the version they always had.
        **({"remediation": _jsonable(asdict(policy.remediation))} if policy.remediation.any else {}),
        "notify": _jsonable(asdict(policy.notify)),
        "ticket": _jsonable(asdict(policy.ticket)),
    }


def _version(normalized: Mapping[str, Any]) -> str:
    canonical = json.dumps(normalized, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))
