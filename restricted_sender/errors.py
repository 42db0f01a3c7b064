"""The one error tree of the product.

Everything the product raises on purpose derives from :class:`ResponderError`. Only the edge
(`restricted_sender.entrypoints.edge`, the CLI) turns these into HTTP statuses or exit codes::

    ResponderError
    ├── InputError                  the caller sent something we cannot use            -> 4xx, nothing changes
    │   ├── MalformedPayload        not JSON, or JSON of a shape we do not know          -> 400
    │   │   └── UnsafeContentUri    a Management Activity contentUri we must not fetch   -> 400
    │   ├── PayloadTooLarge         body over the limit                                  -> 413
    │   ├── Unauthorized            missing or invalid credentials (secret, bearer token)-> 401
    │   ├── Forbidden               a valid caller without the needed app role           -> 403
    │   ├── NotFound                no such user                                         -> 404
    │   └── Conflict                the request does not fit the current state           -> 409
    ├── ConfigurationError          settings or policy are unusable                      -> 500, logged loudly
    │   └── PolicyError             the policy file failed to load or validate
    └── ServiceError                a dependency (Exchange, Graph, store, queue, tickets) failed
        ├── TransientServiceError   retrying later may help (429, 5xx, timeouts)        -> 503 / queue retry
        │   ├── QueueUnavailable    the event could not be queued                        -> 503
        │   ├── TicketNotFiled      the decision is recorded, its ticket is not          -> queue retry
        │   └── StillDeciding       another event is still deciding this restriction     -> queue retry
        ├── OutcomeUnknown          a write may or may not have happened (timeout, 5xx): read the world, never resend
        └── ServiceRefused          the service answered "no"; retrying cannot help
            ├── UnblockLimitReached Microsoft's unblock limit: only Microsoft Support can help; never retried
            ├── ObjectNotFound      the service has no such object (a mailbox, a recipient)
            │   └── SenderNotBlocked  the address is not (or no longer) on the restricted list
            ├── FilterRefused       Graph answered 400 to an alerts_v2 $filter (the poller falls back)
            └── ContentExpired      Management Activity content expired (AF20051) or unknown (AF20050)
"""

from __future__ import annotations

from typing import Any


class ResponderError(Exception):
    """Base of every error the product raises on purpose. ``code`` is stable and machine-readable."""

    code = "error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, dict[str, Any]]:
        return {"error": {"code": self.code, "message": self.message}}


class InputError(ResponderError):
    code = "bad-request"
    status = 400


class MalformedPayload(InputError):
    code = "malformed-payload"


class UnsafeContentUri(MalformedPayload):
    """A notification's ``contentUri`` points somewhere other than this tenant's activity feed: fetching it
    with our token would hand the token to whoever wrote the notification."""

    code = "unsafe-content-uri"


class PayloadTooLarge(InputError):
    code = "payload-too-large"
    status = 413


class Unauthorized(InputError):
    code = "unauthorized"
    status = 401


class Forbidden(InputError):
    code = "forbidden"
    status = 403


class NotFound(InputError):
    code = "not-found"
    status = 404


class Conflict(InputError):
    """``code`` is set per instance (e.g. ``not-restricted``, ``force-required``) so callers can tell them apart."""

    status = 409

    def __init__(self, message: str, *, code: str = "conflict", details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or {}

    def to_body(self) -> dict[str, dict[str, Any]]:
        body = super().to_body()
        body["error"].update(self.details)
        return body


class ConfigurationError(ResponderError):
    code = "configuration-error"


class PolicyError(ConfigurationError):
    """A policy that did not load. Like a loaded ``Policy`` it answers ``.mode``, ``.version`` and ``.valid``."""

    code = "policy-invalid"
    version = "invalid"  # what records name as the policy version while the file is broken
    valid = False

    def __init__(self, problems: list[str], source: str = "policy", *, mode: str = "report-only") -> None:
        self.problems = list(problems)
        # The mode the broken file asks for, when it says so clearly: a report-only trial stays report-only.
        self.mode = mode
        super().__init__(f"{source}: " + "; ".join(self.problems))


class ServiceError(ResponderError):
    """A dependency failed. ``service`` names it (exchange, graph, store, queue, tickets, identity)."""

    code = "service-error"
    status = 502

    def __init__(self, service: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.http_status = http_status


class TransientServiceError(ServiceError):
    code = "service-unavailable"
    status = 503

    def __init__(
        self,
        service: str,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(service, message, http_status=http_status)
        self.retry_after = retry_after


class QueueUnavailable(TransientServiceError):
    code = "queue-unavailable"


class TicketNotFiled(TransientServiceError):
    """The decision is recorded but its ticket is not: the event fails so the queue retries it."""

    code = "ticket-not-filed"


class StillDeciding(TransientServiceError):
    """Another event is still deciding this restriction: this report fails, unrecorded, so the queue retries it once
    the decision exists (a report completed as "in progress" would leave nothing to act if that event is poisoned)."""

    code = "restriction-still-deciding"


class OutcomeUnknown(ServiceError):
    """A write whose answer does not say whether it happened (a timeout, a dropped connection, a 5xx, an error inside
    a 200). Sending it again could do it twice: the caller reads the world instead."""

    code = "outcome-unknown"
    status = 503


class ServiceRefused(ServiceError):
    code = "service-refused"


class FilterRefused(ServiceRefused):
    code = "filter-refused"


class ContentExpired(ServiceRefused):
    code = "content-expired"


class UnblockLimitReached(ServiceRefused):
    code = "unblock-limit-reached"


class ObjectNotFound(ServiceRefused):
    code = "object-not-found"


class SenderNotBlocked(ObjectNotFound):
    code = "sender-not-blocked"
