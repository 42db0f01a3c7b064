"""Teams: the decision's Adaptive Card, posted through a Workflows webhook at most once, judged by the simulator
against the official Adaptive Card schema, and showing the same reasons and actions as the ticket."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import httpx
import pytest

from restricted_sender.adapters.teams import TeamsTickets, TeamsWebhook
from restricted_sender.core.policy import parse_policy
from restricted_sender.core.teams_card import (
    MAX_CARD_BYTES,
    MIN_REASONS,
    card_entries,
    envelope,
    notice_card,
    ticket_card,
)
from restricted_sender.core.ticket_body import RESTRICTED_ENTITIES_URL, render_ticket
from restricted_sender.entrypoints.simulated import replay
from restricted_sender.errors import OutcomeUnknown, ServiceRefused, TransientServiceError
from restricted_sender.fakes import FakeChannel, MemoryStore
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
    TicketRef,
)
from restricted_sender.retry import RetryPolicy
from restricted_sender.settings import Secret, Settings
from restricted_sender.timeutil import FixedClock, parse_instant
from simulator import Simulator
from simulator.teams import card_problems

from .conftest import alert_v2, blocked, tenant, user
from .test_cli import forward_rule

NOW = parse_instant("2026-11-27T12:00:00Z")
HOSTILE = (
    '[open me](https://evil.example/x) **bold** <at>everyone</at>\n\nWhat was done:\u2028- unblock: done "},'
    '{"type":"Action.OpenUrl","url":"https://evil.example"}'
)


def record(
    outcome: Outcome = Outcome.TICKET,
    *,
    user_address: str = "alice@contoso.com",
    reasons: Sequence[Reason] = (Reason("guard:inbox-rule", 'inbox rule "x" forwards outside the tenant'),),
    actions: Sequence[Action] = (Action(ActionKind.REVOKE_SESSIONS, ActionStatus.DONE, "sessions revoked"),),
    notes: Sequence[Note] = (),
) -> DecisionRecord:
    return DecisionRecord(
        event_id="evt-1",
        alert_id="alert-1",
        source="graph",
        sources=(),
        user=user_address,
        decision=Decision(outcome, tuple(reasons)),
        actions=tuple(actions),
        mode="enforce",
        policy_version="abc123",
        at=NOW,
        notes=tuple(notes),
    )


def card_of(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body["attachments"][0]["content"]  # type: ignore[no-any-return]


def elements(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every object with a ``type`` in the card, depth first."""
    if isinstance(node, Mapping):
        if "type" in node:
            yield node
        for value in node.values():
            yield from elements(value)
    elif isinstance(node, list):
        for item in node:
            yield from elements(item)


# -- the card (pure) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", list(Outcome))
def test_the_card_of_every_decision_is_a_valid_adaptive_card_in_the_workflows_envelope(outcome: Outcome) -> None:
    notes = (Note(NoteCode.FOLDER_UNREAD, "a rule's folder could not be read"),)
    body = notice_card(record(outcome, notes=notes), ticket=TicketRef("INC0010001", "INC0010001"))
    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    assert card_of(body)["version"] == "1.4"
    assert card_problems(card_of(body)) == []


def test_the_card_shows_the_records_reasons_actions_and_notes_as_data() -> None:
    reasons = (Reason("guard:risk", "Identity Protection rates the user high"), Reason("allow:staff", "domain"))
    actions = (
        Action(ActionKind.REVOKE_SESSIONS, ActionStatus.DONE, "sessions revoked"),
        Action(ActionKind.DISABLE_ACCOUNT, ActionStatus.FAILED, "Graph said no"),
        Action(ActionKind.VERIFY, ActionStatus.SKIPPED),
    )
    notes = (Note(NoteCode.USER_NOT_IN_DIRECTORY, "no directory user owns the address"),)
    body = notice_card(record(reasons=reasons, actions=actions, notes=notes))
    assert card_entries(body, "reasons") == [(r.code, r.text) for r in reasons]
    assert card_entries(body, "actions") == [
        ("revoke_sessions", "done", "sessions revoked"),
        ("disable_account", "failed", "Graph said no"),
        ("verify", "skipped"),
    ]
    assert card_entries(body, "notes") == [("user-not-in-directory", "no directory user owns the address")]


