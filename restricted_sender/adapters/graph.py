"""Microsoft Graph through ``msgraph-sdk``. Imported only by the processor: the SDK costs ~0.2-0.5 s to import."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from restricted_sender.adapters.graph_batch import ReadBatcher
from restricted_sender.adapters.http import pooled_transport
from restricted_sender.adapters.identity import GRAPH_SCOPE
from restricted_sender.core.mailbox import InboxRule, parse_rules
from restricted_sender.errors import FilterRefused, ServiceError, ServiceRefused, TransientServiceError
from restricted_sender.model import DirectoryRole, DirectoryUser, Mail, MfaRegistration
from restricted_sender.ports import AlertsPage
from restricted_sender.retry import retry_after_seconds

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from kiota_abstractions.request_information import RequestInformation
    from msgraph.graph_service_client import GraphServiceClient

T = TypeVar("T")
# 403 answers that mean "the tenant lacks the licence" (Entra ID P2 for Identity Protection), not "the app lacks
# the permission". Identity Protection answers both with code ``Forbidden``: only the message tells them apart
# ("Your tenant is not licensed for this feature." vs "... required scopes are missing in the token.").
_UNLICENSED_CODES = frozenset(
    {"authentication_requestfromnonpremiumtenantorb2ctenant", "tenantnotlicensed", "aadpremiumlicenserequired"}
)
_UNLICENSED_PHRASES = (
    "not licensed",
    "premium license",
    "requires a subscription",
    "premium 2 license",  # PIM without Entra ID P2: "The tenant needs an AAD Premium 2 license."
)
MAX_ROLE_PAGES = 5  # a user holds a handful of roles: more pages than this is an answer we do not trust
# proxyAddresses is returned only on $select (https://learn.microsoft.com/graph/api/resources/user): it says which
# SMTP addresses the user owns, which binds a restricted address to its user.
USER_FIELDS = ["id", "userPrincipalName", "mail", "accountEnabled", "userType", "createdDateTime", "proxyAddresses"]
CHECK_MEMBER_GROUPS_LIMIT = 20  # ids per checkMemberGroups call, the service's own limit


def graph_directory(
    credential: AsyncTokenCredential,
    *,
    base_url: str = "https://graph.microsoft.com/v1.0",
    timeout: float = 30.0,
    max_retries: int = 3,
    retry_delay: float = 3.0,
    batch: bool = True,
) -> GraphDirectory:
    """A directory on a client that keeps the SDK's retry/redirect middleware (a plain httpx client drops it).
    ``batch``: concurrent GET reads go out as JSON batches (restricted_sender/adapters/graph_batch.py)."""
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import RetryHandler
    from kiota_http.middleware.options import RetryHandlerOption
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory  # type: ignore[import-untyped]
    from msgraph_core.middleware import GraphTelemetryHandler  # type: ignore[import-untyped]

    class SecondsRetryHandler(RetryHandler):  # type: ignore[misc]
        """The SDK's retry handler, reading a fractional delta-seconds ``Retry-After`` (``0.5``) as sent: the SDK
        reads only whole seconds and otherwise falls back to its backoff (``retry_delay`` + up to 1.75 s)."""

        def _parse_retry_after(self, retry_after: str) -> float | None:
            seconds = retry_after_seconds(retry_after)
            return seconds if seconds is not None else super()._parse_retry_after(retry_after)

    root = base_url.rstrip("/")
    host = httpx.URL(root).host
    retry = RetryHandlerOption(delay=retry_delay, max_retries=max_retries)
    # The SDK's default chain (msgraph-core's create_with_default_middleware), its retry handler swapped for ours.
    middleware = [
        SecondsRetryHandler(retry) if isinstance(handler, RetryHandler) else handler
        for handler in KiotaClientFactory.get_default_middleware({retry.get_key(): retry})
    ]
    middleware.append(GraphTelemetryHandler())
    # Kept to close it ourselves: msgraph-core's transport wrapper does not pass aclose() on (sockets leak).
    transport = pooled_transport()
    http = GraphClientFactory.create_with_custom_middleware(
        middleware, client=httpx.AsyncClient(base_url=root, timeout=timeout, transport=transport)
    )
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE], allowed_hosts=[host])
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = root
    reads = ReadBatcher(adapter, batch=batch, max_retries=max_retries, retry_delay=retry_delay)
    return GraphDirectory(GraphServiceClient(request_adapter=adapter), http=http, transport=transport, reads=reads)


class GraphDirectory:
    service = "graph"

    def __init__(
        self,
        client: GraphServiceClient,
        *,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        reads: ReadBatcher | None = None,
    ) -> None:
        self._client = client
        self._reads = reads or ReadBatcher(client.request_adapter, batch=False)
        self._http = http
        self._transport = transport
        self._domains: frozenset[str] | None = None

    async def user(self, key: str) -> DirectoryUser | None:
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
        from msgraph.generated.users.users_request_builder import UsersRequestBuilder

        config = RequestConfiguration(
            query_parameters=UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=USER_FIELDS)
        )
        found = await self._json(self._client.users.by_user_id(key).to_get_request_information(config))
        if found is None and "@" in key:
            # A mailbox's address need not be its UPN: look it up by mail or by an SMTP proxy address (both
            # default-query filters on users: https://learn.microsoft.com/graph/aad-advanced-queries). Two matches
            # are no answer; the caller checks that the user found owns the address.
            escaped = key.replace("'", "''")
            search = RequestConfiguration(
                query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(
                    filter=f"mail eq '{escaped}' or proxyAddresses/any(p:p eq 'smtp:{escaped}')",
                    select=USER_FIELDS,
                    top=2,
                )
            )
            page = await self._json(self._client.users.to_get_request_information(search))
            matches = page.get("value") if isinstance(page, dict) else None
            found = matches[0] if isinstance(matches, list) and len(matches) == 1 else None
        if not isinstance(found, dict) or not found.get("id"):
            return None
        enabled = found.get("accountEnabled")
        return DirectoryUser(
            id=str(found["id"]),
            user_principal_name=str(found.get("userPrincipalName") or key),
            mail=_text(found.get("mail")),
            account_enabled=enabled if isinstance(enabled, bool) else None,
            user_type=_text(found.get("userType")),
            created=_text(found.get("createdDateTime")),
            proxy_addresses=tuple(p for p in found.get("proxyAddresses") or () if isinstance(p, str)),
        )

    async def risk_level(self, object_id: str) -> str | None:
        request = self._client.identity_protection.risky_users.by_risky_user_id(object_id).to_get_request_information()
        try:
            found = await self._json(request)
        except ServiceRefused as refused:
            if refused.http_status == 403:
                return None  # a tenant without Entra ID P2: risk is unknown, not a failure
            raise
        level = found.get("riskLevel") if isinstance(found, dict) else None
        return level if isinstance(level, str) and level in ("none", "low", "medium", "high") else None

    async def inbox_rules(self, key: str) -> tuple[InboxRule, ...] | None:
        inbox = self._client.users.by_user_id(key).mail_folders.by_mail_folder_id("inbox")
        found = await self._json(inbox.message_rules.to_get_request_information())
        if not isinstance(found, dict):
            return None
        value = found.get("value")
        return parse_rules(value if isinstance(value, list) else [])

    async def folder_name(self, key: str, folder_id: str) -> str | None:
        folder = self._client.users.by_user_id(key).mail_folders.by_mail_folder_id(folder_id)
        found = await self._json(folder.to_get_request_information())
        name = found.get("displayName") if isinstance(found, dict) else None
        return name if isinstance(name, str) else None

    async def verified_domains(self) -> frozenset[str]:
        # Domains change rarely: read once per instance (an instance lives minutes to hours).
        if self._domains is None:
            found = await self._json(self._client.domains.to_get_request_information())
            value = found.get("value") if isinstance(found, dict) else None
            self._domains = frozenset(
                str(d["id"]).lower()
                for d in (value or [])
                if isinstance(d, dict) and d.get("isVerified") and d.get("id")
            )
        return self._domains

    # -- privilege and MFA (read by object id) ------------------------------------------------------------

    async def active_roles(self, object_id: str) -> tuple[DirectoryRole, ...]:
        """``GET /roleManagement/directory/roleAssignments?$filter=principalId eq '{id}'&$expand=roleDefinition``
        (https://learn.microsoft.com/graph/api/rbacapplication-list-roleassignments): the roles assigned to the user
        itself. Any refusal raises: the caller fails closed."""
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.role_management.directory.role_assignments.role_assignments_request_builder import (
            RoleAssignmentsRequestBuilder as Builder,
        )

        query = Builder.RoleAssignmentsRequestBuilderGetQueryParameters(
            filter=_principal(object_id), expand=["roleDefinition"]
        )
        builder = self._client.role_management.directory.role_assignments
        rows = await self._rows(
            builder, builder.to_get_request_information(RequestConfiguration(query_parameters=query))
        )
        return tuple(_role(row, eligible=False) for row in rows if row.get("roleDefinitionId"))

    async def eligible_roles(self, object_id: str) -> tuple[DirectoryRole, ...] | None:
        """``GET /roleManagement/directory/roleEligibilityScheduleInstances?$filter=principalId eq '{id}'``
        (https://learn.microsoft.com/graph/api/rbacapplication-list-roleeligibilityscheduleinstances): roles the user
        can activate through PIM. ``None`` in a tenant without Entra ID P2 (PIM is not there)."""
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.role_management.directory.role_eligibility_schedule_instances import (
            role_eligibility_schedule_instances_request_builder as module,
        )

        Builder = module.RoleEligibilityScheduleInstancesRequestBuilder
        query = Builder.RoleEligibilityScheduleInstancesRequestBuilderGetQueryParameters(
            filter=_principal(object_id), expand=["roleDefinition"]
        )
        builder = self._client.role_management.directory.role_eligibility_schedule_instances
        request = builder.to_get_request_information(RequestConfiguration(query_parameters=query))
        try:
            rows = await self._rows(builder, request)
        except NotLicensed:
            return None
        return tuple(_role(row, eligible=True) for row in rows if row.get("roleDefinitionId"))

    async def mfa_registration(self, object_id: str) -> MfaRegistration | None:
        """``GET /reports/authenticationMethods/userRegistrationDetails/{id}``
        (https://learn.microsoft.com/graph/api/userregistrationdetails-get); ``None`` without Entra ID P1/P2 (403
        ``Authentication_RequestFromNonPremiumTenantOrB2CTenant``) or for a user without a record."""
        details = self._client.reports.authentication_methods.user_registration_details
        request = details.by_user_registration_details_id(object_id).to_get_request_information()
        try:
            found = await self._json(request, permission="AuditLog.Read.All")
        except NotLicensed:
            return None
        if not isinstance(found, dict) or not isinstance(found.get("isMfaRegistered"), bool):
            return None
        methods = found.get("methodsRegistered")
        return MfaRegistration(
            registered=found["isMfaRegistered"],
            methods=tuple(m for m in methods or () if isinstance(m, str)) if isinstance(methods, list) else (),
            updated=_text(found.get("lastUpdatedDateTime")),
        )

    async def _rows(self, builder: Any, request: RequestInformation) -> list[dict[str, Any]]:
        """Every row of a role listing, following ``@odata.nextLink`` on Graph's own host only."""
        rows: list[dict[str, Any]] = []
        for _ in range(MAX_ROLE_PAGES):
            found = await self._json(request, permission="RoleManagement.Read.Directory")
            value = found.get("value") if isinstance(found, dict) else None
            if not isinstance(value, list):
                # Not a listing (a 404 included): the roles are unknown, and the guard fails closed on it.
                raise ServiceRefused(self.service, "role listing: the answer holds no 'value' list")
            rows.extend(v for v in value if isinstance(v, dict))
            link = found.get("@odata.nextLink")
            if not isinstance(link, str):
                return rows
            if _origin(link) != _origin(self._client.request_adapter.base_url):
                raise ServiceRefused(self.service, "refusing a role listing @odata.nextLink to another host")
            request = builder.with_url(link).to_get_request_information()
        raise ServiceRefused(self.service, f"role listing: more than {MAX_ROLE_PAGES} pages for one user")

    # -- the alerts_v2 poller (AlertFeed) ---------------------------------------------------------------

    async def alerts_page(self, *, filter: str, top: int, next_link: str | None = None) -> AlertsPage:
        from kiota_abstractions.base_request_configuration import RequestConfiguration
        from msgraph.generated.security.alerts_v2.alerts_v2_request_builder import Alerts_v2RequestBuilder

        alerts = self._client.security.alerts_v2
        if next_link is not None:
            if _origin(next_link) != _origin(self._client.request_adapter.base_url):
                raise ServiceRefused(self.service, "refusing an alerts_v2 @odata.nextLink to another host")
            request = alerts.with_url(next_link).to_get_request_information()
        else:
            query = Alerts_v2RequestBuilder.Alerts_v2RequestBuilderGetQueryParameters(filter=filter, top=top)
            request = alerts.to_get_request_information(RequestConfiguration(query_parameters=query))
        try:
            found = await self._json(request, permission="SecurityAlert.Read.All")
        except ServiceRefused as refused:
            if refused.http_status == 400:
                raise FilterRefused(self.service, refused.message, http_status=400) from refused
            raise
        value = found.get("value") if isinstance(found, dict) else None
        if not isinstance(value, list):
            raise TransientServiceError(self.service, "alerts_v2: 'value' is not a list")
        link = found.get("@odata.nextLink")
        return AlertsPage(
            alerts=tuple(a for a in value if isinstance(a, dict)), next_link=link if isinstance(link, str) else None
        )

    async def read(self, path: str, *, permission: str) -> Any:
        """A read-only ``GET {base}/{path}`` (query included): the JSON as Graph sent it, ``None`` for 404. For the
        doctor, which compares field names and tells a missing ``permission`` from a missing licence."""
        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation

        request = RequestInformation(Method.GET)
        request.url = f"{self._client.request_adapter.base_url.rstrip('/')}/{path.lstrip('/')}"
        request.headers.try_add("Accept", "application/json")
        return await self._json(request, permission=permission)

    async def _json(self, request: RequestInformation, *, permission: str = "User.Read.All") -> Any:
        """Send a GET read built by the SDK through its adapter (auth, retry and redirect middleware), batched with
        concurrent reads, and read the JSON ourselves: the SDK's model deserializer costs ~20 ms of CPU per user."""
        # The SDK expands its URL template each time the URL is read (3 times per request): expanded once, here.
        self._client.request_adapter.set_base_url_for_request_information(request)
        request.url = request.url
        return await self._call(partial(self._reads.get, request), permission=permission)

    async def member_groups(self, key: str, group_ids: Sequence[str]) -> frozenset[str]:
        from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
            CheckMemberGroupsPostRequestBody,
        )

        found: set[str] = set()
        ids = list(dict.fromkeys(group_ids))
        for start in range(0, len(ids), CHECK_MEMBER_GROUPS_LIMIT):
            body = CheckMemberGroupsPostRequestBody(group_ids=ids[start : start + CHECK_MEMBER_GROUPS_LIMIT])
            request = self._client.users.by_user_id(key).check_member_groups
            result = await self._call(partial(request.post, body))
            if result is None:  # the user does not exist: member of nothing
                return frozenset()
            found.update(g.lower() for g in (result.value or []))
        return frozenset(found)

    # -- containment and mail (writes) ---------------------------------------------------------------

    async def revoke_sessions(self, object_id: str) -> None:
        request = self._client.users.by_user_id(object_id).revoke_sign_in_sessions.to_post_request_information()
        found = await self._write(request, permission="User.RevokeSessions.All")
        if isinstance(found, dict) and found.get("value") is False:
            raise ServiceRefused(self.service, f"revokeSignInSessions answered false for {object_id}")

    async def confirm_compromised(self, object_id: str) -> bool:
        from msgraph.generated.identity_protection.risky_users.confirm_compromised import (
            confirm_compromised_post_request_body as action,
        )

        body = action.ConfirmCompromisedPostRequestBody(user_ids=[object_id])
        request = self._client.identity_protection.risky_users.confirm_compromised.to_post_request_information(body)
        try:
            await self._write(request, permission="IdentityRiskyUser.ReadWrite.All")
        except NotLicensed:
            return False  # no Entra ID P2: Identity Protection is not there to tell
        return True

    async def disable_account(self, object_id: str) -> None:
        from msgraph.generated.models.user import User

        request = self._client.users.by_user_id(object_id).to_patch_request_information(User(account_enabled=False))
        await self._write(request, permission="User.EnableDisableAccount.All")

    async def send_mail(self, sender: str, mail: Mail) -> None:
        from msgraph.generated.models.body_type import BodyType
        from msgraph.generated.models.email_address import EmailAddress
        from msgraph.generated.models.importance import Importance
        from msgraph.generated.models.item_body import ItemBody
        from msgraph.generated.models.message import Message
        from msgraph.generated.models.recipient import Recipient
        from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

        message = Message(
            subject=mail.subject,
            body=ItemBody(content_type=BodyType.Html if mail.html else BodyType.Text, content=mail.body),
            to_recipients=[Recipient(email_address=EmailAddress(address=address)) for address in mail.to],
            importance=Importance(mail.importance.lower()),
        )
        body = SendMailPostRequestBody(message=message, save_to_sent_items=True)
        request = self._client.users.by_user_id(sender).send_mail.to_post_request_information(body)
        await self._write(request, permission="Mail.Send")

    async def set_inbox_rule_enabled(self, key: str, rule_id: str, enabled: bool) -> None:
        """``PATCH .../mailFolders/inbox/messageRules/{id}`` with ``isEnabled`` alone (the other properties keep their
        values): https://learn.microsoft.com/graph/api/messagerule-update, application ``MailboxSettings.ReadWrite``."""
        from msgraph.generated.models.message_rule import MessageRule

        rule = self._client.users.by_user_id(key).mail_folders.by_mail_folder_id("inbox").message_rules
        request = rule.by_message_rule_id(rule_id).to_patch_request_information(MessageRule(is_enabled=enabled))
        await self._write(request, permission="MailboxSettings.ReadWrite")

    async def _write(self, request: RequestInformation, *, permission: str) -> Any:
        """Like :meth:`_json` for a write: a 404 (no such user or mailbox) is refused, not ``None``; a 401/403 names
        ``permission``, the application permission the write needs."""
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        adapter = self._client.request_adapter
        error_map: dict[str, Any] = {"XXX": ODataError}
        send = partial(adapter.send_primitive_async, request, "bytes", error_map)
        raw = await self._call(send, missing=False, permission=permission)
        if not raw:
            return None  # 202 Accepted / 204 No Content
        try:
            return json.loads(raw)
        except ValueError as error:
            raise TransientServiceError(self.service, "response is not JSON") from error

    async def close(self) -> None:
        await self._reads.aclose()
        if self._http is not None:
            await self._http.aclose()
        if self._transport is not None:
            await self._transport.aclose()

    async def _call(
        self, call: Callable[[], Awaitable[T | None]], *, missing: bool = True, permission: str = "User.Read.All"
    ) -> T | None:
        """Run an SDK call; ``None`` for 404 (when ``missing``), typed errors for everything else."""
        from kiota_abstractions.api_error import APIError

        try:
            return await call()
        except APIError as error:
            status = error.response_status_code
            if status == 404 and missing:
                return None
            # A missing licence: 403 for reports and Identity Protection, 400 seen from PIM.
            if status in (400, 403) and _unlicensed(error):
                message = f"HTTP {status}: {_odata_message(error)}"
                raise NotLicensed(self.service, message, http_status=status) from error
            raise _mapped(status, _odata_message(error), permission) from error
        except httpx.TimeoutException as error:
            raise TransientServiceError(self.service, f"timed out ({type(error).__name__})") from error
        except httpx.TransportError as error:
            raise TransientServiceError(self.service, f"{type(error).__name__}: {error}") from error


class NotLicensed(ServiceRefused):
    """403 because the tenant lacks the licence for the feature (e.g. Entra ID P2), not the app a permission."""


def _unlicensed(error: Exception) -> bool:
    inner = getattr(error, "error", None)
    code = str(getattr(inner, "code", None) or "").lower()
    message = str(getattr(inner, "message", None) or "").lower()
    return code in _UNLICENSED_CODES or any(phrase in message for phrase in _UNLICENSED_PHRASES)


def _principal(object_id: str) -> str:
    return f"principalId eq '{object_id.replace(chr(39), chr(39) * 2)}'"


def _role(row: dict[str, Any], *, eligible: bool) -> DirectoryRole:
    """A unifiedRoleAssignment or unifiedRoleEligibilityScheduleInstance row: ``roleDefinitionId`` is a built-in
    role's template id (https://learn.microsoft.com/graph/api/resources/unifiedroleassignment)."""
    definition = row.get("roleDefinition")
    name = definition.get("displayName") if isinstance(definition, dict) else None
    return DirectoryRole(role_id=str(row["roleDefinitionId"]).lower(), name=_text(name), eligible=eligible)


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapped(status: int | None, message: str, permission: str = "User.Read.All") -> ServiceError:
    if status is None or status == 429 or status >= 500:
        # The SDK's retry middleware already waited out Retry-After; the queue retries the event later.
        return TransientServiceError("graph", f"HTTP {status}: {message}", http_status=status)
    if status in (401, 403):
        message = f"{message} (check the identity's Graph application permissions, e.g. {permission})"
    return ServiceRefused("graph", f"HTTP {status}: {message}", http_status=status)


def _odata_message(error: Exception) -> str:
    inner = getattr(error, "error", None)
    code = getattr(inner, "code", None)
    message = getattr(inner, "message", None) or str(error)
    return f"{code}: {message}" if code else str(message)
