"""The ``sysparm_query`` subset the simulator evaluates: ``field=value``, ``field!=value``, ``ORDERBY[DESC]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from simulator.tenant import Json


@dataclass(frozen=True)
class SnQuery:
    conditions: tuple[tuple[str, str, str], ...]  # (field, "=" or "!=", value)
    order: tuple[tuple[str, bool], ...]  # (field, descending)


_SN_CONDITION = re.compile(r"([a-z_][a-z0-9_.]*)(!=|=)(.*)", re.DOTALL)
_SN_OTHER_OPERATOR = re.compile(r"[a-z_][a-z0-9_.]*(?:LIKE|STARTSWITH|ENDSWITH|IN|NOT|ISEMPTY|ISNOTEMPTY|[<>])")


def parse_sysparm_query(text: str) -> SnQuery:
    """``field=value^field!=value^ORDERBYfield^ORDERBYDESCfield``; ValueError for what the simulator lacks."""
    conditions: list[tuple[str, str, str]] = []
    order: list[tuple[str, bool]] = []
    for term in text.split("^") if text else []:
        if not term or term == "EQ":
            continue
        if term.startswith("ORDERBYDESC"):
            order.append((term[len("ORDERBYDESC") :], True))
        elif term.startswith("ORDERBY"):
            order.append((term[len("ORDERBY") :], False))
        elif term.startswith(("OR", "NQ", "RL")) or _SN_OTHER_OPERATOR.match(term):
            raise ValueError(f"the simulator does not evaluate '{term}': it knows field=value, field!=value, ORDERBY")
        else:
            match = _SN_CONDITION.fullmatch(term)
            if match is None:
                raise ValueError(f"cannot read the condition '{term}'")
            conditions.append((match[1], match[2], match[3]))
    return SnQuery(tuple(conditions), tuple(order))


def condition_holds(record: Json, condition: tuple[str, str, str]) -> bool:
    field, operator, value = condition
    equal = str(record.get(field, "")).casefold() == value.casefold()  # the database compares without case
    return equal if operator == "=" else not equal