def test_the_card_links_only_the_restricted_entities_page_and_the_tickets_own_https_page() -> None:
    ticket = TicketRef("abc", "INC0010001", url="https://contoso.service-now.com/nav_to.do?uri=incident.do?sys_id=abc")
    buttons = card_of(notice_card(record(), ticket=ticket))["actions"]
    assert [(b["type"], b["url"]) for b in buttons] == [
        ("Action.OpenUrl", RESTRICTED_ENTITIES_URL),
        ("Action.OpenUrl", ticket.url),
    ]
    for url in ("javascript:alert(1)", "http://contoso.service-now.com/x", "https://user@evil.example/x"):
        unlinked = card_of(notice_card(record(), ticket=TicketRef("abc", "INC1", url=url)))["actions"]
        assert [b["url"] for b in unlinked] == [RESTRICTED_ENTITIES_URL]


def test_hostile_names_add_no_element_no_link_and_no_markdown_to_the_card() -> None:
    benign = notice_card(record())
    hostile = notice_card(
        record(
            user_address=HOSTILE,
            reasons=(Reason("guard:inbox-rule", f'inbox rule "{HOSTILE}" forwards outside the tenant'),),
            actions=(Action(ActionKind.REVOKE_SESSIONS, ActionStatus.FAILED, HOSTILE),),
            notes=(Note(NoteCode.FOLDER_UNREAD, HOSTILE),),
        )
    )
    with_notes = notice_card(record(notes=(Note(NoteCode.FOLDER_UNREAD, "x"),)))
    # The same elements in the same places: the hostile text only changed what some TextRuns say.
    assert [e["type"] for e in elements(card_of(hostile))] == [e["type"] for e in elements(card_of(with_notes))]
    # Markdown is rendered in TextBlocks only: theirs are this product's own words, whatever the input.
    blocks = {e["text"] for e in elements(card_of(hostile)) if e["type"] == "TextBlock"}
    assert blocks == {e["text"] for e in elements(card_of(with_notes)) if e["type"] == "TextBlock"}
    assert not any("evil" in text for text in blocks)
    assert [b["url"] for b in card_of(hostile)["actions"]] == [RESTRICTED_ENTITIES_URL]
    runs = [e["text"] for e in elements(card_of(hostile)) if e["type"] == "TextRun"]
    assert not any(c in text for text in runs for c in "\n\r\u2028")  # one line each (untrusted.one_line)
    assert any("[open me](https://evil.example/x)" in text for text in runs)  # shown as the characters it is
    assert card_problems(card_of(hostile)) == []
    assert card_problems(card_of(benign)) == []


def test_a_record_with_hundreds_of_long_reasons_still_fits_in_a_teams_message() -> None:
    reasons = [Reason(f"guard:inbox-rule-{n}", "x" * 2_000) for n in range(300)]
    actions = [Action(ActionKind.NOTIFY, ActionStatus.DONE, "y" * 2_000) for _ in range(100)]
    body = notice_card(record(reasons=reasons, actions=actions))
    assert len(json.dumps(body, ensure_ascii=False).encode()) <= MAX_CARD_BYTES
    shown = card_entries(body, "reasons")
    assert len(shown) >= MIN_REASONS
    assert [code for code, _ in shown] == [r.code for r in reasons[: len(shown)]]
    assert card_problems(card_of(body)) == []


# -- the simulator's Workflows webhook -----------------------------------------------------------------------


@pytest.fixture
def sim(simulator_factory: Callable[..., Simulator]) -> Simulator:
    return simulator_factory(tenant([user("alice")], [blocked("alice@contoso.com")]))


def post(sim: Simulator, body: Any, url: str | None = None) -> httpx.Response:
    return httpx.post(url or sim.teams_url, json=body, timeout=10)


def test_the_webhook_accepts_a_valid_card_with_202_and_the_run_posts_it(sim: Simulator) -> None:
    body = notice_card(record())
    answer = post(sim, body)
    assert (answer.status_code, answer.content) == (202, b"")
    assert sim.teams_posts() == [{"body": body, "run": "Succeeded", "errors": []}]


@pytest.mark.parametrize(
    ("card", "why"),
    [
        ({"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlok", "text": "x"}]}, "body/0"),
        ({"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock"}]}, "body/0"),
        ({"type": "AdaptiveCard", "version": "1.6", "body": []}, "not displayed"),
        ({"type": "message", "version": "1.4"}, "must be 'AdaptiveCard'"),
    ],
    ids=["unknown element", "text block without text", "a version Workflows does not display", "not a card"],
)
def test_an_invalid_card_is_accepted_by_the_trigger_and_fails_the_flow_run(
    sim: Simulator, card: dict[str, Any], why: str
) -> None:
    answer = post(sim, envelope(card))
    assert answer.status_code == 202  # the trigger answers before the run judges the card
    [posted] = sim.teams_posts()
    assert posted["run"] == "Failed"
    assert any(why in error for error in posted["errors"]), posted["errors"]


