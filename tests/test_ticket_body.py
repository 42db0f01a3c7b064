"""The ticket body: one rendering of the decision record and its evidence, readable, safe and bounded."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest

from restricted_sender.core.ticket_body import (
    MAX_BODY_CHARS,
    MAX_TITLE_CHARS,
    RESPONDING_URL,
    RESTORE_URL,
    RESTRICTED_ENTITIES_URL,
    REVOKE_URL,
    render_ticket,
)
from restricted_sender.model import Decision, DecisionRecord, Outcome

CORRELATION = "rsr-92e99a415ec3a4cb81c1933d530a93ee"
ALLOW = {"code": "allow:contoso staff", "text": "allow rule 'contoso staff' matches domain contoso.com"}
INBOX_RULE = {
    "code": "guard:inbox-rule",
    "text": 'inbox rule "." forwards to judy.archive@outlook-mail.example (outside the tenant)',
}
ALERT_URL = "https://security.microsoft.com/alerts/fa8f2b1c?tid=8f0c2a52"


def record(*reasons: dict[str, str], actions: list[dict[str, str]] | None = None, **extra: Any) -> DecisionRecord:
    """The typed record of judy's escalated restriction, written as its audit row (``DecisionRecord.to_dict``)."""
    return DecisionRecord.from_dict(
        {
            "event_id": "08cdcbcbb48cb8bb32e97df8999b6aff",
            "alert_id": "fa8f2b1c-0d3e-4f5a-9b6c-7d8e9f0a1b31",
            "source": "alerts_v2",
            "sources": [
                {"kind": "alerts_v2", "id": "fa8f2b1c-0d3e-4f5a-9b6c-7d8e9f0a1b31", "at": "2026-11-27T08:11:09Z"}
            ],
            "user": "judy@contoso.com",
            "decision": "ticket",
            "reasons": list(reasons or (ALLOW, INBOX_RULE)),
            "actions": actions or [],
            "mode": "enforce",
            "policy_version": "859c624474aa",
            "at": "2026-11-27T08:11:09Z",
            "notes": [{"code": "risk-unknown", "text": "Identity Protection gave no risk level (no Entra ID P2)"}],
            **extra,
        }
    )


def rule(name: str, *suspicious: str, enabled: bool = True) -> dict[str, Any]:
    return {
        "id": f"id-{name}",
        "name": name,
        "enabled": enabled,
        "forward_to": [],
        "redirect_to": [],
        "forward_as_attachment_to": [],
        "delete": False,
        "permanent_delete": False,
        "move_to_folder": None,
        "suspicious": list(suspicious),
    }


def evidence(**changes: Any) -> dict[str, Any]:
    """What ``actions.evidence`` gathers for a compromised-looking user (the sample tenant's judy)."""
    base: dict[str, Any] = {
        "restriction": {
            "sender_address": "judy@contoso.com",
            "reason": "OutboundSpamLast24Hours=380;OutboundMailLast24Hours=391;OutboundSpamPercent=97",
            "parsed_reason": {
                "values": {
                    "OutboundSpamLast24Hours": "380",
                    "OutboundMailLast24Hours": "391",
                    "OutboundSpamPercent": "97",
                },
                "flags": [],
            },
            "kind": "spam",
            "temporary_block": False,
            "created": "2026-11-27T07:10:00Z",
            "changed": "2026-11-27T07:10:00Z",
            "expected_release": None,
        },
        "user": {
            "id": "0b1c2d3e-0010-4a5b-8c9d-000000000010",
            "user_principal_name": "judy@contoso.com",
            "mail": "judy@contoso.com",
            "account_enabled": True,
            "user_type": "Member",
            "created": None,
        },
        "member_of_policy_groups": [],
        "risk": {"level": "none", "known": True},
        "inbox_rules": [
            rule(".", 'inbox rule "." forwards to judy.archive@outlook-mail.example (outside the tenant)'),
            rule("Newsletters"),
        ],
        "inbox_rules_total": 2,
        "forwarding": {
            "forwarding_smtp_address": "m.travel@freemail.example",
            "forwarding_address": None,
            "deliver_to_mailbox_and_forward": False,
        },
        "our_unblocks": [{"at": "2026-11-20T10:00:00Z", "kind": "auto", "event_id": "e0", "status": "done"}],
        "links": {"alert": ALERT_URL, "restricted_entities": RESTRICTED_ENTITIES_URL},
    }
    base.update(changes)
    return base


