"""Synthetic tenants and alerts for the benchmarks: user ``i`` is ``user{i:05d}@<domain>`` on a spam block."""

from __future__ import annotations

from typing import Any

TENANT_ID = "8f0c2a52-6a4e-4b8e-9a62-1d2f3c4b5a69"
ALERT_TITLE = "User restricted from sending email"
SPAM_REASON = "OutboundSpamLast24Hours=212;OutboundMailLast24Hours=240;OutboundSpamPercent=88"


def policy_yaml(allowed_domain: str) -> str:
    """Enforce mode; users of ``allowed_domain`` are allowed. The circuit breaker is raised so a burst is not
    stopped by it (its default is 10 unblocks an hour), every other guard keeps its default."""
    return f"""\
mode: enforce
alert_names: ["{ALERT_TITLE}"]
allow:
  - name: contoso staff
    domains: [{allowed_domain}]
guards:
  max_unblocks_per_user: {{count: 1, days: 7}}
  max_unblocks_per_tenant: {{count: 100000, hours: 1}}
  account_enabled: true
  min_hours_to_auto_release: 2
ticket:
  system: webhook
"""


def user_id(index: int) -> str:
    return f"0b1c2d3e-{index // 10000:04d}-4a5b-8c9d-{index % 10000:012d}"


def address(index: int, domain: str) -> str:
    return f"user{index:05d}@{domain}"


def user(index: int, domain: str, **extra: Any) -> dict[str, Any]:
    """Graph user JSON, enabled; ``extra`` adds simulator keys such as ``x-unblockLimitReached``."""
    mail = address(index, domain)
    return {
        "id": user_id(index),
        "userPrincipalName": mail,
        "mail": mail,
        "displayName": f"User {index}",
        "accountEnabled": True,
        **extra,
    }


def blocked(sender: str) -> dict[str, Any]:
    """A Get-BlockedSenderAddress row: a spam block that only an admin can lift."""
    return {
        "SenderAddress": sender,
        "Reason": SPAM_REASON,
        "TemporaryBlock": False,
        "CreatedDatetime": "2026-01-10T08:02:11Z",
        "ChangedDatetime": "2026-01-10T08:02:11Z",
    }


def alert(alert_id: str, upn: str, object_id: str) -> dict[str, Any]:
    """An alerts_v2 object of the target alert naming one user."""
    return {
        "@odata.type": "#microsoft.graph.security.alert",
        "id": alert_id,
        "title": ALERT_TITLE,
        "serviceSource": "microsoftDefenderForOffice365",
        "alertWebUrl": f"https://security.microsoft.com/alerts/{alert_id}",
        "createdDateTime": "2026-01-10T08:03:12Z",
        "evidence": [
            {
                "@odata.type": "#microsoft.graph.security.userEvidence",
                "userAccount": {"userPrincipalName": upn, "azureAdUserId": object_id},
                "verdict": "suspicious",
                "roles": [],
            }
        ],
    }