@pytest.mark.parametrize(
    "body",
    [
        {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {}}]},
        {"attachments": []},
        {"type": "message", "attachments": "card"},
        "not an object",
    ],
    ids=["no contentUrl", "no type", "attachments not a list", "not an object"],
)
def test_a_body_outside_the_triggers_schema_is_refused_with_trigger_input_schema_mismatch(
    sim: Simulator, body: Any
) -> None:
    answer = post(sim, body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "TriggerInputSchemaMismatch"
    assert error["message"].startswith("The input body for trigger 'manual' of type 'Request' did not match")
    assert sim.teams_posts() == []


def test_a_wrong_signature_is_refused_and_posts_nothing(sim: Simulator) -> None:
    answer = post(sim, notice_card(record()), url=sim.teams_url.replace("sig=", "sig=wrong"))
    assert answer.status_code == 401
    assert sim.teams_posts() == []


# -- the adapter: at most once -------------------------------------------------------------------------------


def send(sim: Simulator, body: Any, *, url: str | None = None, timeout: float = 5.0) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(timeout=timeout) as http:
            channel = TeamsWebhook(http, url=Secret(url or sim.teams_url), retry=RetryPolicy(3, 0.01, 1))
            await channel.post(body)

    asyncio.run(run())


def teams_requests(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r["route"] == "teams.workflow")


def test_the_adapter_posts_the_card_once(sim: Simulator) -> None:
    send(sim, notice_card(record()))
    assert [p["run"] for p in sim.teams_posts()] == ["Succeeded"]


def test_throttling_proves_nothing_was_posted_so_the_adapter_tries_again(sim: Simulator) -> None:
    sim.inject_fault("teams.workflow", status=429, retry_after=0)
    send(sim, notice_card(record()))
    assert (teams_requests(sim), len(sim.teams_posts())) == (2, 1)


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 502, "apply": True},
        {"status": 503},
        {"kind": "timeout", "seconds": 2, "apply": True},
        {"kind": "reset", "apply": True},
    ],
    ids=["502 after posting", "503", "no answer after posting", "connection reset after posting"],
)
def test_an_answer_that_does_not_say_whether_the_card_was_posted_is_never_followed_by_a_second_post(
    sim: Simulator, fault: dict[str, Any]
) -> None:
    sim.inject_fault("teams.workflow", **fault)
    with pytest.raises(OutcomeUnknown):
        send(sim, notice_card(record()), timeout=0.5)
    assert teams_requests(sim) == 1


def test_a_refused_post_is_a_service_refusal_naming_the_status_never_the_url(sim: Simulator) -> None:
    wrong = sim.teams_url.replace("sig=", "sig=wrong")
    with pytest.raises(ServiceRefused) as refused:
        send(sim, notice_card(record()), url=wrong)
    assert refused.value.http_status == 401
    key = wrong.rsplit("sig=", 1)[1]
    assert key not in refused.value.message
    assert "HTTP 401" in refused.value.message


def test_no_connection_is_transient_and_nothing_was_posted() -> None:
    with pytest.raises(TransientServiceError):
        send_nowhere()


def send_nowhere() -> None:
    async def run() -> None:
        async with httpx.AsyncClient(timeout=1) as http:
            channel = TeamsWebhook(http, url=Secret("http://127.0.0.1:9/x?sig=s"), retry=RetryPolicy(1))
            await channel.post(notice_card(record()))

    asyncio.run(run())


# -- Teams as the ticket system ------------------------------------------------------------------------------


def ticket_content(correlation_id: str = "rsr-1") -> Any:
    return render_ticket(correlation_id, record(), {})


def test_teams_as_the_ticket_system_posts_the_ticket_card_and_finds_it_again() -> None:
    channel, store = FakeChannel(), MemoryStore()
    tickets = TeamsTickets(channel, store, FixedClock(NOW))
    content = ticket_content()

    async def run() -> tuple[TicketRef, TicketRef | None, TicketRef | None]:
        missing = await tickets.find_open("rsr-1")
        ticket = await tickets.create(content)
        return ticket, missing, await tickets.find_open("rsr-1")

    ticket, before, after = asyncio.run(run())
    assert before is None
    assert after == ticket == TicketRef("rsr-1", "Teams card")
    [body] = channel.posts
    assert body == ticket_card(record(), correlation_id="rsr-1", severity=content.severity)


