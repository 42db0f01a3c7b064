"""A checker of Graph JSON against the msgraph-sdk's own generated v1.0 models (no vendored schema needed).

Each property of a JSON object is read by the model's own field deserializer, through kiota's JSON parse node, as the
SDK reads a real answer. A value fits when every property is one the model has (Graph's spelling), every value reads
back as what was sent (kiota reads a wrong type or an unknown enum member as ``None``, or fails), and every
``@odata.type`` names the model or a type derived from it. Problems are located as ``$.path: what``.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, TypeVar

from kiota_abstractions.serialization import Parsable
from kiota_serialization_json.json_parse_node import JsonParseNode

P = TypeVar("P", bound=Parsable)
_UPPER = re.compile(r"(?<!^)(?=[A-Z])")


def check(value: Any, model: type[Parsable]) -> list[str]:
    """What in ``value`` does not fit ``model`` (empty when it fits)."""
    problems: list[str] = []
    _check_object(value, model, "$", problems)
    return problems


def parse(value: Any, model: type[P]) -> P:
    """``value`` read into ``model`` as the SDK reads an answer (unknown properties land in ``additional_data``)."""
    return JsonParseNode(value).get_object_value(model)  # type: ignore[arg-type]


def _check_object(value: Any, model: type[Parsable], path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a JSON object for {model.__name__}")
        return
    instance = model.create_from_discriminator_value(JsonParseNode(value))  # type: ignore[attr-defined]
    name = type(instance).__name__
    declared = value.get("@odata.type")
    if isinstance(declared, str) and declared.rsplit(".", 1)[-1].lower() != name.lower():
        problems.append(f"{path}.@odata.type: {declared!r} is not {model.__name__} or a type derived from it")
    fields = instance.get_field_deserializers()
    if set(fields) <= {"@odata.type"}:
        return  # a dictionary (an open type, e.g. an alert's customDetails): any property is allowed
    for key, sent in value.items():
        where = f"{path}.{key}"
        if key.startswith("@odata."):
            continue  # annotations (context, id, etag) are not properties; the type was checked above
        if key not in fields:
            problems.append(f"{where}: not a property of {name}")
            continue
        try:
            fields[key](JsonParseNode(sent))
        except (ValueError, TypeError) as failed:  # e.g. a malformed GUID, a string where a collection belongs
            problems.append(f"{where}: {sent!r} does not read as {name}.{key} ({type(failed).__name__})")
            continue
        _check_value(sent, getattr(instance, _UPPER.sub("_", key).lower()), f"{name}.{key}", where, problems)


def _check_value(sent: Any, read: Any, field: str, path: str, problems: list[str]) -> None:
    if sent is None:
        return
    if isinstance(read, list):
        if not isinstance(sent, list):
            problems.append(f"{path}: expected a JSON array for {field}")
            return
        for index, (item, got) in enumerate(zip(sent, read, strict=False)):
            _check_value(item, got, field, f"{path}[{index}]", problems)
        return
    if isinstance(read, Parsable):
        _check_object(sent, type(read), path, problems)
    elif read is None or (isinstance(read, Enum) and read.value != sent) or _mistyped(sent, read):
        problems.append(f"{path}: {sent!r} does not read as {field}")


def _mistyped(sent: Any, read: Any) -> bool:
    """A JSON value kiota accepted although its JSON type is not the model's (``"true"`` for a bool, 3 for a str)."""
    if isinstance(read, bool) or isinstance(sent, bool):
        return type(read) is not type(sent)
    if isinstance(read, int | float):
        return not isinstance(sent, int | float)
    return isinstance(read, str) and not isinstance(sent, str)
