"""The ServiceNow and Jira configuration (tenant file ``x-servicenow`` / ``x-jira``) and their records."""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from simulator.itsm.sysparm import SnQuery, condition_holds
from simulator.tenant import Json, Tenant
from simulator.wire import utc_now

SERVICENOW_DEFAULTS: Json = {
    "username": "rsr-integration",
    "password": "sim-servicenow-password",
    "token": "sim-servicenow-token",
    "tables": ["incident", "sn_si_incident"],
}
JIRA_DEFAULTS: Json = {
    "email": "responder@contoso.com",
    "apiToken": "sim-jira-api-token",
    "projects": [{"key": "SEC", "name": "Security", "issueTypes": ["Task", "Bug", "Incident"]}],
}

# -- configuration from the tenant file -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceNowConfig:
    username: str
    password: str
    token: str
    tables: tuple[str, ...]


@dataclass(frozen=True)
class JiraProject:
    key: str
    id: str
    name: str
    issue_types: tuple[str, ...]


@dataclass(frozen=True)
class JiraConfig:
    email: str
    api_token: str
    projects: tuple[JiraProject, ...]

    def project(self, value: str) -> JiraProject | None:
        """The project whose key, id or name is ``value`` (case-insensitive, as JQL compares)."""
        wanted = value.casefold()
        for project in self.projects:
            if wanted in (project.key.casefold(), project.id, project.name.casefold()):
                return project
        return None


def load_config(tenant: Tenant) -> tuple[ServiceNowConfig, JiraConfig]:
    """``x-servicenow`` and ``x-jira`` of the tenant file, defaults filled in; ValueError when unusable."""

    def fail(message: str) -> ValueError:
        return ValueError(f"tenant file {tenant.source}: {message}")

    def section(name: str, defaults: Json) -> Json:
        value = tenant.raw.get(name)
        if value is None:
            return dict(defaults)
        if not isinstance(value, dict):
            raise fail(f"{name} must be a mapping")
        unknown = sorted(set(value) - set(defaults))
        if unknown:
            raise fail(f"{name} has unknown keys: {', '.join(unknown)} (allowed: {', '.join(sorted(defaults))})")
        return {**defaults, **value}

    def text(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise fail(f"{where} must be a non-empty string")
        return value

    def texts(value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise fail(f"{where} must be a non-empty list of strings")
        return tuple(text(v, f"{where}[{i}]") for i, v in enumerate(value))

    sn = section("x-servicenow", SERVICENOW_DEFAULTS)
    servicenow = ServiceNowConfig(
        username=text(sn["username"], "x-servicenow.username"),
        password=text(sn["password"], "x-servicenow.password"),
        token=text(sn["token"], "x-servicenow.token"),
        tables=texts(sn["tables"], "x-servicenow.tables"),
    )
    jr = section("x-jira", JIRA_DEFAULTS)
    if not isinstance(jr["projects"], list) or not jr["projects"]:
        raise fail("x-jira.projects must be a non-empty list of {key, issueTypes}")
    projects: list[JiraProject] = []
    for index, spec in enumerate(jr["projects"]):
        where = f"x-jira.projects[{index}]"
        if not isinstance(spec, dict):
            raise fail(f"{where} must be a mapping")
        key = text(spec.get("key"), f"{where}.key")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]+", key):
            raise fail(f"{where}.key {key!r} is not a Jira project key (upper-case letters, digits, _)")
        if any(p.key == key for p in projects):
            raise fail(f"{where}.key {key!r} repeats")
        projects.append(
            JiraProject(
                key=key,
                id=str(spec.get("id") or 10000 + index),
                name=text(spec.get("name", key), f"{where}.name"),
                issue_types=texts(spec.get("issueTypes", ["Task"]), f"{where}.issueTypes"),
            )
        )
    jira = JiraConfig(
        email=text(jr["email"], "x-jira.email"),
        api_token=text(jr["apiToken"], "x-jira.apiToken"),
        projects=tuple(projects),
    )
    return servicenow, jira


# -- state ------------------------------------------------------------------------------------------------------

SN_STATE_NEW = "1"
SN_STATE_CLOSED = "7"
SN_INACTIVE_STATES = frozenset({"7", "8"})  # Closed, Canceled: the instance sets active=false
SN_JOURNAL_FIELDS = ("work_notes", "comments")
SN_MAX_LENGTHS = {"short_description": 160, "description": 4000, "correlation_id": 100, "correlation_display": 100}
SN_NUMBER_PREFIXES = {"incident": "INC", "sn_si_incident": "SIR", "problem": "PRB", "change_request": "CHG"}
# Priority from impact x urgency, the incident table's default lookup rules.
SN_PRIORITY = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("2", "1"): "2",
    ("1", "3"): "3",
    ("2", "2"): "3",
    ("3", "1"): "3",
    ("2", "3"): "4",
    ("3", "2"): "4",
    ("3", "3"): "5",
}
SN_SYSTEM_FIELDS = frozenset(
    {"sys_id", "number", "sys_created_on", "sys_updated_on", "sys_created_by", "sys_updated_by", "sys_class_name"}
)

