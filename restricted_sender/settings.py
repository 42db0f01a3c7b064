"""Typed app settings, read once from the environment (Functions app settings). Secrets never print."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from restricted_sender.errors import ConfigurationError

EVENTS_QUEUE = "restriction-events"  # fixed: the queue trigger's binding names it too
VERIFY_QUEUE = "restriction-verify"  # fixed too: the verification trigger's binding
CONTENT_QUEUE = "alert-content"  # Management Activity content pointers and Defender rows, expanded into events
# The Event Hub trigger's connection: DEFENDER_EVENTHUB__fullyQualifiedNamespace (+ __credential, __clientId),
# read by the host; DEFENDER_EVENTHUB_NAME turns the trigger on, DEFENDER_EVENTHUB_CONSUMER_GROUP names its group.
DEFENDER_EVENTHUB = "DEFENDER_EVENTHUB"
O365_API_ROOT = "https://manage.office.com"  # the Management Activity API (GCC: manage-gcc.office.com, ...)
ENTRA_AUTHORITY = "https://login.microsoftonline.com"  # where Entra ID publishes each tenant's signing keys
GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
UNRESOLVED_REFERENCE = "@Microsoft.KeyVault("
EXCHANGE_BASE_URL = "https://outlook.office365.com"
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class Secret:
    """A value that does not show itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every app setting the product reads. The README's settings table lists the same names."""

    tenant_id: str | None = None  # TENANT_ID
    storage_connection: Secret | None = None  # AzureWebJobsStorage (a connection string)
    queue_service_uri: str | None = None  # AzureWebJobsStorage__queueServiceUri (identity-based)
    table_service_uri: str | None = None  # AzureWebJobsStorage__tableServiceUri (identity-based)
    storage_client_id: str | None = None  # AzureWebJobsStorage__clientId
    managed_identity_client_id: str | None = None  # AZURE_CLIENT_ID
    policy_file: str | None = None  # POLICY_FILE
    policy_yaml: str | None = None  # POLICY_YAML
    graph_base_url: str = GRAPH_BASE_URL  # GRAPH_BASE_URL
    exchange_base_url: str = EXCHANGE_BASE_URL  # EXCHANGE_BASE_URL
    alerts_shared_secret: Secret | None = None  # ALERTS_SHARED_SECRET
    ticket_webhook_url: Secret | None = None  # TICKET_WEBHOOK_URL (Logic App / Power Automate URLs carry sig=)
    ticket_webhook_secret: Secret | None = None  # TICKET_WEBHOOK_SECRET
    teams_webhook_url: Secret | None = None  # TEAMS_WEBHOOK_URL (a Teams Workflows webhook: its sig= is the key)
    table_prefix: str = "rsr"  # TABLE_PREFIX
    http_timeout_seconds: float = 30.0  # HTTP_TIMEOUT_SECONDS
    exchange_timeout_seconds: float = 300.0  # EXCHANGE_TIMEOUT_SECONDS (REST cmdlets may run 15 minutes)
    verify_after_minutes: float = 60.0  # VERIFY_AFTER (minutes until the first check of an unblock)
    servicenow_instance_url: str | None = None  # SERVICENOW_INSTANCE_URL
    servicenow_username: str | None = None  # SERVICENOW_USERNAME
    servicenow_password: Secret | None = None  # SERVICENOW_PASSWORD
    servicenow_token: Secret | None = None  # SERVICENOW_TOKEN (OAuth bearer, instead of user and password)
    jira_site_url: str | None = None  # JIRA_SITE_URL
    jira_email: str | None = None  # JIRA_EMAIL
    jira_api_token: Secret | None = None  # JIRA_API_TOKEN
    admin_api_audiences: tuple[str, ...] = ()  # ADMIN_API_AUDIENCE (comma-separated: client id, api://...)
    entra_authority: str = ENTRA_AUTHORITY  # ENTRA_AUTHORITY
    o365_api_root: str = O365_API_ROOT  # O365_API_ROOT
    o365_auth_id: Secret | None = None  # O365_WEBHOOK_AUTH_ID (the subscription's authId; off when unset)
    o365_publisher_id: str | None = None  # O365_PUBLISHER_ID (defaults to TENANT_ID)
    poll_alerts_minutes: float = 5.0  # POLL_ALERTS_MINUTES (0 turns the alerts_v2 poller off)
    sweep_minutes: float = 5.0  # SWEEP_MINUTES (0 turns the restricted-list sweep off)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = source.get(name, "").strip()
            return value or None

        def secret(name: str) -> Secret | None:
            value = text(name)
            if value and value.startswith(UNRESOLVED_REFERENCE):
                # App Service hands over the reference itself when it cannot resolve it: never use that as a secret.
                raise ConfigurationError(
                    f"{name} is a Key Vault reference that did not resolve: store the secret in the vault and give "
                    "the app's identity Key Vault Secrets User (the app settings' Key Vault references show why)"
                )
            return Secret(value) if value else None

        def bounded(name: str, default: float, fits: Callable[[float], bool], rule: str) -> float:
            raw = text(name)
            try:
                value = float(raw) if raw else default
            except ValueError:
                value = -1.0  # fits no rule: reported below with what was given
            if not fits(value):
                raise ConfigurationError(f"{name} must be {rule}, got {raw!r}")
            return value

        def number(name: str, default: float, unit: str, most: float) -> float:
            return bounded(name, default, lambda v: 0 < v <= most, f"{unit}, more than 0 and at most {most:g}")

        def interval(name: str, default: float) -> float:
            return bounded(
                name, default, lambda v: v == 0 or 1 <= v <= 24 * 60, "minutes from 1 to 1440, or 0 to turn it off"
            )

        tenant_id = text("TENANT_ID")
        if tenant_id is not None and not _GUID.fullmatch(tenant_id):
            # X-AnchorMailbox (APP:SystemMailbox{…}@<tenant>) routes by the directory id: a domain fails each call.
            raise ConfigurationError(
                f"TENANT_ID must be the tenant's directory id, a GUID such as 8f0c2a52-6a4e-4b8e-9a62-1d2f3c4b5a69, "
                f"not {tenant_id[:80]!r}: find it with `az account show --query tenantId -o tsv` (Entra admin center, "
                "Overview, Tenant ID)"
            )
        prefix = text("TABLE_PREFIX") or "rsr"
        if not prefix.isalnum() or not prefix[0].isalpha():
            raise ConfigurationError(f"TABLE_PREFIX must be letters and digits starting with a letter, got {prefix!r}")
        return cls(
            tenant_id=tenant_id.lower() if tenant_id else None,
            storage_connection=secret("AzureWebJobsStorage"),
            queue_service_uri=text("AzureWebJobsStorage__queueServiceUri"),
            table_service_uri=text("AzureWebJobsStorage__tableServiceUri"),
            storage_client_id=text("AzureWebJobsStorage__clientId"),
            managed_identity_client_id=text("AZURE_CLIENT_ID"),
            policy_file=text("POLICY_FILE"),
            policy_yaml=text("POLICY_YAML"),
            graph_base_url=text("GRAPH_BASE_URL") or GRAPH_BASE_URL,
            exchange_base_url=text("EXCHANGE_BASE_URL") or EXCHANGE_BASE_URL,
            alerts_shared_secret=secret("ALERTS_SHARED_SECRET"),
            ticket_webhook_url=secret("TICKET_WEBHOOK_URL"),
            ticket_webhook_secret=secret("TICKET_WEBHOOK_SECRET"),
            teams_webhook_url=secret("TEAMS_WEBHOOK_URL"),
            table_prefix=prefix,
            http_timeout_seconds=number("HTTP_TIMEOUT_SECONDS", 30.0, "seconds", 600),
            # Below host.json's functionTimeout (10 minutes): a timed-out Remove is then read back, not lost.
            exchange_timeout_seconds=number("EXCHANGE_TIMEOUT_SECONDS", 300.0, "seconds", 540),
            verify_after_minutes=number("VERIFY_AFTER", 60.0, "minutes", 24 * 60),
            servicenow_instance_url=text("SERVICENOW_INSTANCE_URL"),
            servicenow_username=text("SERVICENOW_USERNAME"),
            servicenow_password=secret("SERVICENOW_PASSWORD"),
            servicenow_token=secret("SERVICENOW_TOKEN"),
            jira_site_url=text("JIRA_SITE_URL"),
            jira_email=text("JIRA_EMAIL"),
            jira_api_token=secret("JIRA_API_TOKEN"),
            admin_api_audiences=tuple(a.strip() for a in (text("ADMIN_API_AUDIENCE") or "").split(",") if a.strip()),
            entra_authority=(text("ENTRA_AUTHORITY") or ENTRA_AUTHORITY).rstrip("/"),
            o365_api_root=(text("O365_API_ROOT") or O365_API_ROOT).rstrip("/"),
            o365_auth_id=secret("O365_WEBHOOK_AUTH_ID"),
            o365_publisher_id=text("O365_PUBLISHER_ID"),
            poll_alerts_minutes=interval("POLL_ALERTS_MINUTES", 5.0),
            sweep_minutes=interval("SWEEP_MINUTES", 5.0),
        )

    def require_tenant_id(self) -> str:
        if not self.tenant_id:
            raise ConfigurationError("TENANT_ID is not set: the Exchange admin endpoint needs the tenant's id")
        return self.tenant_id
