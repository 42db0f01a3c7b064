"""The review of a period of decisions (a report-only week before ``enforce``), computed once.

:func:`review` turns the audit table's records and the window into one frozen :class:`Review`. The text summary,
``decisions --json`` and the HTML page (``core/review_page.py``) are all rendered from that value, so they cannot
disagree. Pure: the window's end is passed in, never read from a clock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from restricted_sender.core.decide import ReasonCode
from restricted_sender.model import ActionKind, ActionStatus, DecisionRecord, Outcome
from restricted_sender.timeutil import iso, parse_instant

TOP_REASONS = 10
# A scheduled check of an unblock is recorded like a decision; it is counted apart, as a check.
CHECK_CODES = frozenset({ReasonCode.VERIFIED, ReasonCode.NOT_LIFTED, ReasonCode.VERIFY_PENDING})
BUDGET_CODES = (ReasonCode.GUARD_USER_BUDGET, ReasonCode.GUARD_TENANT_BUDGET)
REPORT_ONLY_PREFIX = "report-only"  # how actions.py words an action report-only mode did not run

Counts = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Durations:
    """How long something took, over the records where both instants are recorded."""

    count: int = 0
    median: timedelta | None = None
    p90: timedelta | None = None
    longest: timedelta | None = None

    @classmethod
    def of(cls, spans: Iterable[timedelta]) -> Durations:
        ordered = sorted(s for s in spans if s >= timedelta(0))
        if not ordered:
            return cls()
        return cls(len(ordered), _rank(ordered, 0.5), _rank(ordered, 0.9), ordered[-1])

    def to_dict(self) -> dict[str, Any]:
        def seconds(span: timedelta | None) -> int | None:
            return None if span is None else int(span.total_seconds())

        return {
            "count": self.count,
            "median_seconds": seconds(self.median),
            "p90_seconds": seconds(self.p90),
            "longest_seconds": seconds(self.longest),
        }


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    outcomes: Counts  # every outcome, in Outcome order

    @property
    def total(self) -> int:
        return sum(n for _, n in self.outcomes)


@dataclass(frozen=True, slots=True)
class SourceCount:
    kind: str
    reports: int  # decisions this source reported
    first: int  # decisions this source reported before any other


@dataclass(frozen=True, slots=True)
class FailedAction:
    at: datetime
    user: str
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Review:
    since: datetime
    until: datetime
    decisions: int  # records that are decisions (not checks of an unblock)
    checks: int  # scheduled checks of an unblock
    modes: Counts
    by_outcome: Counts  # every outcome, in Outcome order
    per_day: tuple[Day, ...]  # every day of the window, oldest first
    top_reasons: Counts  # the TOP_REASONS most frequent reason codes of the decisions
    sources: tuple[SourceCount, ...]
    block_to_decision: Durations  # the block's CreatedDatetime to the decision
    unblock_to_lift: Durations  # our unblock to the check that found the user no longer restricted
    failed: tuple[FailedAction, ...]
    unblocks_sent: int  # unblocks done: what the budget guards count against their limits
    budget_stops: Counts  # decisions a budget guard stopped, by guard
    would_have: Counts  # report-only: the actions it would have run, by kind
    records: tuple[DecisionRecord, ...]  # newest first

    def to_dict(self) -> dict[str, Any]:
        """The review as ``decisions --json`` prints it (the records as the audit rows' ``to_dict`` shape)."""
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "decisions": self.decisions,
            "checks": self.checks,
            "modes": dict(self.modes),
            "by_outcome": dict(self.by_outcome),
            "per_day": [{"day": d.day.isoformat(), **dict(d.outcomes)} for d in self.per_day],
            "top_reasons": [{"code": code, "count": n} for code, n in self.top_reasons],
            "sources": [{"kind": s.kind, "reports": s.reports, "first": s.first} for s in self.sources],
            "block_to_decision": self.block_to_decision.to_dict(),
            "unblock_to_lift": self.unblock_to_lift.to_dict(),
            "failed_actions": [
                {"at": iso(f.at), "user": f.user, "kind": f.kind, "detail": f.detail} for f in self.failed
            ],
            "budget": {"unblocks_sent": self.unblocks_sent, "stopped_by": dict(self.budget_stops)},
            "report_only_would_have_run": dict(self.would_have),
            "records": [r.to_dict() for r in self.records],
        }


