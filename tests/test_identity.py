"""One identity per event: the facts, and so the decision, are about the directory user who owns the restricted
address, whatever pair of address and object id the alert named; what could not be checked is named in notes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from restricted_sender.core.decide import decide
from restricted_sender.core.notices import recipients_notice
from restricted_sender.core.policy import Policy, parse_policy
from restricted_sender.entrypoints.console import print_records
from restricted_sender.errors import MalformedPayload
from restricted_sender.fakes import FakeDirectory, FakeExchange, MemoryStore
from restricted_sender.intake.alerts import user_ref
from restricted_sender.intake.payloads import parse_alert_payload
from restricted_sender.model import (
    DecisionRecord,
    DirectoryUser,
    Facts,
    NoteCode,
    RestrictionEvent,
    UnblockEntry,
    UnblockKind,
    UserRef,
)
from restricted_sender.processing.facts import FactSources, gather_facts
from restricted_sender.processing.pipeline import decision_record
from tests.conftest import EVENT_AT, alert_v2, blocked, restriction_event

NOW = EVENT_AT
CLEAN_ID, MALLORY_ID, GRACE_ID = (f"00000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3))
CLEAN = DirectoryUser(CLEAN_ID, "clean@contoso.com", "clean@contoso.com", account_enabled=True)
MALLORY = DirectoryUser(MALLORY_ID, "mallory@contoso.com", "mallory@contoso.com", account_enabled=False)
# A mailbox whose restricted (primary SMTP) address is neither its UPN nor its mail: only proxyAddresses says so.
GRACE = DirectoryUser(GRACE_ID, "grace.h@contoso.onmicrosoft.com", "grace@contoso.com", account_enabled=True,
                      proxy_addresses=("smtp:grace@contoso.com", "SMTP:g.hopper@contoso.com", "SIP:g@x"))  # fmt: skip
POLICY = parse_policy(
    {
        "mode": "enforce",
        "allow": [{"name": "staff", "domains": ["contoso.com"]}, {"name": "bulk", "groups": ["g-bulk"]}],
        "deny": {"users": ["mallory@contoso.com"]},
        "guards": {
            "max_unblocks_per_user": {"count": 1, "days": 7},
            "max_risk_level": "low",
            "suspicious_inbox_rules": True,
            "account_enabled": True,
        },
    }
)
FORWARD_OUT = {"id": "r1", "displayName": "out", "isEnabled": True,
               "actions": {"forwardTo": [{"emailAddress": {"address": "x@evil.example"}}]}}  # fmt: skip


def world(rows: list[dict[str, Any]], **directory: Any) -> tuple[FactSources, FakeDirectory, FakeExchange, MemoryStore]:
    users = directory.pop("users", [CLEAN, MALLORY, GRACE])
    fake = FakeDirectory(users, **directory)
    exchange, store = FakeExchange(rows), MemoryStore()
    return FactSources(exchange, fake, store), fake, exchange, store


def facts_for(sources: FactSources, named: RestrictionEvent, policy: Policy = POLICY) -> Facts:
    return asyncio.run(gather_facts(named, policy, sources, NOW))


def codes(facts: Facts) -> list[str]:
    return [str(n.code) for n in facts.notes]


def test_a_restricted_address_paired_with_a_clean_users_object_id_is_decided_on_the_owners_facts() -> None:
    sources, _, _, _ = world([blocked("mallory@contoso.com")], groups={CLEAN_ID: ["g-bulk"]})
    facts = facts_for(sources, restriction_event("mallory@contoso.com", CLEAN_ID))
    assert facts.user == MALLORY
    assert facts.member_of == frozenset()  # the clean user's group is not borrowed
    assert codes(facts)[0] == "identity-mismatch"
    assert CLEAN_ID in facts.notes[0].text
    assert MALLORY_ID in facts.notes[0].text
    decision = decide(restriction_event("mallory@contoso.com", CLEAN_ID), facts, POLICY, NOW)
    assert (decision.outcome.value, decision.codes) == ("ticket", ("deny:user", "guard:account-disabled"))


def test_the_budget_spent_on_the_restricted_address_counts_whatever_object_id_the_alert_names() -> None:
    sources, _, _, store = world([blocked("mallory@contoso.com")])
    spent = UnblockEntry("mallory@contoso.com", NOW - timedelta(days=1), UnblockKind.AUTO, "earlier")
    asyncio.run(store.record_unblock(spent))
    facts = facts_for(sources, restriction_event("mallory@contoso.com", CLEAN_ID))
    assert [u.event_id for u in facts.unblocks] == ["earlier"]


def test_a_restricted_address_no_user_owns_is_a_ticket_never_an_unblock() -> None:
    sources, _, _, _ = world([blocked("ghost@contoso.com")])
    facts = facts_for(sources, restriction_event("ghost@contoso.com", CLEAN_ID))
    assert facts.user is None
    assert codes(facts)[:2] == ["identity-mismatch", "user-not-in-directory"]
    decision = decide(restriction_event("ghost@contoso.com", CLEAN_ID), facts, POLICY, NOW)
    assert (decision.outcome.value, decision.codes) == ("ticket", ("identity-unbound",))


def test_an_unrestricted_address_never_lends_its_alert_to_the_object_ids_own_restriction() -> None:
    # The alert names clean@ (not restricted) and mallory's object id (restricted under her own address).
    sources, _, _, _ = world([blocked("mallory@contoso.com")])
    named = restriction_event("clean@contoso.com", MALLORY_ID)
    facts = facts_for(sources, named)
    assert facts.restriction is None
    assert decide(named, facts, POLICY, NOW).codes == ("not-restricted",)


def test_an_address_and_its_own_object_id_bind_without_a_note_and_ask_each_service_once() -> None:
    sources, directory, exchange, _ = world([blocked("clean@contoso.com")], risk={CLEAN_ID: "none"})
    facts = facts_for(sources, restriction_event("clean@contoso.com", CLEAN_ID))
    assert (facts.user, facts.risk_level, facts.notes) == (CLEAN, "none", ())
    # restriction, mailbox; user, groups, rules, risk, active roles, eligible roles, MFA registration, domains
    assert (exchange.calls, directory.calls) == (2, 8)


def test_a_mailbox_restricted_under_its_primary_smtp_proxy_address_is_bound_from_its_upn() -> None:
    sources, _, _, _ = world([blocked("g.hopper@contoso.com")], risk={GRACE_ID: "none"})
    facts = facts_for(sources, restriction_event("grace.h@contoso.onmicrosoft.com"))
    assert facts.restriction is not None
    assert facts.restriction.address == "g.hopper@contoso.com"
    assert (facts.user, facts.notes) == (GRACE, ())


def test_an_address_only_alert_for_a_proxy_address_finds_its_owner() -> None:
    sources, _, _, _ = world([blocked("g.hopper@contoso.com")], risk={GRACE_ID: "low"})
    facts = facts_for(sources, restriction_event("g.hopper@contoso.com"))
    assert facts.user == GRACE
    assert facts.risk_level == "low"
    assert decide(restriction_event("g.hopper@contoso.com"), facts, POLICY, NOW).outcome.value == "unblock"


@pytest.mark.parametrize(
    ("directory", "note"),
    [
        ({}, "risk-unknown"),  # no risk record: a tenant without Entra ID P2
        ({"risk": {CLEAN_ID: "none"}, "rules": {CLEAN_ID: [{**FORWARD_OUT, "actions": {"moveToFolder": "f9"}}]}},
         "folder-unread"),
    ],
    ids=["no P2", "a folder whose name could not be read"],
)  # fmt: skip
def test_an_unblock_names_what_it_could_not_check(directory: dict[str, Any], note: str) -> None:
    sources, _, _, _ = world([blocked("clean@contoso.com")], **directory)
    facts = facts_for(sources, restriction_event("clean@contoso.com"))
    assert codes(facts) == [note]
    decision = decide(restriction_event("clean@contoso.com"), facts, POLICY, NOW)
    assert decision.outcome.value == "unblock"
    record = decision_record(restriction_event("clean@contoso.com"), facts, decision, POLICY, NOW)
    assert [n["code"] for n in record.to_dict()["notes"]] == [note]


def test_a_user_whose_rules_could_not_be_read_is_noted() -> None:
    class NoMailbox(FakeDirectory):
        async def inbox_rules(self, key: str) -> Any:
            return None

    directory = NoMailbox([CLEAN], risk={CLEAN_ID: "none"})
    sources = FactSources(FakeExchange([blocked("clean@contoso.com")]), directory, MemoryStore())
    assert codes(facts_for(sources, restriction_event("clean@contoso.com"))) == ["inbox-rules-unread"]


def test_notes_travel_with_the_record_to_the_audit_row_the_notice_and_the_cli() -> None:
    sources, _, _, _ = world([blocked("mallory@contoso.com")])
    named = restriction_event("mallory@contoso.com", CLEAN_ID)
    facts = facts_for(sources, named)
    record = decision_record(named, facts, decide(named, facts, POLICY, NOW), POLICY, NOW)
    row = record.to_dict()
    assert DecisionRecord.from_dict(row).notes == record.notes
    assert "identity-mismatch" in [n["code"] for n in row["notes"]]
    notice = recipients_notice(["soc@contoso.com"], record).body
    assert "Not checked:\n  - identity-mismatch: the alert names clean@contoso.com" in notice

    class Out:
        text = ""

        def write(self, chunk: str) -> None:
            self.text += chunk

    out = Out()
    print_records([record], as_json=False, out=out)  # type: ignore[arg-type]
    assert "Not checked:\n  mallory@contoso.com: [identity-mismatch]" in out.text


def test_an_audit_row_written_before_notes_existed_reads_back_without_notes() -> None:
    sources, _, _, _ = world([blocked("clean@contoso.com")], risk={CLEAN_ID: "none"})
    event = restriction_event("clean@contoso.com")
    facts = facts_for(sources, event)
    row = decision_record(event, facts, decide(event, facts, POLICY, NOW), POLICY, NOW).to_dict()
    del row["notes"]
    assert DecisionRecord.from_dict(row).notes == ()
    old = DecisionRecord.from_dict({**row, "notes": ["a note from an older version"]})
    assert [(n.code, n.text) for n in old.notes] == [("note", "a note from an older version")]


def test_every_note_code_is_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert [code for code in NoteCode if f"`{code}`" not in readme] == []


NOT_GUIDS = [
    "alice",
    "00000000-0000-4000-8000-00000000000",
    "{00000000-0000-4000-8000-000000000001}",
    "../../users/mallory@contoso.com",
    "00000000-0000-4000-8000-00000000000g",
]


@pytest.mark.parametrize("object_id", NOT_GUIDS)
def test_an_object_id_that_is_not_a_guid_is_refused_where_it_was_read(object_id: str) -> None:
    with pytest.raises(MalformedPayload, match=r"value\[0\]\.evidence\[0\]\.userAccount\.azureAdUserId: object id"):
        parse_alert_payload({"value": [alert_v2("a@contoso.com", object_ids={"a@contoso.com": object_id})]})


def test_a_guid_in_any_case_is_one_lower_case_object_id() -> None:
    ref = user_ref("A@Contoso.com", "0B4E2C1A-0000-4000-8000-00000000000A")
    assert ref == UserRef("a@contoso.com", "0b4e2c1a-0000-4000-8000-00000000000a")
    with pytest.raises(ValueError, match="GUID"):
        UserRef(object_id="not-a-guid")
