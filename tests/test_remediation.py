"""Mailbox remediation (README: Mailbox remediation): the sample scenario in samples/remediation/ replayed through
the simulator with the real clients, the simulator's mailbox compared as data before, after and after ``restore``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import azure.functions as func
import httpx
import jsonschema
import pytest
import yaml
from azure.identity.aio import ManagedIdentityCredential
from msgraph.generated.models.message_rule import MessageRule

from restricted_sender.adapters.exchange import ExchangeAdmin
from restricted_sender.adapters.graph import graph_directory
from restricted_sender.adapters.identity import EXCHANGE_SCOPE, bearer
from restricted_sender.core.mailbox import NO_FORWARDING, ForwardingSettings, MailboxBefore, RuleState
from restricted_sender.core.policy import LoadedPolicy, load_policy_text, parse_policy
from restricted_sender.core.policy_schema import POLICY_SCHEMA
from restricted_sender.entrypoints.edge import process_message, runtime
from restricted_sender.entrypoints.permissions import IntakePaths, required
from restricted_sender.entrypoints.simulated import simulated, simulated_doctor
from restricted_sender.errors import Conflict, PolicyError, ServiceRefused, TicketNotFiled
from restricted_sender.fakes import MemoryQueue
from restricted_sender.model import (
    Action,
    ActionKind,
    ActionStatus,
    AlertReport,
    DecisionRecord,
    Operator,
    RestrictionEvent,
    UserRef,
)
from restricted_sender.processing.admin import RESTORE_OWNER, RestoreRequest, restore_claim_key
from simulator import Simulator
from tests.conftest import ROOT, Audit
from tests.graph_models import check

SAMPLE = ROOT / "samples" / "remediation"
NINA = "nina@contoso.com"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
OPERATOR = Operator(object_id="0b1c2d3e-9999-4a5b-8c9d-000000000099", name="soc@contoso.com")
NAMED = {"AQAAAJ5dZqB=", "AQAAAJ5dZqC="}  # "." and "hide replies": the rules guard:inbox-rule names
CLEARED = {"ForwardingSmtpAddress": None, "ForwardingAddress": None, "DeliverToMailboxAndForward": False}
WRITES = ("graph.messageRule", "exchange.Set-Mailbox")
T = TypeVar("T")


def policy(**changes: Any) -> LoadedPolicy:
    """The sample policy with top-level keys replaced (``remediation=None`` drops the section: the default)."""
    document = yaml.safe_load((SAMPLE / "policy.yaml").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return load_policy_text(yaml.safe_dump(document), source="test")


@dataclass
class Run:
    sim: Simulator
    before: dict[str, Any]
    record: DecisionRecord
    after: dict[str, Any]

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.sim.requests if r["route"] in WRITES]


def scenario(loaded: LoadedPolicy, then: Callable[[Run, Any], Awaitable[T]], *, prepare: Callable[[Simulator], None]
             = lambda sim: None) -> tuple[Run, T]:  # fmt: skip
    """The sample alert through the webhook's intake and the processor, against the sample tenant; then ``then`` on
    the same simulator, store and admin side."""

    async def run() -> tuple[Run, T]:
        events = MemoryQueue()
        async with simulated(SAMPLE / "tenant.yaml", loaded, NOW, events=events) as (bundle, sim, _):
            prepare(sim)
            before = sim.mailbox(NINA)
            bundle.expander.intake.accept((SAMPLE / "alert.json").read_bytes())
            [message] = events.drain()
            try:
                record = await process_message(message, bundle.processor)
            except ServiceRefused:
                record = DecisionRecord.from_dict((await bundle.processor.store.audit(NINA))[-1])
            sim.clear_faults()
            done = Run(sim, before, record, sim.mailbox(NINA))
            return done, await then(done, bundle)

    return asyncio.run(run())


async def nothing(run: Run, bundle: Any) -> None:
    return None


def remediated(before: dict[str, Any]) -> dict[str, Any]:
    """What the sample mailbox should look like after remediation: the named rules disabled, forwarding cleared."""
    rules = [{**r, "isEnabled": False} if r["id"] in NAMED else r for r in before["inboxRules"]]
    return {"inboxRules": rules, "forwarding": CLEARED}


def kinds(record: DecisionRecord) -> list[tuple[str, str]]:
    return [(str(a.kind), a.status.value) for a in record.actions]


def test_remediation_disables_exactly_the_named_rules_and_clears_forwarding_and_restore_puts_back_the_before() -> None:
    async def restore(run: Run, bundle: Any) -> tuple[DecisionRecord, dict[str, Any], list[dict[str, Any]]]:
        run.sim.clear_requests()
        record = await bundle.admin.restore(NINA, RestoreRequest("the user made these rules"), OPERATOR)
        return record, run.sim.mailbox(NINA), await bundle.processor.store.audit(NINA)

    run, (restored, final, audit) = scenario(policy(), restore)

    guard = next(r for r in run.record.decision.reasons if r.code == "guard:inbox-rule")
    assert '"."' in guard.text
    assert '"hide replies"' in guard.text
    assert "newsletters" not in guard.text
    assert run.record.decision.outcome.value == "ticket"
    assert run.after == remediated(run.before)
    assert [r["id"] for r in run.after["inboxRules"]] == [r["id"] for r in run.before["inboxRules"]]  # none deleted
    assert not [r for r in run.sim.requests if r["method"] == "DELETE"]
    assert kinds(run.record) == [
        ("disable_inbox_rule", "done"), ("disable_inbox_rule", "done"), ("remove_forwarding", "done"),
        ("ticket", "done"),
    ]  # fmt: skip
    # The before-state in the audit row is the simulator's own, as data.
    assert run.record.remediation == MailboxBefore(
        NINA,
        "0b1c2d3e-0021-4a5b-8c9d-000000000021",
        tuple(
            RuleState(r["id"], r["displayName"], r["isEnabled"]) for r in run.before["inboxRules"] if r["id"] in NAMED
        ),
        ForwardingSettings(
            run.before["forwarding"]["ForwardingSmtpAddress"],
            run.before["forwarding"]["ForwardingAddress"],
            run.before["forwarding"]["DeliverToMailboxAndForward"],
        ),
    )

    assert final == run.before
    assert kinds(restored) == [("restore_inbox_rule", "done")] * 2 + [("restore_forwarding", "done")]
    assert restored.evidence["operator"]["name"] == OPERATOR.name
    assert audit[-1]["reasons"][0]["code"] == "manual:restore"
    assert "the user made these rules" in audit[-1]["reasons"][0]["text"]
    assert audit[-1]["evidence"]["restores"]["event_id"] == run.record.event_id


def test_a_second_restore_is_refused_and_sends_nothing() -> None:
    async def twice(run: Run, bundle: Any) -> tuple[str, list[dict[str, Any]]]:
        await bundle.admin.restore(NINA, RestoreRequest("first"), OPERATOR)
        run.sim.clear_requests()
        with pytest.raises(Conflict) as refused:
            await bundle.admin.restore(NINA, RestoreRequest("second"), OPERATOR)
        return refused.value.code, run.writes()

    _run, (code, writes) = scenario(policy(), twice)

    assert code == "already-restored"
    assert writes == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"remediation": None}, [("ticket", "done")]),
        (
            {"mode": "report-only"},
            [("disable_inbox_rule", "skipped"), ("disable_inbox_rule", "skipped"), ("remove_forwarding", "skipped"),
             ("ticket", "skipped")],
        ),
    ],
    ids=["off by default", "report-only"],
)  # fmt: skip
def test_without_enforced_remediation_nothing_is_sent_to_the_mailbox(
    changes: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    run, _ = scenario(policy(**changes), nothing)

    assert run.writes() == []
    assert run.after == run.before
    assert kinds(run.record) == expected
    assert run.record.remediation is None
    if changes.get("mode") == "report-only":
        assert all(a.detail.startswith("report-only: would") for a in run.record.actions)


def test_a_refused_patch_is_recorded_as_failed_and_the_ticket_is_still_filed() -> None:
    def refuse_rule_writes(sim: Simulator) -> None:
        sim.inject_fault("graph.messageRule", status=403, times=None)

    run, _ = scenario(policy(), nothing, prepare=refuse_rule_writes)

    assert kinds(run.record) == [
        ("disable_inbox_rule", "failed"), ("disable_inbox_rule", "failed"), ("remove_forwarding", "done"),
        ("ticket", "done"),
    ]  # fmt: skip
    assert all("refused" in a.detail for a in run.record.actions[:2])
    assert run.after == {"inboxRules": run.before["inboxRules"], "forwarding": CLEARED}
    [ticket] = run.sim.tickets
    text = ticket["body"]["text"]
    assert "[x] 3. Remove suspicious mailbox forwarding" in text  # the checklist says what was done, and what not
    assert "[ ] 4. Disable or delete suspicious inbox rules" in text
    # Only what changed is recorded, so only that is put back.
    assert run.record.remediation is not None
    assert run.record.remediation.rules == ()


def test_an_ambiguous_answer_during_restore_is_read_back_never_sent_twice() -> None:
    async def restore(run: Run, bundle: Any) -> tuple[DecisionRecord, dict[str, Any], list[dict[str, Any]]]:
        run.sim.clear_requests()
        # The first PATCH is applied, and its answer is lost (the connection drops).
        run.sim.inject_fault("graph.messageRule", kind="reset", apply=True)
        record = await bundle.admin.restore(NINA, RestoreRequest("the user made these rules"), OPERATOR)
        return record, run.sim.mailbox(NINA), run.writes()

    run, (restored, final, writes) = scenario(policy(), restore)

    assert final == run.before
    assert [w["path"].rsplit("/", 1)[1] for w in writes if w["method"] == "PATCH"] == sorted(NAMED)  # once each
    first = restored.actions[0]
    assert first.status is ActionStatus.DONE
    assert "read back" in first.detail


def test_a_restore_interrupted_after_its_claim_only_reads_when_tried_again() -> None:
    async def crashed_then_again(run: Run, bundle: Any) -> tuple[str, list[Action], list[dict[str, Any]], str]:
        store = bundle.processor.store
        # An earlier restore claimed the record and died before completing: whether it wrote is unknown.
        await store.claim(restore_claim_key(run.record.event_id), RESTORE_OWNER, NOW)
        run.sim.clear_requests()
        with pytest.raises(ServiceRefused) as failed:
            await bundle.admin.restore(NINA, RestoreRequest("again"), OPERATOR)
        actions = DecisionRecord.from_dict((await store.audit(NINA))[-1]).actions
        writes = run.writes()
        with pytest.raises(Conflict) as third:
            await bundle.admin.restore(NINA, RestoreRequest("third"), OPERATOR)
        return failed.value.message, list(actions), writes, third.value.code

    _run, (message, actions, writes, third) = scenario(policy(), crashed_then_again)

    assert writes == []  # read only: never a second, blind write
    assert [(a.kind, a.status) for a in actions] == [(ActionKind.RESTORE_INBOX_RULE, ActionStatus.FAILED)] * 2 + [
        (ActionKind.RESTORE_FORWARDING, ActionStatus.FAILED)
    ]
    assert "not written again" in message
    assert third == "already-restored"


def test_the_remediation_before_state_round_trips_through_the_audit_row() -> None:
    run, _ = scenario(policy(), nothing)

    row = json.loads(json.dumps(run.record.to_dict()))
    assert DecisionRecord.from_dict(row).remediation == run.record.remediation
    assert "remediation" not in DecisionRecord.from_dict({**row, "remediation": None}).to_dict()


def test_restore_on_the_command_line_replays_the_sample_then_puts_the_mailbox_back() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "restricted_sender", "restore", NINA, "--tenant", str(SAMPLE / "tenant.yaml"),
         "--policy", str(SAMPLE / "policy.yaml"), "--replay", str(SAMPLE / "alert.json"),
         "--now", "2026-11-27T09:00:00Z", "--justification", "the user made these rules", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert [(a["kind"], a["status"]) for a in record["actions"]] == [("restore_inbox_rule", "done")] * 2 + [
        ("restore_forwarding", "done")
    ]
    assert record["reasons"][0]["code"] == "manual:restore"


def test_a_retry_after_the_ticket_failed_stays_a_ticket_with_the_first_tries_before_state() -> None:
    """The retry sees the mailbox remediation cleaned: without the intent record it would unblock the user."""

    async def run() -> tuple[DecisionRecord, DecisionRecord, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        events = MemoryQueue()
        async with simulated(SAMPLE / "tenant.yaml", policy(), NOW, events=events) as (bundle, sim, _):
            before = sim.mailbox(NINA)
            bundle.expander.intake.accept((SAMPLE / "alert.json").read_bytes())
            [message] = events.drain()
            sim.inject_fault("tickets.webhook", status=400, times=None)
            with pytest.raises(TicketNotFiled):
                await process_message(message, bundle.processor, attempt=1)
            first = DecisionRecord.from_dict((await bundle.processor.store.audit(NINA))[-1])
            sim.clear_faults()
            second = await process_message(message, bundle.processor, attempt=2)
            return first, second, sim.requests, before, sim.mailbox(NINA)

    first, second, requests, before, after = asyncio.run(run())

    assert first.remediation is not None
    assert second.decision == first.decision  # guard:inbox-rule and guard:forwarding, from the first try
    assert second.remediation == first.remediation
    assert second.status_of(ActionKind.TICKET) is ActionStatus.DONE
    assert not [r for r in requests if r["route"] == "exchange.Remove-BlockedSenderAddress"]
    assert after == remediated(before)


@pytest.mark.azurite
def test_the_admin_api_restores_for_the_soc_role_only_with_a_justification_and_records_the_operator(
    handlers: dict[str, Callable[..., Any]],
    app_runtime: Callable[..., dict[str, str]],
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    audit: Audit,
) -> None:
    sim = simulator_factory(yaml.safe_load((SAMPLE / "tenant.yaml").read_text(encoding="utf-8")))
    app_runtime(sim, POLICY_YAML=(SAMPLE / "policy.yaml").read_text(encoding="utf-8"))
    before = sim.mailbox(NINA)
    report = AlertReport("alerts_v2", "fa8f2b1c-0d3e-4f5a-9b6c-7d8e9f0a1b41", "User restricted from sending email",
                         (UserRef(address=NINA),))  # fmt: skip
    event = RestrictionEvent.for_alert(report, UserRef(address=NINA), delivery_id="d1", received_at=datetime.now(UTC))

    async def process() -> DecisionRecord:
        try:
            return await runtime.process_message(event.to_message())
        finally:
            await runtime.aclose()

    assert asyncio.run(process()).remediation is not None
    assert sim.mailbox(NINA) == remediated(before)

    def restore(token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        request = func.HttpRequest(method="POST", url="/api/x", body=json.dumps(body).encode(), headers=headers,
                                   route_params={"upn": NINA})  # fmt: skip

        async def run() -> Any:
            try:
                return await handlers["restore_mailbox"](request)
            finally:
                await runtime.aclose()

        response = asyncio.run(run())
        return response.status_code, json.loads(response.get_body())

    why = {"justification": "the user made these rules"}
    assert restore(sim.mint_token(roles=("Sender.Unblock",)), why)[0] == 403
    assert restore(sim.mint_token(roles=("Sender.Unblock.Force",)), {})[0] == 400
    assert sim.mailbox(NINA) == remediated(before)  # refused: nothing done

    soc = sim.mint_token(roles=("Sender.Unblock.Force",), upn="soc@contoso.com")
    status, answer = restore(soc, why)

    assert status == 200, answer
    assert sim.mailbox(NINA) == before
    row = audit()[-1]
    assert row["evidence"]["operator"]["name"] == "soc@contoso.com"
    assert row["evidence"]["justification"] == "the user made these rules"
    assert restore(soc, why)[0] == 409  # at most once


# -- the adapters' wire shapes against the simulator ------------------------------------------------------------


def test_the_rule_patch_is_is_enabled_alone_fits_message_rule_and_an_unknown_rule_is_refused(
    simulator_factory: Callable[[dict[str, Any]], Simulator], identity_env: Callable[[Simulator], None]
) -> None:
    sim = simulator_factory(yaml.safe_load((SAMPLE / "tenant.yaml").read_text(encoding="utf-8")))
    identity_env(sim)
    user_id = "0b1c2d3e-0021-4a5b-8c9d-000000000021"

    async def write() -> ServiceRefused:
        async with ManagedIdentityCredential() as credential:
            directory = graph_directory(credential, base_url=sim.graph_url, timeout=5)
            try:
                await directory.set_inbox_rule_enabled(user_id, "AQAAAJ5dZqD=", False)
                with pytest.raises(ServiceRefused) as refused:
                    await directory.set_inbox_rule_enabled(user_id, "AQAAAJnoRule=", False)
                return refused.value
            finally:
                await directory.close()

    refused = asyncio.run(write())
    patches = [r for r in sim.requests if r["route"] == "graph.messageRule"]

    assert [p["body"] for p in patches] == [{"isEnabled": False}] * 2  # nothing else is sent, so nothing else changes
    assert check(patches[0]["body"], MessageRule) == []
    assert refused.http_status == 404
    [rule] = [r for r in sim.mailbox(NINA)["inboxRules"] if r["id"] == "AQAAAJ5dZqD="]
    assert check(rule, MessageRule) == []
    assert rule["isEnabled"] is False


def test_set_mailbox_sends_null_to_clear_and_the_values_back_to_restore(
    simulator_factory: Callable[[dict[str, Any]], Simulator], identity_env: Callable[[Simulator], None]
) -> None:
    sim = simulator_factory(yaml.safe_load((SAMPLE / "tenant.yaml").read_text(encoding="utf-8")))
    identity_env(sim)
    before = sim.mailbox(NINA)["forwarding"]
    kept = ForwardingSettings(before["ForwardingSmtpAddress"], None, True)

    async def write() -> tuple[bool, bool]:
        async with ManagedIdentityCredential() as credential, httpx.AsyncClient() as http:
            exchange = ExchangeAdmin(http, tenant_id=sim.tenant_id, token=bearer(credential, EXCHANGE_SCOPE),
                                     base_url=sim.url)  # fmt: skip
            await exchange.set_forwarding(NINA, NO_FORWARDING)
            cleared = await exchange.mailbox_forwarding(NINA)
            await exchange.set_forwarding(NINA, kept)
            back = await exchange.mailbox_forwarding(NINA)
            assert cleared is not None
            assert back is not None
            assert cleared.settings
            assert back.settings
            return cleared.settings.same_as(NO_FORWARDING), back.settings.same_as(kept)

    assert asyncio.run(write()) == (True, True)
    bodies = [r["body"] for r in sim.requests if r["route"] == "exchange.Set-Mailbox"]
    assert bodies[0] == {"CmdletInput": {"CmdletName": "Set-Mailbox", "Parameters": {
        "Identity": NINA, "ForwardingSmtpAddress": None, "ForwardingAddress": None, "DeliverToMailboxAndForward": False,
    }}}  # fmt: skip
    assert sim.mailbox(NINA)["forwarding"] == before


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
def test_the_write_permission_and_the_doctor_lines_appear_only_when_the_policy_turns_remediation_on(on: bool) -> None:
    loaded = policy() if on else policy(remediation=None)

    needed = {p.value for p in required(loaded, IntakePaths())}
    report = asyncio.run(simulated_doctor(SAMPLE / "tenant.yaml", loaded))

    assert ("MailboxSettings.ReadWrite" in needed) is on
    remediation = [p for p in report.probes if p.name.startswith("remediation:")]
    assert [p.name for p in remediation] == (
        ["remediation: inbox rule writes", "remediation: Set-Mailbox"] if on else []
    )
    assert all("MailboxSettings.ReadWrite" in p.detail for p in remediation[:1])


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"remediation": {"disable_inbox_rules": True}}, None),
        ({"remediation": {"remove_forwarding": True}, "guards": {"external_forwarding": True}}, None),
        (
            {"remediation": {"disable_inbox_rules": True}, "guards": {"suspicious_inbox_rules": False}},
            "remediation.disable_inbox_rules: needs guards.suspicious_inbox_rules: true",
        ),
        (
            {"remediation": {"remove_forwarding": True}, "guards": {"external_forwarding": False}},
            "remediation.remove_forwarding: needs guards.external_forwarding: true",
        ),
        ({"remediation": {"remove_forwarding": False}, "guards": {"external_forwarding": False}}, None),
    ],
)
def test_remediation_needs_the_guard_that_finds_what_it_changes_in_the_loader_and_the_schema(
    document: dict[str, Any], problem: str | None
) -> None:
    schema_ok = jsonschema.Draft202012Validator(POLICY_SCHEMA).is_valid(document)
    try:
        parse_policy(document)
        problems: list[str] = []
    except PolicyError as error:
        problems = list(error.problems)

    assert schema_ok is (problem is None)
    assert problems == ([] if problem is None else [problem + " (it changes only what that guard finds)"])


def test_a_mailbox_full_of_suspicious_rules_is_remediated_within_bounds() -> None:
    """The before-state is written as one stored value: at most 50 rules (the evidence's bound), names cut."""
    state = yaml.safe_load((SAMPLE / "tenant.yaml").read_text(encoding="utf-8"))
    forward = {"forwardTo": [{"emailAddress": {"address": "drop@freemail.example"}}]}
    state["users"][0]["x-inboxRules"] = [
        {"id": f"AQAAAJ{n:04d}=", "displayName": f"{n}" + "x" * 300, "isEnabled": True, "actions": forward}
        for n in range(60)
    ]

    async def run() -> tuple[DecisionRecord, dict[str, Any]]:
        events = MemoryQueue()
        async with simulated(state, policy(), NOW, events=events) as (bundle, sim, _):
            bundle.expander.intake.accept((SAMPLE / "alert.json").read_bytes())
            [message] = events.drain()
            return await process_message(message, bundle.processor), sim.mailbox(NINA)

    record, after = asyncio.run(run())

    assert record.remediation is not None
    assert [r.id for r in record.remediation.rules] == [f"AQAAAJ{n:04d}=" for n in range(50)]
    assert max(len(r.name) for r in record.remediation.rules) == 200
    assert [r["isEnabled"] for r in after["inboxRules"]] == [False] * 50 + [True] * 10
    assert record.status_of(ActionKind.TICKET) is ActionStatus.DONE


def test_a_restore_whose_first_read_fails_claims_nothing_and_can_be_asked_for_again() -> None:
    async def read_fails_then_again(run: Run, bundle: Any) -> tuple[int, DecisionRecord, dict[str, Any]]:
        run.sim.inject_fault("graph.messageRules", status=403)
        with pytest.raises(ServiceRefused):
            await bundle.admin.restore(NINA, RestoreRequest("first"), OPERATOR)
        writes = len(run.writes())
        record = await bundle.admin.restore(NINA, RestoreRequest("again"), OPERATOR)
        return writes, record, run.sim.mailbox(NINA)

    run, (writes_after_failure, restored, final) = scenario(policy(), read_fails_then_again)

    assert writes_after_failure == len(NAMED) + 1  # only remediation's own writes
    assert kinds(restored) == [("restore_inbox_rule", "done")] * 2 + [("restore_forwarding", "done")]
    assert final == run.before
