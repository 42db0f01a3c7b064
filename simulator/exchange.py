"""The Exchange Online admin endpoint ``POST /adminapi/beta/{tenantId}/InvokeCommand``.

The endpoint is undocumented; the shapes follow what community clients observe: OData JSON with rows in
``value``, ``@odata.nextLink`` re-POSTed with the same body, and errors whose ``message`` is
``|<exception type>|<text>`` with the text repeated in ``details[].message``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any
from urllib.parse import quote

from simulator.state import TenantState
from simulator.tenant import Json, strip_private
from simulator.tokens import TokenProblem
from simulator.wire import ODATA_CONTENT_TYPE, NotJson, Request, Response, json_response

SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
NOT_FOUND_TYPE = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
VALIDATION_TYPE = "Microsoft.Exchange.Management.Tasks.ValidationException"
PARAMETER_TYPE = "System.Management.Automation.ParameterBindingException"
COMMAND_NOT_FOUND_TYPE = "System.Management.Automation.CommandNotFoundException"
ODATA_EXCEPTION_TYPE = "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"
UNBLOCK_LIMIT_TEXT = "You have exceeded the unblock limit for this user. Contact Microsoft Support to unblock the user."
# The service's detail codes are opaque; the unblock-limit one is kept stable because clients log it.
_DETAIL_CODES = {VALIDATION_TYPE: "Ex6F9304"}
_WWW_AUTHENTICATE = (
    'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
    'trusted_issuers="00000001-0000-0000-c000-000000000000@*", '
    'token_types="app_asserted_user_v1 service_asserted_app_v1", error="invalid_token"'
)
_MAILBOX_DEFAULTS: Json = {
    "ForwardingSmtpAddress": None,
    "ForwardingAddress": None,
    "DeliverToMailboxAndForward": False,
}
# PowerShell binds parameter names case-insensitively and rejects names a cmdlet does not have.
_PARAMETERS: dict[str, frozenset[str]] = {
    "get-blockedsenderaddress": frozenset({"senderaddress"}),
    "remove-blockedsenderaddress": frozenset({"senderaddress", "reason", "confirm"}),
    "get-mailbox": frozenset(
        {"identity", "resultsize", "recipienttypedetails", "filter", "properties", "propertysets"}
    ),
    # https://learn.microsoft.com/powershell/module/exchange/get-recipient (Identity set)
    "get-recipient": frozenset({"identity", "resultsize", "recipienttype", "recipienttypedetails", "properties"}),
    # https://learn.microsoft.com/powershell/module/exchange/set-mailbox: the forwarding parameters (and Confirm).
    "set-mailbox": frozenset(
        {"identity", "forwardingsmtpaddress", "forwardingaddress", "delivertomailboxandforward", "confirm"}
    ),
}


def anchor_mailbox(tenant_id: str) -> str:
    return f"APP:{SYSTEM_MAILBOX}@{tenant_id}"


def context_url(tenant_id: str) -> str:
    return f"https://outlook.office365.com/adminapi/beta/{tenant_id}/$metadata#Collection(Exchange.GenericHashTable)"


def error(status: int, code: str, text: str, exception_type: str | None = None) -> Response:
    """The InvokeCommand error body.

    A cmdlet's exception comes as the endpoint answers it (the shape the ExchangeOnlineManagement module's REST client
    parses, and that tools calling the endpoint report): ``message`` "Error executing cmdlet", the exception in
    ``details[].message`` as ``Ex<code>|<exception type>|<text>``, and the OData wrapper in ``innererror.type``.
    Errors before any cmdlet runs (routing, the body) carry their text alone.
    """
    if exception_type is None:
        body: Json = {
            "error": {"code": code, "message": text, "details": [{"code": code, "target": "", "message": text}]}
        }
        return json_response(status, body, {"request-id": str(uuid.uuid4())})
    detail_code = _DETAIL_CODES.get(exception_type) or _detail_code(exception_type)
    payload = {
        "error": {
            "code": code,
            "message": "Error executing cmdlet",
            "details": [{"code": "", "target": "", "message": f"{detail_code}|{exception_type}|{text}"}],
            "innererror": {"message": "Error executing cmdlet", "type": ODATA_EXCEPTION_TYPE},
        }
    }
    return json_response(status, payload, {"request-id": str(uuid.uuid4())})


def non_terminating(rows: list[Json], errors: list[str], tenant_in_path: str) -> Response:
    """A 200 whose cmdlet wrote errors without failing (``@adminapi.errors``): it did not do what was asked."""
    payload: Json = {
        "@odata.context": context_url(tenant_in_path),
        "@adminapi.warnings": [],
        "@adminapi.errors": errors,
        "value": rows,
    }
    return json_response(200, payload, {"request-id": str(uuid.uuid4())}, content_type=ODATA_CONTENT_TYPE)


def _detail_code(seed: str) -> str:
    return "Ex" + hashlib.sha256(seed.encode()).hexdigest()[:6].upper()


def unauthorized(problem: TokenProblem) -> Response:
    response = error(401, "Unauthorized", problem.message)
    response.headers["WWW-Authenticate"] = _WWW_AUTHENTICATE
    return response


def not_found_object(identity: str) -> Response:
    return error(
        404,
        "NotFound",
        f"The operation couldn't be performed because object '{identity}' couldn't be found.",
        NOT_FOUND_TYPE,
    )


def cmdlet_name(request: Request) -> str | None:
    """The CmdletName of the body, or None when the body does not carry one."""
    try:
        body = request.json()
    except NotJson:
        return None
    cmdlet_input = body.get("CmdletInput") if isinstance(body, dict) else None
    name = cmdlet_input.get("CmdletName") if isinstance(cmdlet_input, dict) else None
    return name if isinstance(name, str) and name else None


def check_anchor(request: Request, tenant_in_path: str) -> Response | None:
    """The 400 for a missing or wrong ``X-AnchorMailbox``; None when it routes to the tenant."""
    anchor = request.header("X-AnchorMailbox")
    if anchor is None or anchor.strip().casefold() != anchor_mailbox(tenant_in_path).casefold():
        return error(
            400,
            "BadRequest",
            f"The X-AnchorMailbox header must be '{anchor_mailbox(tenant_in_path)}', got {anchor!r}.",
        )
    return None


def invoke_command(request: Request, state: TenantState, tenant_in_path: str) -> Response:
    try:
        body = request.json()
    except NotJson as exc:
        return error(400, "BadRequest", str(exc))
    cmdlet_input = body.get("CmdletInput") if isinstance(body, dict) else None
    name = cmdlet_input.get("CmdletName") if isinstance(cmdlet_input, dict) else None
    parameters = cmdlet_input.get("Parameters", {}) if isinstance(cmdlet_input, dict) else None
    if parameters is None:
        parameters = {}
    if not isinstance(name, str) or not name or not isinstance(parameters, dict):
        return error(
            400,
            "BadRequest",
            'The body must be {"CmdletInput": {"CmdletName": "<cmdlet>", "Parameters": {...}}}.',
        )
    allowed = _PARAMETERS.get(name.casefold())
    if allowed is None:
        # A cmdlet the app's role does not include (or that does not exist) is refused before it runs: 403, no body.
        return Response(403)
    params = {str(k).casefold(): v for k, v in parameters.items()}
    for key in params:
        if key not in allowed:
            original = next(k for k in parameters if str(k).casefold() == key)
            return error(
                400,
                "BadRequest",
                f"A parameter cannot be found that matches parameter name '{original}'.",
                PARAMETER_TYPE,
            )
    handler = {
        "get-blockedsenderaddress": _get_blocked_sender_address,
        "remove-blockedsenderaddress": _remove_blocked_sender_address,
        "get-mailbox": _get_mailbox,
        "get-recipient": _get_recipient,
        "set-mailbox": _set_mailbox,
    }[name.casefold()]
    return handler(request, state, tenant_in_path, params)


def _string_param(params: dict[str, Any], name: str) -> str | Response | None:
    value = params.get(name.casefold())
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        return error(
            400,
            "BadRequest",
            f"Cannot bind parameter '{name}'. Cannot convert value '{value}' to a string address.",
            PARAMETER_TYPE,
        )
    return value.strip()


def _mandatory_param(params: dict[str, Any], name: str) -> str | Response:
    value = _string_param(params, name)
    if value is None:
        return error(
            400,
            "BadRequest",
            f"Cannot process command because of one or more missing mandatory parameters: {name}.",
            PARAMETER_TYPE,
        )
    return value


def _get_blocked_sender_address(
    request: Request, state: TenantState, tenant_in_path: str, params: dict[str, Any]
) -> Response:
    address = _string_param(params, "SenderAddress")
    if isinstance(address, Response):
        return address
    rows = state.blocked_rows()
    if address is not None:
        rows = [row for row in rows if row["SenderAddress"].casefold() == address.casefold()]
    return _rows(request, state, tenant_in_path, rows)


def _remove_blocked_sender_address(
    request: Request, state: TenantState, tenant_in_path: str, params: dict[str, Any]
) -> Response:
    address = _mandatory_param(params, "SenderAddress")
    if isinstance(address, Response):
        return address
    row = state.find_blocked(address)
    if row is None:
        return not_found_object(address)
    user = state.find_user(address)
    if row.get("x-unblockLimitReached") is True or (user is not None and user.get("x-unblockLimitReached") is True):
        return error(500, "InternalServerError", UNBLOCK_LIMIT_TEXT, VALIDATION_TYPE)
    if row.get("x-removeErrors"):
        return non_terminating([], list(row["x-removeErrors"]), tenant_in_path)
    if not state.schedule_removal(address):
        return not_found_object(address)
    return _payload(tenant_in_path, [], warnings=list(row.get("x-removeWarnings") or []))


def _get_mailbox(request: Request, state: TenantState, tenant_in_path: str, params: dict[str, Any]) -> Response:
    identity = _string_param(params, "Identity")
    if isinstance(identity, Response):
        return identity
    if identity is None:
        rows = [mailbox_row(user) for user in state.users]
        return _rows(request, state, tenant_in_path, rows)
    user = state.find_user(identity) or _by_proxy_address(state, identity)
    if user is None:
        return not_found_object(identity)
    return _rows(request, state, tenant_in_path, [mailbox_row(user)])


_SET_FIELDS = {
    "forwardingsmtpaddress": "ForwardingSmtpAddress",
    "forwardingaddress": "ForwardingAddress",
    "delivertomailboxandforward": "DeliverToMailboxAndForward",
}


def _set_mailbox(request: Request, state: TenantState, tenant_in_path: str, params: dict[str, Any]) -> Response:
    """``Set-Mailbox -Identity X`` with the forwarding parameters: a JSON ``null`` is PowerShell's ``$null`` (the
    field is cleared), as InvokeCommand callers send it. Nothing is returned (an empty ``value``); a mailbox that
    does not exist is the cmdlet's ManagementObjectNotFoundException."""
    identity = _mandatory_param(params, "Identity")
    if isinstance(identity, Response):
        return identity
    changes: Json = {}
    for key, field in _SET_FIELDS.items():
        if key not in params:
            continue
        value = params[key]
        if field == "DeliverToMailboxAndForward":
            if not isinstance(value, bool):
                return error(400, "BadRequest", f"Cannot convert value '{value}' to type 'System.Boolean'.",
                             PARAMETER_TYPE)  # fmt: skip
        elif value is not None and (not isinstance(value, str) or not value.strip()):
            return error(400, "BadRequest", f"Cannot bind parameter '{field}' to the value '{value}'.", PARAMETER_TYPE)
        changes[field] = value
    if not state.set_mailbox(identity, changes, lambda key: _by_proxy_address(state, key)):
        return not_found_object(identity)
    return _payload(tenant_in_path, [])