def test_a_lost_answer_is_recorded_as_unconfirmed_and_no_retry_posts_the_ticket_again() -> None:
    channel, store = FakeChannel(), MemoryStore()
    channel.posted_then_fail = OutcomeUnknown("teams", "no answer")
    tickets = TeamsTickets(channel, store, FixedClock(NOW))

    async def run() -> list[TicketRef | None]:
        first = await tickets.create(ticket_content())
        channel.posted_then_fail = None
        return [first, await tickets.find_open("rsr-1"), await tickets.create(ticket_content())]

    refs = asyncio.run(run())
    assert len(channel.posts) == 1
    assert all(ref is not None and "not posted again" in ref.label for ref in refs)


def test_a_refused_post_posted_nothing_so_a_later_try_posts_the_ticket() -> None:
    channel, store = FakeChannel(), MemoryStore()
    channel.fail = ServiceRefused("teams", "HTTP 404", http_status=404)
    tickets = TeamsTickets(channel, store, FixedClock(NOW))

    async def run() -> tuple[TicketRef | None, TicketRef]:
        with pytest.raises(ServiceRefused):
            await tickets.create(ticket_content())
        channel.fail = None
        return await tickets.find_open("rsr-1"), await tickets.create(ticket_content())

    found, ticket = asyncio.run(run())
    assert found is None
    assert ticket.label == "Teams card"
    assert len(channel.posts) == 1


def test_an_update_is_posted_once_per_report() -> None:
    channel, store = FakeChannel(), MemoryStore()
    tickets = TeamsTickets(channel, store, FixedClock(NOW))
    content = ticket_content()

    async def run() -> None:
        ticket = await tickets.create(content)
        await tickets.update(ticket, content)
        await tickets.update(ticket, content)

    asyncio.run(run())
    assert len(channel.posts) == 2
    update = card_of(channel.posts[1])
    assert [e["text"] for e in elements(update) if e.get("type") == "TextRun"][-1] == content.update


# -- through a replayed scenario: the bar --------------------------------------------------------------------

POLICY = {
    "mode": "enforce",
    "allow": [{"name": "staff", "domains": ["contoso.com"]}],
    "guards": {"suspicious_inbox_rules": True, "external_forwarding": True},
}


def scenario(rule_name: str = "to gmail") -> dict[str, Any]:
    users = [user("mallory", **{"x-inboxRules": [forward_rule(rule_name, "drop@evil.example")]})]
    return tenant(users, [blocked("mallory@contoso.com")])


def run_replay(policy: dict[str, Any], state: dict[str, Any], alerts: Sequence[dict[str, Any]]) -> Any:
    bodies = [json.dumps(a).encode() for a in alerts]
    return asyncio.run(replay(bodies, tenant=state, policy=parse_policy(policy), now=NOW))


def test_the_teams_notice_validates_and_shows_the_same_reasons_and_actions_as_the_ticket() -> None:
    policy = {**POLICY, "ticket": {"system": "webhook"}, "notify": {"teams": True}}
    outcome = run_replay(policy, scenario(), [alert_v2("mallory@contoso.com")])
    [decided] = outcome.records
    assert decided.decision.outcome is Outcome.TICKET
    [ticket] = outcome.simulator_state["tickets"]
    [posted] = outcome.simulator_state["teams_posts"]
    assert (posted["run"], posted["errors"]) == ("Succeeded", [])
    in_ticket = ticket["body"]["record"]
    body = posted["body"]
    assert card_entries(body, "reasons") == [(r["code"], r["text"]) for r in in_ticket["reasons"]]
    ticketed = [tuple(v for v in (a["kind"], a["status"], a["detail"]) if v) for a in in_ticket["actions"]]
    # The card was posted after the ticket was filed: it shows the ticket's actions, then the filing itself.
    filing = next(a for a in decided.actions if a.kind is ActionKind.TICKET)
    assert card_entries(body, "actions") == [*ticketed, ("ticket", "done", filing.detail)]
    assert [a.kind for a in decided.actions][-1] is ActionKind.NOTIFY
    assert decided.actions[-1].detail == "posted the card to the Teams channel"


