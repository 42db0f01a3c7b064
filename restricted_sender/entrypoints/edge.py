"""The edge: errors become HTTP statuses here and nowhere else; the function app's singletons live here.

Importing this module is cheap: nothing heavy (httpx, msgraph, azure-identity, aiohttp) is imported until
the processor first runs.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from restricted_sender.core.decide import ReasonCode
from restricted_sender.core.policy import LoadedPolicy
from restricted_sender.core.untrusted import guard_logger
from restricted_sender.core.verify import VerifyTask
from restricted_sender.errors import (
    ConfigurationError,
    Forbidden,
    InputError,
    NotFound,
    ResponderError,
    ServiceError,
    TransientServiceError,
    Unauthorized,
)
from restricted_sender.model import DecisionRecord, Net, Operator, RestrictionEvent
from restricted_sender.processing.admin import parse_restore_request, parse_unblock_request, warnings_of
from restricted_sender.processing.pipeline import Intake, Processor, Verifier
from restricted_sender.settings import Secret, Settings

if TYPE_CHECKING:
    from datetime import datetime

    from restricted_sender.entrypoints.auth import TokenValidator
    from restricted_sender.entrypoints.compose import ProcessorBundle
    from restricted_sender.intake.nets import NetRun
    from restricted_sender.processing.doctor import Report


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None, *, role: str | tuple[str, ...]) -> Operator: ...


log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)
SECRET_HEADER = "x-webhook-secret"  # noqa: S105  (a header name, not a secret)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: dict[str, Any]


def check_shared_secret(headers: Mapping[str, str], secret: Secret | None) -> None:
    if secret is None:
        return
    given = next((v for k, v in headers.items() if k.lower() == SECRET_HEADER), "")
    # Constant time: the comparison must not tell an attacker how much of the secret they have right.
    if not hmac.compare_digest(given.encode("utf-8"), secret.reveal().encode("utf-8")):
        raise Unauthorized(f"missing or wrong {SECRET_HEADER} header")


def _webhook(work: Callable[[], HttpAnswer], what: str) -> HttpAnswer:
    """A webhook's answer: ``work``'s, or the error's status (4xx: nothing was queued; 503: the sender retries)."""
    try:
        return work()
    except InputError as error:
        if isinstance(error, Unauthorized):
            log.warning("%s refused: %s", what, error.message)
        return HttpAnswer(error.status, error.to_body())
    except TransientServiceError as error:
        log.warning("%s not queued, the sender should retry: %s", what, error)
        return HttpAnswer(503, error.to_body())
    except ResponderError as error:
        log.error("%s not queued: %s", what, error)
        return HttpAnswer(500, error.to_body())


def receive_alerts(body: bytes, headers: Mapping[str, str], intake: Intake, secret: Secret | None) -> HttpAnswer:
    """``POST /api/alerts``: 202 once every event is queued; a clear 4xx or 503 otherwise."""

    def work() -> HttpAnswer:
        check_shared_secret(headers, secret)
        return HttpAnswer(202, intake.accept(body).to_body())

    return _webhook(work, "alerts")


AUTH_ID_HEADER = "webhook-authid"  # the Management Activity API's header (names are case-insensitive)
VALIDATION_HEADER = "webhook-validationcode"


def receive_o365(body: bytes, headers: Mapping[str, str], intake: Intake, auth_id: Secret | None) -> HttpAnswer:
    """``POST /api/alerts/o365``: the Management Activity API's validation request and its notifications.

    Both carry ``Webhook-AuthID``, checked in constant time (401 otherwise). Notifications are acknowledged
    with 200 (the API retries anything else) once every content pointer is queued; the fetch comes later.
    """

    def work() -> HttpAnswer:
        if auth_id is None:
            raise NotFound("the Management Activity webhook is off: set O365_WEBHOOK_AUTH_ID to turn it on")
        given = _header(headers, AUTH_ID_HEADER) or ""
        if not hmac.compare_digest(given.encode("utf-8"), auth_id.reveal().encode("utf-8")):
            raise Unauthorized("missing or wrong Webhook-AuthID header")
        if _header(headers, VALIDATION_HEADER) is not None:
            log.info("Management Activity API webhook validated")
            return HttpAnswer(200, {"validated": True})
        return HttpAnswer(200, {"queued": intake.accept_o365(body)})

    return _webhook(work, "Management Activity notification")