def lines(text: str) -> list[str]:
    return text.splitlines()


# A person reads it ------------------------------------------------------------------------------------------


def test_the_title_names_the_user_and_the_first_reason_that_is_not_an_allow_match() -> None:
    content = render_ticket(CORRELATION, record(), evidence())
    assert content.title == f"Restricted sender: judy@contoso.com — {INBOX_RULE['text']}"
    assert content.text.startswith(content.title + "\n")
    assert content.correlation_id == CORRELATION


@pytest.mark.parametrize(
    ("codes", "main"),
    [
        (["allow:a", "guard:user-budget", "guard:risk"], "guard:user-budget"),
        (["deny:group", "no-allow-rule"], "deny:group"),
        (["no-allow-rule", "guard:forwarding"], "guard:forwarding"),
        (["allow:a", "unblock-failed"], "unblock-failed"),
        (["allow:a", "verified", "not-lifted"], "not-lifted"),
        (["allow:a", "no-allow-rule"], "no-allow-rule"),
        (["policy-invalid"], "policy-invalid"),
        (["allow:a"], "allow:a"),
    ],
)
def test_the_main_reason_is_a_failed_guard_a_deny_or_a_failed_unblock_first(codes: list[str], main: str) -> None:
    reasons = [{"code": c, "text": f"text of {c}"} for c in codes]
    assert render_ticket(CORRELATION, record(*reasons), evidence()).title.endswith(f"— text of {main}")


def test_the_title_stays_short_however_long_the_reason() -> None:
    long = {"code": "guard:inbox-rule", "text": "inbox rule forwards outside; " * 100}
    title = render_ticket(CORRELATION, record(long), evidence()).title
    assert len(title) <= MAX_TITLE_CHARS
    assert title.endswith("…")


def test_the_summary_says_what_happened_what_was_decided_and_why() -> None:
    text = render_ticket(CORRELATION, record(), evidence()).text
    summary = lines(text)[2]
    assert "Microsoft 365 restricted judy@contoso.com from sending email at 2026-11-27T07:10:00Z" in summary
    assert "outbound spam" in summary
    assert f"did not unblock the user and opened this ticket because {INBOX_RULE['text']}" in summary
    assert "signs of a compromised account" in summary


def test_the_text_has_every_section_in_reading_order_and_no_tables() -> None:
    text = render_ticket(CORRELATION, record(), evidence()).text
    headings = [
        "DECISION AND REASONS",
        "NOT CHECKED",
        "EVIDENCE",
        "Restriction:",
        "User:",
        "Sign-in risk:",
        "Inbox rules:",
        "Mailbox forwarding:",
        "Our previous unblocks of this user:",
        "Links:",
        "WHAT WAS DONE",
        "COMPROMISE RESPONSE CHECKLIST",
    ]
    positions = [lines(text).index(h) for h in headings]
    assert positions == sorted(positions)
    assert lines(text)[-1].startswith(f"Correlation id: {CORRELATION}")
    assert not any(line.lstrip().startswith("|") for line in lines(text))


def test_what_was_not_checked_is_named_with_its_code_right_after_the_reasons() -> None:
    text = render_ticket(CORRELATION, record(), evidence()).text
    section = lines(text)[lines(text).index("NOT CHECKED") :]
    assert "- [risk-unknown] Identity Protection gave no risk level (no Entra ID P2)" in section[:5]
    assert "NOT CHECKED" not in render_ticket(CORRELATION, record(notes=[]), evidence()).text


