"""Every Graph shape the simulator serves is one the msgraph-sdk's v1.0 models read back intact, and so is every
request body the adapter writes (the checker: ``tests/graph_models.py``)."""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.identity.aio import ManagedIdentityCredential
from kiota_abstractions.serialization import Parsable
from msgraph.generated.identity_protection.risky_users.confirm_compromised import confirm_compromised_post_request_body
from msgraph.generated.models.directory_object import DirectoryObject
from msgraph.generated.models.domain import Domain
from msgraph.generated.models.entity import Entity
from msgraph.generated.models.mail_folder import MailFolder
from msgraph.generated.models.message_rule import MessageRule
from msgraph.generated.models.message_rule_actions import MessageRuleActions
from msgraph.generated.models.message_rule_predicates import MessageRulePredicates
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.models.risky_user import RiskyUser
from msgraph.generated.models.security.alert import Alert
from msgraph.generated.models.security.alert_status import AlertStatus
from msgraph.generated.models.security.mailbox_evidence import MailboxEvidence
from msgraph.generated.models.user import User
from msgraph.generated.users.item.check_member_groups.check_member_groups_post_response import (
    CheckMemberGroupsPostResponse,
)
from msgraph.generated.users.item.revoke_sign_in_sessions.revoke_sign_in_sessions_post_response import (
    RevokeSignInSessionsPostResponse,
)
from msgraph.generated.users.item.revoke_sign_in_sessions.revoke_sign_in_sessions_request_builder import (
    RevokeSignInSessionsRequestBuilder,
)
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

from restricted_sender.adapters.graph import graph_directory
from restricted_sender.model import Mail
from simulator import Simulator, load_tenant
from tests.conftest import TLS
from tests.graph_models import check, parse

TENANT_FILE = Path(__file__).parent / "fixtures" / "tenant_basic.yaml"
TENANT_ID = "8f0c2a52-6a4e-4b8e-9a62-1d2f3c4b5a69"
USER_ID = "2a4c6e80-1b3d-4f5a-9c7e-0d2f4a6c8e10"
GROUP_IDS = ["3b5d7f91-2c4e-4a6b-8d0f-1e3a5c7e9f21", "4c6e8a02-3d5f-4b7c-9e1a-2f4b6d8f0a32"]

RICH_USER: dict[str, Any] = {
    "id": USER_ID,
    "userPrincipalName": "erin@contoso.com",
    "mail": "erin@contoso.com",
    "displayName": "Erin Diaz",
    "givenName": "Erin",
    "surname": "Diaz",
    "jobTitle": "Account Manager",
    "department": "Sales",
    "companyName": "Contoso",
    "officeLocation": "18/2111",
    "mobilePhone": "+1 425 555 0109",
    "businessPhones": ["+1 425 555 0100"],
    "preferredLanguage": "en-US",
    "usageLocation": "US",
    "accountEnabled": True,
    "userType": "Member",
    "createdDateTime": "2023-01-15T10:20:30Z",
    "deletedDateTime": None,
    "lastPasswordChangeDateTime": "2026-10-01T08:00:00Z",
    "signInSessionsValidFromDateTime": "2026-10-01T08:00:00Z",
    "onPremisesSyncEnabled": None,
    "onPremisesExtensionAttributes": {"extensionAttribute1": "sales", "extensionAttribute2": None},
    "proxyAddresses": ["SMTP:erin@contoso.com", "smtp:erin.diaz@contoso.com"],
    "otherMails": [],
    "imAddresses": ["erin@contoso.com"],
    "identities": [
        {"signInType": "userPrincipalName", "issuer": "contoso.com", "issuerAssignedId": "erin@contoso.com"}
    ],
    "assignedLicenses": [{"skuId": "05e9a617-0261-4cee-bb44-138d3ef5d965", "disabledPlans": []}],
    "assignedPlans": [
        {
            "assignedDateTime": "2023-01-15T10:25:00Z",
            "capabilityStatus": "Enabled",
            "service": "exchange",
            "servicePlanId": "efb87545-963c-4e0d-99df-69c6916d9eb0",
        }
    ],
    "employeeOrgData": {"division": "Americas", "costCenter": "CC-12"},
    "x-memberOf": [GROUP_IDS[0]],
    "x-riskLevel": "low",
    "x-mailbox": {"ForwardingSmtpAddress": None},
    "x-inboxRules": [],  # set below, once RICH_RULE exists
    "x-mailFolders": [
        {"id": "AAMkAGVmMDEzMTM4LTZmYWUtNDdkNC1hMDZiLTU1OGY5OTZhYmY4OAAuAAAAAAA=", "displayName": "Kept"}
    ],
}


