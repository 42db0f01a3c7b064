"""What the app's identity must be granted: the one list behind the README's permission table and
``scripts/grant-permissions``.

Each :class:`Permission` says where it lives (Microsoft Graph, Exchange Online, the Office 365 Management APIs, an
Entra ID role, Azure RBAC), why the app needs it, and *when*: a rule over the policy and the intake paths that are
switched on. :func:`required` applies the rules; :func:`markdown_table` renders the README table and
:func:`plan_json` the plan the grant script reads. The rules follow what the code calls (``facts.py``,
``actions.py``, ``adapters/graph.py``): :data:`GRAPH_CALLS` maps each Graph call to the roles it needs, and the
tests check both against the code.

The mode is not a condition: ``report-only`` and ``enforce`` need the same grants, so that switching a policy to
``enforce`` is a policy edit and never a missing permission at the first containment step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from restricted_sender.core.policy import LoadedPolicy, Policy, effective
from restricted_sender.settings import DEFENDER_EVENTHUB, Settings

Kind = Literal["application", "directory role", "Azure RBAC"]

GRAPH = "Microsoft Graph"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE = "Office 365 Exchange Online"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
EXCHANGE_MANAGE_AS_APP_ID = "dc50a0fb-09a3-484d-be87-e023b12c6440"  # "the same in every organization"
MANAGEMENT = "Office 365 Management APIs"
MANAGEMENT_APP_ID = "c5393580-f805-4401-95e8-94b7a6ef2fc2"
ACTIVITY_FEED_READ_ID = "594c1fb6-4f81-4475-ae41-0c394909246c"
ENTRA = "Entra ID"
EXCHANGE_ADMINISTRATOR_TEMPLATE_ID = "29232cdf-9323-42fd-ade2-1d097af3e4de"  # a built-in role's template id


@dataclass(frozen=True, slots=True)
class IntakePaths:
    """The intake paths that change what the identity needs; read from the app settings."""

    poll_alerts: bool = True  # POLL_ALERTS_MINUTES is not 0 (default 5): the alerts_v2 poller
    management_activity: bool = False  # O365_WEBHOOK_AUTH_ID is set: the Office 365 Management Activity API
    defender_stream: bool = False  # DEFENDER_EVENTHUB_NAME is set: the Event Hub trigger

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IntakePaths:
        source = os.environ if env is None else env
        settings = Settings.from_env(source)
        return cls(
            poll_alerts=settings.poll_alerts_minutes != 0,
            management_activity=settings.o365_auth_id is not None,
            defender_stream=bool(source.get(f"{DEFENDER_EVENTHUB}_NAME", "").strip()),
        )

    def to_dict(self) -> dict[str, bool]:
        return {
            "poll_alerts": self.poll_alerts,
            "management_activity": self.management_activity,
            "defender_stream": self.defender_stream,
        }


Rule = Callable[[Policy, IntakePaths], bool]


@dataclass(frozen=True, slots=True)
class Permission:
    """One grant. ``value`` is the app role's value (``User.Read.All``) or the role's name."""

    value: str
    resource: str  # Microsoft Graph, Office 365 Exchange Online, Office 365 Management APIs, Entra ID, ...
    kind: Kind
    when: str  # the README's "needed" column: "always" or "only when ..."
    why: str
    rule: Rule
    resource_app_id: str | None = None  # the resource service principal's appId (app roles only)
    role_id: str | None = None  # an id that is the same in every tenant; Graph role ids are looked up by value

    @property
    def granted_by_script(self) -> bool:
        """App roles and the Entra role are granted by ``scripts/grant-permissions``; Azure RBAC by the Bicep."""
        return self.kind != "Azure RBAC"

    def needed(self, policy: Policy, intake: IntakePaths) -> bool:
        return self.rule(policy, intake)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "resource": self.resource,
            "kind": self.kind,
            "resource_app_id": self.resource_app_id,
            "role_id": self.role_id,
            "granted_by_script": self.granted_by_script,
            "when": self.when,
            "why": self.why,
        }


def _always(policy: Policy, intake: IntakePaths) -> bool:
    return True


def _risk_guard(policy: Policy, intake: IntakePaths) -> bool:
    # As facts.py: "high" lets every level through, so Identity Protection is never asked.
    return policy.guards.max_risk_level not in (None, "high")


def _groups(policy: Policy, intake: IntakePaths) -> bool:
    return bool(policy.group_ids())


def _inbox_rules(policy: Policy, intake: IntakePaths) -> bool:
    return policy.guards.suspicious_inbox_rules


def _mailbox_guard(policy: Policy, intake: IntakePaths) -> bool:
    return policy.guards.suspicious_inbox_rules or policy.guards.external_forwarding


def _sends_mail(policy: Policy, intake: IntakePaths) -> bool:
    return policy.notify.user or bool(policy.notify.recipients) or policy.ticket.system == "email"


def _graph(value: str, when: str, why: str, rule: Rule) -> Permission:
    return Permission(value, GRAPH, "application", when, why, rule, resource_app_id=GRAPH_APP_ID)


def _azure(value: str, resource: str, why: str) -> Permission:
    """An Azure RBAC role the Bicep template grants the identity in every deployment."""
    return Permission(
        value, resource, "Azure RBAC", "always (in Azure)", why + "; granted by the Bicep template", _always
    )


PERMISSIONS: tuple[Permission, ...] = (
    _graph(
        "User.Read.All",
        "always",
        "read the user (`accountEnabled`, by UPN or by mail); with `GroupMember.Read.All` for `checkMemberGroups`, "
        "with `User.EnableDisableAccount.All` to disable an account",
        _always,
    ),
    _graph(
        "GroupMember.Read.All",
        "only when `allow[].groups` or `deny.groups` name a group",
        "transitive group membership (`users/{id}/checkMemberGroups` needs it together with `User.Read.All`)",
        _groups,
    ),
    _graph(
        "IdentityRiskyUser.Read.All",
        "only when `guards.max_risk_level` is below `high` (default `low`)",
        "the risk guard (`identityProtection/riskyUsers/{id}`; needs Entra ID P2, else risk is unknown)",
        _risk_guard,
    ),
    _graph(
        "RoleManagement.Read.Directory",
        "only when `guards.privileged_roles` is not empty (default: the privileged admin roles)",
        "the privileged guard: active roles (`roleManagement/directory/roleAssignments`) and, with Entra ID P2, "
        "eligible ones (`roleEligibilityScheduleInstances`); the least-privileged permission for role assignments, "
        "and it covers eligibilities too (one grant instead of adding `RoleEligibilitySchedule.Read.Directory`)",
        lambda policy, intake: bool(policy.guards.privileged_roles),
    ),
    _graph(
        "AuditLog.Read.All",
        "always (the MFA evidence); `guards.require_mfa_registered` fails closed without it",
        "MFA registration (`reports/authenticationMethods/userRegistrationDetails/{id}`; the only permission it "
        "accepts; needs Entra ID P1 or P2, else unknown). Requested always: whether the account has a strong method "
        "is the first thing a responder asks",
        _always,
    ),
    _graph(
        "MailboxSettings.Read",
        "only with `guards.suspicious_inbox_rules` (default on)",
        "Inbox rules (`mailFolders/inbox/messageRules`)",
        _inbox_rules,
    ),
    _graph(
        "Mail.ReadBasic.All",
        "only with `guards.suspicious_inbox_rules` (default on)",
        "the name of the folder a rule moves mail to (`mailFolders/{id}`)",
        _inbox_rules,
    ),
    _graph(
        "Domain.Read.All",
        "only with `guards.suspicious_inbox_rules` or `guards.external_forwarding` (both default on)",
        'the tenant\'s verified domains (`domains`: what "outside the tenant" means)',
        _mailbox_guard,
    ),
    _graph(
        "SecurityAlert.Read.All",
        "only when `POLL_ALERTS_MINUTES` is not `0` (default 5)",
        "the alerts_v2 poller (`security/alerts_v2`)",
        lambda policy, intake: intake.poll_alerts,
    ),
    _graph(
        "User.RevokeSessions.All",
        "only with `containment.revoke_sessions`",
        "revoke the user's sign-in sessions (`revokeSignInSessions`)",
        lambda policy, intake: policy.containment.revoke_sessions,
    ),
    _graph(
        "IdentityRiskyUser.ReadWrite.All",
        "only with `containment.confirm_compromised`",
        "confirm the user compromised (`riskyUsers/confirmCompromised`; Entra ID P2)",
        lambda policy, intake: policy.containment.confirm_compromised,
    ),
    _graph(
        "User.EnableDisableAccount.All",
        "only with `containment.disable_account`",
        "disable the account (`accountEnabled: false`, with `User.Read.All`); accounts holding privileged admin "
        "roles also need a higher Entra role",
        lambda policy, intake: policy.containment.disable_account,
    ),
    _graph(
        "MailboxSettings.ReadWrite",
        "only with `remediation.disable_inbox_rules`",
        "disable the inbox rules that fail the inbox-rule guard, and re-enable them on `restore` "
        "(`PATCH mailFolders/inbox/messageRules/{id}` `isEnabled`; a rule is never deleted)",
        lambda policy, intake: policy.remediation.disable_inbox_rules,
    ),
    _graph(
        "Mail.Send",
        "only with `notify.user`, `notify.recipients` or `ticket.system: email`",
        "`sendMail` from `notify.sender` / `ticket.email.sender`; restrict it to those mailboxes with RBAC for "
        "Applications (or an application access policy)",
        _sends_mail,
    ),
    Permission(
        "Exchange.ManageAsApp",
        EXCHANGE,
        "application",
        "always",
        "app-only access to the Exchange admin endpoint (`Get-`/`Remove-BlockedSenderAddress`, `Get-Mailbox`)",
        _always,
        resource_app_id=EXCHANGE_APP_ID,
        role_id=EXCHANGE_MANAGE_AS_APP_ID,
    ),
    Permission(
        "Exchange Administrator",
        ENTRA,
        "directory role",
        "always",
        "the Exchange RBAC of the app-only session: read and remove restricted senders, read mailbox forwarding "
        "(and, with `remediation.remove_forwarding`, clear it with `Set-Mailbox`, which the role already holds). "
        "Or instead a custom Exchange role group holding the roles that contain `Get-`/`Remove-BlockedSenderAddress` "
        "and `Get-Mailbox` (`Get-ManagementRole -Cmdlet Remove-BlockedSenderAddress`). *Security Administrator is "
        "not enough* for anti-spam cmdlets app-only",
        _always,
        role_id=EXCHANGE_ADMINISTRATOR_TEMPLATE_ID,
    ),
    Permission(
        "ActivityFeed.Read",
        MANAGEMENT,
        "application",
        "only when `O365_WEBHOOK_AUTH_ID` is set",
        "the Office 365 Management Activity API (subscription and content from `manage.office.com`)",
        lambda policy, intake: intake.management_activity,
        resource_app_id=MANAGEMENT_APP_ID,
        role_id=ACTIVITY_FEED_READ_ID,
    ),
    _azure(
        "Storage Blob Data Owner",
        "storage account",
        "the Functions host's storage (keys, timer locks, checkpoints) and the deployment package",
    ),
    _azure(
        "Storage Queue Data Contributor",
        "storage account",
        "the queues (`restriction-events`, `restriction-verify`, `alert-content`)",
    ),
    _azure(
        "Storage Table Data Contributor", "storage account", "the tables (claims and ticket ledger, unblocks, audit)"
    ),
    _azure("Key Vault Secrets User", "key vault", "the Key Vault references in the app settings"),
    _azure("Monitoring Metrics Publisher", "Application Insights", "telemetry (local authentication is off)"),
    Permission(
        "Azure Event Hubs Data Receiver",
        "Event Hub",
        "Azure RBAC",
        "only when `DEFENDER_EVENTHUB_NAME` is set",
        "the Defender XDR streaming Event Hub trigger; granted by the Bicep template",
        lambda policy, intake: intake.defender_stream,
    ),
)

# Every Graph call the app makes (the Directory and AlertFeed ports, as ``adapters/graph.py`` implements them)
# and the application roles it needs. A new call without an entry here fails tests/test_permissions.py.
GRAPH_CALLS: Mapping[str, tuple[str, ...]] = {
    "user": ("User.Read.All",),
    "member_groups": ("User.Read.All", "GroupMember.Read.All"),
    "risk_level": ("IdentityRiskyUser.Read.All",),
    "inbox_rules": ("MailboxSettings.Read",),
    "folder_name": ("Mail.ReadBasic.All",),
    "verified_domains": ("Domain.Read.All",),
    "active_roles": ("RoleManagement.Read.Directory",),
    "eligible_roles": ("RoleManagement.Read.Directory",),
    "mfa_registration": ("AuditLog.Read.All",),
    "alerts_page": ("SecurityAlert.Read.All",),
    "revoke_sessions": ("User.RevokeSessions.All",),
    "confirm_compromised": ("IdentityRiskyUser.ReadWrite.All",),
    "disable_account": ("User.EnableDisableAccount.All", "User.Read.All"),
    "send_mail": ("Mail.Send",),
    "set_inbox_rule_enabled": ("MailboxSettings.ReadWrite",),
}


def required(policy: LoadedPolicy, intake: IntakePaths) -> tuple[Permission, ...]:
    """The permissions this policy and these intake paths need, in table order.

    A policy that does not load (:class:`PolicyError`) plans as the default policy: the app then escalates every
    restricted user, and the grants stay what the default policy needs once the file is fixed.
    """
    planned = effective(policy)
    return tuple(p for p in PERMISSIONS if p.needed(planned, intake))


def grant_line(permission: Permission, status: str = "granted") -> str:
    """The line ``scripts/grant-permissions`` prints for ``permission`` (its ``line`` layout; tested against it)."""
    return f"{status:<16}  {permission.resource:<27}  {permission.value}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _name(permission: Permission) -> str:
    return f"`{permission.value}`" if permission.kind == "application" else f"**{permission.value}**"


def markdown_table(permissions: tuple[Permission, ...] = PERMISSIONS) -> str:
    """The README's table: one row per permission, with when it is needed."""
    lines = ["| permission | on | type | needed | why |", "|---|---|---|---|---|"]
    for p in permissions:
        kind = {"application": "application permission", "Azure RBAC": "Azure RBAC role"}.get(p.kind, p.kind)
        lines.append(f"| {_name(p)} | {p.resource} | {kind} | {_cell(p.when)} | {_cell(p.why)} |")
    return "\n".join(lines) + "\n"


def plan_json(policy: LoadedPolicy, intake: IntakePaths, *, policy_source: str = "default policy") -> dict[str, Any]:
    """The plan ``scripts/grant-permissions`` acts on (and prints with ``--what-if``)."""
    planned = effective(policy)
    return {
        "policy": {"source": policy_source, "mode": planned.mode, "version": planned.version},
        "intake": intake.to_dict(),
        "permissions": [p.to_dict() for p in required(policy, intake)],
    }