JIRA_STATUSES: dict[str, tuple[str, int, str]] = {
    # status name -> (statusCategory key, statusCategory id, statusCategory name)
    "To Do": ("new", 2, "To Do"),
    "In Progress": ("indeterminate", 4, "In Progress"),
    "Done": ("done", 3, "Done"),
}
JIRA_FIELD_MAX = 32767


class ItsmState:
    """Records and issues the endpoints created; every method is thread-safe and returns copies."""

    def __init__(self, tenant: Tenant, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.servicenow, self.jira = load_config(tenant)
        self._clock = clock
        self._lock = threading.RLock()
        self._records: list[Json] = []  # wire fields + "x-table" and the journal lists "x-work_notes", "x-comments"
        self._numbers: dict[str, int] = {}
        self._issues: list[Json] = []  # issue JSON + "x-comments" (comment JSON)
        self._issue_numbers: dict[str, int] = {}
        self._ids = 10000

    # -- ServiceNow ---------------------------------------------------------------------------------------------

    def create_record(self, table: str, values: Mapping[str, Any], user: str) -> Json:
        with self._lock:
            count = self._numbers.get(table, 0) + 1
            self._numbers[table] = count
            now = _sn_time(self._clock())
            record: Json = {
                "sys_id": secrets.token_hex(16),
                "number": f"{SN_NUMBER_PREFIXES.get(table, 'TASK')}{10000 + count:07d}",
                "sys_class_name": table,
                "sys_created_on": now,
                "sys_created_by": user,
                "sys_updated_on": now,
                "sys_updated_by": user,
                "opened_at": now,
                "opened_by": user,
                "state": SN_STATE_NEW,
                "active": "true",
                "impact": "3",
                "urgency": "3",
                "short_description": "",
                "description": "",
                "correlation_id": "",
                "correlation_display": "",
                "closed_at": "",
                "work_notes": "",
                "comments": "",
                "x-table": table,
                "x-work_notes": [],
                "x-comments": [],
            }
            self._apply(record, values, user, now)
            self._records.append(record)
            return copy.deepcopy(record)

    def update_record(self, table: str, sys_id: str, values: Mapping[str, Any], user: str) -> Json | None:
        with self._lock:
            record = self._record(table, sys_id)
            if record is None:
                return None
            now = _sn_time(self._clock())
            record["sys_updated_on"] = now
            record["sys_updated_by"] = user
            self._apply(record, values, user, now)
            return copy.deepcopy(record)

    def get_record(self, table: str, sys_id: str) -> Json | None:
        with self._lock:
            record = self._record(table, sys_id)
            return copy.deepcopy(record) if record is not None else None

    def query_records(self, table: str, query: SnQuery) -> list[Json]:
        with self._lock:
            rows = [r for r in self._records if r["x-table"] == table]
            known = set().union(*(r.keys() for r in rows)) if rows else set()
            # A condition on a field the table does not have is ignored, as ServiceNow does by default
            # (glide.invalid_query.returns_no_rows=false): a misspelt field widens the search, not narrows it.
            conditions = [c for c in query.conditions if c[0] in known]
            found = [(position, r) for position, r in enumerate(rows) if all(condition_holds(r, c) for c in conditions)]
            for field, descending in reversed(query.order):
                # Ties (one second is the field's precision) keep creation order, so the newest sorts first.
                found.sort(key=lambda pair: (str(pair[1].get(field, "")), pair[0]), reverse=descending)
            return copy.deepcopy([r for _, r in found])

    def close_record(self, key: str) -> Json | None:
        """Close the record whose sys_id or number is ``key`` (state Closed, active false)."""
        with self._lock:
            record = next((r for r in self._records if key in (r["sys_id"], r["number"])), None)
            if record is None:
                return None
            return self.update_record(record["x-table"], record["sys_id"], {"state": SN_STATE_CLOSED}, "admin")

    def records(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._records)

    def _record(self, table: str, sys_id: str) -> Json | None:
        return next((r for r in self._records if r["x-table"] == table and r["sys_id"] == sys_id), None)

    def _apply(self, record: Json, values: Mapping[str, Any], user: str, now: str) -> None:
        for field, value in values.items():
            if field in SN_SYSTEM_FIELDS or field.startswith("x-"):
                continue  # the instance owns these
            text = _sn_string(value)
            if field in SN_JOURNAL_FIELDS:
                if text.strip():
                    record[f"x-{field}"].append({"value": text, "sys_created_on": now, "sys_created_by": user})
                continue
            limit = SN_MAX_LENGTHS.get(field)
            record[field] = text[:limit] if limit else text  # longer values are cut silently
        record["priority"] = SN_PRIORITY.get((record["impact"], record["urgency"]), "5")
        if record["state"] in SN_INACTIVE_STATES and record["active"] == "true":
            record["active"] = "false"
            record["closed_at"] = now
            record["closed_by"] = user

    # -- Jira -------------------------------------------------------------------------------------------------------

    def create_issue(self, project: JiraProject, fields: Mapping[str, Any], base_url: str) -> Json:
        with self._lock:
            count = self._issue_numbers.get(project.key, 0) + 1
            self._issue_numbers[project.key] = count
            self._ids += 1
            issue_id = str(self._ids)
            now = _jira_time(self._clock())
            issue_fields = {
                **copy.deepcopy(dict(fields)),
                "project": {"id": project.id, "key": project.key, "name": project.name},
                "issuetype": {"name": fields["issuetype"]["name"]},
                "labels": list(fields.get("labels", [])),
                "created": now,
                "updated": now,
                "resolution": None,
                "resolutiondate": None,
                "reporter": self._account(),
            }
            issue: Json = {
                "id": issue_id,
                "key": f"{project.key}-{count}",
                "self": f"{base_url}/rest/api/3/issue/{issue_id}",
                "fields": issue_fields,
                "x-comments": [],
            }
            _set_status(issue, "To Do", now)
            self._issues.append(issue)
            return copy.deepcopy(issue)

    def add_comment(self, key: str, body: Any, base_url: str) -> Json | None:
        with self._lock:
            issue = self._issue(key)
            if issue is None:
                return None
            self._ids += 1
            now = _jira_time(self._clock())
            comment = {
                "self": f"{base_url}/rest/api/3/issue/{issue['id']}/comment/{self._ids}",
                "id": str(self._ids),
                "author": self._account(),
                "body": copy.deepcopy(body),
                "updateAuthor": self._account(),
                "created": now,
                "updated": now,
                "jsdPublic": True,
            }
            issue["x-comments"].append(comment)
            issue["fields"]["updated"] = now
            return copy.deepcopy(comment)

    def set_issue_status(self, key: str, status: str) -> Json | None:
        with self._lock:
            issue = self._issue(key)
            if issue is None:
                return None
            _set_status(issue, status, _jira_time(self._clock()))
            return copy.deepcopy(issue)

    def search_issues(self, predicate: Callable[[Json], bool], order: Sequence[tuple[str, bool]]) -> list[Json]:
        with self._lock:
            found = [issue for issue in self._issues if predicate(issue)]
            for field, descending in reversed(order):
                found.sort(key=_jira_sort_key(field), reverse=descending)
            return copy.deepcopy(found)

    def issues(self) -> list[Json]:
        with self._lock:
            return copy.deepcopy(self._issues)

    def _issue(self, key: str) -> Json | None:
        wanted = key.upper()
        return next((i for i in self._issues if wanted in (i["key"], i["id"])), None)

    def _account(self) -> Json:
        return {
            "accountId": "5b10ac8d82e05b22cc7d4ef5",
            "emailAddress": self.jira.email,
            "displayName": "Restricted Sender Responder",
            "active": True,
            "accountType": "atlassian",
        }


def _set_status(issue: Json, name: str, now: str) -> None:
    key, category_id, category_name = JIRA_STATUSES[name]
    fields = issue["fields"]
    fields["status"] = {
        "name": name,
        "statusCategory": {"id": category_id, "key": key, "name": category_name},
    }
    fields["statusCategory"] = fields["status"]["statusCategory"]
    fields["updated"] = now
    done = key == "done"
    fields["resolution"] = {"name": "Done"} if done else None
    fields["resolutiondate"] = now if done else None


def _jira_sort_key(field: str) -> Callable[[Json], Any]:
    if field == "key":
        return lambda issue: (issue["key"].split("-")[0], int(issue["key"].split("-")[1]))
    # Ties within one millisecond keep creation order (ids grow).
    return lambda issue: (str(issue["fields"].get(field, "")), int(issue["id"]))


def _sn_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _jira_time(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _sn_string(value: Any) -> str:
    """How the instance stores a JSON value: everything becomes a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict):  # a reference given as {"value": sys_id} or {"sys_id": ...}
        return str(value.get("value") or value.get("sys_id") or "")
    return str(value)


def basic_credentials(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password
