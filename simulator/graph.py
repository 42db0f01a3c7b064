"""Microsoft Graph v1.0: the subset the product calls, in Graph's wire shapes."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from simulator.state import TenantState
from simulator.tenant import Json, strip_private
from simulator.tokens import TokenProblem
from simulator.wire import (
    ODATA_CONTENT_TYPE,
    Headers,
    NotJson,
    Request,
    Response,
    iso_seconds,
    json_response,
    request_for,
    utc_now,
)

METADATA = "https://graph.microsoft.com/v1.0/$metadata"
CHECK_MEMBER_GROUPS_LIMIT = 20
MAX_TOP = 2000
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
_BAD_JSON = (
    "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format."
)


MAX_BATCH = 20  # requests per $batch (https://learn.microsoft.com/graph/json-batching)


def batch_requests(request: Request) -> list[Json] | Response:
    """The requests of a ``$batch`` body (``{"requests": [{"id", "method", "url", "headers"?, "body"?}]}``), or
    the 400 Graph answers a malformed batch with."""
    try:
        body = request.json()
    except ValueError:
        return bad_json(request)
    subs = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(subs, list) or not subs:
        return error(request, 400, "BadRequest", "Invalid batch payload: 'requests' must be a non-empty array.")
    if len(subs) > MAX_BATCH:
        return error(request, 400, "BadRequest", f"Invalid batch payload: more than {MAX_BATCH} requests.")
    ids: set[str] = set()
    for sub in subs:
        fields = sub if isinstance(sub, dict) else {}
        if not all(isinstance(fields.get(k), str) and fields.get(k) for k in ("id", "method", "url")):
            return error(request, 400, "BadRequest", "Invalid batch payload: each request needs id, method and url.")
        if fields["id"] in ids:
            return error(request, 400, "BadRequest", f"Invalid batch payload: the id '{fields['id']}' is repeated.")
        if fields["url"].lower().startswith(("http:", "https:")):
            return error(request, 400, "BadRequest", "Invalid batch payload: a url must be relative to the version.")
        ids.add(fields["id"])
    return subs


def sub_request(batch: Request, sub: Json) -> Request:
    """A batched request as if it came alone: the batch's headers (its token) under the request's own."""
    headers = {**dict(batch.headers.items()), **{str(k): str(v) for k, v in (sub.get("headers") or {}).items()}}
    body = sub.get("body")
    raw = b"" if body is None else json.dumps(body).encode() if not isinstance(body, str) else body.encode()
    return request_for(
        str(sub["method"]).upper(), str(sub["url"]), Headers(headers.items()), raw, batch.base_url, prefix="/v1.0"
    )


def sub_response(key: str, response: Response) -> Json:
    """One of a batch's ``responses``: the body as JSON when it is JSON, else as text (Graph base64-encodes
    binary bodies; nothing the product reads is binary)."""
    answer: Json = {"id": key, "status": response.status, "headers": dict(response.headers)}
    if response.body:
        try:
            answer["body"] = json.loads(response.body)
        except ValueError:
            answer["body"] = response.body.decode("utf-8", errors="replace")
    return answer


def _request_ids(request: Request) -> tuple[str, str]:
    return str(uuid.uuid4()), request.header("client-request-id") or str(uuid.uuid4())


def ok(request: Request, payload: Any) -> Response:
    request_id, client_request_id = _request_ids(request)
    headers = {"request-id": request_id, "client-request-id": client_request_id}
    return json_response(200, payload, headers, content_type=ODATA_CONTENT_TYPE)


def error(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Graph's error body, ``innerError`` included."""
    request_id, client_request_id = _request_ids(request)
    payload = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": iso_seconds(utc_now()),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
    extra = {"request-id": request_id, "client-request-id": client_request_id, **(headers or {})}
    return json_response(status, payload, extra)


def unauthorized(request: Request, problem: TokenProblem) -> Response:
    return error(request, 401, "InvalidAuthenticationToken", problem.message, {"WWW-Authenticate": _WWW_AUTHENTICATE})


def not_found(request: Request, key: str) -> Response:
    return error(
        request,
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
    )


def bad_json(request: Request) -> Response:
    return error(request, 400, "BadRequest", _BAD_JSON)


def _select(request: Request) -> list[str] | None:
    raw = request.query.get("$select")
    if raw is None:
        return None
    names = [name.strip() for name in raw.split(",") if name.strip()]
    return names or None


def get_user(request: Request, state: TenantState, key: str) -> Response:
    user = _lookup(state, key)
    if user is None:
        return not_found(request, key)
    served: Json = strip_private(user)
    names = _select(request)
    if names is None:
        return ok(request, {"@odata.context": f"{METADATA}#users/$entity", **served})
    by_folded = {name.casefold(): name for name in served}
    picked: Json = {}
    for name in names:
        actual = by_folded.get(name.casefold())
        # Graph answers a selected property the object does not have with null.
        picked[actual or name] = served[actual] if actual else None
    context = f"{METADATA}#users({','.join(names)})/$entity"
    return ok(request, {"@odata.context": context, **picked})