def recipient(address: str, name: str | None = None) -> dict[str, Any]:
    return {"emailAddress": {"address": address, "name": name}}


RICH_RULE: dict[str, Any] = {
    "id": "AQAAAJ5dZqA=",
    "displayName": "Move, forward and delete",
    "sequence": 1,
    "isEnabled": False,
    "hasError": False,
    "isReadOnly": False,
    "conditions": {
        "subjectContains": ["invoice", "payment"],
        "bodyOrSubjectContains": ["wire transfer"],
        "senderContains": ["billing"],
        "fromAddresses": [recipient("ceo@contoso.com", "CEO")],
        "sentToAddresses": [recipient("erin@contoso.com")],
        "hasAttachments": True,
        "importance": "high",
        "sensitivity": "confidential",
        "messageActionFlag": "reply",
        "withinSizeRange": {"minimumSize": 1, "maximumSize": 2048},
        "sentToMe": True,
    },
    "exceptions": {"headerContains": ["X-Internal"], "isAutomaticReply": True},
    "actions": {
        "forwardTo": [recipient("drop@evil.example", "Drop")],
        "redirectTo": [recipient("relay@evil.example")],
        "forwardAsAttachmentTo": [recipient("archive@evil.example", None)],
        "moveToFolder": "AAMkAGVmMDEzMTM4LTZmYWUtNDdkNC1hMDZiLTU1OGY5OTZhYmY4OAAuAAAAAAA=",
        "copyToFolder": None,
        "assignCategories": ["Red category"],
        "markAsRead": True,
        "markImportance": "low",
        "delete": True,
        "permanentDelete": True,
        "stopProcessingRules": True,
    },
}
RICH_USER["x-inboxRules"] = [
    RICH_RULE,
    {"displayName": "No id given", "sequence": 2, "isEnabled": True, "actions": {"delete": True}},
]

USER_EVIDENCE: dict[str, Any] = {
    "@odata.type": "#microsoft.graph.security.userEvidence",
    "createdDateTime": "2026-11-27T08:02:30.1234567Z",
    "verdict": "suspicious",
    "remediationStatus": "none",
    "remediationStatusDetails": None,
    "roles": ["compromised"],
    "detailedRoles": ["Sender"],
    "tags": [],
    "stream": None,
    "userAccount": {
        "accountName": "erin",
        "azureAdUserId": USER_ID,
        "activeDirectoryObjectGuid": None,
        "displayName": "Erin Diaz",
        "domainName": "contoso.com",
        "userPrincipalName": "erin@contoso.com",
        "userSid": "S-1-12-1-1",
        "tenantId": TENANT_ID,
        "resourceAccessEvents": [],
    },
}

MAILBOX_EVIDENCE: dict[str, Any] = {
    "@odata.type": "#microsoft.graph.security.mailboxEvidence",
    "createdDateTime": "2026-11-27T08:02:30Z",
    "verdict": "unknown",
    "remediationStatus": "none",
    "roles": [],
    "displayName": "Erin Diaz",
    "primaryAddress": "erin@contoso.com",
    "upn": "erin@contoso.com",
    "userAccount": {"userPrincipalName": "erin@contoso.com", "azureAdUserId": USER_ID},
}

