"""A Teams channel through its Workflows webhook ("When a Teams webhook request is received"): one POST per card.

The trigger answers ``202 Accepted`` once it has queued the flow run, and a body that does not fit its request
schema ``400`` with ``TriggerInputSchemaMismatch`` (https://learn.microsoft.com/connectors/teams/#microsoft-teams-webhook,
https://learn.microsoft.com/azure/logic-apps/logic-apps-http-endpoint). It has no idempotency key: a body sent twice
is posted twice. So, unlike the ticket webhook (which resends with the same ``Idempotency-Key`` and lets the
receiver drop the repeat), a card is resent only when the answer proves it was not taken:

- not taken (the connection was refused or never made, ``429``): retried here, with backoff;
- refused (another ``4xx``: a wrong URL or body): :class:`ServiceRefused`, nothing was posted;
- not known (a timeout or a dropped connection after the body went out, a ``5xx``): :class:`OutcomeUnknown`, and
  the card is never sent again; the caller records that it may not have arrived.

The URL carries the flow's key (``sig=``): it is a :class:`Secret`, never in a message, a ``repr`` or a log line
(httpx's own request log masks query values, ``untrusted.NoQueryValues``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import httpx

from restricted_sender.core.teams_card import ticket_card, update_card
from restricted_sender.core.untrusted import guard_logger
from restricted_sender.errors import OutcomeUnknown, ServiceRefused, TransientServiceError
from restricted_sender.model import DecisionRecord, TicketContent, TicketRef
from restricted_sender.ports import ChatChannel, ClaimResult, Claims, Clock
from restricted_sender.retry import RetryPolicy, retry_after_seconds, with_retries
from restricted_sender.settings import Secret

log = guard_logger(__name__)

SERVICE = "teams"
OWNER = "teams"  # the owner of every Teams claim: the ticket ledger already lets one processor at a time post
MAX_TRIES = 10  # posts refused outright (nothing posted) before the ticket gives up
POSTED, REFUSED, UNKNOWN = "posted", "refused", "unknown"
UNCONFIRMED = "Teams did not confirm the card: check the channel; it is not posted again"


class TeamsWebhook:
    """:class:`~restricted_sender.ports.ChatChannel` over a Workflows webhook URL."""

    name = "teams"

    def __init__(self, http: httpx.AsyncClient, *, url: Secret, retry: RetryPolicy | None = None) -> None:
        self._http = http
        self._url = url
        self._retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return "TeamsWebhook(url=***)"

    async def post(self, body: Mapping[str, Any]) -> None:
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        await with_retries(lambda: self._send(content), self._retry)

    async def _send(self, content: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        try:
            response = await self._http.post(self._url.reveal(), content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
            # No connection was made: nothing was sent.
            raise TransientServiceError(
                SERVICE, f"no connection to the Teams webhook ({type(error).__name__})"
            ) from error
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise OutcomeUnknown(
                SERVICE, f"the Teams webhook did not answer ({type(error).__name__}): the card may have been posted"
            ) from error
        status = response.status_code
        if status == 429:
            raise TransientServiceError(
                SERVICE,
                "the Teams webhook is throttling (HTTP 429)",
                http_status=status,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        if status >= 500:
            raise OutcomeUnknown(SERVICE, f"the Teams webhook answered HTTP {status}: the card may have been posted")
        if status >= 400:
            raise ServiceRefused(
                SERVICE, f"the Teams webhook refused the card: HTTP {status}: {response.text[:300]}", http_status=status
            )


class TeamsTickets:
    """Teams as the ticket system: the first report of a restriction posts its card, each later one a short update.

    The store's ticket ledger keeps one "ticket" per restriction (a Teams post has no id to search for). Each post
    is claimed first (``teams|<correlation id>|...``): a retry after a post whose answer was lost, or after a crash,
    finds the claim and never posts again. A post refused outright posted nothing, so a later try may post anew.
    """

    name = "teams"

    def __init__(self, channel: ChatChannel, claims: Claims, clock: Clock) -> None:
        self._channel = channel
        self._claims = claims
        self._clock = clock

    async def find_open(self, correlation_id: str) -> TicketRef | None:
        """The card an earlier try posted, or may have posted (its claim stands without a refusal)."""
        for key in _keys(f"teams|{correlation_id}|open"):
            state = await self._claims.claim_state(key)
            if state is None:
                return None
            if state.outcome != REFUSED:
                return _ref(correlation_id, state.outcome)
        return None

    async def create(self, content: TicketContent) -> TicketRef:
        record = DecisionRecord.from_dict(content.record["record"])
        card = ticket_card(record, correlation_id=content.correlation_id, severity=content.severity)
        outcome = await self._post_once(f"teams|{content.correlation_id}|open", card)
        return _ref(content.correlation_id, outcome)

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        note = hashlib.sha256(content.update.encode("utf-8")).hexdigest()[:16]
        outcome = await self._post_once(
            f"teams|{content.correlation_id}|note|{note}", update_card(content.correlation_id, content.update)
        )
        if outcome != POSTED:
            log.warning("Teams update of %s: %s", content.correlation_id, UNCONFIRMED)

    async def _post_once(self, base: str, card: Mapping[str, Any]) -> str:
        """``posted``, or ``unknown`` (the answer was lost, now or in an earlier try: never posted again)."""
        for key in _keys(base):
            now = self._clock.now()
            claim = await self._claims.claim(key, OWNER, now)
            if claim is not ClaimResult.NEW:
                state = await self._claims.claim_state(key)
                if state is not None and state.outcome == REFUSED:
                    continue  # that try posted nothing: the next key is a fresh try
                return POSTED if state is not None and state.outcome == POSTED else UNKNOWN
            try:
                await self._channel.post(card)
            except OutcomeUnknown:
                await self._claims.complete(key, OWNER, UNKNOWN, now)
                return UNKNOWN
            except (ServiceRefused, TransientServiceError):
                await self._claims.complete(key, OWNER, REFUSED, now)
                raise
            await self._claims.complete(key, OWNER, POSTED, now)
            return POSTED
        raise ServiceRefused(SERVICE, f"the Teams webhook refused this card {MAX_TRIES} times: not tried again")


def _keys(base: str) -> list[str]:
    return [f"{base}|{n}" for n in range(MAX_TRIES)]


def _ref(correlation_id: str, outcome: str | None) -> TicketRef:
    label = "Teams card" if outcome == POSTED else f"Teams card ({UNCONFIRMED})"
    return TicketRef(id=correlation_id, label=label)
