"""Every way the alert arrives, parsed purely: Sentinel incident and alert bodies (bare or wrapped), Defender XDR
streaming records and their join across batches, and the Office 365 Management Activity API."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from restricted_sender.errors import MalformedPayload, UnsafeContentUri
from restricted_sender.intake.defender import (
    AlertInfo,
    DefenderBatch,
    DefenderJoin,
    UserEvidence,
    compact,
    is_defender_batch,
    join,
    parse_records,
)
from restricted_sender.intake.o365 import (
    ContentPointer,
    Delisting,
    O365Content,
    check_content_uri,
    parse_content,
    parse_notifications,
)
from restricted_sender.intake.payloads import parse_alert_payload
from restricted_sender.model import (
    SOURCE_DEFENDER,
    SOURCE_O365,
    SOURCE_POLL,
    SOURCE_SENTINEL,
    AlertReport,
    UserRef,
)
from tests.conftest import ROOT, TENANT_ID, WIRE_SAMPLES, alert_v2

TARGET = "User restricted from sending email"
OTHER = "Suspicious email sending patterns detected"
SAMPLES = ROOT / "samples" / "alerts"


def is_target(title: str) -> bool:
    return title.casefold() == TARGET.casefold()


def where(text: str) -> str:
    return re.escape(text)


# --- Sentinel ---------------------------------------------------------------------------------------------------


def incident_alert(name: str | None, system_id: str | None = "sys-1", **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {"systemAlertId": system_id, "productName": "Office 365 Advanced Threat Protection"}
    if name is not None:
        props["alertDisplayName"] = name
    return {
        "id": f"/subscriptions/s/alerts/{system_id}",
        "name": system_id,
        "kind": "SecurityAlert",
        "properties": props,
        **extra,
    }


def account(name: str | None, suffix: str | None, aad: str | None = None) -> dict[str, Any]:
    return {"kind": "Account", "properties": {"accountName": name, "upnSuffix": suffix, "aadUserId": aad}}


def incident(alerts: Any, entities: Any = (), **props: Any) -> dict[str, Any]:
    properties = {
        "title": TARGET,
        "incidentUrl": "https://portal.azure.com/#incident/i-1",
        "createdTimeUtc": "2026-11-27T07:12:40Z",
        "alerts": alerts,
        "relatedEntities": list(entities) if isinstance(entities, tuple) else entities,
        **props,
    }
    return {
        "objectSchemaType": "Incident",
        "object": {"id": "/subscriptions/s/incidents/i-1", "properties": properties},
    }


def sentinel_report(alert_id: str, users: tuple[UserRef, ...], title: str = TARGET) -> AlertReport:
    return AlertReport(
        source=SOURCE_SENTINEL,
        alert_id=alert_id,
        title=title,
        users=users,
        web_url="https://portal.azure.com/#incident/i-1",
        created="2026-11-27T07:12:40Z",
    )


def test_a_sentinel_incident_becomes_one_report_naming_its_accounts() -> None:
    body = incident([incident_alert(TARGET)], [account("judy", "contoso.com", "00000000-0000-4000-8000-000000000001")])
    assert parse_alert_payload(body) == (
        sentinel_report("sys-1", (UserRef("judy@contoso.com", "00000000-0000-4000-8000-000000000001"),)),
    )


def test_the_incident_title_is_the_first_alert_name_the_matcher_accepts() -> None:
    body = incident([incident_alert(None, "nameless"), incident_alert(OTHER, "sys-a"), incident_alert(TARGET, "sys-b")])
    assert parse_alert_payload(body, is_target=is_target) == (sentinel_report("sys-b", (), TARGET),)


def test_without_a_matcher_or_a_match_the_incident_takes_its_first_named_alert() -> None:
    body = incident([incident_alert(None, "nameless"), incident_alert(OTHER, "sys-a"), incident_alert(TARGET, "sys-b")])
    expected = (sentinel_report("sys-a", (), OTHER),)
    assert parse_alert_payload(body) == expected
    assert parse_alert_payload(body, is_target=lambda title: False) == expected


@pytest.mark.parametrize(
    ("alert", "alert_id"),
    [
        ({"name": "arm-name", "id": "arm-id", "properties": {"alertDisplayName": TARGET}}, "arm-name"),
        ({"id": "arm-id", "properties": {"alertDisplayName": TARGET, "systemAlertId": " "}}, "arm-id"),
    ],
    ids=["name when no systemAlertId", "id when neither"],
)
def test_an_incident_alert_without_system_alert_id_is_known_by_its_name_then_its_id(
    alert: dict[str, Any], alert_id: str
) -> None:
    [report] = parse_alert_payload(incident([alert]))
    assert report.alert_id == alert_id


def test_only_accounts_and_mailboxes_that_name_someone_become_users() -> None:
    entities = [
        account("judy", "contoso.com", "00000000-0000-4000-8000-000000000001"),
        account("noupn", None, "00000000-0000-4000-8000-000000000002"),  # an object id alone is enough
        account("nobody", None, None),  # neither: no user
        account("JUDY", "Contoso.com", None),  # the same user again
        {"kind": "Ip", "properties": {"address": "192.0.2.7"}},
        {
            "kind": "Mailbox",
            "properties": {
                "mailboxPrimaryAddress": "Ivan@contoso.com",
                "externalDirectoryObjectId": "00000000-0000-4000-8000-000000000003",
            },
        },
    ]
    [report] = parse_alert_payload(incident([incident_alert(TARGET)], entities))
    assert report.users == (
        UserRef("judy@contoso.com", "00000000-0000-4000-8000-000000000001"),
        UserRef(None, "00000000-0000-4000-8000-000000000002"),
        UserRef("ivan@contoso.com", "00000000-0000-4000-8000-000000000003"),
    )


def test_an_incident_wrapped_in_body_beside_playbook_options_parses_like_the_bare_one() -> None:
    body = incident([incident_alert(TARGET)], [account("judy", "contoso.com")])
    assert parse_alert_payload({"Body": body, "AddIncidentComments": True}) == parse_alert_payload(body)


def test_an_incident_may_carry_the_pascal_case_entities_array_instead() -> None:
    body = incident([incident_alert(TARGET)])
    del body["object"]["properties"]["relatedEntities"]
    body["Entities"] = [
        {
            "Type": "account",
            "Name": "judy",
            "UPNSuffix": "contoso.com",
            "AadUserId": "00000000-0000-4000-8000-000000000001",
        }
    ]
    assert parse_alert_payload(body) == (
        sentinel_report("sys-1", (UserRef("judy@contoso.com", "00000000-0000-4000-8000-000000000001"),)),
    )


def flat_alert(**fields: Any) -> dict[str, Any]:
    return {
        "SystemAlertId": "sys-9",
        "ProviderAlertId": "prov-9",
        "AlertDisplayName": TARGET,
        "ProductName": "Office 365 Advanced Threat Protection",
        "TimeGenerated": "2026-11-27T07:12:31Z",
        "StartTimeUtc": "2026-11-27T07:10:00Z",
        "AlertLink": "https://security.microsoft.com/alerts/prov-9",
        "Entities": [
            {
                "Type": "account",
                "Name": "judy",
                "UPNSuffix": "contoso.com",
                "AadUserId": "00000000-0000-4000-8000-000000000001",
            },
            {"Type": "ip", "Address": "192.0.2.7"},
        ],
        **fields,
    }


def test_a_flat_sentinel_alert_becomes_one_report() -> None:
    assert parse_alert_payload(flat_alert()) == (
        AlertReport(
            source=SOURCE_SENTINEL,
            alert_id="sys-9",
            title=TARGET,
            users=(UserRef("judy@contoso.com", "00000000-0000-4000-8000-000000000001"),),
            web_url="https://security.microsoft.com/alerts/prov-9",
            created="2026-11-27T07:12:31Z",
        ),
    )


def test_a_flat_alert_reads_entities_given_as_json_text_and_falls_back_to_other_fields() -> None:
    body = flat_alert(
        SystemAlertId=None,
        TimeGenerated=None,
        AlertLink=None,
        Entities=json.dumps([{"$id": "2", "Type": "account", "Name": "judy", "UPNSuffix": "contoso.com"}]),
    )
    assert parse_alert_payload({"Body": body}) == (
        AlertReport(SOURCE_SENTINEL, "prov-9", TARGET, (UserRef("judy@contoso.com"),), None, "2026-11-27T07:10:00Z"),
    )


def test_an_alerts_v2_object_takes_the_source_its_caller_names() -> None:
    [report] = parse_alert_payload(alert_v2("alice@contoso.com"), source=SOURCE_POLL)
    assert report.source == SOURCE_POLL


JUDY = UserRef("judy@contoso.com", "0b1c2d3e-0010-4a5b-8c9d-000000000010")
MALLORY = UserRef("mallory@contoso.com", "0b1c2d3e-0011-4a5b-8c9d-000000000011")
SAMPLE_INCIDENT_URL = (
    "https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident/subscriptions/"
    "6d1e7a3c-5b2f-4c8d-9e0a-1f2b3c4d5e6f/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/"
    "law-soc/providers/Microsoft.SecurityInsights/Incidents/7a9c1e3f-2b4d-4f6a-8c0e-1a3c5e7f9b2d"
)
SAMPLE_INCIDENT = AlertReport(
    SOURCE_SENTINEL,
    "3e5a7c9e-4f6b-4d8a-9c1e-2b4d6f8a0c1e",
    TARGET,
    (JUDY,),
    SAMPLE_INCIDENT_URL,
    "2026-11-27T07:12:40.1234567Z",
)
SAMPLE_ALERT = AlertReport(
    SOURCE_SENTINEL,
    "3e5a7c9e-4f6b-4d8a-9c1e-2b4d6f8a0c1e",
    TARGET,
    (JUDY,),
    f"https://security.microsoft.com/alerts/fa6b8d0f-1a2c-4e3b-9d5f-7a9b1c3d5e7f?tid={TENANT_ID}",
    "2026-11-27T07:12:31.5550000Z",
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("06-sentinel-incident.json", SAMPLE_INCIDENT),
        ("07-sentinel-incident-wrapped.json", SAMPLE_INCIDENT),
        ("08-sentinel-alert.json", SAMPLE_ALERT),
    ],
)
def test_the_sentinel_samples_parse_into_their_report(name: str, expected: AlertReport) -> None:
    assert parse_alert_payload(json.loads((SAMPLES / name).read_text(encoding="utf-8"))) == (expected,)


SAMPLE_DEFENDER_ID = "fa2d4f6b8d-0e1c-4a3b-8d5f-6b8d0f2a4c6e"
SAMPLE_DEFENDER = AlertReport(
    SOURCE_DEFENDER, SAMPLE_DEFENDER_ID, TARGET, (MALLORY,), created="2026-11-27T06:41:17.2030000Z"
)


def sample_batch(name: str) -> DefenderBatch:
    return parse_records(json.loads((SAMPLES / name).read_text(encoding="utf-8")))


def test_the_defender_samples_join_whole_or_in_halves() -> None:
    none: dict[str, Any] = {}
    whole = join(
        sample_batch("09-defender-records.json"), pending_infos=none, pending_evidence=none, is_target=is_target
    )
    assert whole == DefenderJoin(reports=(SAMPLE_DEFENDER,))
    info = sample_batch("10-defender-info-only.json")
    first = join(info, pending_infos=none, pending_evidence=none, is_target=is_target)
    assert first == DefenderJoin(keep_infos=info.infos)
    evidence = sample_batch("11-defender-evidence-only.json")
    second = join(
        evidence, pending_infos={SAMPLE_DEFENDER_ID: info.infos[0]}, pending_evidence=none, is_target=is_target
    )
    assert second == DefenderJoin(reports=(SAMPLE_DEFENDER,))


# --- Malformed payloads, each refused with its place named -------------------------------------------------------

BAD_ENTITY_TEXT = flat_alert(Entities="[{not json")


@pytest.mark.parametrize(
    ("parse", "payload", "message"),
    [
        (parse_alert_payload, incident({}), "object.properties.alerts: expected a list"),
        (
            parse_alert_payload,
            incident([incident_alert(TARGET)], {}),
            "object.properties.relatedEntities: expected a list",
        ),
        (
            parse_alert_payload,
            incident([incident_alert(TARGET)], ["x"]),
            "object.properties.relatedEntities[0]: expected an entity",
        ),
        (
            parse_alert_payload,
            incident([incident_alert(TARGET), incident_alert(OTHER), "x"]),
            "object.properties.alerts[2]: expected an alert object",
        ),
        (
            parse_alert_payload,
            incident([{"properties": []}]),
            "object.properties.alerts[0].properties: expected an object",
        ),
        (
            parse_alert_payload,
            incident([incident_alert(None)]),
            "object.properties.alerts: no alert has properties.alertDisplayName",
        ),
        (parse_alert_payload, incident([]), "object.properties.alerts: no alert has properties.alertDisplayName"),
        (
            parse_alert_payload,
            incident([{"properties": {"alertDisplayName": TARGET}}]),
            "object.properties.alerts[0]: an alert needs properties.systemAlertId, name or id",
        ),
        (parse_alert_payload, {"objectSchemaType": "Incident", "object": "x"}, "object: expected the incident object"),
        (
            parse_alert_payload,
            {"Body": incident([{"properties": {"alertDisplayName": 5}}])},
            "Body.object.properties.alerts: no alert",
        ),
        (parse_alert_payload, {"Body": []}, "Body: expected an object, got list"),
        (parse_alert_payload, {"Body": {"foo": 1}}, "unknown payload shape in Body: expected a Graph alerts_v2"),
        (parse_alert_payload, {"foo": 1}, "unknown payload shape: expected a Graph alerts_v2 alert object"),
        (parse_alert_payload, BAD_ENTITY_TEXT, "Entities: not valid JSON"),
        (
            parse_alert_payload,
            {"Body": flat_alert(Entities='{"Type": "account"}')},
            "Body.Entities: expected a list of entities",
        ),
        (
            parse_alert_payload,
            flat_alert(Entities=[{"Type": "account", "properties": "x", "kind": "x"}]),
            "Entities[0].properties: expected an object",
        ),
        (
            parse_alert_payload,
            flat_alert(SystemAlertId=5, ProviderAlertId=None),
            "body: a Sentinel alert needs a string SystemAlertId",
        ),
        (
            parse_alert_payload,
            flat_alert(AlertDisplayName=""),
            "body: a Sentinel alert needs a string AlertDisplayName",
        ),
        (parse_records, {"records": {}}, "records: expected a list"),
        (parse_records, [], "records: expected a list"),
        (
            parse_records,
            {"records": [{"category": "AdvancedHunting-AlertInfo", "properties": {"AlertId": "a"}}, 5]},
            "records[1]: expected a record object",
        ),
        (
            parse_records,
            {"records": [{"category": "AdvancedHunting-AlertEvidence", "properties": "x"}]},
            "records[0].properties: expected an object",
        ),
        (
            parse_records,
            {"records": [{"category": "AdvancedHunting-AlertInfo", "properties": {"Title": TARGET}}]},
            "records[0].properties.AlertId: expected a non-empty string",
        ),
        (parse_content, {"value": []}, "content: expected a JSON array"),
    ],
)
def test_malformed_payloads_are_refused_naming_the_place(parse: Callable[..., Any], payload: Any, message: str) -> None:
    kwargs = {"is_target": is_target} if parse is parse_content else {}
    with pytest.raises(MalformedPayload, match=where(message)):
        parse(payload, **kwargs)


def test_a_bad_audit_record_is_skipped_with_its_place_and_the_rest_of_the_blob_still_counts() -> None:
    good = {"Id": "r9", "RecordType": 40, "Operation": "AlertTriggered", "AlertId": "a9", "Name": TARGET,
            "Data": '{"f3u": "ok@contoso.com"}'}  # fmt: skip
    content = parse_content(
        ["x", {"RecordType": 40, "Operation": "AlertTriggered", "Name": TARGET},
         {"RecordType": 51, "Event": "Listed", "EventValue": "a@b.c"}, good],
        is_target=is_target,
    )  # fmt: skip
    assert [r.alert_id for r in content.reports] == ["a9"]
    assert [re.sub(r":.*", "", p) for p in content.problems] == ["content[0]", "content[1].AlertId", "content[2].Id"]


def test_a_defender_error_names_the_record_even_among_ignored_categories() -> None:
    records = [{"category": "AdvancedHunting-DeviceEvents", "properties": "whatever"}, "x"]
    with pytest.raises(MalformedPayload, match=where("records[1]")):
        parse_records({"records": records})


# --- Defender XDR streaming ----------------------------------------------------------------------------------------


def info_record(alert_id: str, title: str = TARGET, **props: Any) -> dict[str, Any]:
    return {
        "time": "2026-11-27T06:43:02Z",
        "tenantId": TENANT_ID,
        "category": "AdvancedHunting-AlertInfo",
        "properties": {
            "Timestamp": f"ts-{alert_id}",
            "AlertId": alert_id,
            "Title": title,
            "ServiceSource": "Microsoft Defender for Office 365",
            **props,
        },
    }


def evidence_record(alert_id: str, entity: str = "User", **props: Any) -> dict[str, Any]:
    return {
        "time": "2026-11-27T06:43:03Z",
        "tenantId": TENANT_ID,
        "category": "AdvancedHunting-AlertEvidence",
        "properties": {"Timestamp": f"ev-{alert_id}", "AlertId": alert_id, "EntityType": entity, **props},
    }


def info(alert_id: str, title: str = TARGET) -> AlertInfo:
    return AlertInfo(alert_id, title, f"ts-{alert_id}", "Microsoft Defender for Office 365")


def evidence(
    alert_id: str, address: str | None, object_id: str | None = None, title: str | None = TARGET
) -> UserEvidence:
    return UserEvidence(alert_id, title, address, object_id, f"ev-{alert_id}")


def test_a_defender_batch_keeps_alert_infos_and_evidence_naming_users_only() -> None:
    additional = {"Name": "Erin", "UPNSuffix": "contoso.com", "AadUserId": "00000000-0000-4000-8000-000000000004"}
    payload = {
        "records": [
            info_record("a1"),
            evidence_record(
                "a1",
                Title=TARGET,
                AccountUpn="Judy@Contoso.com",
                AccountObjectId="00000000-0000-4000-8000-000000000001",
            ),
            evidence_record("a1", Title=TARGET, AdditionalFields=json.dumps(additional)),
            evidence_record("a1", "Mailbox", AdditionalFields={"MailboxPrimaryAddress": "ivan@contoso.com"}),
            evidence_record("a1", AccountName="no-upn", AdditionalFields="{broken"),  # names nobody
            evidence_record("a1", "Machine", DeviceName="pc-1"),
            {"category": "AdvancedHunting-EmailEvents", "properties": {"NetworkMessageId": "m"}},
        ]
    }
    assert is_defender_batch(payload)
    assert parse_records(payload) == DefenderBatch(
        infos=(info("a1"),),
        evidence=(
            evidence("a1", "judy@contoso.com", "00000000-0000-4000-8000-000000000001"),
            evidence("a1", "erin@contoso.com", "00000000-0000-4000-8000-000000000004"),
            evidence("a1", "ivan@contoso.com", title=None),
        ),
    )


@pytest.mark.parametrize("payload", [alert_v2("a@b.c"), {"value": []}, [], "records"])
def test_other_payloads_are_not_defender_batches(payload: Any) -> None:
    assert not is_defender_batch(payload)


NOTHING: dict[str, Any] = {}


def test_info_and_evidence_in_one_batch_make_one_report_and_keep_nothing() -> None:
    batch = DefenderBatch(
        (info("a1"),),
        (
            evidence("a1", "judy@contoso.com", "00000000-0000-4000-8000-00000000000a", title=None),
            evidence("a1", None, "00000000-0000-4000-8000-00000000000A"),
            evidence("a1", "erin@contoso.com"),
        ),
    )
    assert join(batch, pending_infos=NOTHING, pending_evidence=NOTHING, is_target=is_target) == DefenderJoin(
        reports=(
            AlertReport(
                SOURCE_DEFENDER,
                "a1",
                TARGET,
                (UserRef("judy@contoso.com", "00000000-0000-4000-8000-00000000000a"), UserRef("erin@contoso.com")),
                created="ts-a1",
            ),
        )
    )


def test_an_alert_info_before_its_evidence_is_kept_and_matched_later() -> None:
    first = join(DefenderBatch((info("a1"),)), pending_infos=NOTHING, pending_evidence=NOTHING, is_target=is_target)
    assert first == DefenderJoin(keep_infos=(info("a1"),))
    later = DefenderBatch(evidence=(evidence("a1", "judy@contoso.com", title=None),))
    second = join(later, pending_infos={"a1": first.keep_infos[0]}, pending_evidence=NOTHING, is_target=is_target)
    assert second == DefenderJoin(
        reports=(AlertReport(SOURCE_DEFENDER, "a1", TARGET, (UserRef("judy@contoso.com"),), created="ts-a1"),)
    )


def test_evidence_without_a_title_before_its_info_is_kept_and_matched_later() -> None:
    rows = (evidence("a1", "judy@contoso.com", title=None), evidence("a1", "erin@contoso.com", title=None))
    first = join(DefenderBatch(evidence=rows), pending_infos=NOTHING, pending_evidence=NOTHING, is_target=is_target)
    assert first == DefenderJoin(keep_evidence=rows)
    second = join(
        DefenderBatch((info("a1"),)), pending_infos=NOTHING, pending_evidence={"a1": rows}, is_target=is_target
    )
    assert second == DefenderJoin(
        reports=(
            AlertReport(
                SOURCE_DEFENDER,
                "a1",
                TARGET,
                (UserRef("judy@contoso.com"), UserRef("erin@contoso.com")),
                created="ts-a1",
            ),
        )
    )


def test_evidence_carrying_a_target_title_reports_on_its_own_and_is_not_kept_to_report_again() -> None:
    row = evidence("a1", "judy@contoso.com")
    result = join(DefenderBatch(evidence=(row,)), pending_infos=NOTHING, pending_evidence=NOTHING, is_target=is_target)
    assert result == DefenderJoin(
        reports=(AlertReport(SOURCE_DEFENDER, "a1", TARGET, (UserRef("judy@contoso.com"),), created="ev-a1"),),
    )


def test_other_alerts_produce_nothing_and_keep_nothing() -> None:
    batch = DefenderBatch(
        (info("o1", OTHER),),
        (evidence("o1", "judy@contoso.com", title=None), evidence("o2", "erin@contoso.com", title=OTHER)),
    )
    assert join(batch, pending_infos=NOTHING, pending_evidence=NOTHING, is_target=is_target) == DefenderJoin()
    late = DefenderBatch(evidence=(evidence("o3", "ivan@contoso.com", title=None),))
    assert join(late, pending_infos={"o3": info("o3", OTHER)}, pending_evidence=NOTHING, is_target=is_target) == (
        DefenderJoin()
    )


def test_the_matcher_decides_which_defender_alerts_are_targets() -> None:
    batch = DefenderBatch((info("o1", OTHER),), (evidence("o1", "judy@contoso.com", title=None),))
    result = join(batch, pending_infos=NOTHING, pending_evidence=NOTHING, is_target=lambda title: title == OTHER)
    assert [(r.alert_id, r.title) for r in result.reports] == [("o1", OTHER)]


def test_compacting_drops_rows_that_can_never_matter() -> None:
    batch = DefenderBatch(
        (info("a1"), info("o1", OTHER)),
        (
            evidence("a1", "judy@contoso.com"),
            evidence("u1", "erin@contoso.com", title=None),
            evidence("o1", "ivan@contoso.com", title=None),
            evidence("o2", "dave@contoso.com", title=OTHER),
        ),
    )
    assert compact(batch, is_target) == DefenderBatch(
        (info("a1"),), (evidence("a1", "judy@contoso.com"), evidence("u1", "erin@contoso.com", title=None))
    )


def test_defender_rows_survive_a_json_round_trip() -> None:
    batch = DefenderBatch(
        (info("a1"), AlertInfo("a2", "")),
        (
            evidence("a1", "judy@contoso.com", "00000000-0000-4000-8000-000000000001"),
            UserEvidence("a2", None, None, "00000000-0000-4000-8000-000000000004"),
        ),
    )
    assert DefenderBatch.from_dict(json.loads(json.dumps(batch.to_dict()))) == batch
    assert [AlertInfo.from_dict(i.to_dict()) for i in batch.infos] == list(batch.infos)
    assert [UserEvidence.from_dict(e.to_dict()) for e in batch.evidence] == list(batch.evidence)


@pytest.mark.parametrize(
    ("read", "data", "message"),
    [
        (AlertInfo.from_dict, {"title": TARGET}, "'alert_id': expected a non-empty string"),
        (AlertInfo.from_dict, {"alert_id": "a", "title": None}, "'title': expected a string"),
        (UserEvidence.from_dict, {"alert_id": "a", "title": None}, "names no user"),
        (UserEvidence.from_dict, {"alert_id": "a", "address": 5}, "'address': expected a string or null"),
        (DefenderBatch.from_dict, {"infos": {}}, "needs lists 'infos' and 'evidence'"),
    ],
)
def test_stored_defender_rows_that_do_not_read_back_are_refused(
    read: Callable[..., Any], data: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=where(message)):
        read(data)


# --- Office 365 Management Activity API ----------------------------------------------------------------------------

API_ROOT = "https://manage.office.com"
FEED = f"{API_ROOT}/api/v1.0/{TENANT_ID}/activity/feed"


def notification(**fields: Any) -> dict[str, Any]:
    return {
        "tenantId": TENANT_ID,
        "clientId": "c0ffee00-0000-4000-8000-000000000001",
        "contentType": "Audit.General",
        "contentId": "content-1",
        "contentUri": f"{FEED}/audit/content-1",
        "contentCreated": "2026-11-27T08:00:00.000Z",
        "contentExpiration": "2026-12-04T08:00:00.000Z",
        **fields,
    }


def test_a_notification_in_the_documented_format_becomes_a_content_pointer() -> None:
    items = json.loads((WIRE_SAMPLES / "mgmt_activity_notification.json").read_text(encoding="utf-8"))
    [pointer] = parse_notifications(items, tenant_id=TENANT_ID.upper(), api_root=API_ROOT)
    assert pointer == ContentPointer(
        content_id=items[0]["contentId"],
        content_uri=items[0]["contentUri"],
        content_type="Audit.General",
        created="2026-11-26T16:25:00.456Z",
        expiration="2026-12-03T16:25:00.456Z",
    )
    assert ContentPointer.from_dict(json.loads(json.dumps(pointer.to_dict()))) == pointer


def test_notifications_become_pointers_each_content_once_and_an_empty_array_is_fine() -> None:
    second = notification(contentId="content-2", contentUri=f"{FEED}/audit/content-2", tenantId=TENANT_ID.upper())
    pointers = parse_notifications([notification(), second, notification()], tenant_id=TENANT_ID, api_root=API_ROOT)
    assert [p.content_id for p in pointers] == ["content-1", "content-2"]
    assert parse_notifications([], tenant_id=TENANT_ID, api_root=API_ROOT) == ()


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        ({"validationCode": "x"}, MalformedPayload, "body: expected a JSON array"),
        ([notification(), "x"], MalformedPayload, "body[1]: expected a notification object"),
        ([notification(contentId=None)], MalformedPayload, "body[0].contentId: expected a non-empty string"),
        ([notification(contentUri=5)], MalformedPayload, "body[0].contentUri: expected a string"),
        (
            [notification(), notification(tenantId="11111111-2222-4333-8444-555555555555")],
            MalformedPayload,
            "body[1].tenantId: '11111111-2222-4333-8444-555555555555' is not this tenant",
        ),
        ([notification(tenantId=None)], MalformedPayload, "body[0].tenantId: None is not this tenant"),
        ([notification(contentUri="https://evil.example/api/v1.0/x")], UnsafeContentUri, "body[0].contentUri: "),
    ],
)
def test_one_bad_notification_refuses_the_whole_body(payload: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=where(message)):
        parse_notifications(payload, tenant_id=TENANT_ID, api_root=API_ROOT)


@pytest.mark.parametrize(
    ("uri", "root"),
    [
        (f"{FEED}/audit/abc$def", API_ROOT),
        (f"https://MANAGE.office.com:443/api/v1.0/{TENANT_ID.upper()}/activity/feed/audit/x?x=1", API_ROOT + "/"),
        (f"http://127.0.0.1:8765/api/v1.0/{TENANT_ID}/activity/feed/audit/x", "http://127.0.0.1:8765"),
    ],
    ids=["the feed", "default port, case, query", "the simulator"],
)
def test_this_tenants_feed_on_the_api_root_is_a_safe_content_uri(uri: str, root: str) -> None:
    assert check_content_uri(uri, api_root=root, tenant_id=TENANT_ID) == uri


TID = TENANT_ID


@pytest.mark.parametrize(
    ("uri", "root"),
    [
        (f"https://evil.example/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"https://manage.office.com:8443/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"http://127.0.0.1:9999/api/v1.0/{TID}/activity/feed/audit/x", "http://127.0.0.1:8765"),
        (f"http://manage.office.com/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"https://manage.office.com@evil.example/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"https://user:pw@manage.office.com/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"https://manage.office.com.evil.example/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        ("https://manage.office.com/api/v1.0/11111111-2222-4333-8444-555555555555/activity/feed/audit/x", API_ROOT),
        (f"https://manage.office.com/api/v1.0/{TID}/activity/feed/../../x", API_ROOT),
        (f"https://manage.office.com/api/v1.0/{TID}/activity/feed/%2e%2e/%2E%2E/subscriptions", API_ROOT),
        (f"https://manage.office.com/api/v1.0/{TID}/activity/feed\\..\\x", API_ROOT),
        (f"https://manage.office.com/api/v1.0/{TID}/activity/feed", API_ROOT),
        (f"https://52.96.0.1/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"https://[2603:1036::1]/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"https://manage.office.com:notaport/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"https://manage.office.com/api/v1.0/{TID}/activity/feed/audit/x\n", API_ROOT),
        ("", API_ROOT),
        (f"/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
        (f"//manage.office.com/api/v1.0/{TID}/activity/feed/audit/x", API_ROOT),
    ],
    ids=[
        "other host",
        "same host other port",
        "simulator other port",
        "http for https",
        "userinfo trick",
        "credentials",
        "look-alike host",
        "other tenant",
        "dot segments",
        "encoded dot segments",
        "backslashes",
        "the feed itself",
        "IPv4 literal",
        "IPv6 literal",
        "bad port",
        "newline",
        "empty",
        "relative",
        "scheme-relative",
    ],
)
def test_any_other_content_uri_is_refused_as_unsafe(uri: str, root: str) -> None:
    with pytest.raises(UnsafeContentUri) as refused:
        check_content_uri(uri, api_root=root, tenant_id=TID)
    assert refused.value.code == "unsafe-content-uri"
    assert isinstance(refused.value, MalformedPayload)


def test_alert_records_in_the_documented_format_become_one_merged_report_per_target_alert() -> None:
    records = json.loads((WIRE_SAMPLES / "mgmt_activity_alert_records.json").read_text(encoding="utf-8"))
    content = parse_content(records, is_target=is_target)
    # AlertTriggered's Data.f3u and AlertEntityGenerated's Data.eid name the same user (in another case): one report,
    # one user; AlertUpdated adds nobody.
    assert content == O365Content(
        reports=(
            AlertReport(
                SOURCE_O365,
                "c4a8e2f6-1b3d-4c5e-9f7a-2d4b6c8e0a13",
                TARGET,
                (UserRef("dana.kim@contoso.com"),),
                created="2026-11-26T16:40:00",
            ),
        )
    )
    assert parse_content(records, is_target=lambda name: name == "Elevation of Exchange admin privilege") == (
        O365Content()
    )


def test_records_of_other_types_are_ignored() -> None:
    records = json.loads((WIRE_SAMPLES / "mgmt_activity_aad_records.json").read_text("utf-8"))
    assert parse_content(records, is_target=lambda name: True) == O365Content()


def alert_record(record_id: str, operation: str, data: Any, **fields: Any) -> dict[str, Any]:
    return {
        "Id": record_id,
        "RecordType": 40,
        "Operation": operation,
        "Name": TARGET,
        "AlertId": "alert-1",
        "CreationTime": "2026-11-27T08:05:00",
        "Data": data,
        **fields,
    }


def hygiene(record_id: str, event: str, user: str, record_type: Any = 51) -> dict[str, Any]:
    return {
        "Id": record_id,
        "RecordType": record_type,
        "Event": event,
        "EventValue": user,
        "CreationTime": "2026-11-27T09:00:00",
        "Reason": "outbound spam",
    }


def test_target_alert_records_name_users_from_data_and_updates_add_nobody() -> None:
    records = [
        alert_record("r1", "AlertTriggered", json.dumps({"f3u": "Judy@contoso.com"})),
        alert_record("r2", "AlertEntityGenerated", {"etype": "User", "eid": "erin@contoso.com"}, EntityType="User"),
        alert_record("r3", "AlertEntityGenerated", "{not json", EntityType="User", AlertEntityId="ivan@contoso.com"),
        alert_record("r4", "AlertEntityGenerated", {"eid": "sender@else.example"}, EntityType="Sender"),
        alert_record("r5", "AlertUpdated", {"f3u": "dave@contoso.com"}),
        alert_record("r6", "AlertTriggered", {"f3u": "frank@contoso.com"}, Name=OTHER, AlertId="alert-2"),
        alert_record("r7", "AlertTriggered", None, RecordType="40", AlertId="alert-3"),
    ]
    assert parse_content(records, is_target=is_target) == O365Content(
        reports=(
            AlertReport(
                SOURCE_O365,
                "alert-1",
                TARGET,
                (UserRef("judy@contoso.com"), UserRef("erin@contoso.com"), UserRef("ivan@contoso.com")),
                created="2026-11-27T08:05:00",
            ),
            AlertReport(SOURCE_O365, "alert-3", TARGET, (), created="2026-11-27T08:05:00"),
        )
    )


def test_hygiene_events_list_users_directly_and_delistings_are_reported() -> None:
    records = [
        hygiene("h1", "Listed", "judy@contoso.com"),
        hygiene("h2", "Delisted", "Erin@contoso.com", "51"),
        hygiene("h3", "Something", "ivan@contoso.com"),
    ]
    assert parse_content(records, is_target=is_target) == O365Content(
        reports=(
            AlertReport(
                SOURCE_O365,
                "h1",
                "HygieneEvent Listed",
                (UserRef("judy@contoso.com"),),
                created="2026-11-27T09:00:00",
                direct=True,
            ),
        ),
        delisted=(Delisting("erin@contoso.com", datetime(2026, 11, 27, 9, 0, tzinfo=UTC), "h2"),),
    )


def test_a_record_repeated_under_the_same_id_counts_once() -> None:
    listed, delisted = hygiene("h1", "Listed", "judy@contoso.com"), hygiene("h2", "Delisted", "erin@contoso.com")
    alert = alert_record("r1", "AlertTriggered", {"f3u": "dave@contoso.com"})
    once = parse_content([listed, delisted, alert], is_target=is_target)
    again = parse_content([listed, alert, delisted, dict(listed, Id="H1"), delisted, alert], is_target=is_target)
    assert again == once
    assert (len(once.reports), len(once.delisted)) == (2, 1)


@pytest.mark.parametrize(
    ("entity", "address"),
    [
        ({"Type": "account", "Name": "ann@contoso.com", "UPNSuffix": "contoso.com"}, "ann@contoso.com"),
        ({"Type": "account", "Name": "ann@contoso.com"}, "ann@contoso.com"),
        ({"Type": "account", "Name": "ann", "UPNSuffix": "contoso.com"}, "ann@contoso.com"),
    ],
    ids=["upn-and-suffix", "upn-alone", "name-and-suffix"],
)
def test_an_account_entity_gives_one_address_however_the_connector_split_it(entity: Any, address: str) -> None:
    [report] = parse_alert_payload({"AlertDisplayName": TARGET, "SystemAlertId": "s1", "Entities": [entity]})
    assert report.users == (UserRef(address),)


def test_null_entity_lists_mean_no_entities_not_a_malformed_body() -> None:
    [report] = parse_alert_payload({"AlertDisplayName": TARGET, "SystemAlertId": "s1", "Entities": None})
    assert report.users == ()