RICH_ALERT: dict[str, Any] = {
    "@odata.type": "#microsoft.graph.security.alert",
    "id": "e9d1c3b5-a7f9-4e1b-8d3c-5f7a9b1d3e5f",
    "providerAlertId": "e9d1c3b5-a7f9-4e1b-8d3c-5f7a9b1d3e5f",
    "incidentId": "412",
    "status": "new",
    "severity": "high",
    "classification": None,
    "determination": None,
    "serviceSource": "microsoftDefenderForOffice365",
    "detectionSource": "microsoftDefenderForOffice365",
    "productName": "Microsoft Defender for Office 365",
    "detectorId": "8bd3cf8a-7d6c-4f5e-9a1b-2c3d4e5f6a7b",
    "alertPolicyId": "0f4d2b1a-9c8e-4d7f-b6a5-3e2d1c0b9a87",
    "tenantId": TENANT_ID,
    "title": "User restricted from sending email",
    "description": "A user was restricted from sending email after sending outbound spam.",
    "recommendedActions": "Review the account for signs of compromise before unblocking it.",
    "category": "SuspiciousActivity",
    "categories": ["SuspiciousActivity"],
    "assignedTo": None,
    "alertWebUrl": f"https://security.microsoft.com/alerts/e9d1c3b5?tid={TENANT_ID}",
    "incidentWebUrl": f"https://security.microsoft.com/incidents/412?tid={TENANT_ID}",
    "actorDisplayName": None,
    "threatDisplayName": None,
    "threatFamilyName": None,
    "mitreTechniques": [],
    "systemTags": [],
    "investigationState": "queued",
    "createdDateTime": "2026-11-27T08:02:30.1234567Z",
    "lastUpdateDateTime": "2026-11-27T08:02:31Z",
    "firstActivityDateTime": "2026-11-27T08:02:11Z",
    "lastActivityDateTime": "2026-11-27T08:02:11Z",
    "resolvedDateTime": None,
    "comments": [
        {"comment": "Auto-triage", "createdByDisplayName": "Responder", "createdDateTime": "2026-11-27T08:05:00Z"}
    ],
    "customDetails": {"Reason": "OutboundSpamLast24Hours=12"},
    "additionalData": {"anything": ["goes", 1]},
    "evidence": [USER_EVIDENCE, MAILBOX_EVIDENCE],
    "x-note": "simulator-only keys never reach the wire",
}

RICH_TENANT: dict[str, Any] = {
    "tenantId": TENANT_ID,
    "users": [RICH_USER],
    "groups": [{"id": gid, "displayName": f"Group {n}"} for n, gid in enumerate(GROUP_IDS)],
    "domains": [
        {
            "id": "contoso.com",
            "authenticationType": "Managed",
            "availabilityStatus": None,
            "isAdminManaged": True,
            "isDefault": True,
            "isInitial": False,
            "isRoot": True,
            "isVerified": True,
            "passwordNotificationWindowInDays": 14,
            "passwordValidityPeriodInDays": 2147483647,
            "supportedServices": ["Email", "OfficeCommunicationsOnline"],
            "state": None,
        }
    ],
    "alerts": [RICH_ALERT],
}


@pytest.fixture(scope="module")
def graph() -> Iterator[httpx.Client]:
    """A client for Graph on a simulator seeded with a tenant that sets many properties."""
    with Simulator(RICH_TENANT) as sim:
        token = sim.issue_token("https://graph.microsoft.com")
        with httpx.Client(base_url=sim.graph_url, headers={"Authorization": f"Bearer {token}"}, verify=TLS) as client:
            yield client


def served(client: httpx.Client, path: str, **params: str) -> Any:
    response = client.request("POST" if path.endswith("checkMemberGroups") else "GET", path, params=params)
    response.raise_for_status()
    return response.json()