async def process_message(text: str, processor: Processor, *, attempt: int = 1) -> DecisionRecord:
    """One queue message. A failure propagates: the queue retries it, then keeps it in the poison queue."""
    try:
        event = RestrictionEvent.from_message(text)
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigurationError(f"unreadable event message ({error}); it will end in the poison queue") from error
    return await processor.process(event, attempt=attempt)


async def verify_message(text: str, verifier: Verifier, *, attempt: int = 1) -> DecisionRecord | None:
    """One verification check; a failure propagates like an event's."""
    try:
        task = VerifyTask.from_message(text)
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigurationError(f"unreadable verification message ({error}); it goes to the poison queue") from error
    return await verifier.verify(task, attempt=attempt)


ROLE_UNBLOCK = "Sender.Unblock"  # the app role an operator needs to unblock by hand
ROLE_FORCE = "Sender.Unblock.Force"  # and to override a guard, the deny list or a budget ("force": true)
ROLE_READ = "Sender.Read"
_UNBLOCKERS = (ROLE_UNBLOCK, ROLE_FORCE)
_READERS = (ROLE_READ, ROLE_UNBLOCK, ROLE_FORCE)
DOCTOR_EVERY = timedelta(days=1)  # enough to read status and the restricted list (Sender.Unblock also reads)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


async def admin_call(
    call: Callable[[Operator], Awaitable[dict[str, Any]]],
    headers: Mapping[str, str],
    validator: Authenticator,
    roles: tuple[str, ...],
) -> HttpAnswer:
    """An admin endpoint: the bearer token first (401/403, nothing done), then the call; errors become statuses."""
    try:
        operator = await validator.authenticate(_header(headers, "authorization"), role=roles)
        return HttpAnswer(200, await call(operator))
    except InputError as error:
        if isinstance(error, Unauthorized | Forbidden):
            log.warning("admin request refused: %s", error.message)
        return HttpAnswer(error.status, error.to_body())
    except TransientServiceError as error:
        log.warning("admin request failed, retry later: %s", error)
        return HttpAnswer(503, error.to_body())
    except ServiceError as error:
        log.error("admin request failed: %s", error)
        return HttpAnswer(502, error.to_body())
    except ResponderError as error:
        log.error("admin request failed: %s", error)
        return HttpAnswer(500, error.to_body())


def unblock_answer(record: DecisionRecord) -> dict[str, Any]:
    return {
        "user": record.user,
        "decision": record.decision.outcome.value,
        "warnings": [r.to_dict() for r in warnings_of(record.decision) if r.code != ReasonCode.MANUAL],
        "actions": [a.to_dict() for a in record.actions],
        "record": record.to_dict(),
    }