def list_users(request: Request, state: TenantState) -> Response:
    """``GET /users`` with an optional ``$filter`` (``mail eq '...'`` and the like; string equality ignores case
    as Graph's does for these properties), ``$select`` and ``$top``."""
    top_text = request.query.get("$top", str(MAX_TOP))
    if not top_text.isdigit() or not 1 <= int(top_text) <= MAX_TOP:
        return error(request, 400, "BadRequest", f"Invalid $top value '{top_text}': use a number from 1 to {MAX_TOP}.")
    users = [strip_private(u) for u in state.users]
    expression = request.query.get("$filter")
    if expression:
        users = [u for u in users if _matches_filter(_fold(u), expression.casefold())]
    names = _select(request)
    if names is not None:
        users = [{n: u.get(n) for n in names} for u in users]
    return ok(request, {"@odata.context": f"{METADATA}#users", "value": users[: int(top_text)]})


def _fold(item: Json) -> Json:
    return {k.casefold(): v.casefold() if isinstance(v, str) else v for k, v in item.items()}


def _lookup(state: TenantState, key: str) -> Json | None:
    """Graph addresses a user by object id or userPrincipalName only, never by mail."""
    folded = key.casefold()
    for user in state.users:
        if folded in (str(user.get("id", "")).casefold(), str(user.get("userPrincipalName", "")).casefold()):
            return user
    return None


def check_member_groups(request: Request, state: TenantState, key: str) -> Response:
    try:
        body = request.json()
    except ValueError:
        return bad_json(request)
    group_ids = body.get("groupIds") if isinstance(body, dict) else None
    if not isinstance(group_ids, list) or not all(isinstance(g, str) for g in group_ids):
        return error(request, 400, "Request_BadRequest", "Invalid request: groupIds must be a collection of strings.")
    if len(group_ids) > CHECK_MEMBER_GROUPS_LIMIT:
        return error(
            request,
            400,
            "Request_BadRequest",
            f"Too many groupIds: {len(group_ids)}. A request can check at most {CHECK_MEMBER_GROUPS_LIMIT}.",
        )
    user = _lookup(state, key)
    if user is None:
        return not_found(request, key)
    member_of = {str(g).casefold() for g in user.get("x-memberOf", [])}
    value = [g for g in group_ids if g.casefold() in member_of]
    return ok(request, {"@odata.context": f"{METADATA}#Collection(Edm.String)", "value": value})


def list_domains(request: Request, state: TenantState) -> Response:
    return ok(request, {"@odata.context": f"{METADATA}#domains", "value": strip_private(state.domains)})


def get_alert(request: Request, state: TenantState, alert_id: str) -> Response:
    for alert in state.alerts:
        if alert.get("id") == alert_id:
            served: Json = strip_private(alert)
            return ok(request, {"@odata.context": f"{METADATA}#security/alerts_v2/$entity", **served})
    return not_found(request, alert_id)


def list_alerts(request: Request, state: TenantState) -> Response:
    top_text = request.query.get("$top")
    page_size = state.tenant.graph_page_size
    if top_text is not None:
        if not top_text.isdigit() or not 1 <= int(top_text) <= MAX_TOP:
            return error(
                request, 400, "BadRequest", f"Invalid $top value '{top_text}': use a number from 1 to {MAX_TOP}."
            )
        page_size = int(top_text)
    offset = 0
    token = request.query.get("$skiptoken")
    if token is not None:
        decoded = _decode_skiptoken(token)
        if decoded is None:
            return error(request, 400, "BadRequest", "The $skiptoken is invalid or has expired.")
        offset = decoded
    alerts = strip_private(state.alerts)
    expression = request.query.get("$filter")
    if expression:
        clauses = _alert_clauses(expression, refuse_combined=state.tenant.alerts_combined_filter_refused)
        if isinstance(clauses, str):
            return error(request, 400, "BadRequest", clauses)
        alerts = [a for a in alerts if all(_holds(a, clause) for clause in clauses)]
    payload: Json = {"@odata.context": f"{METADATA}#security/alerts_v2", "value": alerts[offset : offset + page_size]}
    if offset + page_size < len(alerts):
        params = {k: v for k, v in request.query.items() if k in ("$top", "$filter", "$select")}
        params["$skiptoken"] = _encode_skiptoken(offset + page_size)
        payload["@odata.nextLink"] = (
            f"{request.base_url}/v1.0/security/alerts_v2?{urlencode(params, safe='$', quote_via=quote)}"
        )
    return ok(request, payload)