def test_a_served_user_fits_microsoft_graph_user(graph: httpx.Client) -> None:
    user = served(graph, f"/users/{USER_ID}")

    assert check(user, User) == []
    assert set(user) - {"@odata.context"} == {k for k in RICH_USER if not k.startswith("x-")}


def test_a_user_with_select_fits_microsoft_graph_user(graph: httpx.Client) -> None:
    user = served(graph, "/users/erin@contoso.com", **{"$select": "id,accountEnabled,mail,onPremisesSyncEnabled"})

    assert check(user, User) == []


def test_users_found_by_mail_fit_microsoft_graph_user(graph: httpx.Client) -> None:
    mail = RICH_USER["mail"]
    found = served(graph, "/users", **{"$filter": f"mail eq '{mail}'"})["value"]

    assert [u["mail"] for u in found] == [mail]
    assert [problem for user in found for problem in check(user, User)] == []


def test_check_member_groups_answers_a_collection_of_strings(graph: httpx.Client) -> None:
    response = graph.post(f"/users/{USER_ID}/checkMemberGroups", json={"groupIds": GROUP_IDS})

    assert response.json()["@odata.context"].endswith("#Collection(Edm.String)")
    assert check(response.json(), CheckMemberGroupsPostResponse) == []
    assert set(parse(response.json(), CheckMemberGroupsPostResponse).value or []) <= set(GROUP_IDS)


def test_served_domains_fit_microsoft_graph_domain(graph: httpx.Client) -> None:
    domains = served(graph, "/domains")["value"]

    assert domains
    assert [problem for domain in domains for problem in check(domain, Domain)] == []


def test_served_alerts_and_their_evidence_fit_microsoft_graph_security_alert(graph: httpx.Client) -> None:
    listed = served(graph, "/security/alerts_v2")["value"]
    one = served(graph, f"/security/alerts_v2/{RICH_ALERT['id']}")

    for alert in [*listed, one]:
        assert check(alert, Alert) == []
    assert [e["@odata.type"] for e in one["evidence"]] == [
        "#microsoft.graph.security.userEvidence",
        "#microsoft.graph.security.mailboxEvidence",
    ]
    assert "x-note" not in one


def test_a_served_risky_user_fits_microsoft_graph_risky_user(graph: httpx.Client) -> None:
    risky = served(graph, f"/identityProtection/riskyUsers/{USER_ID}")

    assert check(risky, RiskyUser) == []
    assert (risky["riskLevel"], risky["riskState"]) == ("low", "atRisk")


def test_served_inbox_rules_fit_microsoft_graph_message_rule(graph: httpx.Client) -> None:
    rules = served(graph, f"/users/{USER_ID}/mailFolders/inbox/messageRules")["value"]

    assert [problem for rule in rules for problem in check(rule, MessageRule)] == []
    assert rules[0] == RICH_RULE
    assert rules[1]["id"]
    assert check(RICH_RULE["actions"], MessageRuleActions) == []
    assert check(RICH_RULE["conditions"], MessageRulePredicates) == []
    assert [check(r, Recipient) for r in RICH_RULE["actions"]["forwardTo"]] == [[]]


def test_served_mail_folders_fit_microsoft_graph_mail_folder(graph: httpx.Client) -> None:
    names = ["inbox", "archive", "deleteditems", "junkemail", "conversationhistory", "rssfeeds", "sentitems", "drafts"]
    folders = [served(graph, f"/users/erin@contoso.com/mailFolders/{name}") for name in names]
    folders.append(served(graph, f"/users/{USER_ID}/mailFolders/{RICH_RULE['actions']['moveToFolder']}"))

    assert [problem for folder in folders for problem in check(folder, MailFolder)] == []
    assert folders[-1]["displayName"] == "Kept"