def _get_recipient(request: Request, state: TenantState, tenant_in_path: str, params: dict[str, Any]) -> Response:
    """``Get-Recipient -Identity X``: a mailbox, mail user or mail contact by any of its names.

    A ``ForwardingAddress`` names a recipient by name, alias, DN or address; the fields served are those of the
    cmdlet's output (RecipientType, RecipientTypeDetails, PrimarySmtpAddress, ExternalEmailAddress, ...).
    """
    identity = _string_param(params, "Identity")
    if isinstance(identity, Response):
        return identity
    rows = [_recipient_row(user) for user in state.users] + [strip_private(r) for r in state.recipients]
    if identity is not None:
        rows = [row for row in rows if _names_recipient(row, identity)]
        if not rows:
            return not_found_object(identity)
    return _rows(request, state, tenant_in_path, rows)


def _recipient_row(user: Json) -> Json:
    address = user.get("mail") or user["userPrincipalName"]
    return {
        "Name": user.get("displayName") or address.partition("@")[0],
        "Alias": address.partition("@")[0],
        "Identity": user.get("displayName") or address.partition("@")[0],
        "RecipientType": "UserMailbox",
        "RecipientTypeDetails": "UserMailbox",
        "PrimarySmtpAddress": address,
        "ExternalEmailAddress": None,
        "ExternalDirectoryObjectId": user["id"],
        "EmailAddresses": user.get("proxyAddresses") or [f"SMTP:{address}"],
    }


