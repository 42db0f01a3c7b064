"""Atlassian Document Format: the checks Jira applies to descriptions and comments."""

from __future__ import annotations

import json
from typing import Any

from simulator.itsm.state import JIRA_FIELD_MAX

# -- Atlassian Document Format ----------------------------------------------------------------------------------

_ADF_BLOCKS = frozenset(
    {"paragraph", "heading", "codeBlock", "bulletList", "orderedList", "blockquote", "rule", "panel", "table"}
)
_ADF_INLINE = frozenset({"text", "hardBreak", "mention", "emoji", "inlineCard", "date", "status"})
_ADF_CHILDREN: dict[str, frozenset[str]] = {
    "doc": _ADF_BLOCKS,
    "paragraph": _ADF_INLINE,
    "heading": _ADF_INLINE,
    "codeBlock": frozenset({"text"}),
    "bulletList": frozenset({"listItem"}),
    "orderedList": frozenset({"listItem"}),
    "listItem": frozenset({"paragraph", "bulletList", "orderedList", "codeBlock"}),
    "blockquote": frozenset({"paragraph", "bulletList", "orderedList", "codeBlock"}),
    "panel": frozenset({"paragraph", "heading", "bulletList", "orderedList"}),
}


def document_problem(document: Any) -> str | None:
    """Why Jira would refuse ``document`` as a rich-text value; ``None`` when it is valid ADF."""
    if not isinstance(document, dict) or document.get("type") != "doc":
        return "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
    if document.get("version") != 1 or not isinstance(document.get("content"), list):
        return "INVALID_INPUT"
    if len(json_text(document)) > JIRA_FIELD_MAX:
        return f"The entered text is too long. It exceeds the allowed limit of {JIRA_FIELD_MAX:,} characters."
    return None if _adf_node_valid(document, "doc") else "INVALID_INPUT"


def _adf_node_valid(node: Any, expected_parent: str) -> bool:
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        return False
    kind = node["type"]
    if kind != "doc" and kind not in _ADF_CHILDREN.get(expected_parent, frozenset()):
        return False
    if kind == "text":
        text = node.get("text")
        if not isinstance(text, str) or not text:
            return False  # Jira refuses empty text nodes
        return not (expected_parent == "codeBlock" and node.get("marks"))
    if kind == "heading":
        level = (node.get("attrs") or {}).get("level")
        if level not in range(1, 7):
            return False
    content = node.get("content", [])
    if not isinstance(content, list):
        return False
    if kind in ("bulletList", "orderedList", "listItem") and not content:
        return False
    return all(_adf_node_valid(child, kind) for child in content)


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
