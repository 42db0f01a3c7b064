"""The review of a period (``core/review.py``): computed once, purely, from the records and the window; the page
(``core/review_page.py``) and the text summary render that one value."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from restricted_sender.core.review import TOP_REASONS, Durations, review
from restricted_sender.core.review_page import CSP, render_review
from restricted_sender.core.untrusted import one_line
from restricted_sender.entrypoints.console import summarize
from restricted_sender.model import (
    Action,
    ActionKind,
    ActionStatus,
    Decision,
    DecisionRecord,
    Note,
    NoteCode,
    Outcome,
    Reason,
    Source,
)
from restricted_sender.timeutil import iso, parse_instant

UNTIL = parse_instant("2026-11-27T12:00:00Z")
WEEK = timedelta(days=7)


def record(
    user: str = "a@contoso.com",
    outcome: Outcome = Outcome.TICKET,
    codes: tuple[str, ...] = ("no-allow-rule",),
    *,
    age: timedelta = timedelta(hours=1),
    actions: tuple[Action, ...] = (),
    sources: tuple[tuple[str, timedelta], ...] = (("poll", timedelta(0)),),
    evidence: dict[str, Any] | None = None,
    text: str = "why",
    notes: tuple[Note, ...] = (),
    alert_id: str = "a1",
) -> DecisionRecord:
    at = UNTIL - age
    return DecisionRecord(
        event_id=f"e-{user}-{age}", alert_id=alert_id, source=sources[0][0] if sources else "poll",
        sources=tuple(Source(kind, "x", at - before) for kind, before in sources), user=user,
        decision=Decision(outcome, tuple(Reason(c, text) for c in codes)), actions=actions, mode="report-only",
        policy_version="v1", at=at, evidence=evidence or {}, notes=notes,
    )  # fmt: skip


def test_only_the_records_of_the_window_are_reviewed() -> None:
    inside = record("in@contoso.com", age=timedelta(days=6, hours=23))
    older = record("old@contoso.com", age=timedelta(days=7, minutes=1))
    later = record("later@contoso.com", age=-timedelta(minutes=1))  # after --now: not part of the period
    done = review([inside, older, later], until=UNTIL, period=WEEK)
    assert [r.user for r in done.records] == ["in@contoso.com"]
    assert (done.since, done.until) == (UNTIL - WEEK, UNTIL)


def test_every_outcome_and_every_day_of_the_window_is_counted_even_at_zero() -> None:
    done = review(
        [record(outcome=Outcome.UNBLOCK, age=timedelta(days=2)), record(), record(outcome=Outcome.IGNORE)],
        until=UNTIL,
        period=WEEK,
    )
    assert done.by_outcome == (("unblock", 1), ("wait", 0), ("ticket", 1), ("ignore", 1))
    assert [d.day.isoformat() for d in done.per_day] == [f"2026-11-{n}" for n in range(20, 28)]
    assert {d.day.isoformat(): d.total for d in done.per_day if d.total} == {"2026-11-25": 1, "2026-11-27": 2}


def test_top_reasons_are_the_most_frequent_codes_with_ties_in_name_order() -> None:
    records = [record(codes=(f"guard:g{n:02d}",)) for n in range(TOP_REASONS + 2)]
    records += [record(codes=("no-allow-rule", "guard:g05"))] * 3
    done = review(records, until=UNTIL, period=WEEK)
    assert done.top_reasons[:3] == (("guard:g05", 4), ("no-allow-rule", 3), ("guard:g00", 1))
    assert len(done.top_reasons) == TOP_REASONS


def test_sources_count_each_decision_once_and_name_the_one_that_reported_first() -> None:
    both = record(sources=(("poll", timedelta(0)), ("sentinel", timedelta(minutes=5)), ("poll", timedelta(seconds=1))))
    done = review([both, record()], until=UNTIL, period=WEEK)
    assert [(s.kind, s.reports, s.first) for s in done.sources] == [("poll", 2, 1), ("sentinel", 1, 1)]


def test_time_from_the_block_to_the_decision_and_from_the_unblock_to_the_verified_lift() -> None:
    decisions = [
        record(evidence={"restriction": {"created": iso(UNTIL - timedelta(hours=1 + h))}}) for h in (1, 2, 3, 10)
    ]
    decisions.append(record(evidence={"restriction": {"created": "not a date"}}))  # left out, not a failure
    verified = record(
        outcome=Outcome.UNBLOCK,
        codes=("verified",),
        actions=(Action(ActionKind.VERIFY, ActionStatus.DONE, "lifted"),),
        evidence={"unblocked_at": iso(UNTIL - timedelta(hours=3))},
    )
    pending = record(outcome=Outcome.UNBLOCK, codes=("verify-pending",), evidence={"unblocked_at": iso(UNTIL)})
    done = review([*decisions, verified, pending], until=UNTIL, period=WEEK)
    assert done.block_to_decision == Durations(4, timedelta(hours=2), timedelta(hours=10), timedelta(hours=10))
    assert done.unblock_to_lift == Durations(1, timedelta(hours=2), timedelta(hours=2), timedelta(hours=2))
    assert (done.decisions, done.checks) == (5, 2)  # checks of an unblock are not decisions
    assert done.by_outcome[0] == ("unblock", 0)


def test_failed_actions_budget_stops_and_what_report_only_would_have_run() -> None:
    records = [
        record(actions=(Action(ActionKind.TICKET, ActionStatus.FAILED, "ServiceNow said 503"),)),
        record(outcome=Outcome.UNBLOCK, actions=(Action(ActionKind.UNBLOCK, ActionStatus.DONE, "removed"),)),
        record(codes=("allow:staff", "guard:tenant-budget")),
        record(outcome=Outcome.UNBLOCK, actions=(Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, "report-only: x"),)),
        record(actions=(Action(ActionKind.TICKET, ActionStatus.SKIPPED, "no ticket system"),)),
    ]
    done = review(records, until=UNTIL, period=WEEK)
    assert [(f.kind, f.detail) for f in done.failed] == [("ticket", "ServiceNow said 503")]
    assert (done.unblocks_sent, done.budget_stops) == (1, (("guard:tenant-budget", 1),))
    assert done.would_have == (("unblock", 1),)


def test_the_json_carries_the_same_counts_as_the_value() -> None:
    done = review([record(), record(outcome=Outcome.WAIT, codes=("limit-block",))], until=UNTIL, period=WEEK)
    data = done.to_dict()
    assert data["by_outcome"] == dict(done.by_outcome)
    assert data["top_reasons"] == [{"code": "limit-block", "count": 1}, {"code": "no-allow-rule", "count": 1}]
    assert data["block_to_decision"] == {
        "count": 0,
        "median_seconds": None,
        "p90_seconds": None,
        "longest_seconds": None,
    }
    assert len(data["records"]) == 2


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(name for name, _ in attrs)


HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</td></tr></table><iframe src=//evil.example>",
    "line\nFAKE: done\u2028\u202eevil",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_value_anywhere_in_a_record_adds_no_element_and_no_attribute_to_the_page(hostile: str) -> None:
    plain = record(notes=(Note(NoteCode.RISK_UNKNOWN, "n"),), actions=(Action("ticket", ActionStatus.FAILED, "d"),))
    evil = record(
        user=hostile,
        codes=(hostile,),
        text=hostile,
        alert_id=hostile,
        sources=((hostile, timedelta(0)),),
        notes=(Note(hostile, hostile),),
        actions=(Action(hostile, ActionStatus.FAILED, hostile),),
    )

    def elements(page: str) -> tuple[list[str], list[str]]:
        parsed = _Elements()
        parsed.feed(page)
        return sorted(parsed.tags), sorted(parsed.attributes)

    reference = elements(render_review(review([plain], until=UNTIL, period=WEEK), period="7d"))
    page = render_review(review([evil], until=UNTIL, period=WEEK), period="7d")
    assert elements(page) == reference
    assert html.escape(one_line(hostile)) in page  # shown as one line of text: no forged line, no reordering
    assert not {"\u202e", "\u2028"} & set(page)


def test_the_page_loads_nothing_and_forbids_scripts() -> None:
    page = render_review(review([record()], until=UNTIL, period=WEEK), period="7d")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert CSP.startswith("default-src 'none'; style-src 'unsafe-inline'")
    assert not re.search(r"<script|<link|<img|\bsrc=|url\(|@import|https?://", page)


def test_the_text_summary_shows_hostile_values_on_one_line() -> None:
    failed = Action(ActionKind.TICKET, ActionStatus.FAILED, "503\n  by decision: unblock 99\x1b[2J")
    text = summarize(review([record(actions=(failed,))], until=UNTIL, period=WEEK))
    assert text.splitlines()[-1].startswith("  FAILED 2026-11-27T11:00:00Z a@contoso.com ticket: 503")
    assert "\x1b" not in text
    assert "unblock 99" in text.splitlines()[-1]