def test_the_evidence_shows_the_parsed_reason_block_kind_and_release() -> None:
    text = render_ticket(CORRELATION, record(), evidence()).text
    assert "  - OutboundSpamPercent = 97 (percent of sent mail judged spam)" in lines(text)
    assert "  - Kind of block: outbound spam (usually a sign of a compromised account)" in lines(text)
    assert "  - Restricted at: 2026-11-27T07:10:00Z (last changed 2026-11-27T07:10:00Z)" in lines(text)
    assert "  - Expected to lift by itself: no, it stays until an admin removes it" in lines(text)
    assert "  - Account enabled: yes" in lines(text)
    assert "  - Forwards to SMTP address: m.travel@freemail.example" in lines(text)
    assert "  - 2026-11-20T10:00:00Z: auto unblock, done" in lines(text)
    assert f"  - Alert: {ALERT_URL}" in lines(text)


def test_a_sending_limit_block_says_when_it_lifts_by_itself() -> None:
    restriction = {
        **evidence()["restriction"],
        "reason": "EmailSendingLimitExceeded;ExternalRecipientCountToday=396;ExceedingLimitType=External",
        "parsed_reason": {
            "values": {"ExternalRecipientCountToday": "396", "ExceedingLimitType": "External"},
            "flags": ["EmailSendingLimitExceeded"],
        },
        "kind": "sending-limit",
        "expected_release": "2026-11-28T07:10:00Z",
    }
    text = render_ticket(CORRELATION, record(), evidence(restriction=restriction)).text
    assert "expected to lift by itself by 2026-11-28T07:10:00Z" in lines(text)[2]
    assert "  - EmailSendingLimitExceeded (a sending limit was exceeded)" in lines(text)
    assert "  - Expected to lift by itself: 2026-11-28T07:10:00Z" in lines(text)


def test_an_unknown_risk_says_it_needs_entra_id_p2() -> None:
    text = render_ticket(CORRELATION, record(), evidence(risk={"level": None, "known": False})).text
    assert "  - Identity Protection user risk: unknown — needs Entra ID P2" in "\n".join(lines(text))


def test_suspicious_inbox_rules_are_listed_with_why_and_harmless_ones_only_counted() -> None:
    text = render_ticket(CORRELATION, record(), evidence()).text
    assert "  2 inbox rules, 1 suspicious:" in lines(text)
    assert '  - "." (enabled): forwards to judy.archive@outlook-mail.example (outside the tenant)' in lines(text)
    assert "Newsletters" not in text


def test_rules_that_were_not_read_or_not_all_examined_say_so() -> None:
    assert "  - Not read (no mailbox, or the rules could not be read)." in lines(
        render_ticket(CORRELATION, record(), evidence(inbox_rules=None, inbox_rules_total=None)).text
    )
    partial = render_ticket(CORRELATION, record(), evidence(inbox_rules_total=120)).text
    assert "  120 inbox rules, 1 suspicious among the first 2 examined:" in lines(partial)


def test_every_reason_code_and_action_of_the_record_appears_in_text_and_html() -> None:
    reasons = [ALLOW, INBOX_RULE, {"code": "guard:forwarding", "text": "mailbox forwards to x@y.example"}]
    actions = [
        {"kind": "revoke_sessions", "status": "done", "detail": "sessions revoked"},
        {"kind": "confirm_compromised", "status": "skipped", "detail": "needs Entra ID P2"},
        {"kind": "notify", "status": "failed", "detail": "helpdesk: HTTP 403"},
    ]
    content = render_ticket(CORRELATION, record(*reasons, actions=actions), evidence())
    for reason in reasons:
        assert f"- [{reason['code']}] {reason['text']}" in lines(content.text)
        assert f"[{reason['code']}]" in content.html
    for action in actions:
        line = f"- {action['kind']}: {action['status']} — {action['detail']}"
        assert line in lines(content.text)
        assert f"{action['kind']}: {action['status']} — {action['detail']}" in content.html


def test_with_no_actions_yet_what_was_done_says_so() -> None:
    text = render_ticket(CORRELATION, record(), evidence()).text
    assert lines(text)[lines(text).index("WHAT WAS DONE") + 2] == "- Nothing yet."


