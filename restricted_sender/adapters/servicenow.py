"""ServiceNow tickets through the Table API (``/api/now/table/{table}``): one record per correlation id.

Every text we write (short description, description, work notes) goes through ``untrusted.no_codetag``: with the
instance property ``glide.ui.security.allow_codetag`` on, ``[code]...[/code]`` in a journal field renders as HTML,
and rule names, display names and alert fields are chosen by outsiders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

import httpx

from restricted_sender.adapters.http import SearchedTickets, cut, json_answer, send
from restricted_sender.core.untrusted import no_codetag
from restricted_sender.errors import ConfigurationError, ServiceRefused, TransientServiceError
from restricted_sender.model import TicketContent, TicketRef
from restricted_sender.retry import RetryPolicy, with_retries
from restricted_sender.settings import Secret

SERVICE = "tickets"
CORRELATION_DISPLAY = "Restricted Sender Responder"
SHORT_DESCRIPTION_MAX = 160  # the incident table's field length: longer values are cut by the instance
DESCRIPTION_MAX = 4000  # likewise; we cut first so the cut is marked
_DETAIL_MAX = 300
# Our ids are "rsr-<hex>". sysparm_query has no escaping for "^" or "=", so anything else is refused.
_SYS_ID = re.compile(r"[0-9a-f]{32}")
_TABLE = re.compile(r"[a-z][a-z0-9_]{0,79}")
# What the product itself sets: a configured field must not change how records are found again.
_OWN_FIELDS = frozenset({"correlation_id", "correlation_display", "work_notes"})
_NO_FIELDS: Mapping[str, str] = MappingProxyType({})


class ServiceNowTickets(SearchedTickets):
    """A ``TicketSystem`` on a ServiceNow table (``incident`` unless told otherwise).

    Authenticates with an OAuth bearer ``token`` when given, else Basic (``username`` + ``password``). ``fields`` are
    extra record fields set on every new record (e.g. ``assignment_group``, ``category``).
    """

    name = "servicenow"
    system = "ServiceNow"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        instance_url: str,
        table: str = "incident",
        username: str | None = None,
        password: Secret | None = None,
        token: Secret | None = None,
        fields: Mapping[str, str] = _NO_FIELDS,
        retry: RetryPolicy | None = None,
    ) -> None:
        if token is None and not (username and password is not None):
            raise ConfigurationError("ServiceNow: a username and password, or an OAuth token, is required")
        if not _TABLE.fullmatch(table):
            raise ConfigurationError(f"ServiceNow: {table!r} is not a table name")
        clashing = sorted(_OWN_FIELDS & set(fields))
        if clashing:
            raise ConfigurationError(f"ServiceNow: fields may not set {', '.join(clashing)} (the responder sets it)")
        self._http = http
        self._instance = instance_url.rstrip("/")
        self._table = table
        self._username = username
        self._password = password
        self._token = token
        self._fields = dict(fields)
        self._retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return f"ServiceNowTickets(instance_url={self._instance!r}, table={self._table!r})"

    # -- TicketSystem (find_open and create: SearchedTickets) ------------------------------------------------

    async def _post(self, content: TicketContent) -> TicketRef:
        # Priority is not sent: the incident table computes it from impact x urgency (1 x 1 = 1 - Critical) by its
        # priority lookup rules, https://www.servicenow.com/docs/r/it-service-management/incident-management/def-prio-lookup-rules.html
        impact = 1 if content.severity == "high" else 2
        record = json.dumps(content.record, indent=2, sort_keys=True)
        body: dict[str, Any] = {
            "short_description": no_codetag(cut(" ".join(content.title.split()), SHORT_DESCRIPTION_MAX)),
            "description": no_codetag(cut(content.text, DESCRIPTION_MAX)),
            "correlation_id": content.correlation_id,
            "correlation_display": CORRELATION_DISPLAY,
            "work_notes": no_codetag(f"Decision record (JSON):\n{record}"),
            "impact": impact,
            "urgency": impact,
            **self._fields,
        }
        result = await self._call("create", "POST", self._table_url, json=body)
        if not isinstance(result, dict) or not result.get("sys_id"):
            raise TransientServiceError(SERVICE, "ServiceNow create: the answer holds no result.sys_id")
        return self._ref(result)

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        if not _SYS_ID.fullmatch(ticket.id):
            raise ServiceRefused(SERVICE, f"ServiceNow: {ticket.id!r} is not a sys_id")
        url = f"{self._table_url}/{ticket.id}"
        note = no_codetag(content.update.strip() or content.title)
        await with_retries(partial(self._call, "update", "PATCH", url, json={"work_notes": note}), self._retry)

    # -- calls ----------------------------------------------------------------------------------------------

    @property
    def _table_url(self) -> str:
        return f"{self._instance}/api/now/table/{self._table}"

    async def _find(self, correlation_id: str) -> TicketRef | None:
        params = {
            "sysparm_query": f"correlation_id={correlation_id}^active=true^ORDERBYDESCsys_created_on",
            "sysparm_fields": "sys_id,number",
            "sysparm_limit": "1",
        }
        result = await self._call("find_open", "GET", self._table_url, params=params)
        if not isinstance(result, list):
            raise TransientServiceError(SERVICE, "ServiceNow find_open: 'result' is not a list")
        for row in result:
            if isinstance(row, dict) and row.get("sys_id"):
                return self._ref(row)
        return None

    def _ref(self, row: Mapping[str, Any]) -> TicketRef:
        sys_id = str(row["sys_id"])
        number = str(row.get("number") or sys_id)
        return TicketRef(
            id=sys_id, label=number, url=f"{self._instance}/nav_to.do?uri={self._table}.do?sys_id={sys_id}"
        )

    async def _call(self, what: str, method: str, url: str, **kwargs: Any) -> Any:
        """``result`` of a successful call; errors as ``ServiceRefused`` or ``TransientServiceError``."""
        headers = {"Accept": "application/json"}
        auth: httpx.Auth | None = None
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        elif self._username and self._password is not None:
            auth = httpx.BasicAuth(self._username, self._password.reveal())
        request = partial(self._http.request, method, url, headers=headers, auth=auth, **kwargs)
        response = await send(SERVICE, f"ServiceNow {what}", request, _problem)
        data = json_answer(SERVICE, f"ServiceNow {what}", response, _problem)
        if not isinstance(data, dict) or "result" not in data:
            raise TransientServiceError(
                SERVICE, f"ServiceNow {what}: the answer has no 'result'", http_status=response.status_code
            )
        return data["result"]


def _problem(response: httpx.Response) -> str:
    """``error.message`` and ``error.detail`` of ServiceNow's error body, bounded; else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:_DETAIL_MAX] or response.reason_phrase
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return json.dumps(data)[:_DETAIL_MAX]
    message = str(error.get("message") or "").strip()
    detail = str(error.get("detail") or "").strip()
    text = f"{message} ({detail})" if message and detail else message or detail or "no message"
    return cut(text, _DETAIL_MAX)
