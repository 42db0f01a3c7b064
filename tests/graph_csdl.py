"""A checker of Graph JSON against the official Graph v1.0 CSDL schema (``contracts/graph-v1.0.csdl``).

It answers one question: could the real service have sent this object? Every property must be declared on
the type or one of its base types, and each value must have the JSON type its declared type maps to.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

CSDL_PATH = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "graph-v1.0.csdl"
_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"

_STRING_TYPES = frozenset(
    {"Edm.String", "Edm.Guid", "Edm.DateTimeOffset", "Edm.Date", "Edm.TimeOfDay", "Edm.Duration", "Edm.Binary"}
)
_INTEGER_TYPES = frozenset({"Edm.Byte", "Edm.SByte", "Edm.Int16", "Edm.Int32", "Edm.Int64"})
_NUMBER_TYPES = frozenset({"Edm.Double", "Edm.Single", "Edm.Decimal"})
_PATTERNS = {
    "Edm.Guid": re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
    "Edm.DateTimeOffset": re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$"),
    "Edm.Date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
}


@dataclass(frozen=True)
class Property:
    name: str
    type: str
    nullable: bool
    navigation: bool


@dataclass
class StructuredType:
    name: str
    """The qualified name, e.g. ``microsoft.graph.user``."""
    base: str | None
    open: bool
    properties: dict[str, Property] = field(default_factory=dict)


@dataclass
class Action:
    """A bound action: its parameters (the binding parameter left out) are the JSON body's properties."""

    name: str
    """The qualified name, e.g. ``microsoft.graph.sendMail``."""
    bound_to: str
    """The qualified type of the binding parameter, e.g. ``microsoft.graph.user``."""
    parameters: dict[str, Property] = field(default_factory=dict)
    returns: str | None = None


@dataclass
class EnumType:
    name: str
    members: frozenset[str]
    flags: bool


