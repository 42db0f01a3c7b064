"""The policy file's published JSON Schema, generated from the policy model in ``policy.py``.

``python -m restricted_sender policy schema`` prints it; ``make generate`` writes ``policy.schema.json`` (a test checks
the committed file is exactly this). Editors validate policy files with it; the loader is the same model, so the two
agree by construction.
"""

from __future__ import annotations

from typing import Any

from restricted_sender.core.policy import POLICY_MODEL

SCHEMA_ID = "https://restricted-sender-responder.invalid/policy.schema.json"

POLICY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "Restricted Sender Responder policy",
    **POLICY_MODEL.schema(),
}
