"""What the command line prints and reads: decision tables, summaries, masked subscriptions, alert files.

Kept apart from ``cli.py`` so that the commands there read as what they do, and so that tests and the other
entry points can print records the way the CLI does.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

from restricted_sender.core.policy import LoadedPolicy, Policy, load_policy_file
from restricted_sender.core.review import Review, duration_text
from restricted_sender.core.untrusted import one_line
from restricted_sender.errors import InputError, PolicyError
from restricted_sender.intake.alerts import parse_json
from restricted_sender.intake.payloads import check_payload
from restricted_sender.model import DecisionRecord
from restricted_sender.timeutil import iso


def read_alert_files(paths: Sequence[Path]) -> list[tuple[Path, bytes]]:
    """Read and check every file before acting on any: a malformed one stops the run untouched."""
    bodies = []
    for path in paths:
        try:
            body = path.read_bytes()
        except OSError as error:
            raise InputError(f"{path}: cannot read: {error.strerror or error}") from error
        try:
            check_payload(parse_json(body))
        except InputError as error:
            raise InputError(f"{path}: {error.message}") from error
        bodies.append((path, body))
    return bodies


def load_policy_or_escalate(path: Path) -> LoadedPolicy:
    try:
        return load_policy_file(path)
    except PolicyError as error:
        # Exactly what the function app does: fail closed, escalate every restricted user, say it loudly.
        print(f"POLICY INVALID (every restricted user is escalated): {error}", file=sys.stderr)
        return error


def print_records(records: Sequence[DecisionRecord], *, as_json: bool, out: TextIO) -> None:
    if as_json:
        for record in records:
            out.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")
        return
    rows = [("USER", "DECISION", "REASONS", "ACTIONS")]
    for record in records:
        reasons = "; ".join(r.code for r in record.decision.reasons)
        actions = "; ".join(f"{a.kind}:{a.status.value}" for a in record.actions) or "-"
        rows.append((one_line(record.user) or "-", record.decision.outcome.value, one_line(reasons), one_line(actions)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3] + "\n")
    out.write("\nWhy:\n")
    for record in records:
        for reason in record.decision.reasons:
            out.write(one_line(f"  {record.user or record.alert_id}: [{reason.code}] {reason.text}") + "\n")
    if any(record.notes for record in records):
        out.write("\nNot checked:\n")
        for record in records:
            for note in record.notes:
                out.write(one_line(f"  {record.user or record.alert_id}: [{note.code}] {note.text}") + "\n")


_KEY_PARAMETER = re.compile(r"(code|sig|key)(=|%3D)[^&\s)\"'<>]+", re.IGNORECASE)


def without_key(text: str, webhook: str) -> str:
    """``text`` without the webhook's function key: every query value of ``webhook`` long enough to be a key, raw
    and URL-encoded (the service may echo the address either way), and any ``code=``/``sig=``/``key=`` value in
    any case."""
    for _, value in parse_qsl(urlsplit(webhook).query):
        if len(value) < 8:
            continue
        for form in {value, quote(value, safe=""), quote_plus(value), quote(quote(value, safe=""), safe="")}:
            text = text.replace(form, "***")
    return _KEY_PARAMETER.sub(lambda m: f"{m[1]}{m[2]}***", text)


def masked_subscription(subscription: Any) -> Any:
    if isinstance(subscription, dict) and isinstance(subscription.get("webhook"), dict):
        webhook = dict(subscription["webhook"])
        if webhook.get("authId"):
            webhook["authId"] = "***"
        if isinstance(webhook.get("address"), str):
            webhook["address"] = webhook["address"].split("?")[0]  # the function key stays out of the output
        return {**subscription, "webhook": webhook}
    return subscription


def since_delta(text: str) -> timedelta:
    """``7d``, ``24h`` or ``90m`` as a timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit():
        raise InputError(f"--since must look like 7d, 24h or 90m, got {text!r}")
    return timedelta(**{units[unit]: int(number)})


def audit_records(rows: Sequence[Mapping[str, Any]]) -> list[DecisionRecord]:
    """The audit table's rows as records, with the evidence the review reads (the block's creation time, when an
    unblock was sent)."""
    return [
        replace(
            DecisionRecord.from_dict(row),
            evidence=evidence if isinstance(evidence := row.get("evidence"), dict) else {},
        )
        for row in rows
    ]


def summarize(review: Review) -> str:
    """The review as text: counts per decision, reason, source, timings and what report-only would have done."""
    outcomes = tuple((k, n) for k, n in review.by_outcome if n)
    lines = [f"{review.decisions} decision(s) from {iso(review.since)} to {iso(review.until)}"]
    for title, counts in (
        ("by decision", outcomes),
        ("top reasons", review.top_reasons),
        ("by source", tuple((s.kind, s.reports) for s in review.sources)),
        ("reported first", tuple((s.kind, s.first) for s in review.sources if s.first)),
        ("report-only would have run", review.would_have),
        ("stopped by a budget guard", review.budget_stops),
    ):
        if counts:
            lines.append(f"  {title}: " + ", ".join(f"{one_line(k)} {n}" for k, n in counts))
    for title, spans in (
        ("block created to decision", review.block_to_decision),
        ("unblock to verified lift", review.unblock_to_lift),
    ):
        if spans.count:
            lines.append(
                f"  {title}: median {duration_text(spans.median)}, 90th percentile {duration_text(spans.p90)}, "
                f"longest {duration_text(spans.longest)} ({spans.count} recorded)"
            )
    if review.checks:
        lines.append(f"  checks of an unblock: {review.checks}")
    lines.append(f"  unblocks done: {review.unblocks_sent}")
    for failed in review.failed:
        lines.append(
            f"  FAILED {iso(failed.at)} {one_line(failed.user)} {one_line(failed.kind)}: {one_line(failed.detail)}"
        )
    return "\n".join(lines)


def loaded(load: Callable[[], Policy]) -> LoadedPolicy:
    try:
        return load()
    except PolicyError as error:
        return error
