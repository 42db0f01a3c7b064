"""Jira Cloud tickets through REST v3: one issue per correlation id, found again by its label."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import httpx

from restricted_sender.adapters.http import SearchedTickets, cut, json_answer, send
from restricted_sender.errors import ConfigurationError, ServiceRefused, TransientServiceError
from restricted_sender.model import TicketContent, TicketRef
from restricted_sender.retry import RetryPolicy, with_retries
from restricted_sender.settings import Secret

SERVICE = "tickets"
PRODUCT_LABEL = "restricted-sender-responder"
SUMMARY_MAX = 255
# Jira refuses a rich-text field over 32,767 characters. We measure the serialized ADF, which is longer than
# what Jira counts, so staying under this is always safe.
FIELD_MAX = 32_767
TEXT_MAX = 20_000  # the readable part of the description; the record takes the rest
_DETAIL_MAX = 500
# Our ids are "rsr-<hex>": safe inside a quoted JQL string and valid as a label (no spaces).
_PROJECT_KEY = re.compile(r"[A-Z][A-Z0-9_]{0,254}")
_ISSUE_KEY = re.compile(r"[A-Z][A-Z0-9_]*-[0-9]+")
_ATX_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*")
_UNDERLINE = re.compile(r"(=+|-+)")
_RULE = re.compile(r"(-{3,}|_{3,}|\*{3,})")
_BULLET = re.compile(r"[-*•]\s+(.*)")


class JiraTickets(SearchedTickets):
    """A ``TicketSystem`` on one Jira Cloud project, authenticated with an account's email and API token."""

    name = "jira"
    system = "Jira"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        site_url: str,
        project: str,
        issue_type: str = "Task",
        email: str,
        api_token: Secret,
        labels: Sequence[str] = (),
        high_priority: str | None = "High",
        retry: RetryPolicy | None = None,
    ) -> None:
        if not _PROJECT_KEY.fullmatch(project):
            raise ConfigurationError(f"Jira: {project!r} is not a project key (upper-case letters, digits, _)")
        if not issue_type.strip():
            raise ConfigurationError("Jira: the issue type is empty")
        if not email:
            raise ConfigurationError("Jira: the account email is empty")
        for label in labels:
            if not label or any(c.isspace() for c in label) or len(label) > 255:
                raise ConfigurationError(f"Jira: {label!r} is not a label (1-255 characters, no spaces)")
        self._http = http
        self._site = site_url.rstrip("/")
        self._project = project
        self._issue_type = issue_type
        self._email = email
        self._api_token = api_token
        self._labels = tuple(labels)
        self._high_priority = high_priority.strip() if high_priority and high_priority.strip() else None
        self._retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return f"JiraTickets(site_url={self._site!r}, project={self._project!r})"

    # -- TicketSystem (find_open and create: SearchedTickets) ------------------------------------------------

    async def _post(self, content: TicketContent) -> TicketRef:
        labels = list(dict.fromkeys((content.correlation_id, PRODUCT_LABEL, *self._labels)))
        fields = {
            "project": {"key": self._project},
            "issuetype": {"name": self._issue_type},
            "summary": cut(" ".join(content.title.split()), SUMMARY_MAX),  # Jira refuses newlines here
            "description": description_document(content.text, content.record),
            "labels": labels,
        }
        if content.severity == "high" and self._high_priority:
            # The issue's priority by name (Jira's default scheme: Highest, High, Medium, Low, Lowest); it must be on
            # the project's create screen: https://developer.atlassian.com/cloud/jira/platform/rest/v3/api-group-issues/#api-rest-api-3-issue-post
            fields["priority"] = {"name": self._high_priority}
        data = await self._call("create", "POST", f"{self._site}/rest/api/3/issue", json={"fields": fields})
        key = data.get("key")
        if not isinstance(key, str) or not key:
            raise TransientServiceError(SERVICE, "Jira create: the answer holds no issue key")
        return self._ref(key)

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        if not _ISSUE_KEY.fullmatch(ticket.id):
            raise ServiceRefused(SERVICE, f"Jira: {ticket.id!r} is not an issue key")
        url = f"{self._site}/rest/api/3/issue/{ticket.id}/comment"
        body = {"body": adf_document(cut(content.update.strip() or content.title, TEXT_MAX))}
        await with_retries(partial(self._call, "update", "POST", url, json=body), self._retry)

    # -- calls ----------------------------------------------------------------------------------------------

    async def _find(self, correlation_id: str) -> TicketRef | None:
        # Also asked before a create is tried again: best effort, Jira's search index can lag a few seconds behind.
        jql = (
            f'project = "{self._project}" AND labels = "{correlation_id}" '
            "AND statusCategory != Done ORDER BY created DESC"
        )
        params = {"jql": jql, "fields": "summary", "maxResults": "1"}
        data = await self._call("find_open", "GET", f"{self._site}/rest/api/3/search/jql", params=params)
        issues = data.get("issues")
        if not isinstance(issues, list):
            raise TransientServiceError(SERVICE, "Jira find_open: 'issues' is not a list")
        for issue in issues:
            if isinstance(issue, dict) and isinstance(issue.get("key"), str) and issue["key"]:
                return self._ref(issue["key"])
        return None

    def _ref(self, key: str) -> TicketRef:
        return TicketRef(id=key, label=key, url=f"{self._site}/browse/{key}")

    async def _call(self, what: str, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        auth = httpx.BasicAuth(self._email, self._api_token.reveal())
        request = partial(self._http.request, method, url, headers={"Accept": "application/json"}, auth=auth, **kwargs)
        response = await send(SERVICE, f"Jira {what}", request, _problem)
        data = json_answer(SERVICE, f"Jira {what}", response, _problem)
        if not isinstance(data, dict):
            raise TransientServiceError(
                SERVICE, f"Jira {what}: the answer is not a JSON object", http_status=response.status_code
            )
        return data


# -- Atlassian Document Format ------------------------------------------------------------------------------


def adf_document(text: str, *, code: str | None = None, language: str = "json") -> dict[str, Any]:
    """``text`` as an ADF doc, then ``code`` as a code block. Pure; never emits an empty text node.

    Plain text maps simply: blank lines separate paragraphs, lines inside one are joined by hard breaks,
    ``# Title`` and underlined (``===`` / ``---``) lines become headings, ``- item`` lines a bullet list.
    """
    content = _blocks(text)
    if code:
        content.append({"type": "codeBlock", "attrs": {"language": language}, "content": [_text(code)]})
    if not content:
        content.append({"type": "paragraph", "content": []})  # an empty paragraph is valid; an empty text is not
    return {"type": "doc", "version": 1, "content": content}


def description_document(text: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The issue description: the readable text, then the record as a JSON code block, within Jira's limit."""
    text = cut(text, TEXT_MAX)
    for indent in (2, None):
        document = adf_document(text, code=json.dumps(record, indent=indent, sort_keys=True))
        if len(json.dumps(document)) <= FIELD_MAX:
            return document
    size = len(json.dumps(record))
    note = f"The decision record ({size} characters) is too long for this field; the audit trail holds it."
    return adf_document(f"{text}\n\n{note}")


def _text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def _heading(level: int, value: str) -> dict[str, Any]:
    return {"type": "heading", "attrs": {"level": level}, "content": [_text(value)]}


def _paragraph(lines: Sequence[str]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for line in lines:
        if content:
            content.append({"type": "hardBreak"})
        content.append(_text(line))
    return {"type": "paragraph", "content": content}


def _bullet_list(items: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "bulletList",
        "content": [{"type": "listItem", "content": [_paragraph([item])]} for item in items],
    }


def _blocks(text: str) -> list[dict[str, Any]]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    blocks: list[dict[str, Any]] = []
    paragraph: list[str] = []
    bullets: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(_paragraph(paragraph))
            paragraph.clear()
        if bullets:
            blocks.append(_bullet_list(bullets))
            bullets.clear()

    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        index += 1
        heading = _ATX_HEADING.fullmatch(stripped)
        bullet = _BULLET.fullmatch(stripped)
        if not stripped:
            flush()
        elif heading and heading[2]:
            flush()
            blocks.append(_heading(len(heading[1]), heading[2]))
        elif not paragraph and not bullets and _UNDERLINE.fullmatch(following) and not _RULE.fullmatch(stripped):
            blocks.append(_heading(1 if following.startswith("=") else 2, stripped))
            index += 1  # the underline
        elif _RULE.fullmatch(stripped):
            flush()
            blocks.append({"type": "rule"})
        elif bullet and bullet[1].strip():
            if paragraph:
                flush()
            bullets.append(bullet[1].strip())
        else:
            if bullets:
                flush()
            paragraph.append(line)
    flush()
    return blocks


# -- helpers ----------------------------------------------------------------------------------------------------


def _problem(response: httpx.Response) -> str:
    """Jira's ``errorMessages`` and per-field ``errors``, bounded; else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return cut(response.text, _DETAIL_MAX) or response.reason_phrase
    if not isinstance(data, dict):
        return cut(json.dumps(data), _DETAIL_MAX)
    parts: list[str] = []
    messages = data.get("errorMessages")
    if isinstance(messages, list):
        parts.extend(str(m) for m in messages if m)
    errors = data.get("errors")
    if isinstance(errors, dict):
        parts.extend(f"{field}: {message}" for field, message in errors.items())
    if not parts and isinstance(data.get("message"), str):
        parts.append(data["message"])  # the gateway's shape: {"message": ..., "status-code": ...}
    return cut("; ".join(parts) or "no message", _DETAIL_MAX)