def review(records: Sequence[DecisionRecord], *, until: datetime, period: timedelta) -> Review:
    """The review of the records of ``period`` up to ``until`` (records outside it are left out)."""
    since = until - period
    kept = sorted((r for r in records if since <= r.at <= until), key=lambda r: r.at, reverse=True)
    checks = [r for r in kept if is_check(r)]
    decisions = [r for r in kept if not is_check(r)]
    outcomes = Counter(r.decision.outcome.value for r in decisions)
    reasons = Counter(reason.code for r in decisions for reason in r.decision.reasons)
    return Review(
        since=since,
        until=until,
        decisions=len(decisions),
        checks=len(checks),
        modes=_ranked(Counter(r.mode for r in decisions)),
        by_outcome=tuple((o.value, outcomes[o.value]) for o in Outcome),
        per_day=_per_day(decisions, since, until),
        top_reasons=_ranked(reasons)[:TOP_REASONS],
        sources=_sources(decisions),
        block_to_decision=Durations.of(
            r.at - created for r in decisions if (created := _instant(r.evidence, "restriction", "created"))
        ),
        unblock_to_lift=Durations.of(
            r.at - unblocked
            for r in checks
            if r.status_of(ActionKind.VERIFY) == ActionStatus.DONE
            and (unblocked := _instant(r.evidence, "unblocked_at"))
        ),
        failed=tuple(
            FailedAction(r.at, r.user, str(a.kind), a.detail)
            for r in kept
            for a in r.actions
            if a.status == ActionStatus.FAILED
        ),
        unblocks_sent=sum(
            1 for r in kept for a in r.actions if a.kind == ActionKind.UNBLOCK and a.status == ActionStatus.DONE
        ),
        budget_stops=tuple((c.value, reasons[c.value]) for c in BUDGET_CODES if reasons[c.value]),
        would_have=_ranked(Counter(str(a.kind) for r in kept for a in r.actions if would_have_run(a.status, a.detail))),
        records=tuple(kept),
    )


def duration_text(value: timedelta | None) -> str:
    """``42 min``, ``3 h 05 min``, ``2 d 4 h``; ``-`` when nothing was recorded."""
    if value is None:
        return "-"
    minutes = int(value.total_seconds()) // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def is_check(record: DecisionRecord) -> bool:
    return bool(record.decision.reasons) and record.decision.reasons[0].code in CHECK_CODES


def would_have_run(status: ActionStatus, detail: str) -> bool:
    return status == ActionStatus.SKIPPED and detail.startswith(REPORT_ONLY_PREFIX)


def first_source(record: DecisionRecord) -> str | None:
    return min(record.sources, key=lambda s: s.at).kind if record.sources else None


def _sources(decisions: Sequence[DecisionRecord]) -> tuple[SourceCount, ...]:
    reports = Counter(kind for r in decisions for kind in {s.kind for s in r.sources})
    first = Counter(kind for r in decisions if (kind := first_source(r)))
    return tuple(SourceCount(kind, n, first[kind]) for kind, n in _ranked(reports))


def _per_day(decisions: Sequence[DecisionRecord], since: datetime, until: datetime) -> tuple[Day, ...]:
    counts = Counter((r.at.date(), r.decision.outcome.value) for r in decisions)
    days = (since.date() + timedelta(days=n) for n in range((until.date() - since.date()).days + 1))
    return tuple(Day(day, tuple((o.value, counts[day, o.value]) for o in Outcome)) for day in days)


def _ranked(counter: Counter[str]) -> Counts:
    """Most frequent first; equal counts by name, so the same records always give the same order."""
    return tuple(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def _rank(ordered: Sequence[timedelta], share: float) -> timedelta:
    """The nearest-rank percentile: a recorded value, never an interpolation."""
    return ordered[max(0, math.ceil(len(ordered) * share) - 1)]


def _instant(evidence: Mapping[str, Any], *path: str) -> datetime | None:
    """An instant in the record's evidence, or ``None`` when it is absent or not an instant."""
    value: object = evidence
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return parse_instant(value)
    except ValueError:
        return None
