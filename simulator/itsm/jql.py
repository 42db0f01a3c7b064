"""The JQL subset the simulator evaluates (anything else is a 400, never silently ignored)."""

from __future__ import annotations

import re
from collections.abc import Callable

from simulator.itsm.state import JIRA_STATUSES, JiraConfig
from simulator.tenant import Json

# -- JQL --------------------------------------------------------------------------------------------------------


class JqlError(ValueError):
    """A JQL query the simulator cannot run; the message reads like Jira's."""


_JQL_TOKEN = re.compile(
    r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>!=|!~|>=|<=|=|~|>|<)"""
    r"""|(?P<punct>[(),])|(?P<word>[\w\-]+))"""
)
_JQL_FIELDS = {
    "project": "project",
    "labels": "labels",
    "statuscategory": "statusCategory",
    "status": "status",
    "key": "key",
    "issuekey": "key",
    "id": "key",
    "issuetype": "issuetype",
    "type": "issuetype",
}
_JQL_ORDER_FIELDS = {"created": "created", "updated": "updated", "key": "key", "issuekey": "key"}
_JQL_UNSUPPORTED = frozenset({"OR", "NOT", "IN", "IS", "WAS", "CHANGED", "EMPTY", "NULL"})

Token = tuple[str, str, int]  # (kind, text, 1-based character position)


def _jql_tokens(jql: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(jql):
        if not jql[position:].strip():
            break
        match = _JQL_TOKEN.match(jql, position)
        if match is None or match.end() == position:
            start = position + len(jql[position:]) - len(jql[position:].lstrip())
            raise JqlError(
                f"Error in the JQL Query: The character '{jql[start]}' is a reserved JQL character. You must "
                f"enclose it in a string or use the escape '\\u{ord(jql[start]):04x}' instead. "
                f"(line 1, character {start + 1})"
            )
        kind = match.lastgroup or "word"
        text = match.group(kind)
        tokens.append((kind, text, match.start(kind) + 1))
        position = match.end()
    return tokens


def _jql_value(token: Token) -> str:
    kind, text, _ = token
    if kind == "string":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_jql(jql: str, config: JiraConfig) -> tuple[Callable[[Json], bool], list[tuple[str, bool]]]:
    """The subset ``field (=|!=) value [AND ...] [ORDER BY field [ASC|DESC], ...]``; JqlError otherwise."""
    tokens = _jql_tokens(jql)
    clauses: list[Callable[[Json], bool]] = []
    order: list[tuple[str, bool]] = []
    index = 0

    def expecting(what: str, at: int) -> JqlError:
        if at >= len(tokens):
            return JqlError(f"Error in the JQL Query: Expecting {what} but reached the end of the query.")
        _, text, position = tokens[at]
        if text.upper() in _JQL_UNSUPPORTED:
            return JqlError(
                f"Error in the JQL Query: the simulator supports only 'field = value' and 'field != value' clauses "
                f"joined by AND, and ORDER BY; got '{text}'. (line 1, character {position})"
            )
        return JqlError(f"Error in the JQL Query: Expecting {what} but got '{text}'. (line 1, character {position})")

    while index < len(tokens) and not (tokens[index][0] == "word" and tokens[index][1].upper() == "ORDER"):
        if clauses:
            if tokens[index][0] != "word" or tokens[index][1].upper() != "AND":
                raise expecting("either 'OR' or 'AND'", index)
            index += 1
        if index >= len(tokens) or tokens[index][0] not in ("word", "string"):
            raise expecting("a field name", index)
        field_text = _jql_value(tokens[index])
        field = _JQL_FIELDS.get(field_text.casefold())
        if field is None:
            raise JqlError(f"Field '{field_text}' does not exist or you do not have permission to view it.")
        index += 1
        if index >= len(tokens) or tokens[index][1] not in ("=", "!="):
            raise expecting("operator '=' or '!='", index)
        operator = tokens[index][1]
        index += 1
        if index >= len(tokens) or tokens[index][0] not in ("word", "string"):
            raise expecting("either a value, list or function", index)
        value = _jql_value(tokens[index])
        index += 1
        clauses.append(_jql_clause(field, operator, value, config))

    if index < len(tokens):
        index += 1  # ORDER
        if index >= len(tokens) or tokens[index][1].upper() != "BY":
            raise expecting("'BY'", index)
        index += 1
        while True:
            if index >= len(tokens) or tokens[index][0] not in ("word", "string"):
                raise expecting("a field name", index)
            name = _jql_value(tokens[index])
            sort_field = _JQL_ORDER_FIELDS.get(name.casefold())
            if sort_field is None:
                raise JqlError(f"Not able to sort using field '{name}'.")
            index += 1
            descending = False
            if index < len(tokens) and tokens[index][1].upper() in ("ASC", "DESC"):
                descending = tokens[index][1].upper() == "DESC"
                index += 1
            order.append((sort_field, descending))
            if index < len(tokens) and tokens[index][1] == ",":
                index += 1
                continue
            break
        if index < len(tokens):
            raise expecting("',' or the end of the query", index)
    if not clauses:
        raise JqlError("Unbounded JQL queries are not allowed here. Please add a search restriction to your query.")
    return (lambda issue: all(clause(issue) for clause in clauses)), order


def _jql_clause(field: str, operator: str, value: str, config: JiraConfig) -> Callable[[Json], bool]:
    wanted = value.casefold()
    if field == "project":
        project = config.project(value)
        if project is None:
            raise JqlError(f"The value '{value}' does not exist for the field 'project'.")
        wanted = project.key.casefold()
    elif field == "statusCategory":
        known = {text.casefold() for key, _, name in JIRA_STATUSES.values() for text in (key, name)}
        if wanted not in known:
            raise JqlError(f"The value '{value}' does not exist for the field 'statusCategory'.")
    elif field == "status" and wanted not in {name.casefold() for name in JIRA_STATUSES}:
        raise JqlError(f"The value '{value}' does not exist for the field 'status'.")

    def values(issue: Json) -> list[str]:
        """What ``field`` holds on ``issue``, every way JQL may name it."""
        fields = issue["fields"]
        if field == "project":
            return [fields["project"]["key"]]
        if field == "labels":
            return list(fields["labels"])
        if field == "statusCategory":
            category = fields["status"]["statusCategory"]
            return [category["name"], category["key"]]
        if field == "status":
            return [fields["status"]["name"]]
        if field == "issuetype":
            return [fields["issuetype"]["name"]]
        return [issue["key"], issue["id"]]

    def test(issue: Json) -> bool:
        found = wanted in (v.casefold() for v in values(issue))
        return found if operator == "=" else not found

    return test
