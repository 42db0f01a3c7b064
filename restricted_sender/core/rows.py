"""Rows of the Exchange admin endpoint, read defensively: field names matched case-insensitively, and a shape we do
not expect reported once (names only) so the first real answer teaches us its fields."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from restricted_sender.core.untrusted import guard_logger

log = guard_logger(__name__)  # named by module; the one-line filter on it (untrusted.OneLineLogs)

# PowerShell's bookkeeping fields come along in some answers: expected, never reported.
_BOOKKEEPING = frozenset({"identity", "isvalid", "objectstate", "runspaceid", "pscomputername", "psshowcomputername"})
_reported_shapes: set[tuple[str, frozenset[str], frozenset[str]]] = set()


def field(row: Mapping[str, Any], name: str) -> Any:
    """``row[name]`` matched case-insensitively: the casing of the endpoint's fields is not documented (the same row
    may say ``CreatedDatetime`` or ``CreatedDateTime``)."""
    if name in row:
        return row[name]
    wanted = name.casefold()
    return next((value for key, value in row.items() if str(key).casefold() == wanted), None)


def note_shape(what: str, row: Mapping[str, Any], expected: frozenset[str], required: frozenset[str]) -> None:
    """Log, once per process and shape, a row whose field names differ from what we expect: the names only, never
    the values (they are addresses and reasons). Event name ``exchange-unexpected-shape``."""
    seen = {str(k).casefold() for k in row}
    known = {e.casefold() for e in expected}
    missing = frozenset(e for e in required if e.casefold() not in seen)
    unknown = frozenset(str(k) for k in row if str(k).casefold() not in known | _BOOKKEEPING)
    if not missing and not unknown:
        return
    shape = (what, missing, unknown)
    if shape in _reported_shapes:
        return
    _reported_shapes.add(shape)
    log.warning(
        "exchange-unexpected-shape %s",
        json.dumps({"event": "exchange-unexpected-shape", "what": what, "missing": sorted(missing),
                    "unknown": sorted(unknown)}, separators=(",", ":")),
    )  # fmt: skip
