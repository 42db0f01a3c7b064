"""The policy file's published JSON Schema (``python -m restricted_sender policy schema``; ``policy.schema.json``).

Editors validate policy files with it. The loader in ``policy.py`` stays the authority at run time (it also
checks what a schema cannot say well: unique rule names, rules that name nobody); tests keep the two in step.
"""

from __future__ import annotations

from typing import Any

SCHEMA_ID = "https://restricted-sender-responder.invalid/policy.schema.json"

_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1}}
_DOMAINS: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "pattern": r"^(\*\.)?[^@*\s]+\.[^@*\s]+$"},
    "description": 'Domains of the address: "contoso.com" exactly, "*.contoso.com" for its subdomains only.',
}
_MAILBOX: dict[str, Any] = {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$"}
_MAILBOXES: dict[str, Any] = {"type": "array", "items": _MAILBOX}


def _budget(unit: str, description: str, maximum: float) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "required": ["count", unit],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            unit: {"type": "number", "exclusiveMinimum": 0, "maximum": maximum},
        },
    }


POLICY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "Restricted Sender Responder policy",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "mode": {
            "enum": ["report-only", "enforce"],
            "default": "report-only",
            "description": "report-only decides and records but never acts.",
        },
        "alert_names": {
            **_STRINGS,
            "default": ["User restricted from sending email"],
            "description": "Alert titles to act on, matched exactly and case-insensitively.",
        },
        "allow": {
            "type": "array",
            "description": "A user is eligible for an automatic unblock when ANY rule matches.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "anyOf": [{"required": ["users"]}, {"required": ["domains"]}, {"required": ["groups"]}],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "description": "Unique rule name."},
                    "users": _STRINGS,
                    "domains": _DOMAINS,
                    "groups": {**_STRINGS, "description": "Group object ids (transitive membership)."},
                },
            },
        },
        "deny": {
            "type": "object",
            "description": "Never unblock automatically, whatever allow says.",
            "additionalProperties": False,
            "properties": {"users": _STRINGS, "domains": _DOMAINS, "groups": _STRINGS},
        },
        "guards": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "max_unblocks_per_user": _budget("days", "Our own unblocks of one user in the window.", 3650),
                "max_unblocks_per_tenant": _budget(
                    "hours", "Circuit breaker for a mass-compromise wave (at most 30 days).", 720
                ),
                "max_risk_level": {"enum": ["none", "low", "medium", "high"]},
                "suspicious_inbox_rules": {"type": "boolean"},
                "external_forwarding": {"type": "boolean"},
                "account_enabled": {"type": "boolean"},
                "min_hours_to_auto_release": {"type": "number", "minimum": 0, "maximum": 24},
            },
        },
        "containment": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "revoke_sessions": {"type": "boolean"},
                "confirm_compromised": {"type": "boolean"},
                "disable_account": {"type": "boolean"},
            },
        },
        "notify": {
            "type": "object",
            "additionalProperties": False,
            "description": "Mail through Graph sendMail from the sender mailbox (never evidence in the user's mail).",
            "properties": {
                "user": {"type": "boolean", "description": "Tell the user what happened and when mail flows again."},
                "recipients": {**_MAILBOXES, "description": "Helpdesk / SOC mailboxes told of every decision."},
                "sender": _MAILBOX,
            },
            "if": {
                "anyOf": [
                    {"required": ["user"], "properties": {"user": {"const": True}}},
                    {"required": ["recipients"], "properties": {"recipients": {"minItems": 1}}},
                ]
            },
            "then": {"required": ["sender"]},
        },
        "ticket": {
            "type": "object",
            "additionalProperties": False,
            "description": "Endpoints and credentials are app settings, never this file.",
            "properties": {
                "system": {"enum": ["webhook", "servicenow", "jira", "email"], "default": "webhook"},
                "webhook": {"type": "object", "additionalProperties": False},
                "servicenow": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "table": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "default": "incident"},
                        "fields": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "Extra fields set on every record, e.g. assignment_group.",
                        },
                    },
                },
                "jira": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "project": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{1,9}$"},
                        "issue_type": {"type": "string", "minLength": 1, "default": "Task"},
                        "labels": {"type": "array", "items": {"type": "string", "pattern": "^\\S+$"}},
                    },
                },
                "email": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"sender": _MAILBOX, "to": _MAILBOXES},
                },
            },
            "allOf": [
                {
                    "if": {"required": ["system"], "properties": {"system": {"const": "jira"}}},
                    "then": {"required": ["jira"], "properties": {"jira": {"required": ["project"]}}},
                },
                {
                    "if": {"required": ["system"], "properties": {"system": {"const": "email"}}},
                    "then": {"required": ["email"], "properties": {"email": {"required": ["sender", "to"]}}},
                },
            ],
        },
    },
}
