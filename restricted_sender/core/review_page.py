"""The review of a period (``core/review.py``) as one self-contained HTML page: ``decisions --html``.

The page is mailed to a change board and opened offline, so it loads nothing: inline CSS, bars drawn with CSS
widths, no script, no font, no image. Every value from a record (user, reason and action texts, alert ids: an
outsider chooses some of them) is cleaned by ``untrusted.one_line`` and HTML-escaped; the Content-Security-Policy
forbids scripts and every load anyway, as defence in depth
(https://developer.mozilla.org/docs/Web/HTTP/Headers/Content-Security-Policy).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from restricted_sender.core.review import Counts, Durations, Review, duration_text, first_source
from restricted_sender.core.untrusted import one_line
from restricted_sender.model import DecisionRecord, Outcome
from restricted_sender.timeutil import iso

CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MAX_DETAIL = 600  # characters of one reason, action or note text shown on the page
COLORS = {
    Outcome.UNBLOCK.value: "#2e7d32",
    Outcome.WAIT.value: "#1565c0",
    Outcome.TICKET.value: "#c62828",
    Outcome.IGNORE.value: "#757575",
}
STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: #1b1b1b;
  margin: 0 auto; max-width: 1100px; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 110px; }
.card .n { font-size: 24px; font-weight: 600; }
.card .k { color: #555; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.day { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.bar { width: 45%; }
.track { background: #f1f1f1; height: 12px; border-radius: 3px; display: flex; overflow: hidden; }
.fill { height: 12px; }
.code { font-family: ui-monospace, Consolas, monospace; font-size: 12.5px; }
.legend span { display: inline-block; margin-right: 14px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
.none { color: #777; font-style: italic; }
.records { table-layout: fixed; }
.records td { font-size: 12.5px; overflow-wrap: anywhere; }
.records ul { margin: 0; padding-left: 16px; }
.failed { color: #b71c1c; }
footer { margin-top: 32px; color: #777; font-size: 12px; }
@media print { body { padding: 0; } h2 { break-after: avoid; } tr { break-inside: avoid; } }
"""


def render_review(review: Review, *, period: str) -> str:
    """The whole page. ``period`` is how the window was asked for (``7d``), shown in the title."""
    title = f"Restricted Sender Responder: decisions of {period} to {iso(review.until)}"
    sections = [
        _summary(review),
        _outcomes(review),
        _per_day(review),
        _reasons(review),
        _sources(review),
        _timing(review),
        _failed(review),
        _budget(review),
        _would_have(review),
        _records(review.records),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="referrer" content="no-referrer">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_t(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head><body>",
            "<h1>Decisions review</h1>",
            f'<p class="sub">{_t(iso(review.since))} to {_t(iso(review.until))} ({_t(period)}), '
            f"from the audit table. Mode: {_t(_modes(review))}.</p>",
            *sections,
            "<footer>Rendered by <code>python -m restricted_sender decisions --html</code>; the same numbers as "
            "<code>decisions --json</code>. Reason codes are explained in the README's Decisions section.</footer>",
            "</body></html>",
        ]
    )


def _modes(review: Review) -> str:
    return ", ".join(f"{mode} ({n} decisions)" for mode, n in review.modes) or "no decisions"


def _summary(review: Review) -> str:
    cards = [("decisions", review.decisions), *review.by_outcome, ("checks of an unblock", review.checks)]
    cells = "".join(f'<div class="card"><div class="n">{n}</div><div class="k">{_t(k)}</div></div>' for k, n in cards)
    return f'<div class="cards" id="summary">{cells}</div>'


def _outcomes(review: Review) -> str:
    return _section("Decisions by outcome", _counts_table("by-outcome", ("decision", "count"), review.by_outcome))


def _per_day(review: Review) -> str:
    most = max((d.total for d in review.per_day), default=0)
    legend = "".join(
        f'<span><i class="swatch" style="background:{COLORS[o.value]}"></i>{_t(o.value)}</span>' for o in Outcome
    )
    rows = []
    for day in review.per_day:
        parts = "".join(
            f'<div class="fill" style="width:{_share(n, most)}%;background:{COLORS[o]}" title="{_t(o)} {n}"></div>'
            for o, n in day.outcomes
            if n
        )
        cells = "".join(f'<td class="num">{n}</td>' for _, n in day.outcomes)
        rows.append(
            f'<tr><td class="day">{_t(day.day.isoformat())}</td>{cells}<td class="num">{day.total}</td>'
            f'<td class="bar"><div class="track">{parts}</div></td></tr>'
        )
    head = _head(["day (UTC)", *(o.value for o in Outcome), "total"], numbers=len(Outcome) + 1, bar=True)
    table = _table("per-day", head, "".join(rows))
    return _section("Decisions per day", f'<div class="legend">{legend}</div>{table}')


def _reasons(review: Review) -> str:
    return _section(
        "Top reasons",
        _counts_table("top-reasons", ("reason code", "decisions"), review.top_reasons, code=True),
    )


def _sources(review: Review) -> str:
    if not review.sources:
        return _section("Sources", _none("no decisions"))
    rows = "".join(
        f'<tr><td class="code">{_t(s.kind)}</td><td class="num">{s.reports}</td><td class="num">{s.first}</td></tr>'
        for s in review.sources
    )
    head = _head(["source", "decisions it reported", "reported first"], numbers=2)
    return _section("Sources, and which one reported first", _table("sources", head, rows))


