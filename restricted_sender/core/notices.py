"""The mail the product sends to people (pure): the restricted user, and the configured recipients.

The user's notice says what happened and when mail flows again, never why in detail: the evidence (inbox
rules, risk, forwarding) is for the helpdesk, and the mailbox may be read by whoever took the account over.
The user gets no notice on ``ticket`` decisions for the same reason; the helpdesk contacts them.

Every value from the record (rule names in reasons, an operator's justification, alert ids, addresses) is
cleaned with ``untrusted.one_line``: none can start a line and forge a section ("What was done: ...").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from restricted_sender.core.untrusted import one_line as _v
from restricted_sender.model import DecisionRecord, Mail, Outcome
from restricted_sender.timeutil import iso

_FOOTER = "This message was sent automatically by Restricted Sender Responder on behalf of your IT team."


def _when(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%d %H:%M UTC")


def user_notice(outcome: Outcome, address: str, *, at: datetime, release_at: datetime | None = None) -> Mail | None:
    """The user's notice for an ``unblock`` or ``wait`` decision; ``None`` for anything else."""
    shown = _v(address)
    if outcome is Outcome.UNBLOCK:
        body = (
            f"Microsoft 365 had blocked {shown} from sending email, so mail you sent recently may have bounced.\n\n"
            f"Your IT team removed the block at {_when(at)}. Mail should flow again within an hour, "
            f"at the latest within 24 hours (by {_when(at + timedelta(hours=24))}).\n\n"
            "Messages that bounced while you were blocked were not delivered: please send them again once you "
            "can. If you did not send unusual mail, tell your helpdesk.\n\n" + _FOOTER
        )
        return Mail((address,), "You can send email again", body)
    if outcome is Outcome.WAIT:
        lifts = f"at {_when(release_at)}" if release_at else "within 24 hours"
        body = (
            f"Microsoft 365 has blocked {shown} from sending email for a limited time, so mail you send now "
            f"bounces.\n\nThe block lifts by itself {lifts}; after that, mail flows again. Messages that bounced "
            "were not delivered: please send them again then. If you did not send unusual mail, tell your "
            "helpdesk.\n\n" + _FOOTER
        )
        return Mail((address,), "Your email sending is paused for a short time", body)
    return None


def recipients_notice(recipients: Sequence[str], record: DecisionRecord, *, ticket: str | None = None) -> Mail:
    """A short summary of one decision for the helpdesk / SOC mailboxes."""
    decision = record.decision.outcome.value
    user = _v(record.user)
    lines = [
        f"Decision: {decision} for {user} ({_v(record.mode)}, policy {_v(record.policy_version)})",
        f"Alert: {_v(record.source)} {_v(record.alert_id)} at {iso(record.at)}",
        "",
        "Why:",
        *(f"  - {_v(r.code)}: {_v(r.text)}" for r in record.decision.reasons),
        "",
        "What was done:",
        *(f"  - {_v(a.kind)}: {a.status.value} - {_v(a.detail)}" for a in record.actions),
    ]
    if not record.actions:
        lines.append("  - nothing")
    if record.notes:
        # Decided without these: the SOC reads what was not checked in the notice itself, not only in the ticket.
        lines += ["", "Not checked:", *(f"  - {_v(str(n.code))}: {_v(n.text)}" for n in record.notes)]
    if ticket:
        lines += ["", f"Ticket: {_v(ticket)}"]
    lines += ["", f"Event id: {_v(record.event_id)}", "", _FOOTER]
    importance = "high" if record.decision.outcome is Outcome.TICKET else "normal"
    return Mail(tuple(recipients), f"Restricted sender {decision}: {user}", "\n".join(lines), importance=importance)
