"""Parsing at the boundary: alert payloads, Get-BlockedSenderAddress rows and reasons, policies, settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from restricted_sender.core.policy import default_policy, load_policy_text
from restricted_sender.core.restriction import BlockedSender, BlockKind, BlockReason
from restricted_sender.errors import ConfigurationError, MalformedPayload, PolicyError
from restricted_sender.intake.alerts import parse_json
from restricted_sender.intake.payloads import parse_alert_payload
from restricted_sender.model import RestrictionEvent, UserRef
from restricted_sender.retry import retry_after_seconds
from restricted_sender.settings import Secret, Settings
from restricted_sender.timeutil import parse_instant
from tests.conftest import DESIGN_POLICY_EXAMPLE, WIRE_SAMPLES, alert_v2


def evidence(kind: str, **fields: Any) -> dict[str, Any]:
    return {"@odata.type": f"#microsoft.graph.security.{kind}", **fields}


def test_every_user_and_mailbox_in_an_aggregated_alert_becomes_a_user() -> None:
    alert = alert_v2("alice@contoso.com")
    alert["evidence"] += [
        evidence(
            "userEvidence",
            userAccount={"azureAdUserId": "00000000-0000-4000-8000-000000000007", "userPrincipalName": None},
        ),
        evidence("mailboxEvidence", primaryAddress="Carol@Contoso.com"),
        evidence(
            "mailboxEvidence",
            upn="dave@contoso.com",
            userAccount={"azureAdUserId": "00000000-0000-4000-8000-000000000006"},
        ),
        evidence("analyzedMessageEvidence", recipientEmailAddress="someone@else.net"),
        evidence("userEvidence", userAccount={"accountName": "NOUPN"}),
    ]
    [report] = parse_alert_payload(alert)
    assert report.users == (
        UserRef("alice@contoso.com"),
        UserRef(object_id="00000000-0000-4000-8000-000000000007"),
        UserRef("carol@contoso.com"),
        UserRef("dave@contoso.com", "00000000-0000-4000-8000-000000000006"),
    )


def test_evidence_naming_the_same_user_twice_is_merged() -> None:
    alert = alert_v2("alice@contoso.com", object_ids={"alice@contoso.com": "00000000-0000-4000-8000-000000000005"})
    alert["evidence"] += [
        evidence("mailboxEvidence", primaryAddress="ALICE@contoso.com"),
        evidence("userEvidence", userAccount={"azureAdUserId": "00000000-0000-4000-8000-000000000005"}),
    ]
    assert parse_alert_payload(alert)[0].users == (
        UserRef("alice@contoso.com", "00000000-0000-4000-8000-000000000005"),
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "unknown payload shape"),
        ("text", "unknown payload shape"),
        ({"value": {}}, "'value' must be a list"),
        ({"value": ["x"]}, "value[0]: expected an alerts_v2 alert object"),
        ({"id": "a", "title": "t", "evidence": {}}, "body.evidence: expected a list"),
        ({"id": "a", "title": "t", "evidence": ["x"]}, "body.evidence[0]: expected an evidence object"),
        ({"id": "", "title": "t"}, "needs a string 'id'"),
        ({"id": "a", "title": 5}, "needs a string 'title'"),
    ],
)
def test_unknown_shapes_are_refused_with_the_place_named(payload: Any, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_alert_payload(payload)


def test_an_endpoint_alert_parses_as_another_alert_with_no_user() -> None:
    body = (WIRE_SAMPLES / "alerts_v2_endpoint_alert.json").read_bytes()
    [report] = parse_alert_payload(parse_json(body))
    assert report.title == "Suspicious PowerShell download cradle"
    assert report.users == ()  # a process's userAccount is not the restricted user


def test_an_office_alert_yields_its_mailbox() -> None:
    body = (WIRE_SAMPLES / "alerts_v2_office_alert.json").read_bytes()
    [report] = parse_alert_payload(parse_json(body))
    assert report.users == (UserRef("lena.ortiz@fabrikam.example"),)
    assert not default_policy().is_target_alert(report.title)


def test_an_event_survives_the_queue_round_trip() -> None:
    [report] = parse_alert_payload(alert_v2("alice@contoso.com"))
    event = RestrictionEvent.for_alert(
        report, report.users[0], delivery_id="d1", received_at=datetime(2026, 11, 27, 8, 4, tzinfo=UTC)
    )
    assert RestrictionEvent.from_message(event.to_message()) == event


def test_the_same_alert_and_user_always_get_the_same_event_id() -> None:
    [a] = parse_alert_payload(alert_v2("Alice@contoso.com"))
    [b] = parse_alert_payload(alert_v2("alice@CONTOSO.com"))
    now = datetime(2026, 11, 27, tzinfo=UTC)
    first = RestrictionEvent.for_alert(a, a.users[0], delivery_id="d1", received_at=now)
    second = RestrictionEvent.for_alert(b, b.users[0], delivery_id="d2", received_at=now)
    assert first.event_id == second.event_id


@pytest.mark.parametrize(
    ("reason", "kind", "values", "flags"),
    [
        (
            "OutboundSpamLast24Hours=212;OutboundMailLast24Hours=240;OutboundSpamPercent=88",
            BlockKind.SPAM,
            {"OutboundSpamLast24Hours": "212", "OutboundMailLast24Hours": "240", "OutboundSpamPercent": "88"},
            [],
        ),
        (
            "OutboundSpamLast24Hours:40; OutboundMailLast24Hours:90 ;OutboundSpamPercent:44;",
            BlockKind.SPAM,
            {"OutboundSpamLast24Hours": "40", "OutboundMailLast24Hours": "90", "OutboundSpamPercent": "44"},
            [],
        ),
        (
            "EmailSendingLimitExceeded;InternalRecipientCountToday=4;ExternalRecipientCountToday=396;"
            "ExceedingLimitType=External;Last MessagetraceId=abc;LastMessageRcptCount=100;",
            BlockKind.SENDING_LIMIT,
            {
                "InternalRecipientCountToday": "4",
                "ExternalRecipientCountToday": "396",
                "ExceedingLimitType": "External",
                "Last MessagetraceId": "abc",
                "LastMessageRcptCount": "100",
            },
            ["EmailSendingLimitExceeded"],
        ),
        ("SomethingNew=1;Another:two", BlockKind.UNKNOWN, {"SomethingNew": "1", "Another": "two"}, []),
        ("", BlockKind.UNKNOWN, {}, []),
    ],
    ids=["spam with =", "spam with : and spaces", "sending limit", "unknown keys kept", "empty"],
)
def test_reasons_are_parsed_defensively(reason: str, kind: BlockKind, values: dict[str, str], flags: list[str]) -> None:
    parsed = BlockReason.parse(reason)
    assert (parsed.kind, dict(parsed.values), list(parsed.flags)) == (kind, values, flags)


@pytest.mark.parametrize(
    ("temporary", "reason", "created", "release"),
    [
        (True, "OutboundSpamPercent=50", "2026-11-27T08:30:00Z", "2026-11-28T00:00:00+00:00"),
        (False, "EmailSendingLimitExceeded;ExceedingLimitType=Internal", "2026-11-27T08:30:00Z",
         "2026-11-28T08:30:00+00:00"),
        (False, "OutboundSpamPercent=50", "2026-11-27T08:30:00Z", None),
        ("True", "OutboundSpamPercent=50", "/Date(1795163400000)/", "2026-11-21T00:00:00+00:00"),
    ],
    ids=["a day block lifts at midnight UTC", "a limit block lifts after 24 h", "a spam block needs an admin",
         "string booleans and /Date()/ are understood"],
)  # fmt: skip
def test_when_a_block_lifts_by_itself(temporary: Any, reason: str, created: str, release: str | None) -> None:
    row = BlockedSender.from_row(
        {"SenderAddress": "a@b.c", "Reason": reason, "TemporaryBlock": temporary, "CreatedDatetime": created}
    )
    expected = row.expected_release()
    assert (expected.isoformat() if expected else None) == release


def test_a_row_without_an_address_is_refused() -> None:
    with pytest.raises(ValueError, match="SenderAddress"):
        BlockedSender.from_row({"Reason": "x"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T08:03:12.3300000Z", "2026-11-27T08:03:12.330000+00:00"),
        ("2026-11-27T08:03:12+02:00", "2026-11-27T06:03:12+00:00"),
        ("2026-11-27T08:03:12", "2026-11-27T08:03:12+00:00"),
        ("2026-11-27T08:02:11.0000000Z", "2026-11-27T08:02:11+00:00"),
        ("2026-11-27T08:02:11.1234567+01:00", "2026-11-27T07:02:11.123456+00:00"),
        ("2026-11-27T08:02:11z", "2026-11-27T08:02:11+00:00"),
        ("/Date(1795766531000)/", "2026-11-27T08:02:11+00:00"),
    ],
)
def test_instants_are_normalized_to_utc(text: str, expected: str) -> None:
    assert parse_instant(text).isoformat() == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("Fri, 27 Nov 2026 09:00:30 GMT", 30.0), ("soon", None), (None, None)],
)
def test_retry_after_is_read_as_seconds_or_a_date(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, now=datetime(2026, 11, 27, 9, 0, tzinfo=UTC)) == seconds


def test_the_default_policy_is_report_only_and_allows_nobody() -> None:
    policy = default_policy()
    assert (policy.mode, policy.allow, policy.alert_names) == (
        "report-only",
        (),
        ("User restricted from sending email",),
    )


def test_the_policy_version_follows_content_not_formatting() -> None:
    a = load_policy_text("mode: enforce\nallow: [{name: x, domains: [Contoso.com]}]\n")
    b = load_policy_text("allow:\n  - domains: [contoso.com]\n    name: x\nmode: enforce  # comment\n")
    c = load_policy_text("mode: enforce\nallow: [{name: x, domains: [fabrikam.com]}]\n")
    assert a.version == b.version != c.version


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alert_names: ['Tenant restricted from sending email']", "tenant-level alerts"),
        ("allow: [{name: x, domains: ['@contoso.com']}]", "is not a domain"),
        ("allow: [{name: x}]", "names no users, domains or groups"),
        ("ticket: {system: jira}", "ticket.jira.project: is required when ticket.system is jira"),
        ("guards: {max_unblocks_per_user: {count: 1}}", "guards.max_unblocks_per_user.days: is required"),
        ("mode: [", "not valid YAML"),
        ("- a list", "expected a mapping"),
    ],
)
def test_policy_mistakes_are_reported(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        load_policy_text(text)


def test_the_design_example_policy_loads_with_containment_and_notification_off() -> None:
    policy = load_policy_text(DESIGN_POLICY_EXAMPLE)
    assert policy.group_ids() == {"g1"}
    assert not policy.containment.any
    assert (policy.notify.user, policy.notify.recipients) == (False, ())
    assert policy.ticket_system == "webhook"


def test_containment_notification_and_ticket_options_are_read_typed() -> None:
    policy = load_policy_text(
        "containment: {disable_account: true}\n"
        "notify: {user: true, recipients: [SOC@Contoso.com], sender: RSR@contoso.com}\n"
        "ticket: {system: servicenow, servicenow: {table: sn_si_incident, fields: {assignment_group: SOC}}}"
    )
    assert policy.containment.disable_account
    assert not policy.containment.revoke_sessions
    assert policy.notify.recipients == ("soc@contoso.com",)
    assert policy.notify.sender == "rsr@contoso.com"
    assert policy.ticket.servicenow_table == "sn_si_incident"
    assert policy.ticket.servicenow_fields == {"assignment_group": "SOC"}


def test_secrets_never_show_in_settings_repr() -> None:
    settings = Settings.from_env({"AzureWebJobsStorage": "AccountKey=super-secret", "ALERTS_SHARED_SECRET": "hunter2"})
    text = repr(settings) + str(settings.alerts_shared_secret)
    assert "super-secret" not in text
    assert "hunter2" not in text
    assert settings.alerts_shared_secret == Secret("hunter2")
    assert json.dumps({"s": str(settings.alerts_shared_secret)}) == '{"s": "Secret(\'***\')"}'


@pytest.mark.parametrize(("text", "mode"), [("mode: enforce\nbogus: 1", "enforce"), ("mode: enforced", "report-only"),
                                            ("bogus: 1", "report-only")])  # fmt: skip
def test_a_broken_policy_still_says_which_mode_it_asked_for(text: str, mode: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text)
    assert caught.value.mode == mode


def test_a_decision_record_reads_back_from_its_dict() -> None:
    from datetime import UTC, datetime

    from restricted_sender.model import Action, ActionStatus, Decision, DecisionRecord, Outcome, Reason, Source

    at = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    record = DecisionRecord(
        event_id="e", alert_id="a", source="alerts_v2", sources=(Source("alerts_v2", "a", at),), user="u@x.com",
        decision=Decision(Outcome.TICKET, (Reason("no-allow-rule", "none"),)),
        actions=(Action("ticket", ActionStatus.FAILED, "HTTP 503"),), mode="enforce", policy_version="v", at=at,
    )  # fmt: skip
    assert DecisionRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize("tenant_id", ["contoso.onmicrosoft.com", "contoso.com", "8f0c2a52", "not-a-guid-at-all"])
def test_a_tenant_id_that_is_not_a_guid_is_refused_at_start_up_saying_what_to_set(tenant_id: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"TENANT_ID": tenant_id})
    assert "must be the tenant's directory id, a GUID" in refused.value.message
    assert "az account show --query tenantId" in refused.value.message


def test_a_tenant_guid_is_kept_lower_cased() -> None:
    assert Settings.from_env({"TENANT_ID": "8F0C2A52-6A4E-4B8E-9A62-1D2F3C4B5A69"}).tenant_id == (
        "8f0c2a52-6a4e-4b8e-9a62-1d2f3c4b5a69"
    )