def _timing(review: Review) -> str:
    rows = "".join(
        f'<tr><td>{_t(label)}</td><td class="num">{d.count}</td><td class="num">{duration_text(d.median)}</td>'
        f'<td class="num">{duration_text(d.p90)}</td><td class="num">{duration_text(d.longest)}</td></tr>'
        for label, d in _timings(review)
    )
    head = _head(["", "recorded", "median", "90th percentile", "longest"], numbers=4)
    return _section("Time taken", _table("timing", head, rows))


def _timings(review: Review) -> tuple[tuple[str, Durations], ...]:
    return (
        ("block created (CreatedDatetime) to the decision", review.block_to_decision),
        ("our unblock to the check that found it lifted", review.unblock_to_lift),
    )


def _failed(review: Review) -> str:
    if not review.failed:
        return _section("Failed actions", _none("no action failed"))
    rows = "".join(
        f'<tr class="failed"><td class="num">{_t(iso(f.at))}</td><td>{_t(f.user)}</td>'
        f'<td class="code">{_t(f.kind)}</td><td>{_t(_short(f.detail))}</td></tr>'
        for f in review.failed
    )
    return _section("Failed actions", _table("failed", _head(["at", "user", "action", "detail"]), rows))


def _budget(review: Review) -> str:
    stops = _joined(review.budget_stops) or "none"
    return _section(
        "Unblock budget",
        f'<table id="budget"><tbody><tr><td>unblocks done (what the budget guards count)</td>'
        f'<td class="num">{review.unblocks_sent}</td></tr>'
        f'<tr><td>decisions a budget guard stopped</td><td class="num code">{_t(stops)}</td></tr></tbody></table>'
        '<p class="sub">The limits themselves are in the policy (<code>guards.max_unblocks_per_user</code>, '
        "<code>guards.max_unblocks_per_tenant</code>), not in the audit table.</p>",
    )


def _would_have(review: Review) -> str:
    if not review.would_have:
        return _section("Report-only: what it would have done", _none("no action was held back by report-only"))
    return _section(
        "Report-only: what it would have done",
        _counts_table("would-have", ("action", "times"), review.would_have, code=True),
    )


def _records(records: Sequence[DecisionRecord]) -> str:
    if not records:
        return _section("Decisions", _none("no decisions in this period"))
    rows = []
    for record in records:
        reasons = _items(f"{r.code}: {r.text}" for r in record.decision.reasons)
        actions = _items(f"{a.kind} {a.status.value}" + (f": {a.detail}" if a.detail else "") for a in record.actions)
        notes = _items(f"{n.code}: {n.text}" for n in record.notes)
        rows.append(
            f'<tr><td>{_t(iso(record.at).replace("T", " "))}<br><span class="code">first: '
            f"{_t(first_source(record) or record.source)}</span></td>"
            f'<td class="user">{_t(record.user or "-")}<br><span class="code">alert {_t(record.alert_id)}</span></td>'
            f'<td><b class="code">{_t(record.decision.outcome.value)}</b><br>{_t(record.mode)}</td>'
            f"<td>{reasons}</td><td>{actions}</td><td>{notes}</td></tr>"
        )
    return _section(
        "Decisions, newest first",
        '<table class="records" id="records"><colgroup><col style="width:12%"><col style="width:17%">'
        '<col style="width:8%"><col style="width:33%"><col style="width:18%"><col style="width:12%"></colgroup>'
        "<thead><tr><th>at (UTC)</th><th>user</th><th>decision</th><th>reasons</th><th>actions</th>"
        f"<th>not checked</th></tr></thead><tbody>{''.join(rows)}</tbody></table>",
    )


def _counts_table(table_id: str, header: tuple[str, str], counts: Counts, *, code: bool = False) -> str:
    if not counts:
        return _none("none")
    most = max(n for _, n in counts)
    css = ' class="code"' if code else ""
    rows = "".join(
        f'<tr><td{css}>{_t(key)}</td><td class="num">{n}</td><td class="bar"><div class="track">'
        f'<div class="fill" style="width:{_share(n, most)}%;background:{COLORS.get(key, "#5c6bc0")}"></div>'
        "</div></td></tr>"
        for key, n in counts
    )
    return _table(table_id, _head(header, numbers=1, bar=True), rows)


def _table(table_id: str, head: str, rows: str) -> str:
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _head(names: Sequence[str], *, numbers: int = 0, bar: bool = False) -> str:
    """Header cells: the last ``numbers`` columns hold numbers; ``bar`` adds the bar column's empty header."""
    first = len(names) - numbers
    cells = (f'<th class="num">{_t(n)}</th>' if i >= first else f"<th>{_t(n)}</th>" for i, n in enumerate(names))
    return "".join(cells) + ("<th></th>" if bar else "")


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_t(title)}</h2>{body}</section>"


def _items(texts: Iterable[str]) -> str:
    shown = [f"<li>{_t(_short(text))}</li>" for text in texts]
    return f"<ul>{''.join(shown)}</ul>" if shown else '<span class="none">-</span>'


def _none(text: str) -> str:
    return f'<p class="none">{_t(text)}</p>'


def _joined(counts: Counts) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts)


def _share(n: int, most: int) -> int:
    return round(100 * n / most) if most else 0


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _t(value: object) -> str:
    """Every value on the page: one line (the one rule for untrusted text), then HTML-escaped."""
    return html.escape(one_line(value), quote=True)