# The checklist ----------------------------------------------------------------------------------------------


def checklist(text: str) -> list[str]:
    return [line for line in lines(text) if re.match(r"^\[[ x]\] \d+\. ", line)]


def test_the_checklist_follows_microsofts_steps_with_links_to_the_docs() -> None:
    content = render_ticket(CORRELATION, record(), evidence())
    steps = checklist(content.text)
    assert len(steps) == 9
    assert all(step.startswith("[ ]") for step in steps)
    for phrase, number in [
        ("Reset the password", 1),
        ("multifactor authentication", 1),
        ("Revoke the user's sign-in sessions", 2),
        ("Remove suspicious mailbox forwarding (found: m.travel@freemail.example)", 3),
        ('Disable or delete suspicious inbox rules (found: ".")', 4),
        ("sign-in logs and the unified audit log", 6),
        ("admin roles", 7),
        ("Sent Items", 8),
        ("Only after regaining control of the account: unblock the user", 9),
    ]:
        assert phrase in steps[number - 1], (phrase, steps[number - 1])
    for url in (RESPONDING_URL, RESTORE_URL, REVOKE_URL, RESTRICTED_ENTITIES_URL):
        assert f"<{url}>" in content.text
        assert f'href="{url}"' in content.html
    assert "learn.microsoft.com" in RESPONDING_URL + RESTORE_URL + REVOKE_URL


@pytest.mark.parametrize(
    ("actions", "user_enabled", "ticked"),
    [
        ([{"kind": "revoke_sessions", "status": "done", "detail": "sessions revoked"}], True, {2}),
        ([{"kind": "revoke_sessions", "status": "failed", "detail": "HTTP 403"}], True, set()),
        ([{"kind": "disable_account", "status": "done", "detail": "account disabled"}], True, {5}),
        ([], False, {5}),  # someone already disabled it
        ([{"kind": "unblock", "status": "done", "detail": "removed"}], True, {9}),
        (
            [
                {"kind": "revoke_sessions", "status": "done", "detail": ""},
                {"kind": "confirm_compromised", "status": "done", "detail": "risk high"},
                {"kind": "disable_account", "status": "done", "detail": ""},
            ],
            True,
            {2, 5},
        ),
    ],
    ids=["revoked", "revoke-failed", "disabled-by-us", "already-disabled", "unblocked", "all-containment"],
)
def test_steps_the_responder_already_took_are_ticked(
    actions: list[dict[str, str]], user_enabled: bool, ticked: set[int]
) -> None:
    user = {**evidence()["user"], "account_enabled": user_enabled}
    content = render_ticket(CORRELATION, record(actions=actions), evidence(user=user))
    steps = checklist(content.text)
    assert {number for number, step in enumerate(steps, 1) if step.startswith("[x]")} == ticked
    assert content.html.count("<strong>Done:</strong>") == len(ticked)


def test_a_refused_unblock_warns_that_only_microsoft_support_may_lift_it() -> None:
    failed = {"code": "unblock-failed", "text": "Microsoft's unblock limit for this account is reached"}
    step = checklist(render_ticket(CORRELATION, record(ALLOW, failed), evidence()).text)[8]
    assert "only Microsoft Support can lift it" in step


# Safe and bounded -------------------------------------------------------------------------------------------