def test_the_fixture_tenant_of_the_simulator_tests_serves_valid_graph() -> None:
    tenant = load_tenant(TENANT_FILE)
    with (
        Simulator(tenant) as sim,
        httpx.Client(
            base_url=sim.graph_url,
            headers={"Authorization": f"Bearer {sim.issue_token('https://graph.microsoft.com')}"},
            verify=TLS,
        ) as client,
    ):
        objects = [(served(client, f"/users/{u['id']}"), User) for u in tenant.users]
        objects += [(d, Domain) for d in served(client, "/domains")["value"]]
        objects += [(a, Alert) for a in served(client, "/security/alerts_v2")["value"]]
        objects += [
            (served(client, f"/identityProtection/riskyUsers/{u['id']}"), RiskyUser)
            for u in tenant.users
            if "x-riskLevel" in u
        ]
        for u in tenant.users:
            rules = served(client, f"/users/{u['id']}/mailFolders/inbox/messageRules")["value"]
            objects += [(rule, MessageRule) for rule in rules]
            folder_ids = ["inbox", "sentitems"] + [f["id"] for f in u.get("x-mailFolders", [])]
            folder_ids += [r["actions"]["moveToFolder"] for r in rules if "moveToFolder" in r.get("actions", {})]
            objects += [(served(client, f"/users/{u['id']}/mailFolders/{f}"), MailFolder) for f in folder_ids]

    assert [problem for value, model in objects for problem in check(value, model)] == []


def test_the_models_read_derived_types_and_keep_unknown_properties_apart() -> None:
    assert User.__mro__[1:3] == (DirectoryObject, Entity)
    alert = parse(_broken(lambda a: a.update(mailAddress="x"), RICH_ALERT), Alert)
    assert [type(e).__name__ for e in alert.evidence or []] == ["UserEvidence", "MailboxEvidence"]
    assert isinstance((alert.evidence or [])[1], MailboxEvidence)
    # security.alert's status is its own enum, not the legacy graph.alertStatus (newAlert, ...).
    assert alert.status is AlertStatus(RICH_ALERT["status"])
    assert alert.additional_data == {"mailAddress": "x"}


def _broken(change: Any, base: dict[str, Any]) -> dict[str, Any]:
    value = copy.deepcopy({k: v for k, v in base.items() if not k.startswith("x-")})
    change(value)
    return value


