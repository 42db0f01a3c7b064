"""The ticket's words, rendered once from the decision record and its evidence. Pure: no I/O, no clock.

Everything a person reads about an escalated restriction comes from :func:`render_ticket`: a title, a summary
(what happened, the decision and why), the decision's reasons, the evidence, what the responder already did, and
Microsoft's compromise-response checklist ("Responding to a compromised email account") with the steps the
responder already took ticked. ``text`` is plain text (headings, indented lists, no tables) for ServiceNow, Jira
and webhooks; ``html`` is the same content for mail, every value escaped: inbox rule names, display names and
even alert fields are chosen by whoever controls the account or sends the alert. Every value is cleaned with
``untrusted.one_line`` (the one rule for tickets, mail and logs), so no value can start a line of its own (a forged
"[x] done" step, say), and only links to the Microsoft portals become links: any other is shown defanged.

Both bodies stay under ``MAX_BODY_CHARS`` (Jira's description holds about 32 kB): long lists end with
"and N more", long values are shortened, and when that is not enough the lists and values shrink further.
The complete, untruncated data travels in ``record`` (the typed ``DecisionRecord`` as its audit row, and the evidence).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from restricted_sender.core.decide import ReasonCode, ReasonPrefix
from restricted_sender.core.untrusted import defanged, linkable, one_line
from restricted_sender.model import ActionKind, ActionStatus, DecisionRecord, Outcome, TicketContent
from restricted_sender.timeutil import iso

MAX_BODY_CHARS = 30_000
MAX_TITLE_CHARS = 200
MAX_UPDATE_CHARS = 1_000

RESPONDING_URL = "https://learn.microsoft.com/defender-office-365/responding-to-a-compromised-email-account"
RESTORE_URL = "https://learn.microsoft.com/defender-office-365/outbound-spam-restore-restricted-users"
REVOKE_URL = "https://learn.microsoft.com/graph/api/user-revokesigninsessions"
RESTRICTED_ENTITIES_URL = "https://security.microsoft.com/restrictedentities"

# Reasons that are signs of a compromise (RESPONDING_URL lists risk, inbox rules and forwarding as such signs):
# the ticket is "high".
COMPROMISE_CODES = frozenset(
    {ReasonCode.GUARD_RISK, ReasonCode.GUARD_INBOX_RULE, ReasonCode.GUARD_FORWARDING, ReasonCode.NOT_LIFTED}
)
# Reasons that make the ticket "high" in every system without being compromise signs: an account that can take over
# the tenant (a privileged directory role) is looked at first whatever else is found.
HIGH_PRIORITY_CODES = COMPROMISE_CODES | {ReasonCode.GUARD_PRIVILEGED}
# What a person should read first: a failed guard, a deny match, a refused or ineffective unblock.
_MAIN_CODES = frozenset({ReasonCode.UNBLOCK_FAILED, ReasonCode.NOT_LIFTED})
_VERIFICATION_CODES = frozenset({ReasonCode.VERIFIED, ReasonCode.NOT_LIFTED})

_KINDS = {
    "spam": "outbound spam (usually a sign of a compromised account)",
    "sending-limit": "sending limit exceeded (lifts by itself within 24 hours)",
    "unknown": "unknown kind of block",
}
_REASON_KEYS = {
    "outboundspamlast24hours": "spam messages in the last 24 hours",
    "outboundmaillast24hours": "messages sent in the last 24 hours",
    "outboundspampercent": "percent of sent mail judged spam",
    "internalrecipientcounttoday": "internal recipients today",
    "externalrecipientcounttoday": "external recipients today",
    "exceedinglimittype": "which limit was exceeded",
    "emailsendinglimitexceeded": "a sending limit was exceeded",
}


@dataclass(frozen=True, slots=True)
class _Limits:
    items: int  # entries listed per list before "and N more"
    chars: int  # characters per value before "…"


# Tried in order until both bodies fit in MAX_BODY_CHARS; the last one always does.
_LEVELS = (_Limits(20, 600), _Limits(10, 240), _Limits(5, 120), _Limits(3, 60))
_MIN_REASONS = 10  # reasons are listed at least this far at every level: each one is why the ticket exists


@dataclass(frozen=True, slots=True)
class _Link:
    label: str
    url: str


_Part = str | _Link


@dataclass(frozen=True, slots=True)
class _Item:
    parts: tuple[_Part, ...]
    done: bool | None = None  # a checklist step: done (True) or open (False); None for a plain entry


@dataclass(frozen=True, slots=True)
class _Block:
    heading: str
    level: int  # 2: a section; 3: a part of one
    items: tuple[_Item, ...] = ()
    intro: tuple[_Part, ...] = ()


def render_ticket(correlation_id: str, record: DecisionRecord, evidence: Mapping[str, Any]) -> TicketContent:
    """The ticket for one escalated restriction: ``evidence`` is what ``actions.evidence`` gathered (the record's
    own, as a rule). Evidence values of the wrong shape are shown as unknown, never fatal."""
    reasons = _reasons(record)
    codes = [code for code, _ in reasons]
    user = _clean(record.user) or _clean(_map(evidence.get("restriction")).get("sender_address")) or "?"
    main = _main_reason(reasons)
    headline = (main[1] or main[0]) if main else record.decision.outcome.value
    title = _shorten(f"Restricted sender: {user} — {headline}", MAX_TITLE_CHARS)
    high = _is_high(codes, evidence)
    text = html_body = ""
    for limits in _LEVELS:
        view = _View(correlation_id, record, evidence, reasons, user, main, high, limits)
        blocks = view.blocks()
        text = _render_text(title, view.summary(), blocks, view.footer())
        html_body = _render_html(title, view.summary(), blocks, view.footer())
        if len(text) <= MAX_BODY_CHARS and len(html_body) <= MAX_BODY_CHARS:
            break
    return TicketContent(
        correlation_id=correlation_id,
        title=title,
        text=text,
        html=html_body,
        record=json.loads(
            json.dumps(
                {"correlation_id": correlation_id, "record": record.to_dict(), "evidence": evidence}, default=str
            )
        ),
        update=_update_note(record, reasons, user),
        severity="high" if high else "medium",
    )


def _is_high(codes: Sequence[str], evidence: Mapping[str, Any]) -> bool:
    """A compromise sign among the reasons (a failed risk, inbox-rule or forwarding guard, a deny match, a block
    that came back after our unblock) or a privileged account, or in the evidence even where the policy did not
    guard on it: a suspicious inbox rule, or Identity Protection rating the user's risk high."""
    if any(code in HIGH_PRIORITY_CODES or code.startswith(ReasonPrefix.DENY) for code in codes):
        return True
    if any(_list(_map(rule).get("suspicious")) for rule in _list(evidence.get("inbox_rules"))):
        return True
    return _clean(_map(evidence.get("risk")).get("level")).lower() == "high"