def test_teams_as_the_ticket_system_posts_one_card_per_restriction_and_one_update_per_later_report() -> None:
    policy = {**POLICY, "ticket": {"system": "teams"}, "notify": {"teams": True}}
    alerts = [alert_v2("mallory@contoso.com"), alert_v2("mallory@contoso.com", alert_id="alert-2")]
    outcome = run_replay(policy, scenario(), alerts)
    posts = outcome.simulator_state["teams_posts"]
    assert [p["run"] for p in posts] == ["Succeeded", "Succeeded"]  # the ticket, then the second report's update
    first = outcome.records[0]
    assert card_entries(posts[0]["body"], "reasons") == [(r.code, r.text) for r in first.decision.reasons]
    assert outcome.simulator_state["tickets"] == []
    statuses = [a for a in first.actions if a.kind is ActionKind.TICKET]
    assert [a.status for a in statuses] == [ActionStatus.DONE]
    assert "teams ticket Teams card" in statuses[0].detail


def test_a_hostile_rule_name_in_a_replay_reaches_the_card_as_text_only() -> None:
    policy = {**POLICY, "ticket": {"system": "webhook"}, "notify": {"teams": True}}
    outcome = run_replay(policy, scenario(rule_name=HOSTILE), [alert_v2("mallory@contoso.com")])
    [posted] = outcome.simulator_state["teams_posts"]
    assert posted["run"] == "Succeeded"
    card = card_of(posted["body"])
    assert [b["url"] for b in card["actions"]] == [RESTRICTED_ENTITIES_URL]
    assert not any("evil" in e["text"] for e in elements(card) if e["type"] == "TextBlock")
    assert any("[open me](https://evil.example/x)" in text for _, text in card_entries(posted["body"], "reasons"))


def test_report_only_posts_nothing_and_says_what_it_would_have_posted() -> None:
    policy = {**POLICY, "mode": "report-only", "notify": {"teams": True}}
    outcome = run_replay(policy, scenario(), [alert_v2("mallory@contoso.com")])
    assert outcome.simulator_state["teams_posts"] == []
    assert outcome.records[0].actions[-1].detail == "report-only: would post to Teams"


# -- the URL is a secret -------------------------------------------------------------------------------------


def test_the_teams_url_never_shows_in_the_settings_the_adapter_or_the_log(
    sim: Simulator, debug_log: io.StringIO
) -> None:
    settings = Settings.from_env({"TEAMS_WEBHOOK_URL": sim.teams_url})
    sig = sim.teams_url.rsplit("sig=", 1)[1]
    assert settings.teams_webhook_url is not None
    assert settings.teams_webhook_url.reveal() == sim.teams_url
    send(sim, notice_card(record()))
    shown = repr(settings) + str(settings) + repr(TeamsWebhook(httpx.AsyncClient(), url=settings.teams_webhook_url))
    assert sig not in shown + debug_log.getvalue()
    assert "teams.workflow" in json.dumps(sim.requests)  # the post was made (and logged by httpx, masked)


def test_the_doctor_names_the_missing_teams_url_and_never_shows_a_set_one(sim: Simulator) -> None:
    from restricted_sender.entrypoints.simulated import doctor_on

    policy = parse_policy({"notify": {"teams": True}, "ticket": {"system": "teams"}})
    report = asyncio.run(doctor_on(sim, policy))
    text = json.dumps([[p.name, p.verdict, p.detail, p.fix] for p in report.probes])
    assert '"teams: channel"' in text
    assert "TEAMS_WEBHOOK_URL is set" in text
    assert sim.teams_url.rsplit("sig=", 1)[1] not in text


# -- the SOC notice, at most once per event ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "first", "again"),
    [
        (None, ("done", "posted the card to the Teams channel"), ("done", "Teams: posted in an earlier try")),
        (
            OutcomeUnknown("teams", "the Teams webhook did not answer"),
            ("failed", "Teams: teams: the Teams webhook did not answer"),
            ("failed", "Teams: an earlier try got no clear answer and may have posted the card"),
        ),
    ],
    ids=["posted", "answer lost"],
)
def test_the_notice_card_is_posted_at_most_once_whatever_the_answer_and_however_often_the_event_runs(
    failure: BaseException | None, first: tuple[str, str], again: tuple[str, str]
) -> None:
    from restricted_sender.model import Facts
    from restricted_sender.testing import Fakes

    channel = FakeChannel()
    channel.posted_then_fail = failure
    bundle = Fakes().wire(parse_policy({**POLICY, "notify": {"teams": True}}), FixedClock(NOW), channel=channel)
    actor = bundle.processor.actor

    async def twice() -> list[Action]:
        done = [await actor.send_notices(record(), Facts(), enforce=True) for _ in range(2)]
        return [r.actions[-1] for r in done]

    actions = asyncio.run(twice())
    assert len(channel.posts) == 1
    assert [(a.status.value, a.detail[: len(want[1])]) for a, want in zip(actions, (first, again), strict=True)] == [
        first,
        again,
    ]