def _names_recipient(row: Json, identity: str) -> bool:
    wanted = identity.casefold()
    for key in ("Name", "Alias", "Identity", "DistinguishedName", "PrimarySmtpAddress", "ExternalDirectoryObjectId"):
        value = row.get(key)
        if isinstance(value, str) and value.casefold() == wanted:
            return True
    external = row.get("ExternalEmailAddress")
    if isinstance(external, str) and external.casefold().removeprefix("smtp:") == wanted.removeprefix("smtp:"):
        return True
    proxies = row.get("EmailAddresses") or []
    return any(isinstance(p, str) and p.casefold().removeprefix("smtp:") == wanted for p in proxies)


def _by_proxy_address(state: TenantState, address: str) -> Json | None:
    wanted = f"smtp:{address}".casefold()
    for user in state.users:
        proxies = user.get("proxyAddresses") or []
        if any(isinstance(p, str) and p.casefold() == wanted for p in proxies):
            return user
    return None


def mailbox_row(user: Json) -> Json:
    mailbox = user.get("x-mailbox") or {}
    row: Json = {
        **_MAILBOX_DEFAULTS,
        "PrimarySmtpAddress": user.get("mail") or user["userPrincipalName"],
        "UserPrincipalName": user["userPrincipalName"],
    }
    row.update({k: v for k, v in mailbox.items() if not str(k).startswith("x-")})
    return row