def _encode_skiptoken(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode("ascii").rstrip("=")


def _decode_skiptoken(token: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except ValueError:
        return None
    prefix, _, number = text.partition(":")
    return int(number) if prefix == "offset" and number.isdigit() else None


# A deliberately small $filter: ``prop op literal`` clauses and ``collection/any(x:x eq literal)`` (what Graph
# documents for multi-valued properties such as proxyAddresses) joined by ``and``, and such conjunctions joined by
# ``or``. On /users, clauses it cannot read (other functions, nested parentheses) are ignored, so a client must not
# rely on the simulator to narrow results it has not checked itself; on alerts they are refused (``_alert_clauses``).
_CLAUSE = re.compile(r"^\s*(\w+)\s+(eq|ne|gt|ge|lt|le)\s+(.+?)\s*$", re.IGNORECASE)
_ANY = re.compile(r"^\s*(\w+)/any\(\s*(\w+)\s*:\s*(\w+)\s+eq\s+('(?:[^']|'')*')\s*\)\s*$", re.IGNORECASE)
_UNREADABLE = object()


def _literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    moment = _datetime(text)
    if moment is not None:
        return moment
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return _UNREADABLE


def _datetime(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2}T", value):
        return None
    text = value.replace("Z", "+00:00")
    # fromisoformat on 3.11 takes at most six fractional digits; Graph writes seven.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _outside_quotes(expression: str, separator: re.Pattern[str]) -> list[str]:
    """``expression`` split at ``separator`` where it is not inside a quoted literal."""
    parts: list[str] = []
    start = position = 0
    quoted = False
    while position < len(expression):
        if expression[position] == "'":
            quoted = not quoted  # '' inside a literal toggles twice: still inside
        elif not quoted and (found := separator.match(expression, position)) is not None:
            parts.append(expression[start:position])
            start = position = found.end()
            continue
        position += 1
    return [*parts, expression[start:]]


_OR_AT = re.compile(r"\s+or\s+", re.IGNORECASE)
_AND_AT = re.compile(r"\s+and\s+", re.IGNORECASE)


def _matches_filter(item: Json, expression: str) -> bool:
    return any(_matches_all(item, part) for part in _outside_quotes(expression, _OR_AT))


def _matches_all(item: Json, expression: str) -> bool:
    for clause in _outside_quotes(expression, _AND_AT):
        lambda_match = _ANY.match(clause)
        if lambda_match:
            prop, variable, compared, literal_text = lambda_match.groups()
            values = item.get(prop)
            literal = _literal(literal_text)
            if variable != compared or not isinstance(literal, str):
                continue  # not read: ignored
            if not isinstance(values, list) or literal.casefold() not in [str(v).casefold() for v in values]:
                return False
            continue
        if "(" in clause:
            continue  # a function or a group the simulator does not read: ignored
        match = _CLAUSE.match(clause)
        if not match:
            continue
        prop, op, literal_text = match.group(1), match.group(2).lower(), match.group(3)
        literal = _literal(literal_text)
        if literal is _UNREADABLE:
            continue
        actual: Any = item.get(prop)
        if isinstance(literal, dt.datetime):
            actual = _datetime(actual)
            if actual is None:
                return False
        if not _compare(actual, op, literal):
            return False
    return True


# ``GET /security/alerts_v2`` documents $filter on these properties only (security-list-alerts_v2.md); Graph
# refuses others, so a client that filters on ``title`` must learn it here, not in production.
ALERT_FILTER_PROPERTIES = (
    "assignedTo",
    "classification",
    "determination",
    "createdDateTime",
    "lastUpdateDateTime",
    "severity",
    "serviceSource",
    "status",
)
_ALERT_FILTERABLE = {name.casefold(): name for name in ALERT_FILTER_PROPERTIES}
_QUOTED = re.compile(r"'(?:[^']|'')*'")
_FUNCTION_ARGUMENT = re.compile(r"^\s*\w+\s*\(\s*([\w/]+)")
_PROPERTY = re.compile(r"^\s*([A-Za-z_][\w/]*)")
_NOT_EVALUATED = re.compile(r"[()]|\b(?:or|not|in|has)\b", re.IGNORECASE)
Clause = tuple[str, str, Any]


def _alert_clauses(expression: str, *, refuse_combined: bool) -> list[Clause] | str:
    """The ``(property, operator, literal)`` clauses of an alerts ``$filter``, or why it is refused.

    Only ``property op literal`` clauses joined by ``and`` are evaluated; anything else on a filterable property
    is refused too (400) rather than ignored, so a test never passes on a filter the simulator did not apply.
    """
    # Quoted literals are masked (same length) so words and brackets inside them are not read as syntax.
    masked = _QUOTED.sub(lambda m: "'" + "_" * (len(m.group()) - 2) + "'", expression)
    parts = _split_top_level_and(masked)
    clauses: list[Clause] = []
    for start, end in parts:
        text, shape = expression[start:end].strip(), masked[start:end]
        named = _FUNCTION_ARGUMENT.match(shape) or _PROPERTY.match(shape)
        path = named.group(1) if named else ""
        prop = _ALERT_FILTERABLE.get(path.split("/")[0].casefold())
        if named and prop is None:
            return (
                f"Invalid filter clause: the property '{path.split('/')[0]}' cannot be used in $filter on alerts; "
                f"filterable properties are {', '.join(ALERT_FILTER_PROPERTIES)}."
            )
        match = _CLAUSE.match(text)
        literal = _literal(match.group(3)) if match else _UNREADABLE
        if prop is None or match is None or "/" in path or _NOT_EVALUATED.search(shape) or literal is _UNREADABLE:
            return (
                f"The simulator does not evaluate the $filter clause '{text}': "
                "use 'property eq|ne|gt|ge|lt|le literal' clauses joined by 'and'."
            )
        if isinstance(literal, dt.datetime):
            literal = _ticks(match.group(3))
        clauses.append((prop, match.group(2).lower(), literal))
    if refuse_combined and len(clauses) > 1:
        # The tenant file's x-alertsCombinedFilterRefused: lets a client's single-property fallback be tested.
        return "Invalid filter clause: this request supports a single filter clause; 'and' is not supported."
    return clauses


def _split_top_level_and(masked: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each clause of ``masked`` split on ``and`` outside brackets."""
    bounds: list[tuple[int, int]] = []
    start = depth = 0
    for match in re.finditer(r"[()]|\s+and\s+", masked, re.IGNORECASE):
        token = match.group()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            bounds.append((start, match.start()))
            start = match.end()
    bounds.append((start, len(masked)))
    return bounds


@dataclass(frozen=True, order=True)
class _Ticks:
    """A moment in 100 ns ticks: Graph writes seven fractional digits, one more than ``datetime`` keeps, and a
    poller's ``lastUpdateDateTime ge <last seen>`` watermark must not round."""

    value: int


def _ticks(value: object) -> _Ticks | None:
    moment = _datetime(value)
    if moment is None or not isinstance(value, str):
        return None
    fraction = re.search(r"T[\d:]+\.(\d+)", value)
    digits = (fraction.group(1) + "0" * 7)[:7] if fraction else "0" * 7
    return _Ticks(int(moment.replace(microsecond=0).timestamp()) * 10_000_000 + int(digits))


def _holds(item: Json, clause: Clause) -> bool:
    prop, op, literal = clause
    actual: Any = item.get(prop)
    if isinstance(literal, _Ticks):
        actual = _ticks(actual)
        if actual is None:
            return False
    return _compare(actual, op, literal)


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if actual is None or expected is None:
        return False
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "ge":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        return bool(actual <= expected)
    except TypeError:
        return False


# -- Identity Protection and the mailbox ----------------------------------------------------------------

_NOT_LICENSED = "Your tenant is not licensed for this feature."
# Well-known folder names (lower case) and the displayName an English mailbox gives them.
WELL_KNOWN_FOLDERS: dict[str, str] = {
    "inbox": "Inbox",
    "archive": "Archive",
    "deleteditems": "Deleted Items",
    "junkemail": "Junk Email",
    "conversationhistory": "Conversation History",
    "rssfeeds": "RSS Feeds",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
}
_ROOT_FOLDER = "msgfolderroot"


def get_risky_user(request: Request, state: TenantState, user_id: str) -> Response:
    """``GET /identityProtection/riskyUsers/{id}``: object ids only, as in the real API.

    A tenant with ``x-entraIdP2: false``, or a user without ``x-riskLevel``, stands for a tenant without Entra ID P2:
    403 ``Forbidden``, not licensed
    (the same answer as confirmCompromised's, see ``_P2_MISSING_CODE``).
    """
    user = next((u for u in state.users if str(u.get("id", "")).casefold() == user_id.casefold()), None)
    if user is None:
        return not_found(request, user_id)
    level = user.get("x-riskLevel")
    if level is None or not state.tenant.entra_id_p2:
        return error(request, 403, _P2_MISSING_CODE, _NOT_LICENSED)
    # confirmCompromised leaves its marks in x-riskState, x-riskDetail and x-riskUpdatedAt.
    risky: Json = {
        "@odata.context": f"{METADATA}#identityProtection/riskyUsers/$entity",
        "id": user["id"],
        "isDeleted": False,
        "isProcessing": False,
        "riskLastUpdatedDateTime": user.get("x-riskUpdatedAt") or _seven_digits(state.loaded_at),
        "riskLevel": level,
        "riskState": user.get("x-riskState") or ("none" if level == "none" else "atRisk"),
        "riskDetail": user.get("x-riskDetail") or "none",
        "userDisplayName": user.get("displayName"),
        "userPrincipalName": user.get("userPrincipalName"),
    }
    return ok(request, risky)


# -- directory roles and MFA registration --------------------------------------------------------------

# Built-in roles the simulator knows by template id and display name: a user's ``x-directoryRoles`` (active) and
# ``x-eligibleRoles`` (PIM) name them either way. Ids and names from
# https://learn.microsoft.com/entra/identity/role-based-access-control/permissions-reference; any other GUID is served
# as a custom role named "Custom role <id>".
BUILT_IN_ROLES: dict[str, str] = {
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "e8611ab8-c189-46e8-94e1-60213ab1f814": "Privileged Role Administrator",
    "194ae4cb-b126-40b2-bd5b-6091b380977d": "Security Administrator",
    "29232cdf-9323-42fd-ade2-1d097af3e4de": "Exchange Administrator",
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "729827e3-9c14-49f7-bb1b-9608f156bbb8": "Helpdesk Administrator",
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451": "Global Reader",
    "5d6b6bb7-de71-4623-b4af-96380a352509": "Security Reader",
    "4a5d8f65-41da-4de4-8968-e035b65339cf": "Reports Reader",
    "790c1fb9-7f7d-4f88-86a1-ef1f95c05c1b": "Message Center Reader",
}
# PIM in a tenant without Entra ID P2: the code and message reported for the PIM APIs (e.g.
# https://github.com/JulianHayward/Azure-MG-Sub-Governance-Reporting/issues/114, https://github.com/microsoft/EntraExporter/issues/61).
_PIM_UNLICENSED = ("AadPremiumLicenseRequired", "The tenant needs an AAD Premium 2 license.")
# The authentication methods reports in a tenant without Entra ID P1/P2 (403), as reported in
# https://github.com/microsoftgraph/microsoft-graph-docs-contrib/issues/8777.
_REPORTS_UNLICENSED = (
    "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
    "Neither tenant is B2C or tenant doesn't have premium license",
)
_PRINCIPAL_FILTER = re.compile(r"^\s*principalId\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)
# Methods that are not a second factor (https://learn.microsoft.com/graph/api/resources/userregistrationdetails).
_WEAK_METHODS = frozenset({"email", "securityQuestion"})


def _role_definition(key: str) -> Json:
    """A unifiedRoleDefinition for a template id or built-in display name (the id of a built-in is its template id)."""
    by_name = {name.casefold(): rid for rid, name in BUILT_IN_ROLES.items()}
    role_id = by_name.get(key.casefold(), key.lower())
    name = BUILT_IN_ROLES.get(role_id)
    return {
        "id": role_id,
        "templateId": role_id,
        "displayName": name or f"Custom role {role_id}",
        "description": None,
        "isBuiltIn": name is not None,
        "isEnabled": True,
        "version": None,
        "rolePermissions": [],
        "resourceScopes": ["/"],
    }


def _principal_rows(request: Request, state: TenantState, key: str) -> list[tuple[Json, Json]] | Response:
    """(user, role definition) for ``$filter=principalId eq '{id}'`` (the one filter served) over ``x-{key}``."""
    expression = request.query.get("$filter", "")
    matched = _PRINCIPAL_FILTER.match(expression)
    if not matched:
        return error(
            request,
            400,
            "BadRequest",
            f"Invalid filter clause: the simulator serves only principalId eq '<id>', got {expression!r}.",
        )
    wanted = matched.group(1).casefold()
    return [
        (user, _role_definition(name))
        for user in state.users
        if str(user.get("id", "")).casefold() == wanted
        for name in user.get(key, [])
    ]


def _expanded(request: Request, row: Json, definition: Json) -> Json:
    expand = [e.strip().casefold() for e in request.query.get("$expand", "").split(",")]
    return {**row, "roleDefinition": definition} if "roledefinition" in expand else row


def _role_rows(
    request: Request, state: TenantState, key: str, entity_set: str, id_prefix: str, more: Callable[[Json, Json], Json]
) -> Response:
    """The rows of the principal the filter names, one per role named in the user's ``key``: the fields a role
    assignment and a role eligibility instance share, then ``more(user, definition)``."""
    rows = _principal_rows(request, state, key)
    if isinstance(rows, Response):
        return rows
    value = [
        _expanded(
            request,
            {
                "id": _opaque_id(f"{id_prefix}{user['id']}|{definition['id']}"),
                "principalId": user["id"],
                "roleDefinitionId": definition["id"],
                "directoryScopeId": "/",
                "appScopeId": None,
                **more(user, definition),
            },
            definition,
        )
        for user, definition in rows
    ]
    return ok(request, {"@odata.context": f"{METADATA}#roleManagement/directory/{entity_set}", "value": value})


def list_role_assignments(request: Request, state: TenantState) -> Response:
    """``GET /roleManagement/directory/roleAssignments?$filter=principalId eq '{id}'[&$expand=roleDefinition]``:
    unifiedRoleAssignment rows (https://learn.microsoft.com/graph/api/rbacapplication-list-roleassignments)."""
    return _role_rows(
        request, state, "x-directoryRoles", "roleAssignments", "", lambda user, definition: {"condition": None}
    )


def list_role_eligibility_instances(request: Request, state: TenantState) -> Response:
    """``GET /roleManagement/directory/roleEligibilityScheduleInstances?$filter=principalId eq '{id}'``:
    unifiedRoleEligibilityScheduleInstance rows
    (https://learn.microsoft.com/graph/api/rbacapplication-list-roleeligibilityscheduleinstances); PIM needs Entra
    ID P2 (``x-entraIdP2: false``: 400 ``AadPremiumLicenseRequired``)."""
    if not state.tenant.entra_id_p2:
        return error(request, 400, *_PIM_UNLICENSED)

    def schedule(user: Json, definition: Json) -> Json:
        return {
            "startDateTime": _seven_digits(state.loaded_at),
            "endDateTime": None,
            "memberType": "Direct",
            "roleEligibilityScheduleId": _opaque_id(f"schedule|{user['id']}|{definition['id']}"),
        }

    return _role_rows(request, state, "x-eligibleRoles", "roleEligibilityScheduleInstances", "eligible|", schedule)


def get_user_registration_details(request: Request, state: TenantState, user_id: str) -> Response:
    """``GET /reports/authenticationMethods/userRegistrationDetails/{id}`` (object ids only): a userRegistrationDetails
    (https://learn.microsoft.com/graph/api/userregistrationdetails-get) from the user's ``x-methodsRegistered``
    (``isMfaRegistered``: any method but email and security questions, unless ``x-mfaRegistered`` says). Without
    Entra ID P1 or P2 (``x-entraIdP1`` and ``x-entraIdP2`` false): 403, not licensed."""
    if not (state.tenant.entra_id_p1 or state.tenant.entra_id_p2):
        return error(request, 403, *_REPORTS_UNLICENSED)
    user = next((u for u in state.users if str(u.get("id", "")).casefold() == user_id.casefold()), None)
    if user is None:
        return not_found(request, user_id)
    methods = list(user.get("x-methodsRegistered", []))
    registered = user.get("x-mfaRegistered", any(m not in _WEAK_METHODS for m in methods))
    admin = bool(user.get("x-directoryRoles"))
    details: Json = {
        "@odata.context": f"{METADATA}#reports/authenticationMethods/userRegistrationDetails/$entity",
        "id": user["id"],
        "userPrincipalName": user.get("userPrincipalName"),
        "userDisplayName": user.get("displayName"),
        "userType": "guest" if user.get("userType") == "Guest" else "member",
        "isAdmin": admin,
        "isSsprRegistered": registered,
        "isSsprEnabled": True,
        "isSsprCapable": registered,
        "isMfaRegistered": registered,
        "isMfaCapable": registered,
        "isPasswordlessCapable": any(m in ("fido2", "windowsHelloForBusiness", "passKeyDeviceBound") for m in methods),
        "methodsRegistered": methods,
        "isSystemPreferredAuthenticationMethodEnabled": True,
        "systemPreferredAuthenticationMethods": [m for m in methods if m not in _WEAK_METHODS][:1],
        "userPreferredMethodForSecondaryAuthentication": "push" if "microsoftAuthenticatorPush" in methods else "none",
        "lastUpdatedDateTime": _seven_digits(state.loaded_at),
    }
    return ok(request, details)


def _opaque_id(seed: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(seed.encode()).digest()[:24]).decode().rstrip("=")


def invalid_user(request: Request, key: str) -> Response:
    """How the mailbox endpoints answer a user that does not exist."""
    return error(request, 404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")


def folder_not_found(request: Request) -> Response:
    return error(request, 404, "ErrorItemNotFound", "The specified object was not found in the store.")


def folder_id(user: Json, name: str) -> str:
    """The stable id of a well-known folder of ``user`` (an Exchange-like, URL-safe base64 string)."""
    digest = hashlib.sha256(f"{user['id']}/{name}".encode()).digest()
    return "AAMk" + base64.urlsafe_b64encode(digest).decode("ascii")


def _folders(user: Json) -> list[Json]:
    """Every folder of ``user``: the well-known ones, then its ``x-mailFolders`` (simulator keys kept)."""
    root = folder_id(user, _ROOT_FOLDER)
    folders: list[Json] = [
        {"id": folder_id(user, name), "displayName": display, "parentFolderId": root, "x-wellKnownName": name}
        for name, display in WELL_KNOWN_FOLDERS.items()
    ]
    for custom in user.get("x-mailFolders", []):
        folders.append({"parentFolderId": root, **custom})
    return folders


def _find_folder(user: Json, key: str) -> Json | None:
    folders = _folders(user)
    for folder in folders:
        if folder.get("x-wellKnownName") == key.casefold() or folder["id"] == key:
            return folder
    return None


def get_mail_folder(request: Request, state: TenantState, key: str, folder_key: str) -> Response:
    user = _lookup(state, key)
    if user is None:
        return invalid_user(request, key)
    folder = _find_folder(user, folder_key)
    if folder is None:
        return folder_not_found(request)
    children = sum(1 for f in _folders(user) if f.get("parentFolderId") == folder["id"])
    served: Json = {
        "@odata.context": f"{METADATA}#users('{quote(key, safe='')}')/mailFolders/$entity",
        "id": folder["id"],
        "displayName": folder["displayName"],
        "parentFolderId": folder["parentFolderId"],
        "childFolderCount": children,
        "unreadItemCount": 0,
        "totalItemCount": 0,
        "isHidden": False,
        **strip_private(folder),
    }
    return ok(request, served)


def _inbox_owner(request: Request, state: TenantState, key: str, folder_key: str) -> Json | Response:
    """The user ``key`` names when ``folder_key`` is their Inbox (message rules live on the Inbox only); else Graph's
    answer."""
    user = _lookup(state, key)
    if user is None:
        return invalid_user(request, key)
    folder = _find_folder(user, folder_key)
    if folder is None or folder.get("x-wellKnownName") != "inbox":
        return folder_not_found(request)
    return user


def list_message_rules(request: Request, state: TenantState, key: str, folder_key: str) -> Response:
    """``GET /users/{id}/mailFolders/inbox/messageRules``: rules live on the Inbox only."""
    user = _inbox_owner(request, state, key, folder_key)
    if isinstance(user, Response):
        return user
    rules = []
    for index, rule in enumerate(user.get("x-inboxRules", [])):
        served: Json = strip_private(rule)
        if not served.get("id"):
            served = {"id": rule_id(user, index), **served}
        rules.append(served)
    context = f"{METADATA}#users('{quote(key, safe='')}')/mailFolders('{folder_key}')/messageRules"
    return ok(request, {"@odata.context": context, "value": rules})


# PATCH messageRule: the writable properties (https://learn.microsoft.com/graph/api/messagerule-update) with the
# JSON types they take; id, hasError and isReadOnly are read-only.
WRITABLE_RULE_PROPERTIES: dict[str, tuple[type, ...]] = {
    "isEnabled": (bool,),
    "displayName": (str,),
    "sequence": (int,),
    "actions": (dict,),
    "conditions": (dict,),
    "exceptions": (dict,),
}


def update_message_rule(
    request: Request, state: TenantState, writes: GraphWrites, key: str, folder_key: str, rule_key: str
) -> Response:
    """``PATCH /users/{id}/mailFolders/inbox/messageRules/{id}``: the properties given change, the rest keeps its
    value; 200 with the whole rule (https://learn.microsoft.com/graph/api/messagerule-update). A rule that does not
    exist is 404 ``ErrorItemNotFound``; a read-only or unknown property 400 and nothing changes."""
    user = _inbox_owner(request, state, key, folder_key)
    if isinstance(user, Response):
        return user

    def refusal(name: str, value: Any) -> Response | None:
        kinds = WRITABLE_RULE_PROPERTIES.get(name)
        if kinds is None or not isinstance(value, kinds) or (bool in kinds) != isinstance(value, bool):
            return error(request, 400, "ErrorInvalidProperty", f"The property '{name}' cannot be set to this value.")
        return None

    changes = _patch_changes(request, refusal)
    if isinstance(changes, Response):
        return changes
    rules = [dict(r) for r in user.get("x-inboxRules", [])]
    for index, rule in enumerate(rules):
        if (rule.get("id") or rule_id(user, index)) == rule_key:
            # The generated id is written down, so the rule keeps it whatever happens to the list.
            rules[index] = {**rule, "id": rule_key, **changes}
            writes.change_user(state, user, {"x-inboxRules": rules})
            context = f"{METADATA}#users('{quote(key, safe='')}')/mailFolders('{folder_key}')/messageRules/$entity"
            return ok(request, {"@odata.context": context, **strip_private(rules[index])})
    return folder_not_found(request)


def rule_id(user: Json, index: int) -> str:
    """A stable id for the ``index``-th inbox rule of ``user`` in Exchange's shape (``AQAAAJ5dZqA=``)."""
    digest = hashlib.sha256(f"{user['id']}/rule/{index}".encode()).digest()
    return base64.b64encode(b"\x01\x00\x00\x00" + digest[:4]).decode("ascii")


def _seven_digits(moment: dt.datetime) -> str:
    """``2026-11-27T08:02:11.1234560Z``: Graph writes seven fractional digits."""
    moment = moment.astimezone(dt.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}0Z"


# -- writes: containment and mail --------------------------------------------------------------------------

# Identity Protection answers a tenant without Entra ID P2 with 403 ``Forbidden`` and this message (observed on
# live tenants for riskyUsers, riskDetections and other identityProtection paths). A token without the
# permission gets ``Forbidden`` too, with "... required scopes are missing in the token.": only the message
# tells them apart.
_P2_MISSING_CODE = "Forbidden"
_NO_RECIPIENTS = "At least one recipient isn't valid., A message can't be sent because it contains no recipients."
_NO_MAILBOX = "REST API is not yet supported for this mailbox."
# PATCH /users/{id}: what the simulator lets a client change, with the JSON type each value must have.
WRITABLE_USER_PROPERTIES: dict[str, tuple[type, ...]] = {
    "accountEnabled": (bool,),
    "displayName": (str,),
    "givenName": (str, type(None)),
    "surname": (str, type(None)),
    "jobTitle": (str, type(None)),
    "department": (str, type(None)),
    "companyName": (str, type(None)),
    "officeLocation": (str, type(None)),
    "mobilePhone": (str, type(None)),
    "usageLocation": (str, type(None)),
    "preferredLanguage": (str, type(None)),
}
READ_ONLY_USER_PROPERTIES = frozenset(
    {
        "id",
        "createdDateTime",
        "deletedDateTime",
        "lastPasswordChangeDateTime",
        "signInSessionsValidFromDateTime",
        "onPremisesSyncEnabled",
        "onPremisesSecurityIdentifier",
        "securityIdentifier",
        "proxyAddresses",
        "assignedPlans",
        "provisionedPlans",
        "imAddresses",
    }
)


class GraphWrites:
    """What the Graph write endpoints did: mail sent (the outbox) and one lock that serializes user updates.

    A user is never changed in place: an update builds a new dict and swaps it into ``TenantState.users``, so a
    reader running at the same time sees the old user or the new one, never half of each.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: list[Json] = []

    def sent_mail(self) -> list[Json]:
        """``{"from", "message", "saveToSentItems"}`` per accepted sendMail, in order (copies)."""
        with self._lock:
            return copy.deepcopy(self._sent)

    def record_mail(self, entry: Json) -> None:
        with self._lock:
            self._sent.append(copy.deepcopy(entry))

    def change_user(self, state: TenantState, user: Json, changes: Json) -> None:
        """Swap ``user`` for a copy with ``changes`` applied."""
        with self._lock:
            for index, current in enumerate(state.users):
                if current is user or current.get("id") == user.get("id"):
                    state.users[index] = {**current, **changes}
                    return


def _body(request: Request) -> Json | Response:
    """The JSON object a write carries, or Graph's answer to a body that is not one."""
    try:
        body = request.json()
    except NotJson:
        return bad_json(request)
    if not isinstance(body, dict):
        return bad_json(request)
    return body


def _patch_changes(request: Request, refusal: Callable[[str, Any], Response | None]) -> Json | Response:
    """The properties a PATCH body sets, annotations (``@odata.type``, which the SDK sends) left out; or the answer
    ``refusal`` gives the first property it refuses (and then nothing changes)."""
    body = _body(request)
    if isinstance(body, Response):
        return body
    changes: Json = {}
    for name, value in body.items():
        if name.startswith("@") or "@odata." in name:
            continue
        refused = refusal(name, value)
        if refused is not None:
            return refused
        changes[name] = value
    return changes


def _param(body: Json, name: str) -> Any:
    """An action parameter, its name matched regardless of case as Graph does (Graph's v1.0 metadata, and so the
    msgraph-sdk's ``SendMailPostRequestBody``, spell sendMail's ``Message``/``SaveToSentItems``; the documentation
    ``message``/``saveToSentItems``)."""
    folded = name.casefold()
    return next((value for key, value in body.items() if key.casefold() == folded), None)


def no_content(request: Request, status: int = 204) -> Response:
    request_id, client_request_id = _request_ids(request)
    return Response(status, b"", {"request-id": request_id, "client-request-id": client_request_id})


def revoke_sign_in_sessions(request: Request, state: TenantState, writes: GraphWrites, key: str) -> Response:
    """``POST /users/{id}/revokeSignInSessions``: resets ``signInSessionsValidFromDateTime`` to now."""
    user = _lookup(state, key)
    if user is None:
        return not_found(request, key)
    writes.change_user(state, user, {"signInSessionsValidFromDateTime": f"{iso_seconds(state.now())}Z"})
    return ok(request, {"@odata.context": f"{METADATA}#Edm.Boolean", "value": True})


def confirm_compromised(request: Request, state: TenantState, writes: GraphWrites) -> Response:
    """``POST /identityProtection/riskyUsers/confirmCompromised`` ``{"userIds": [...]}``: risk level high, 204.

    All or nothing: an id that is no user answers 404, a user without ``x-riskLevel`` (a tenant without Entra
    ID P2) 403 ``Forbidden`` "Your tenant is not licensed for this feature.", and then no user changes.
    """
    body = _body(request)
    if isinstance(body, Response):
        return body
    user_ids = _param(body, "userIds")
    if not isinstance(user_ids, list) or not user_ids or not all(isinstance(u, str) for u in user_ids):
        return error(request, 400, "BadRequest", "Invalid request: userIds must be a non-empty collection of strings.")
    users: list[Json] = []
    for user_id in user_ids:
        user = next((u for u in state.users if str(u.get("id", "")).casefold() == user_id.casefold()), None)
        if user is None:
            return not_found(request, user_id)
        users.append(user)
    if not state.tenant.entra_id_p2 or any(user.get("x-riskLevel") is None for user in users):
        return error(request, 403, _P2_MISSING_CODE, _NOT_LICENSED)
    moment = _seven_digits(state.now())
    for user in users:
        writes.change_user(
            state,
            user,
            {
                "x-riskLevel": "high",
                "x-riskState": "confirmedCompromised",
                "x-riskDetail": "adminConfirmedUserCompromised",
                "x-riskUpdatedAt": moment,
            },
        )
    return no_content(request)


def update_user(request: Request, state: TenantState, writes: GraphWrites, key: str) -> Response:
    """``PATCH /users/{id}``: the properties of ``WRITABLE_USER_PROPERTIES`` only, 204.

    Like Directory: a known property the simulator does not let a client set is read-only, any other name is
    an invalid property, each a 400 ``Request_BadRequest``; nothing changes unless every property is accepted.
    Annotations (``@odata.type``, which the SDK sends) are ignored.
    """
    user = _lookup(state, key)
    if user is None:
        return not_found(request, key)

    def refusal(name: str, value: Any) -> Response | None:
        kinds = WRITABLE_USER_PROPERTIES.get(name)
        if kinds is None:
            if name in READ_ONLY_USER_PROPERTIES or (name in user and not name.startswith("x-")):
                return error(request, 400, "Request_BadRequest", f"Property '{name}' is read-only and cannot be set.")
            return error(request, 400, "Request_BadRequest", f"Invalid property '{name}'.")
        if not isinstance(value, kinds):
            message = f"Invalid value specified for property '{name}' of resource 'User'."
            return error(request, 400, "Request_BadRequest", message)
        return None

    changes = _patch_changes(request, refusal)
    if isinstance(changes, Response):
        return changes
    if changes:
        writes.change_user(state, user, changes)
    return no_content(request)


def send_mail(request: Request, state: TenantState, writes: GraphWrites, key: str) -> Response:
    """``POST /users/{id}/sendMail``: recorded in the outbox, 202.

    A user without ``mail`` has no Exchange Online mailbox: 404 ``MailboxNotEnabledForRESTAPI``. A message
    without recipients (to, cc and bcc all empty) or with one that has no address: 400 ``ErrorInvalidRecipients``.
    """
    user = _lookup(state, key)
    if user is None:
        return invalid_user(request, key)
    if not user.get("mail"):
        return error(request, 404, "MailboxNotEnabledForRESTAPI", _NO_MAILBOX)
    body = _body(request)
    if isinstance(body, Response):
        return body
    message = _param(body, "message")
    if not isinstance(message, dict):
        return error(request, 400, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty.")
    recipients: list[Any] = []
    for field in ("toRecipients", "ccRecipients", "bccRecipients"):
        value = message.get(field) or []
        if not isinstance(value, list):
            return error(request, 400, "ErrorInvalidRecipients", _NO_RECIPIENTS)
        recipients.extend(value)
    if not recipients or not all(_address(r) for r in recipients):
        return error(request, 400, "ErrorInvalidRecipients", _NO_RECIPIENTS)
    save = _param(body, "saveToSentItems")
    writes.record_mail({"from": user["mail"], "message": message, "saveToSentItems": save is not False})
    return no_content(request, 202)


def _address(recipient: Any) -> str | None:
    email = recipient.get("emailAddress") if isinstance(recipient, dict) else None
    address = email.get("address") if isinstance(email, dict) else None
    return address if isinstance(address, str) and "@" in address else None
