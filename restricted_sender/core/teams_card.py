"""The Teams card of one decision (pure): an Adaptive Card in the envelope a Teams Workflows webhook takes.

Office 365 connectors are retired; a channel takes webhook posts through the Workflows app ("When a Teams webhook
request is received", then "Post card in a chat or channel"), which posts Adaptive Cards only. The body is
``{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
"content": <the card>}]}``, as Microsoft Learn shows it ("Send Adaptive Cards using an Incoming Webhook",
https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using), and the
trigger's request schema (https://learn.microsoft.com/connectors/teams/#microsoft-teams-webhook) requires
``contentUrl`` too. The card is version 1.4: Workflows does not display later versions (reported in
https://github.com/prometheus/alertmanager/issues/3920 and https://github.com/Skitionek/notify-microsoft-teams/issues/107).

Teams renders Markdown in ``TextBlock`` text and in ``FactSet`` titles and values
(https://learn.microsoft.com/microsoftteams/platform/task-modules-and-cards/cards/cards-format), and none in a
``RichTextBlock``'s ``TextRun`` ("Markdown is not supported":
https://learn.microsoft.com/adaptive-cards/schema-explorer/text-run). So every value from the record
(addresses, rule names in reasons, alert ids, action details) is a ``TextRun``, cleaned with
``untrusted.one_line`` like every other channel; ``TextBlock`` carries only this module's own words. A hostile
rule name such as ``[open](https://evil.example)`` is then shown as those characters, never as a link, and, being
a JSON string value, cannot add an element. Links are ``Action.OpenUrl`` buttons to the Restricted entities page
and to the ticket (its system's own https URL); nothing else is linked.

Each part the SOC compares with the ticket has an ``id``: ``reasons``, ``actions``, ``notes``, containers of one
``RichTextBlock`` per entry whose runs alternate value and separator (code or kind in bold, ": ", text; an action's
status, " — ", its detail); :func:`card_entries` reads the values back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from restricted_sender.core.ticket_body import RESTRICTED_ENTITIES_URL
from restricted_sender.core.untrusted import one_line
from restricted_sender.model import DecisionRecord, Outcome, TicketRef
from restricted_sender.timeutil import iso

CARD_VERSION = "1.4"
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
# Teams refuses a message over about 28 KB (https://learn.microsoft.com/connectors/teams/, known issues): the
# whole body, with its JSON escapes, stays well under it.
MAX_CARD_BYTES = 20_000
MIN_REASONS = 10  # listed at every level of detail: each one is why the card exists

_HEADLINES = {
    Outcome.UNBLOCK: "Restricted sender unblocked",
    Outcome.WAIT: "Restricted sender: the block lifts by itself",
    Outcome.TICKET: "Restricted sender needs a person",
    Outcome.IGNORE: "Restricted sender alert ignored",
}


@dataclass(frozen=True, slots=True)
class _Limits:
    items: int  # entries per list before "and N more"
    chars: int  # characters per value before "…"


_LEVELS = (_Limits(20, 400), _Limits(10, 200), _Limits(5, 100), _Limits(3, 60))


def notice_card(record: DecisionRecord, *, ticket: TicketRef | None = None) -> dict[str, Any]:
    """The SOC's notice of one decision: who, what was decided and why, what was done, what was not checked."""
    return _fit(lambda limits: _card(record, limits, ticket=ticket))


def ticket_card(
    record: DecisionRecord, *, correlation_id: str, severity: str, ticket: TicketRef | None = None
) -> dict[str, Any]:
    """The card that is the ticket, when Teams is the ticket system: the notice plus the correlation id and severity."""
    return _fit(lambda limits: _card(record, limits, ticket=ticket, correlation_id=correlation_id, severity=severity))


def update_card(correlation_id: str, note: str) -> dict[str, Any]:
    """A later report of a restriction whose card was posted: the ticket's update note."""
    body = [
        _heading("Restricted sender: another report", size="Medium"),
        _line("Correlation id", _shorten(one_line(correlation_id), 200)),
        {"type": "RichTextBlock", "id": "update", "inlines": [_run(_shorten(one_line(note), 1_000))]},
    ]
    return envelope(_adaptive(body, []))


def envelope(card: Mapping[str, Any]) -> dict[str, Any]:
    """The Workflows webhook's body around one card."""
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": dict(card)}],
    }