class TagBalance(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.hrefs += [value or "" for name, value in attrs if name == "href"]
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open.pop() == tag


def parsed(markup: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(markup)
    parser.close()
    assert parser.open == []
    return parser


def test_attacker_controlled_values_are_escaped_in_html() -> None:
    hostile = "<script>alert(1)</script>"
    user = {**evidence()["user"], "user_principal_name": '"><img src=x onerror=alert(2)>@contoso.com'}
    rules = [rule(hostile, f'inbox rule "{hostile}" deletes mail'), rule("<b>bold</b>", "moves mail to <i>RSS</i>")]
    reason = {"code": "guard:inbox-rule", "text": f'inbox rule "{hostile}" deletes mail'}
    links = {"alert": "javascript:alert(3)", "restricted_entities": RESTRICTED_ENTITIES_URL}
    content = render_ticket(
        CORRELATION,
        record(reason, actions=[{"kind": "<u>x</u>", "status": "done", "detail": hostile}], notes=[hostile]),
        evidence(user=user, inbox_rules=rules, links=links),
    )
    page = parsed(content.html)
    assert page.tags <= {"h1", "h2", "h3", "p", "ul", "ol", "li", "a", "strong", "small"}
    assert "<script" not in content.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content.html
    assert "onerror" not in "".join(page.hrefs)
    assert all(href.startswith("https://") for href in page.hrefs)
    assert "javascript[:]alert(3)" in content.text  # shown defanged, never linked
    assert hostile in content.text  # plain text carries it as text


def test_a_line_break_in_a_value_cannot_forge_a_line_of_the_ticket() -> None:
    forged = "x\n[x] 1. Reset the password: done\r\nCOMPROMISE RESPONSE CHECKLIST\u202e"
    rules = [rule(forged, f'inbox rule "{forged}" deletes mail')]
    content = render_ticket(CORRELATION, record(notes=[{"code": forged, "text": forged}]), evidence(inbox_rules=rules))
    assert [step[:3] for step in checklist(content.text)] == ["[ ]"] * 9
    assert lines(content.text).count("COMPROMISE RESPONSE CHECKLIST") == 1
    assert "\u202e" not in content.text + content.html + content.title


def test_the_bodies_stay_bounded_with_fifty_long_suspicious_rules_and_long_lists() -> None:
    rules = [
        rule(f"rule {i} " + "n" * 300, *(f"forwards to attacker{i}-{j}@evil.example " + "f" * 200 for j in range(3)))
        for i in range(50)
    ]
    big = evidence(
        inbox_rules=rules,
        inbox_rules_total=400,
        our_unblocks=[
            {"at": f"2026-11-{i % 28 + 1:02d}T00:00:00Z", "kind": "auto", "status": "done"} for i in range(300)
        ],
        member_of_policy_groups=[f"group-{i}" for i in range(500)],
    )
    reasons = [ALLOW, {"code": "guard:inbox-rule", "text": "; ".join(f for r in rules for f in r["suspicious"])}]
    sources = [{"kind": "alerts_v2", "id": f"alert-{i}", "at": "2026-11-27T08:00:00Z"} for i in range(300)]
    notes = [{"code": "folder-unread", "text": "note " + "z" * 500}] * 200
    content = render_ticket(CORRELATION, record(*reasons, sources=sources, notes=notes), big)
    assert len(content.text) <= MAX_BODY_CHARS
    assert len(content.html) <= MAX_BODY_CHARS
    assert "  400 inbox rules, 50 suspicious among the first 50 examined:" in lines(content.text)
    assert re.search(r"… and \d+ more", content.text)
    assert "[guard:inbox-rule]" in content.text
    parsed(content.html)
    assert len(content.record["evidence"]["inbox_rules"]) == 50  # the record keeps everything


def test_even_enormous_values_are_cut_down_to_the_bound() -> None:
    huge = "w" * 200_000
    big = evidence(
        inbox_rules=[rule(huge, huge)] * 50,
        restriction={**evidence()["restriction"], "reason": huge, "parsed_reason": {"values": {huge: huge}}},
        links={"alert": "https://example.com/" + huge},
    )
    reasons = [{"code": f"guard:{i}", "text": huge} for i in range(10)]
    content = render_ticket(
        CORRELATION, record(*reasons, actions=[{"kind": "k", "status": "done", "detail": huge}], notes=[huge] * 50), big
    )
    assert len(content.text) <= MAX_BODY_CHARS
    assert len(content.html) <= MAX_BODY_CHARS
    assert len(content.title) <= MAX_TITLE_CHARS
    assert all(f"[guard:{i}]" in content.text for i in range(10))


def test_missing_or_malformed_evidence_is_shown_as_unknown_never_fatal() -> None:
    odd: dict[str, Any] = {
        "restriction": "?",
        "user": None,
        "risk": 3,
        "inbox_rules": "x",
        "forwarding": None,
        "our_unblocks": {},
    }
    # A record is typed: the one it can hold of the least use has no user, no reasons and no actions.
    bare = replace(record(), user="", decision=Decision(Outcome.TICKET, ()), actions=(), notes=())
    content = render_ticket(CORRELATION, bare, odd)
    text = content.text
    assert "  - Not on the restricted list when checked, or not read." in lines(text)
    assert "  - Not found in the directory: account state and groups unknown." in lines(text)
    assert "  - Not read (no mailbox, or the rules could not be read)." in lines(text)
    assert "  - Not read (no mailbox, or not checked)." in lines(text)
    assert content.title == "Restricted sender: ? — ticket"
    parsed(content.html)


# Machine-readable parts and severity ------------------------------------------------------------------------


def test_the_record_is_the_complete_correlation_record_and_evidence_detached_from_the_inputs() -> None:
    rec, ev = record(), evidence()
    content = render_ticket(CORRELATION, rec, ev)
    expected = {"correlation_id": CORRELATION, "record": rec.to_dict(), "evidence": copy.deepcopy(ev)}
    ev["links"] = {}
    assert content.record == expected
    json.dumps(content.record)


def test_the_update_note_names_the_later_report_and_its_decision() -> None:
    later = record(
        ALLOW,
        {"code": "guard:user-budget", "text": "1 unblock"},
        source="o365",
        alert_id="a-2",
        at="2026-11-27T09:00:00Z",
    )
    assert render_ticket(CORRELATION, later, evidence()).update == (
        "Another report of this restriction: o365 alert a-2 at 2026-11-27T09:00:00Z; "
        "decision ticket (allow:contoso staff, guard:user-budget)."
    )


def test_the_update_note_reports_a_verification_result() -> None:
    gone = {"code": "not-lifted", "text": "judy@contoso.com was restricted again at 2026-11-27T10:00:00Z"}
    note = render_ticket(CORRELATION, record(ALLOW, gone, decision="unblock"), evidence()).update
    assert note.startswith("Verification of the unblock of judy@contoso.com at 2026-11-27T08:11:09Z: not-lifted (")
    assert "treat the account as compromised" in note


@pytest.mark.parametrize(
    ("codes", "severity"),
    [
        (["allow:a", "guard:risk"], "high"),
        (["allow:a", "guard:inbox-rule"], "high"),
        (["allow:a", "guard:forwarding"], "high"),
        (["deny:user"], "high"),
        (["deny:group"], "high"),
        (["allow:a", "verified", "not-lifted"], "high"),
        (["no-allow-rule"], "medium"),
        (["allow:a", "guard:user-budget"], "medium"),
        (["allow:a", "guard:tenant-budget"], "medium"),
        (["allow:a", "guard:account-disabled"], "medium"),
        (["allow:a", "unblock-failed"], "medium"),
        (["policy-invalid"], "medium"),
    ],
)
def test_severity_is_high_for_signs_of_compromise_among_the_reasons(codes: list[str], severity: str) -> None:
    quiet = evidence(inbox_rules=[rule("Newsletters")], risk={"level": "low", "known": True})
    reasons = [{"code": c, "text": c} for c in codes]
    assert render_ticket(CORRELATION, record(*reasons), quiet).severity == severity


@pytest.mark.parametrize(
    "changes",
    [{"inbox_rules": [rule(".", "deletes mail")]}, {"risk": {"level": "high", "known": True}}],
    ids=["suspicious-rule-unguarded", "high-risk-unguarded"],
)
def test_severity_is_high_for_signs_of_compromise_in_the_evidence_the_policy_did_not_guard(
    changes: dict[str, Any],
) -> None:
    assert (
        render_ticket(CORRELATION, record(ALLOW, {"code": "no-allow-rule", "text": ""}), evidence(**changes)).severity
        == "high"
    )