def _main_reason(reasons: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The first failed guard, deny match, refused or ineffective unblock; else the first reason that is not an
    ``allow:`` match (``no-allow-rule``, ``policy-invalid``); else the first."""
    for code, text in reasons:
        if code.startswith((ReasonPrefix.GUARD, ReasonPrefix.DENY)) or code in _MAIN_CODES:
            return code, text
    for code, text in reasons:
        if not code.startswith(ReasonPrefix.ALLOW):
            return code, text
    return reasons[0] if reasons else None


def _update_note(record: DecisionRecord, reasons: Sequence[tuple[str, str]], user: str) -> str:
    at = iso(record.at)
    checked = [(code, text) for code, text in reasons if code in _VERIFICATION_CODES]
    if checked:
        code, text = checked[-1]
        note = f"Verification of the unblock of {user} at {at}: {code} ({text})."
        if code == ReasonCode.NOT_LIFTED:
            note += " The block did not lift or came back: treat the account as compromised."
        return _shorten(note, MAX_UPDATE_CHARS)
    codes = ", ".join(code for code, _ in reasons) or "no reasons"
    source = _clean(record.source) or "unknown source"
    alert = _clean(record.alert_id) or "?"
    note = (
        f"Another report of this restriction: {source} alert {alert} at {at}; "
        f"decision {record.decision.outcome.value} ({codes})."
    )
    done = [_clean(a.kind) for a in record.actions if a.status is ActionStatus.DONE]
    if done:
        note += f" Done this time: {', '.join(done)}."
    return _shorten(note, MAX_UPDATE_CHARS)


class _View:
    """The ticket's content at one level of detail (``limits``), as blocks both renderers share."""

    def __init__(
        self,
        correlation_id: str,
        record: DecisionRecord,
        evidence: Mapping[str, Any],
        reasons: Sequence[tuple[str, str]],
        user: str,
        main: tuple[str, str] | None,
        high: bool,
        limits: _Limits,
    ) -> None:
        self.correlation_id = correlation_id
        self.record = record
        self.evidence = evidence
        self.reasons = reasons
        self.user = user
        self.main = main
        self.high = high
        self.limits = limits
        self.restriction = _map(evidence.get("restriction"))
        self.done = {
            _clean(a.kind).replace("-", "_"): _clean(a.detail) for a in record.actions if a.status is ActionStatus.DONE
        }

    def v(self, value: object) -> str:
        """A value as shown: cleaned, shortened to the level's limit."""
        return _shorten(_clean(value), self.limits.chars)

    def listed(self, entries: Sequence[_Item], *, at_least: int = 0) -> tuple[_Item, ...]:
        shown = max(self.limits.items, at_least)
        if len(entries) <= shown:
            return tuple(entries)
        return (*entries[:shown], _Item((f"… and {len(entries) - shown} more",)))

    # -- the parts ---------------------------------------------------------------------------------------

    def summary(self) -> tuple[_Part, ...]:
        restriction = self.restriction
        when = f" at {self.v(restriction.get('created'))}" if restriction.get("created") else ""
        kind = _KINDS.get(_clean(restriction.get("kind")))
        what = f"Microsoft 365 restricted {self.v(self.user)} from sending email{when}"
        what += f": {kind}." if kind else "."
        decision = self.record.decision.outcome
        more = len([r for r in self.reasons if not r[0].startswith(ReasonPrefix.ALLOW)]) - 1
        why = self.v(self.main[1] or self.main[0]) if self.main else "no reason was recorded"
        also = f" ({more} more reason{'s' if more != 1 else ''} below)" if more > 0 else ""
        if decision is Outcome.TICKET:
            decided = f"The responder did not unblock the user and opened this ticket because {why}{also}."
        else:
            decided = f"The responder decided {decision}: {why}{also}."
        if self.high:
            advice = (
                "There are signs of a compromised account: regain control of it with the checklist below "
                "before anyone unblocks it."
            )
        else:
            advice = (
                "Review the evidence; if anything looks unfamiliar, treat the account as compromised and follow "
                "the checklist before unblocking."
            )
        release = restriction.get("expected_release")
        if release:
            advice += f" The block is expected to lift by itself by {self.v(release)}."
        return (f"{what} {decided} {advice}",)

    def blocks(self) -> list[_Block]:
        return [
            self.decision_block(),
            *([self.notes_block()] if self.record.notes else []),
            _Block("Evidence", 2),
            self.restriction_block(),
            self.user_block(),
            self.risk_block(),
            self.roles_block(),
            self.mfa_block(),
            self.rules_block(),
            self.forwarding_block(),
            self.unblocks_block(),
            self.links_block(),
            self.actions_block(),
            self.checklist_block(),
        ]

    def footer(self) -> str:
        return (
            f"Correlation id: {self.v(self.correlation_id)} (keep it in the ticket: the responder finds the "
            "ticket of a restriction by it)."
        )

    def decision_block(self) -> _Block:
        record = self.record
        reasons = [_Item((f"[{self.v(code)}] {_shorten(_clean(text), 2 * self.limits.chars)}",))
                   for code, text in self.reasons]  # fmt: skip
        sources = [
            _Item((f"Reported by {self.v(s.kind)} alert {self.v(s.id)} at {self.v(iso(s.at))}",))
            for s in record.sources
        ]
        items = [
            _Item(
                (
                    f"Decision: {self.v(record.decision.outcome.value)} (mode {self.v(record.mode)}, "
                    f"policy version {self.v(record.policy_version)}, at {self.v(iso(record.at))})",
                )
            ),
            *(self.listed(reasons, at_least=_MIN_REASONS) or (_Item(("No reasons were recorded.",)),)),
            _Item((f"Event: {self.v(record.event_id)}",)),
            *self.listed(sources),
        ]
        return _Block("Decision and reasons", 2, tuple(items))

    def restriction_block(self) -> _Block:
        r = self.restriction
        if not r:
            return _Block("Restriction", 3, (_Item(("Not on the restricted list when checked, or not read.",)),))
        parsed = _map(r.get("parsed_reason"))
        values = [
            _Item((f"{self.v(key)} = {self.v(value)}{_label(key)}",))
            for key, value in _map(parsed.get("values")).items()
        ]
        values += [_Item((f"{self.v(flag)}{_label(flag)}",)) for flag in _list(parsed.get("flags"))]
        kind = _clean(r.get("kind"))
        release = r.get("expected_release")
        items = [
            _Item((f"Address: {self.v(r.get('sender_address'))}",)),
            _Item((f"Kind of block: {self.v(_KINDS.get(kind, kind or 'unknown'))}",)),
            _Item((f"Reason as Microsoft gives it: {self.v(r.get('reason')) or '(empty)'}",)),
            *self.listed(values),
            _Item(
                (f"Restricted at: {self.v(r.get('created')) or 'unknown'} (last changed {self.v(r.get('changed'))})",)
            ),
            _Item((f"Temporary (day) block: {_yes_no(r.get('temporary_block'))}",)),
            _Item(
                (
                    f"Expected to lift by itself: {self.v(release)}"
                    if release
                    else "Expected to lift by itself: no, it stays until an admin removes it",
                )
            ),
        ]
        return _Block("Restriction", 3, tuple(items))

    def user_block(self) -> _Block:
        user = _map(self.evidence.get("user"))
        groups = [self.v(g) for g in _list(self.evidence.get("member_of_policy_groups"))]
        group_text = ", ".join(groups[: self.limits.items]) or "none"
        if len(groups) > self.limits.items:
            group_text += f" and {len(groups) - self.limits.items} more"
        if not user:
            items = [_Item(("Not found in the directory: account state and groups unknown.",))]
        else:
            items = [
                _Item((f"User principal name: {self.v(user.get('user_principal_name'))}",)),
                _Item((f"Mail: {self.v(user.get('mail')) or 'none'}",)),
                _Item((f"Object id: {self.v(user.get('id'))}",)),
                _Item((f"Account enabled: {_yes_no(user.get('account_enabled'))}",)),
            ]
            if user.get("user_type"):
                items.append(_Item((f"User type: {self.v(user.get('user_type'))}",)))
            if user.get("created"):
                items.append(_Item((f"Created: {self.v(user.get('created'))}",)))
        items.append(_Item((f"Member of the policy's groups: {group_text}",)))
        return _Block("User", 3, tuple(items))

    def risk_block(self) -> _Block:
        risk = _map(self.evidence.get("risk"))
        level = self.v(risk.get("level"))
        if risk.get("known") is False or not level:
            shown = "unknown — needs Entra ID P2 (Identity Protection), or the user has no risk record"
        else:
            shown = level
        return _Block("Sign-in risk", 3, (_Item((f"Identity Protection user risk: {shown}",)),))

    def roles_block(self) -> _Block:
        found = _map(self.evidence.get("directory_roles"))
        if not found:
            return _Block("Directory roles", 3, (_Item(("Not read.",)),))
        if found.get("known") is False:
            why = self.v(found.get("unread")) or "no answer"
            return _Block("Directory roles", 3, (_Item((f"Could not be read ({why}): privilege unknown",)),))
        roles = [_map(r) for r in _list(found.get("roles"))]
        items = [
            _Item((f"{self.v(r.get('name') or r.get('role_id'))} ({'eligible' if r.get('eligible') else 'active'})",))
            for r in roles
        ]
        return _Block("Directory roles", 3, self.listed(items) or (_Item(("None (active or eligible)",)),))

    def mfa_block(self) -> _Block:
        mfa = _map(self.evidence.get("mfa"))
        if mfa.get("known") is not True:
            why = self.v(mfa.get("unread")) or "needs Entra ID P1 or P2, or the user has no registration record"
            return _Block("MFA registration", 3, (_Item((f"Unknown — {why}",)),))
        methods = ", ".join(self.v(m) for m in _list(mfa.get("methods"))) or "none"
        items = [
            _Item((f"Strong (MFA) method registered: {_yes_no(mfa.get('registered'))}",)),
            _Item((f"Methods registered: {methods}",)),
        ]
        if mfa.get("updated"):
            items.append(_Item((f"Report last updated: {self.v(mfa.get('updated'))}",)))
        return _Block("MFA registration", 3, tuple(items))

    def rules_block(self) -> _Block:
        rules = self.evidence.get("inbox_rules")
        if not isinstance(rules, list):
            return _Block("Inbox rules", 3, (_Item(("Not read (no mailbox, or the rules could not be read).",)),))
        rows = [_map(r) for r in rules]
        total = self.evidence.get("inbox_rules_total")
        total = total if isinstance(total, int) and total >= len(rows) else len(rows)
        suspicious = [r for r in rows if _list(r.get("suspicious"))]
        items = [
            _Item(
                (
                    f'"{self.v(r.get("name"))}" ({"enabled" if r.get("enabled") is not False else "disabled"}): '
                    + "; ".join(self.v(_without_rule_name(f, r.get("name"))) for f in _list(r.get("suspicious"))),
                )
            )
            for r in suspicious
        ]
        intro = f"{total} inbox rule{'s' if total != 1 else ''}, {len(suspicious)} suspicious"
        if total > len(rows):
            intro += f" among the first {len(rows)} examined"
        intro += ":" if suspicious else "."
        return _Block("Inbox rules", 3, self.listed(items), intro=(intro,))

    def forwarding_block(self) -> _Block:
        if self.evidence.get("forwarding") is None:
            return _Block("Mailbox forwarding", 3, (_Item(("Not read (no mailbox, or not checked).",)),))
        forwarding = _map(self.evidence.get("forwarding"))
        smtp, address = forwarding.get("forwarding_smtp_address"), forwarding.get("forwarding_address")
        if not smtp and not address:
            return _Block("Mailbox forwarding", 3, (_Item(("None.",)),))
        items = []
        if smtp:
            items.append(_Item((f"Forwards to SMTP address: {self.v(smtp)}",)))
        if address:
            items.append(_Item((f"Forwards to recipient: {self.v(address)}",)))
        keep = forwarding.get("deliver_to_mailbox_and_forward")
        items.append(_Item((f"Keeps a copy in the mailbox: {_yes_no(keep)}",)))
        return _Block("Mailbox forwarding", 3, tuple(items))

    def unblocks_block(self) -> _Block:
        entries = [
            _Item((f"{self.v(u.get('at'))}: {self.v(u.get('kind'))} unblock, {self.v(u.get('status'))}",))
            for u in map(_map, _list(self.evidence.get("our_unblocks")))
        ]
        return _Block("Our previous unblocks of this user", 3, self.listed(entries) or (_Item(("None.",)),))

    def notes_block(self) -> _Block:
        """What could not be checked (or was not as the alert said): the decision was taken without it."""
        entries = [_Item((f"[{self.v(str(note.code))}] {self.v(note.text)}",)) for note in self.record.notes]
        intro = ("What the decision could not check, or found not as the alert said: check these by hand.",)
        return _Block("Not checked", 2, self.listed(entries, at_least=_MIN_REASONS), intro=intro)

    def links_block(self) -> _Block:
        links = _map(self.evidence.get("links"))
        items = []
        if links.get("alert"):
            items.append(_Item(("Alert: ", _Link(self.v(links.get("alert")), _clean(links.get("alert"))))))
        entities = _clean(links.get("restricted_entities")) or RESTRICTED_ENTITIES_URL
        items.append(_Item(("Restricted entities: ", _Link(self.v(entities), entities))))
        return _Block("Links", 3, tuple(items))

    def actions_block(self) -> _Block:
        entries = []
        for action in self.record.actions:
            detail = self.v(action.detail)
            line = f"{self.v(action.kind)}: {self.v(action.status.value)}" + (f" — {detail}" if detail else "")
            entries.append(_Item((line,)))
        return _Block("What was done", 2, self.listed(entries, at_least=_MIN_REASONS) or (_Item(("Nothing yet.",)),))

    def checklist_block(self) -> _Block:
        done = self.done
        user = _map(self.evidence.get("user"))
        forwarding = _map(self.evidence.get("forwarding"))
        forwards = [
            self.v(f) for f in (forwarding.get("forwarding_smtp_address"), forwarding.get("forwarding_address")) if f
        ]
        rule_names = [
            f'"{self.v(_map(r).get("name"))}"'
            for r in _list(self.evidence.get("inbox_rules"))
            if _list(_map(r).get("suspicious"))
        ]
        shown_rules = ", ".join(rule_names[: self.limits.items])
        if len(rule_names) > self.limits.items:
            shown_rules += f" and {len(rule_names) - self.limits.items} more"
        codes = {code for code, _ in self.reasons}

        def by_us(kind: str) -> str:
            return f" Done by the responder: {self.v(done[kind]) or 'done'}." if kind in done else ""

        disabled = user.get("account_enabled") is False
        # Mailbox remediation disabled every suspicious rule (each its own action).
        disabling = [a for a in self.record.actions if a.kind == ActionKind.DISABLE_INBOX_RULE]
        every_rule_shown = self.evidence.get("inbox_rules_total") == len(_list(self.evidence.get("inbox_rules")))
        rules_disabled = (
            bool(rule_names)
            and every_rule_shown
            and len(disabling) == len(rule_names)
            and all(a.status is ActionStatus.DONE for a in disabling)
        )
        unblock_refused = ReasonCode.UNBLOCK_FAILED in codes
        steps = [
            _Item(
                (
                    "Reset the password and any app passwords, and require multifactor authentication (MFA). "
                    "For a federated user, reset the password on premises. ",
                    _Link("Responding to a compromised email account", RESPONDING_URL),
                ),
                done=False,
            ),
            _Item(
                (
                    "Revoke the user's sign-in sessions (refresh tokens), so a stolen session stops working."
                    + by_us(ActionKind.REVOKE_SESSIONS)
                    + " ",
                    _Link("revokeSignInSessions", REVOKE_URL),
                ),
                done=ActionKind.REVOKE_SESSIONS in done,
            ),
            _Item(
                (
                    "Remove suspicious mailbox forwarding"
                    + (f" (found: {', '.join(forwards)})." if forwards else " (none found when checked).")
                    + by_us(ActionKind.REMOVE_FORWARDING),
                ),
                done=ActionKind.REMOVE_FORWARDING in done,
            ),
            _Item(
                (
                    "Disable or delete suspicious inbox rules"
                    + (f" (found: {shown_rules})." if rule_names else " (none found among the rules read).")
                    + (f" Done by the responder: {len(rule_names)} disabled." if rules_disabled else ""),
                ),
                done=rules_disabled,
            ),
            _Item(
                (
                    "Optionally block sign-in while you investigate."
                    + (by_us(ActionKind.DISABLE_ACCOUNT) or (" The account is already disabled." if disabled else "")),
                ),
                done=ActionKind.DISABLE_ACCOUNT in done or disabled,
            ),
            _Item(
                (
                    "Review the Entra ID sign-in logs and the unified audit log for the attacker's activity"
                    + (
                        "; Identity Protection was told the user is compromised."
                        + by_us(ActionKind.CONFIRM_COMPROMISED)
                        if ActionKind.CONFIRM_COMPROMISED in done
                        else "."
                    ),
                ),
                done=False,
            ),
            _Item(
                ("Check the user's admin roles and remove them while the account is not under control.",), done=False
            ),
            _Item(
                (
                    "Check Sent Items for mail the attacker sent, warn the recipients and contacts, and check that the "
                    "user's contact information was not changed.",
                ),
                done=False,
            ),
            _Item(
                (
                    "Only after regaining control of the account: unblock the user from the ",
                    _Link("Restricted entities page", RESTRICTED_ENTITIES_URL),
                    (
                        " (the unblock was refused: Microsoft's unblock limit may be reached, and then only "
                        "Microsoft Support can lift it)."
                        if unblock_refused
                        else "." + by_us(ActionKind.UNBLOCK)
                    )
                    + " How: ",
                    _Link("Remove blocked users from the Restricted entities page", RESTORE_URL),
                ),
                done=ActionKind.UNBLOCK in done,
            ),
        ]
        intro = (
            "Microsoft's steps for a compromised account, in order; steps the responder already took are ticked. ",
            _Link("Responding to a compromised email account", RESPONDING_URL),
        )
        return _Block("Compromise response checklist", 2, tuple(steps), intro=intro)


# -- rendering -----------------------------------------------------------------------------------------------


def _render_text(title: str, summary: Sequence[_Part], blocks: Sequence[_Block], footer: str) -> str:
    lines = [title, "", _text_parts(summary)]
    for block in blocks:
        lines.append("")
        if block.level == 2:
            lines += [block.heading.upper(), "=" * len(block.heading)]
        else:
            lines.append(f"{block.heading}:")
        indent = "" if block.level == 2 else "  "
        if block.intro:
            lines.append(indent + _text_parts(block.intro))
        for number, item in enumerate(block.items, 1):
            if item.done is None:
                lines.append(f"{indent}- {_text_parts(item.parts)}")
            else:
                lines.append(f"{indent}[{'x' if item.done else ' '}] {number}. {_text_parts(item.parts)}")
    lines += ["", footer]
    return "\n".join(lines) + "\n"


def _text_parts(parts: Iterable[_Part]) -> str:
    rendered = []
    for part in parts:
        if isinstance(part, str):
            rendered.append(part)
        elif not linkable(part.url):
            rendered.append(_unlinked(part))
        else:
            rendered.append(part.url if part.label == part.url else f"{part.label} <{part.url}>")
    return "".join(rendered)


def _unlinked(link: _Link) -> str:
    """A link that may not be one (not to a Microsoft portal, ``javascript:``, too long): shown defanged, so no
    ticket system or mail client turns it back into a link."""
    return defanged(link.label)


def _render_html(title: str, summary: Sequence[_Part], blocks: Sequence[_Block], footer: str) -> str:
    out = [f"<h1>{_e(title)}</h1>", f"<p>{_html_parts(summary)}</p>"]
    for block in blocks:
        tag = "h2" if block.level == 2 else "h3"
        out.append(f"<{tag}>{_e(block.heading)}</{tag}>")
        if block.intro:
            out.append(f"<p>{_html_parts(block.intro)}</p>")
        if not block.items:
            continue
        checklist = any(item.done is not None for item in block.items)
        out.append("<ol>" if checklist else "<ul>")
        for item in block.items:
            mark = "" if item.done is None else ("&#9745; <strong>Done:</strong> " if item.done else "&#9744; ")
            out.append(f"<li>{mark}{_html_parts(item.parts)}</li>")
        out.append("</ol>" if checklist else "</ul>")
    out.append(f"<p><small>{_e(footer)}</small></p>")
    return "\n".join(out) + "\n"


def _html_parts(parts: Iterable[_Part]) -> str:
    rendered = []
    for part in parts:
        if isinstance(part, str):
            rendered.append(_e(part))
        elif linkable(part.url):
            rendered.append(f'<a href="{_e(part.url)}">{_e(part.label)}</a>')
        else:
            rendered.append(_e(_unlinked(part)))
    return "".join(rendered)


def _e(value: str) -> str:
    return html.escape(value, quote=True)


# -- values of unknown shape ---------------------------------------------------------------------------------


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


_clean = one_line


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"


def _yes_no(value: object) -> str:
    return "yes" if value is True else "no" if value is False else "unknown"


def _label(key: object) -> str:
    label = _REASON_KEYS.get(_clean(key).lower())
    return f" ({label})" if label else ""


def _reasons(record: DecisionRecord) -> list[tuple[str, str]]:
    return [(_clean(r.code), _clean(r.text)) for r in record.decision.reasons]


def _without_rule_name(finding: object, name: object) -> str:
    """``inbox rule "x" forwards to …`` shown under the rule's name as ``forwards to …``."""
    text = _clean(finding)
    prefix = f'inbox rule "{_clean(name)}" '
    return text[len(prefix) :] if text.startswith(prefix) else text