def card_entries(body: Mapping[str, Any], part: str) -> list[tuple[str, ...]]:
    """The entries of ``part`` (``reasons``, ``actions``, ``notes``) of a posted body, each as its values:
    (code, text) for a reason or a note, (kind, status, detail) for an action (no detail: (kind, status))."""
    card = body["attachments"][0]["content"]
    container = next((item for item in card["body"] if item.get("id") == part), None)
    if container is None:
        return []
    return [
        tuple(run["text"] for run in block["inlines"][0::2])
        for block in container["items"]
        if block.get("id") != f"{part}-more"
    ]


# -- building ------------------------------------------------------------------------------------------------


def _fit(build: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for limits in _LEVELS:
        body = build(limits)
        if len(json.dumps(body, ensure_ascii=False).encode("utf-8")) <= MAX_CARD_BYTES:
            break
    return body


def _card(
    record: DecisionRecord,
    limits: _Limits,
    *,
    ticket: TicketRef | None,
    correlation_id: str | None = None,
    severity: str | None = None,
) -> dict[str, Any]:
    def v(value: object) -> str:
        return _shorten(str(one_line(value)), limits.chars)

    outcome = record.decision.outcome
    body: list[dict[str, Any]] = [
        _heading(_HEADLINES[outcome], size="Large"),
        _line("User", v(record.user)),
        _line("Decision", f"{outcome.value} (mode {v(record.mode)}, policy version {v(record.policy_version)})"),
        _line("Alert", f"{v(record.source)} {v(record.alert_id)} at {iso(record.at)}"),
    ]
    if correlation_id is not None:
        body.append(_line("Correlation id", v(correlation_id)))
    if severity is not None:
        body.append(_line("Severity", v(severity)))
    if ticket is not None:
        body.append(_line("Ticket", v(str(ticket))))
    body.append(_line("Event id", v(record.event_id)))
    reasons = [(v(r.code), v(r.text)) for r in record.decision.reasons]
    actions = [(v(a.kind), a.status.value, *((v(a.detail),) if a.detail else ())) for a in record.actions]
    body += [
        _heading("Why"),
        _entries("reasons", reasons, max(limits.items, MIN_REASONS), empty="No reasons were recorded."),
        _heading("What was done"),
        _entries("actions", actions, max(limits.items, MIN_REASONS), empty="Nothing."),
    ]
    if record.notes:
        notes = [(v(str(n.code)), v(n.text)) for n in record.notes]
        body += [
            _heading("Not checked: the decision was taken without these, check them by hand"),
            _entries("notes", notes, max(limits.items, MIN_REASONS), empty=""),
        ]
    buttons = [{"type": "Action.OpenUrl", "title": "Restricted entities", "url": RESTRICTED_ENTITIES_URL}]
    if ticket is not None and ticket.url and _own_https(ticket.url):
        buttons.append({"type": "Action.OpenUrl", "title": "Open the ticket", "url": ticket.url})
    return envelope(_adaptive(body, buttons))


def _adaptive(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {"type": "AdaptiveCard", "$schema": CARD_SCHEMA, "version": CARD_VERSION, "body": body}
    if actions:
        card["actions"] = actions
    return card


def _heading(text: str, *, size: str = "Default") -> dict[str, Any]:
    """Only this module's own words are ever a TextBlock (its text is Markdown)."""
    return {"type": "TextBlock", "text": text, "weight": "Bolder", "size": size, "wrap": True}


def _run(text: str, *, bold: bool = False) -> dict[str, Any]:
    run: dict[str, Any] = {"type": "TextRun", "text": text}
    if bold:
        run["weight"] = "Bolder"
    return run


def _line(label: str, value: str) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": [_run(f"{label}: ", bold=True), _run(value)]}


def _entries(part: str, entries: Sequence[tuple[str, ...]], shown: int, *, empty: str) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"type": "RichTextBlock", "inlines": _values(entry)} for entry in entries[:shown]]
    if len(entries) > shown:
        items.append(
            {"type": "RichTextBlock", "id": f"{part}-more", "inlines": [_run(f"… and {len(entries) - shown} more")]}
        )
    if not items:
        items.append({"type": "RichTextBlock", "id": f"{part}-more", "inlines": [_run(empty or "None.")]})
    return {"type": "Container", "id": part, "items": items}


def _values(entry: Sequence[str]) -> list[dict[str, Any]]:
    """Value, separator, value, ...: the first value in bold, then ": ", then " — " between the others."""
    runs = [_run(entry[0], bold=True)]
    for index, value in enumerate(entry[1:]):
        runs += [_run(": " if index == 0 else " — "), _run(value)]
    return runs


def _own_https(url: str) -> bool:
    """A ticket's link: an https URL of one line, without userinfo (the system's own, built from its settings)."""
    if url != one_line(url) or " " in url or len(url) > 2_000:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and "@" not in parts.netloc


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"