class Schema:
    """The types of a CSDL document, addressable by qualified name or alias (``graph.user``)."""

    def __init__(self, root: ET.Element) -> None:
        self.aliases: dict[str, str] = {}
        self.structured: dict[str, StructuredType] = {}
        self.enums: dict[str, EnumType] = {}
        self.definitions: dict[str, str] = {}
        self.actions: dict[tuple[str, str], Action] = {}
        schemas = list(root.iter(f"{_EDM}Schema"))
        for schema in schemas:
            alias = schema.get("Alias")
            if alias:
                self.aliases[alias] = schema.get("Namespace", "")
        for schema in schemas:
            namespace = schema.get("Namespace", "")
            for element in schema:
                tag = element.tag.removeprefix(_EDM)
                name = f"{namespace}.{element.get('Name')}"
                if tag in ("EntityType", "ComplexType"):
                    base = element.get("BaseType")
                    entry = StructuredType(
                        name, self.qualify(base) if base else None, element.get("OpenType") == "true"
                    )
                    for child in element:
                        child_tag = child.tag.removeprefix(_EDM)
                        if child_tag in ("Property", "NavigationProperty"):
                            prop_name = child.get("Name", "")
                            entry.properties[prop_name] = Property(
                                prop_name,
                                self.qualify(child.get("Type", "")),
                                child.get("Nullable") != "false",
                                child_tag == "NavigationProperty",
                            )
                    self.structured[name] = entry
                elif tag == "EnumType":
                    members = frozenset(m.get("Name", "") for m in element if m.tag == f"{_EDM}Member")
                    self.enums[name] = EnumType(name, members, element.get("IsFlags") == "true")
                elif tag == "TypeDefinition":
                    self.definitions[name] = element.get("UnderlyingType", "Edm.String")
                elif tag == "Action" and element.get("IsBound") == "true":
                    self._add_action(name, element)

    def _add_action(self, name: str, element: ET.Element) -> None:
        parameters = [child for child in element if child.tag == f"{_EDM}Parameter"]
        if not parameters:
            return
        action = Action(name, self.qualify(parameters[0].get("Type", "")))
        for parameter in parameters[1:]:
            prop_name = parameter.get("Name", "")
            action.parameters[prop_name] = Property(
                prop_name, self.qualify(parameter.get("Type", "")), parameter.get("Nullable") != "false", False
            )
        returns = element.find(f"{_EDM}ReturnType")
        if returns is not None:
            action.returns = self.qualify(returns.get("Type", ""))
        self.actions[(action.name, action.bound_to)] = action

    def action(self, name: str, bound_to: str) -> Action:
        """The action ``name`` bound to ``bound_to`` (actions are overloaded on their binding type)."""
        key = (self.qualify(name), self.qualify(bound_to))
        if key not in self.actions:
            raise KeyError(f"no action {key[0]!r} bound to {key[1]!r} in the schema")
        return self.actions[key]

    def check_action(self, body: Any, name: str, bound_to: str) -> list[str]:
        """Every way the JSON body of a POST to the action departs from its parameters; empty when it fits.

        Names are matched exactly, as the CSDL spells them; a parameter declared ``Nullable="false"`` must be there.
        """
        action = self.action(name, bound_to)
        if not isinstance(body, dict):
            return [f"$: expected a JSON object of the parameters of {action.name}, got {_json_kind(body)}"]
        problems: list[str] = []
        for key, value in body.items():
            if "@" in key:
                continue
            parameter = action.parameters.get(key)
            if parameter is None:
                problems.append(f"$.{key}: not a parameter of {action.name}")
                continue
            self._check(value, parameter.type, parameter.nullable, f"$.{key}", problems)
        for parameter in action.parameters.values():
            if not parameter.nullable and parameter.name not in body:
                problems.append(f"$.{parameter.name}: a parameter of {action.name} that is not nullable is missing")
        return problems

    def qualify(self, name: str) -> str:
        """``graph.user`` -> ``microsoft.graph.user``; ``Collection(self.x)`` keeps its wrapper."""
        if name.startswith("Collection(") and name.endswith(")"):
            return f"Collection({self.qualify(name[len('Collection(') : -1])})"
        alias, dot, rest = name.partition(".")
        if dot and alias in self.aliases:
            return f"{self.aliases[alias]}.{rest}"
        return name

    def chain(self, name: str) -> list[StructuredType]:
        """The type and its base types, most derived first."""
        types: list[StructuredType] = []
        current: str | None = self.qualify(name)
        while current is not None:
            if current not in self.structured:
                raise KeyError(f"no entity or complex type {current!r} in the schema")
            entry = self.structured[current]
            types.append(entry)
            current = entry.base
        return types

    def properties(self, name: str) -> dict[str, Property]:
        merged: dict[str, Property] = {}
        for entry in reversed(self.chain(name)):
            merged.update(entry.properties)
        return merged

    def derives_from(self, name: str, base: str) -> bool:
        return any(entry.name == self.qualify(base) for entry in self.chain(name))

    def check(self, value: Any, type_name: str) -> list[str]:
        """Every way ``value`` departs from ``type_name``; empty when it fits."""
        problems: list[str] = []
        self._check(value, self.qualify(type_name), True, "$", problems)
        return problems

    def _check(self, value: Any, type_name: str, nullable: bool, path: str, problems: list[str]) -> None:
        if value is None:
            if not nullable:
                problems.append(f"{path}: null, but {type_name} is not nullable")
            return
        if type_name.startswith("Collection("):
            if not isinstance(value, list):
                problems.append(f"{path}: expected a JSON array for {type_name}, got {_json_kind(value)}")
                return
            item_type = type_name[len("Collection(") : -1]
            for index, item in enumerate(value):
                self._check(item, item_type, nullable, f"{path}[{index}]", problems)
            return
        type_name = self.definitions.get(type_name, type_name)
        if type_name.startswith("Edm."):
            self._check_primitive(value, type_name, path, problems)
        elif type_name in self.enums:
            self._check_enum(value, self.enums[type_name], path, problems)
        elif type_name in self.structured:
            self._check_structured(value, type_name, path, problems)
        else:
            problems.append(f"{path}: the schema has no type {type_name!r}")

    def _check_primitive(self, value: Any, type_name: str, path: str, problems: list[str]) -> None:
        if type_name == "Edm.Boolean":
            ok = isinstance(value, bool)
        elif type_name in _INTEGER_TYPES:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif type_name in _NUMBER_TYPES:
            ok = (isinstance(value, int | float) and not isinstance(value, bool)) or value in ("NaN", "INF", "-INF")
        elif type_name in _STRING_TYPES or type_name == "Edm.Stream":
            ok = isinstance(value, str)
            pattern = _PATTERNS.get(type_name)
            if ok and pattern is not None and not pattern.match(value):
                problems.append(f"{path}: {value!r} is not a valid {type_name}")
                return
        else:
            ok = True  # Edm.Untyped and geography types carry any JSON.
        if not ok:
            problems.append(f"{path}: expected {type_name}, got {_json_kind(value)} {value!r}")

    def _check_enum(self, value: Any, enum: EnumType, path: str, problems: list[str]) -> None:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a member name of {enum.name}, got {_json_kind(value)} {value!r}")
            return
        names = [part.strip() for part in value.split(",")] if enum.flags else [value]
        unknown = [name for name in names if name not in enum.members]
        if unknown:
            problems.append(f"{path}: {', '.join(map(repr, unknown))} is not a member of {enum.name}")

    def _check_structured(self, value: Any, type_name: str, path: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a JSON object for {type_name}, got {_json_kind(value)}")
            return
        actual = type_name
        odata_type = value.get("@odata.type")
        if isinstance(odata_type, str):
            named = self.qualify(odata_type.removeprefix("#"))
            if named not in self.structured:
                problems.append(f"{path}: @odata.type {odata_type!r} is not a type of the schema")
                return
            if not self.derives_from(named, type_name):
                problems.append(f"{path}: @odata.type {odata_type!r} does not derive from {type_name}")
                return
            actual = named
        properties = self.properties(actual)
        # A type that declares nothing (e.g. security.dictionary, graph.Json) is a free-form bag.
        free_form = not properties
        for key, item in value.items():
            if "@" in key:
                continue  # instance and property annotations such as @odata.context
            prop = properties.get(key)
            if prop is None:
                if not free_form:
                    problems.append(f"{path}.{key}: not a property of {actual}")
                continue
            if prop.navigation:
                problems.append(f"{path}.{key}: navigation property of {actual}, only served with $expand")
                continue
            self._check(item, prop.type, prop.nullable, f"{path}.{key}", problems)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@cache
def load_schema(path: Path = CSDL_PATH) -> Schema:
    """Parse the CSDL once per process (~0.15 s for the 3.4 MB v1.0 schema)."""
    # The schema is a pinned file from Microsoft's msgraph-metadata repository, not untrusted input.
    root = ET.parse(path).getroot()  # noqa: S314
    return Schema(root)