def _payload(
    tenant_in_path: str, rows: list[Json], next_link: str | None = None, warnings: list[str] | None = None
) -> Response:
    payload: Json = {"@odata.context": context_url(tenant_in_path), "@adminapi.warnings": warnings or [], "value": rows}
    if next_link is not None:
        payload["@odata.nextLink"] = next_link
    return json_response(200, payload, {"request-id": str(uuid.uuid4())}, content_type=ODATA_CONTENT_TYPE)


def _page_size(request: Request, default: int) -> tuple[int, bool]:
    """The page size from ``Prefer: odata.maxpagesize=N`` (and whether it was asked for).

    The tenant's page size is the service's own maximum: a client may ask for smaller pages, never larger.
    """
    prefer = request.header("Prefer") or ""
    for preference in prefer.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().casefold() == "odata.maxpagesize" and value.strip().isdigit() and int(value) > 0:
            return min(int(value), default), True
    return default, False


def cased(row: Json, casing: str) -> Json:
    """``row`` with its field names in another plausible casing: the endpoint's casing is not documented, and the
    product must decide the same whichever it is (``x-exchangeFieldCasing``)."""
    if casing == "DateTime":
        return {k.replace("Datetime", "DateTime"): v for k, v in row.items()}
    if casing == "camelCase":
        return {k[:1].lower() + k[1:]: v for k, v in row.items()}
    return row


def _rows(request: Request, state: TenantState, tenant_in_path: str, rows: list[Json]) -> Response:
    rows = [cased(row, state.tenant.exchange_field_casing) for row in rows]
    selected = request.query.get("$select")
    if selected:
        wanted = {name.strip().casefold() for name in selected.split(",") if name.strip()}
        rows = [{k: v for k, v in row.items() if k.casefold() in wanted} for row in rows]
    page_size, asked = _page_size(request, state.tenant.exchange_page_size)
    token = request.query.get("$skiptoken", "0")
    if not token.isdigit():
        return error(400, "BadRequest", f"The $skiptoken '{token}' is not valid.")
    offset = int(token)
    next_link = None
    if offset + page_size < len(rows):
        select = f"$select={quote(selected, safe=',')}&" if selected else ""
        endpoint = f"{request.base_url}/adminapi/beta/{tenant_in_path}/InvokeCommand"
        next_link = f"{endpoint}?{select}$skiptoken={offset + page_size}"
    response = _payload(tenant_in_path, rows[offset : offset + page_size], next_link)
    if asked:
        response.headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
    return response