@pytest.mark.parametrize(
    ("value", "model", "problem"),
    [
        (
            _broken(lambda u: u.update(mailAddress="e@contoso.com"), RICH_USER),
            User,
            "$.mailAddress: not a property of User",
        ),
        (
            _broken(lambda u: u.update(accountEnabled="true"), RICH_USER),
            User,
            "$.accountEnabled: 'true' does not read as User.accountEnabled",
        ),
        (
            _broken(lambda u: u.update(businessPhones="+1 425"), RICH_USER),
            User,
            "$.businessPhones: '+1 425' does not read",
        ),
        (
            _broken(lambda u: u.update(imAddresses=[1]), RICH_USER),
            User,
            "$.imAddresses[0]: 1 does not read as User.imAddresses",
        ),
        (
            _broken(lambda u: u.update(createdDateTime="yesterday"), RICH_USER),
            User,
            "$.createdDateTime: 'yesterday' does not read as User.createdDateTime",
        ),
        (
            _broken(lambda u: u["assignedLicenses"][0].update(skuId="E5"), RICH_USER),
            User,
            "$.assignedLicenses: [{'skuId': 'E5', ",
        ),
        (
            _broken(lambda a: a.update(status="newAlert"), RICH_ALERT),
            Alert,
            "$.status: 'newAlert' does not read as Alert.status",
        ),
        (
            _broken(lambda a: a.update(severity=3), RICH_ALERT),
            Alert,
            "$.severity: 3 does not read as Alert.severity",
        ),
        (
            _broken(lambda a: a["evidence"][0]["userAccount"].update(upn="erin@contoso.com"), RICH_ALERT),
            Alert,
            "$.evidence[0].userAccount.upn: not a property of UserAccount",
        ),
        (
            _broken(lambda a: a["evidence"][1].update({"@odata.type": "#microsoft.graph.user"}), RICH_ALERT),
            Alert,
            "$.evidence[1].@odata.type: '#microsoft.graph.user' is not AlertEvidence or a type derived",
        ),
        (
            _broken(
                lambda a: a["evidence"][1].update({"@odata.type": "#microsoft.graph.security.inboxEvidence"}),
                RICH_ALERT,
            ),
            Alert,
            "inboxEvidence' is not AlertEvidence or a type derived",
        ),
        (
            _broken(lambda a: a["evidence"][1].update(stream={"name": "x"}), RICH_ALERT),
            Alert,
            "$.evidence[1].stream: not a property of MailboxEvidence",
        ),
        (
            _broken(lambda r: r["actions"].update(forwardTo="drop@evil.example"), RICH_RULE),
            MessageRule,
            "$.actions.forwardTo: expected a JSON array for MessageRuleActions.forwardTo",
        ),
        (
            _broken(lambda r: r["actions"]["redirectTo"][0].update(address="relay@evil.example"), RICH_RULE),
            MessageRule,
            "$.actions.redirectTo[0].address: not a property of Recipient",
        ),
        (
            _broken(lambda r: r["conditions"].update(importance="urgent"), RICH_RULE),
            MessageRule,
            "$.conditions.importance: 'urgent' does not read as MessageRulePredicates.importance",
        ),
        (
            _broken(lambda r: r.update(isEnabled="false"), RICH_RULE),
            MessageRule,
            "$.isEnabled: 'false' does not read as MessageRule.isEnabled",
        ),
        (
            {"id": "x", "riskLevel": "severe", "riskState": "atRisk"},
            RiskyUser,
            "$.riskLevel: 'severe' does not read as RiskyUser.riskLevel",
        ),
        # wellKnownName is a beta property: the v1.0 mailFolder does not have it.
        (
            {"id": "AAMk", "displayName": "Inbox", "wellKnownName": "inbox"},
            MailFolder,
            "$.wellKnownName: not a property of MailFolder",
        ),
    ],
)
def test_the_checker_catches_a_shape_the_service_would_never_send(
    value: dict[str, Any], model: type[Parsable], problem: str
) -> None:
    problems = check(value, model)

    assert any(problem in p for p in problems), problems


def test_the_request_bodies_the_adapter_writes_fit_the_graph_actions_and_user(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    identity_env: Callable[[Simulator], None],
) -> None:
    sim = simulator_factory(RICH_TENANT)
    identity_env(sim)
    mails = [
        Mail(to=("soc@contoso.com",), subject="Contained", body="<p>Erin</p>", html=True, importance="high"),
        Mail(to=("soc@contoso.com", "erin@contoso.com"), subject="Unblocked", body="Erin", importance="low"),
    ]

    async def write() -> bool:
        async with ManagedIdentityCredential() as credential:
            directory = graph_directory(credential, base_url=sim.graph_url, timeout=5)
            try:
                await directory.revoke_sessions(USER_ID)
                confirmed = await directory.confirm_compromised(USER_ID)
                await directory.disable_account(USER_ID)
                for mail in mails:
                    await directory.send_mail("erin@contoso.com", mail)
                return confirmed
            finally:
                await directory.close()

    assert asyncio.run(write()) is True
    bodies = {route: [r["body"] for r in sim.requests if r["route"] == route] for route in ROUTES_WRITTEN}

    assert bodies["graph.revokeSignInSessions"] == [None]
    # The SDK's own request builder posts revokeSignInSessions without a body.
    assert list(inspect.signature(RevokeSignInSessionsRequestBuilder.post).parameters) == [
        "self",
        "request_configuration",
    ]
    assert [
        check(b, confirm_compromised_post_request_body.ConfirmCompromisedPostRequestBody)
        for b in bodies["graph.confirmCompromised"]
    ] == [[]]
    assert [check(b, User) for b in bodies["graph.updateUser"]] == [[]]
    assert [b["accountEnabled"] for b in bodies["graph.updateUser"]] == [False]
    assert [check(b, SendMailPostRequestBody) for b in bodies["graph.sendMail"]] == [[], []]
    # What the mail carries, in the message type's own terms: subject, itemBody, recipients, importance.
    message = bodies["graph.sendMail"][0]["Message"]
    assert {"subject", "body", "toRecipients", "importance"} <= set(message)
    assert [(m["Message"]["body"]["contentType"], m["Message"]["importance"]) for m in bodies["graph.sendMail"]] == [
        ("html", "high"),
        ("text", "low"),
    ]