class Runtime:
    """Process-wide singletons for the function app, built on first use.

    The intake is shared by every webhook call. The processor's clients (aiohttp, httpx) belong to one event
    loop, so they are rebuilt if the loop changes (as in tests that call ``asyncio.run`` repeatedly).
    """

    def __init__(self) -> None:
        self._given: Settings | None = None  # settings handed over by reset(); else read from the environment
        self._settings: Settings | None = None
        self._policy: LoadedPolicy | None = None
        self._intake: Intake | None = None
        self._processor: ProcessorBundle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._building: asyncio.Lock | None = None
        self._validator: TokenValidator | None = None
        self._doctor_last: datetime | None = None  # this process's last daily doctor run

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def policy(self) -> LoadedPolicy:
        if self._policy is None:
            from restricted_sender.entrypoints.compose import load_policy

            self._policy = load_policy(self.settings)
        return self._policy

    def use_intake(self, intake: Intake) -> None:
        """Queue the webhooks' events through ``intake`` (in-memory queues in the handler fuzz tests) until reset."""
        self._intake = intake

    def intake(self) -> Intake:
        if self._intake is None:
            from restricted_sender.entrypoints.compose import build_intake

            self._intake = build_intake(self.settings, self.policy)
        return self._intake

    def receive_alerts(self, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        return self._on_intake(
            "alerts", lambda intake: receive_alerts(body, headers, intake, self.settings.alerts_shared_secret)
        )

    def _on_intake(self, what: str, accept: Callable[[Intake], HttpAnswer]) -> HttpAnswer:
        """``accept`` on the intake; a 500 naming the setting at fault when the intake cannot be built."""
        try:
            intake = self.intake()
        except ConfigurationError as error:
            log.error("cannot accept %s: %s", what, error)
            return HttpAnswer(500, error.to_body())
        return accept(intake)

    def _on_this_loop(self) -> asyncio.Lock:
        """The clients belong to one event loop: forget them when the loop changes. Returns the build lock."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._processor, self._validator, self._loop, self._building = None, None, loop, asyncio.Lock()
        assert self._building is not None
        return self._building

    async def bundle(self) -> ProcessorBundle:
        building = self._on_this_loop()
        # The host runs a batch of messages at once: exactly one of them builds the clients.
        async with building:
            if self._processor is None:
                from restricted_sender.entrypoints.compose import bootstrap

                self._processor = bootstrap(self.settings, self.policy)
        return self._processor

    async def processor(self) -> Processor:
        return (await self.bundle()).processor

    def receive_o365(self, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        return self._on_intake(
            "Management Activity notifications",
            lambda intake: receive_o365(body, headers, intake, self.settings.o365_auth_id),
        )

    async def expand_message(self, text: str, attempt: int = 1) -> None:
        """A content-queue message (Management Activity pointer, Defender rows): fetched and joined into events."""
        await (await self.bundle()).expander.expand(text, attempt=attempt)

    async def defender_events(self, bodies: list[bytes]) -> None:
        """One Event Hub batch of Defender streaming messages (each ``{"records": [...]}``)."""
        await (await self.bundle()).expander.defender_bodies(bodies)

    async def run_net(self, name: Net) -> NetRun | None:
        """One timer tick of a safety net; ``None`` when its setting turns it off (nothing is built then)."""
        minutes = self.settings.poll_alerts_minutes if name is Net.POLL else self.settings.sweep_minutes
        if not minutes:
            return None
        bundle = await self.bundle()
        net = bundle.poller if name is Net.POLL else bundle.sweep
        if net is None:
            log.warning("the %s safety net is not available in this configuration", name)
            return None
        run = await net.run()
        if run.ran:
            log.info("%s: %s; %d queued in %d requests", name, run.detail, run.queued, run.requests)
        return run

    async def process_message(self, text: str, attempt: int = 1) -> DecisionRecord:
        return await process_message(text, await self.processor(), attempt=attempt)

    async def verify_message(self, text: str, attempt: int = 1) -> DecisionRecord | None:
        return await verify_message(text, (await self.bundle()).verifier, attempt=attempt)

    def validator(self) -> TokenValidator:
        self._on_this_loop()
        if self._validator is None:
            from restricted_sender.entrypoints.compose import token_validator

            self._validator = token_validator(self.settings)
        return self._validator

    async def _admin(
        self, headers: Mapping[str, str], roles: tuple[str, ...], call: Callable[[ProcessorBundle, Operator], Any]
    ) -> HttpAnswer:
        async def authenticated(operator: Operator) -> dict[str, Any]:
            # Only now the processor's clients: a caller without a valid token costs a token check, nothing more.
            result: dict[str, Any] = await call(await self.bundle(), operator)
            return result

        return await self._authorized(headers, roles, authenticated)

    async def _authorized(
        self, headers: Mapping[str, str], roles: tuple[str, ...], run: Callable[[Operator], Awaitable[dict[str, Any]]]
    ) -> HttpAnswer:
        """``run`` for a caller whose token holds one of ``roles``; a 500 when the admin API is not set up."""
        try:
            validator = self.validator()
        except ConfigurationError as error:
            log.error("the admin API is not available: %s", error)
            return HttpAnswer(500, error.to_body())
        return await admin_call(run, headers, validator, roles)

    async def unblock(self, upn: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        async def run(bundle: ProcessorBundle, operator: Operator) -> dict[str, Any]:
            request = parse_unblock_request(body)
            if request.force and ROLE_FORCE not in operator.roles:
                raise Forbidden(f"\"force\": true needs the '{ROLE_FORCE}' app role; nothing was done")
            return unblock_answer(await bundle.admin.unblock(upn, request, operator))

        return await self._admin(headers, _UNBLOCKERS, run)

    async def restore(self, upn: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        """``POST /api/users/{upn}/restore``: put back what mailbox remediation changed. The SOC's role
        (``Sender.Unblock.Force``): it re-enables rules and forwarding that looked like an attacker's."""

        async def run(bundle: ProcessorBundle, operator: Operator) -> dict[str, Any]:
            record = await bundle.admin.restore(upn, parse_restore_request(body), operator)
            return {"user": record.user, "actions": [a.to_dict() for a in record.actions], "record": record.to_dict()}

        return await self._admin(headers, (ROLE_FORCE,), run)

    async def user_status(self, upn: str, headers: Mapping[str, str]) -> HttpAnswer:
        async def run(bundle: ProcessorBundle, operator: Operator) -> dict[str, Any]:
            return await bundle.admin.status(upn)

        return await self._admin(headers, _READERS, run)

    async def restricted(self, headers: Mapping[str, str]) -> HttpAnswer:
        async def run(bundle: ProcessorBundle, operator: Operator) -> dict[str, Any]:
            return await bundle.admin.restricted()

        return await self._admin(headers, _READERS, run)

    async def run_doctor(self) -> Report:
        """Every doctor probe, with the app's own identity and fresh clients (closed after)."""
        from restricted_sender.entrypoints.compose import doctor_targets
        from restricted_sender.entrypoints.permissions import IntakePaths
        from restricted_sender.processing.doctor import Probe, Report, Verdict, diagnose

        try:
            async with doctor_targets(self.settings, self.policy, IntakePaths.from_env()) as targets:
                return await diagnose(targets)
        except ConfigurationError as error:  # the probes could not even be built: that is the finding
            return Report((Probe("settings", Verdict.MISCONFIGURED, error.message),))

    async def doctor(self, headers: Mapping[str, str]) -> HttpAnswer:
        """``GET /api/doctor`` (the read role): the probes' report; 200 whatever they found."""

        async def run(operator: Operator) -> dict[str, Any]:
            return (await self.run_doctor()).to_dict()

        return await self._authorized(headers, _READERS, run)

    async def doctor_tick(self, now: datetime) -> Report | None:
        """The doctor timer: once soon after this process starts, then daily; one structured log line per run."""
        if self._doctor_last is not None and now - self._doctor_last < DOCTOR_EVERY:
            return None
        self._doctor_last = now
        report = await self.run_doctor()
        (log.info if report.ok else log.error)("%s", report.log_line())
        return report

    async def aclose(self) -> None:
        """Close the processor's clients (on the loop that built them) and forget every singleton."""
        if self._processor is not None:
            await self._processor.aclose()
        if self._validator is not None:
            await self._validator.aclose()
        self._forget()

    def reset(self, settings: Settings | None = None) -> None:
        """Forget everything, e.g. after settings changed; run on ``settings`` from now on when given (else they are
        read from the environment again). Does not close clients: see ``aclose``."""
        self._given = settings
        self._forget()

    def _forget(self) -> None:
        if self._intake is not None:
            self._intake.close()
        self._settings = self._given
        self._policy = None
        self._intake = None
        self._processor = None
        self._loop = None
        self._building = None
        self._validator = None


runtime = Runtime()