def test_what_the_writes_serve_fits_the_models(simulator_factory: Callable[..., Simulator]) -> None:
    sim = simulator_factory(RICH_TENANT)
    token = sim.issue_token("https://graph.microsoft.com")
    with httpx.Client(base_url=sim.graph_url, headers={"Authorization": f"Bearer {token}"}, verify=TLS) as client:
        revoked = client.post(f"/users/{USER_ID}/revokeSignInSessions").json()
        client.post("/identityProtection/riskyUsers/confirmCompromised", json={"userIds": [USER_ID]})
        client.patch(f"/users/{USER_ID}", json={"accountEnabled": False}).raise_for_status()
        user = served(client, f"/users/{USER_ID}")
        risky = served(client, f"/identityProtection/riskyUsers/{USER_ID}")

    assert revoked["@odata.context"].endswith("#Edm.Boolean")
    assert check(revoked, RevokeSignInSessionsPostResponse) == []
    assert parse(revoked, RevokeSignInSessionsPostResponse).value is True
    assert check(user, User) == []
    assert user["accountEnabled"] is False
    assert check(risky, RiskyUser) == []
    assert (risky["riskLevel"], risky["riskState"]) == ("high", "confirmedCompromised")


ROUTES_WRITTEN = ("graph.revokeSignInSessions", "graph.confirmCompromised", "graph.updateUser", "graph.sendMail")
SEND_MAIL: dict[str, Any] = {
    "Message": {
        "subject": "Contained",
        "body": {"contentType": "html", "content": "<p>Erin</p>"},
        "toRecipients": [recipient("soc@contoso.com")],
        "importance": "high",
    },
    "SaveToSentItems": True,
}


@pytest.mark.parametrize(
    ("body", "model", "problem"),
    [
        (SEND_MAIL, SendMailPostRequestBody, None),
        (
            _broken(lambda b: b.update(saveToSentItem=True), SEND_MAIL),
            SendMailPostRequestBody,
            "$.saveToSentItem: not a property of SendMailPostRequestBody",
        ),
        (
            _broken(lambda b: b["Message"]["body"].update(contentType="markdown"), SEND_MAIL),
            SendMailPostRequestBody,
            "$.Message.body.contentType: 'markdown' does not read as ItemBody.contentType",
        ),
        (
            _broken(lambda b: b["Message"].update(toRecipients=[{"address": "soc@contoso.com"}]), SEND_MAIL),
            SendMailPostRequestBody,
            "$.Message.toRecipients[0].address: not a property of Recipient",
        ),
        (
            _broken(lambda b: b["Message"].update(importance="urgent"), SEND_MAIL),
            SendMailPostRequestBody,
            "$.Message.importance: 'urgent' does not read as Message.importance",
        ),
        (
            {"userIds": USER_ID},
            confirm_compromised_post_request_body.ConfirmCompromisedPostRequestBody,
            "$.userIds: ",
        ),
        (
            {"userIds": [USER_ID], "servicePrincipalIds": []},
            confirm_compromised_post_request_body.ConfirmCompromisedPostRequestBody,
            "$.servicePrincipalIds: not a property of ConfirmCompromisedPostRequestBody",
        ),
    ],
)
def test_the_checker_reads_action_bodies_with_the_sdk_request_models(
    body: Any, model: type[Parsable], problem: str | None
) -> None:
    problems = check(body, model)

    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
