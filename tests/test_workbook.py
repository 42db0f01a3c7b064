"""The dashboard's queries against what the app logs.

Every KQL query of the workbook (infra/app/workbook.json) and of the runbook (docs/operations.md) goes through
Kusto's own analyzer (scripts/kql-check.mjs, @kusto/language-service-next) against scripts/kql-schema.json; the
schema's shapes are compared here with the lines the code writes, so a field the code stops writing fails too.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from restricted_sender.core.decide import ReasonCode
from restricted_sender.core.policy import MODES, Guards
from restricted_sender.core.rows import note_shape
from restricted_sender.model import (
    Action,
    ActionKind,
    ActionStatus,
    Decision,
    DecisionRecord,
    Note,
    Outcome,
    Reason,
    Source,
)
from restricted_sender.processing.doctor import Probe, Report, Verdict
from restricted_sender.processing.pipeline import log_decision
from tests.conftest import ROOT

CHECK = ROOT / "scripts" / "kql-check.mjs"
SCHEMA = json.loads((ROOT / "scripts" / "kql-schema.json").read_text(encoding="utf-8"))
WORKBOOK = ROOT / "infra" / "app" / "workbook.json"
RUNBOOK = ROOT / "docs" / "operations.md"
AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def kql_check(*files: Path) -> tuple[int, dict[str, Any]]:
    node = shutil.which("node")
    assert node, "node is not on PATH (make setup needs it for Azurite too)"
    done = subprocess.run(
        [node, str(CHECK), "--json", *map(str, files)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def workbook_queries(workbook: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item["content"] for item in workbook["items"] if item["type"] == 3}


def test_every_query_of_the_workbook_and_the_runbook_passes_kustos_analyzer_against_the_schema() -> None:
    status, report = kql_check()
    assert report["problems"] == []
    assert status == 0
    checked = {(c["file"], c["query"]) for c in report["checked"]}
    workbook = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    assert {("infra/app/workbook.json", name) for name in workbook_queries(workbook)} <= checked
    fences = sum(
        1 for line in RUNBOOK.read_text(encoding="utf-8").splitlines() if line.strip() in ("```kusto", "```kql")
    )
    assert fences >= 10
    assert len([c for c in checked if c[0] == "docs/operations.md"]) == fences


# One way to break each kind of name a query may use: (query, text, replaced by, what the failure names).
BREAKS = {
    # A column of Application Insights' table.
    "column": ("failed-actions", "project timestamp,", "project timestmp,", "timestmp"),
    # A field of the decision record in the JSON log line.
    "field": (
        "decisions-per-day",
        "tostring(r.decision)",
        "tostring(r.outcome)",
        "'outcome' is not a field of decision",
    ),
    # A field of an element of one of its lists.
    "nested": ("unblock-to-lift", "r.sources[0].at", "r.sources[0].when", "'when' is not a field of source"),
    # A field of the doctor's line.
    "doctor": ("doctor", "report.failed", "report.failures", "'failures' is not a field"),
    # A list read as if it were one object.
    "list": ("top-reasons", "mv-expand reason = r.reasons", "extend reason = r.reasons.code", "is a list"),
    # A workbook parameter that does not exist.
    "parameter": ("tenant-budget", "{TenantBudget}", "{TenantLimit}", "parameter {TenantLimit}, which is not defined"),
}


@pytest.fixture(scope="module")
def broken_workbooks(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Each break in its own copy of the workbook, all checked in one run (node takes a second or two to start)."""
    folder = tmp_path_factory.mktemp("broken")
    files = []
    for case, (query, before, after, _) in BREAKS.items():
        workbook = json.loads(WORKBOOK.read_text(encoding="utf-8"))
        content = workbook_queries(workbook)[query]
        assert before in content["query"], case
        content["query"] = content["query"].replace(before, after, 1)
        files.append(folder / f"{case}.json")
        files[-1].write_text(json.dumps(workbook), encoding="utf-8")
    status, report = kql_check(*files)
    problems: dict[str, list[dict[str, Any]]] = {case: [] for case in BREAKS}
    for problem in report["problems"]:
        problems[Path(problem["file"]).stem].append(problem)
    return status, problems


@pytest.mark.parametrize("case", BREAKS)
def test_a_workbook_query_naming_what_the_app_never_logs_fails_the_check_naming_the_query_and_the_name(
    broken_workbooks: tuple[int, dict[str, list[dict[str, Any]]]], case: str
) -> None:
    status, problems = broken_workbooks
    query, _, _, named = BREAKS[case]
    assert status == 1
    assert problems[case], f"the {case} break passed the check"
    assert {p["query"] for p in problems[case]} == {query}
    assert any(named in p["message"] for p in problems[case]), problems[case]


def test_a_runbook_query_naming_a_custom_dimension_the_host_never_writes_fails_the_check(tmp_path: Path) -> None:
    runbook = tmp_path / "operations.md"
    runbook.write_text(
        "Text.\n\n```kusto\ntraces\n| where tostring(customDimensions.Category) has 'process_event'\n"
        "| summarize count() by tostring(customDimensions.FunctionName)\n```\n",
        encoding="utf-8",
    )
    status, report = kql_check(runbook)
    assert status == 1
    [problem] = report["problems"]
    assert (problem["query"], problem["line"]) == ("block at line 3", 6)
    assert "'FunctionName' is not a field of customDimensions" in problem["message"]


# -- the schema against the code that writes the lines --------------------------------------------------------------

SCALARS: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "int": int,
    "long": int,
    "real": (int, float),
    "bool": bool,
}


def shape_problems(value: Any, spec: Any, where: str) -> list[str]:
    """How ``value`` (a line as the code wrote it) differs from the schema's ``spec``; every list must hold one
    element at least, so that its elements are compared too."""
    if isinstance(spec, list):
        if not isinstance(value, list) or not value:
            return [f"{where}: not a non-empty list"]
        return [p for i, item in enumerate(value) for p in shape_problems(item, spec[0], f"{where}[{i}]")]
    if spec == "map":
        return [] if isinstance(value, dict) else [f"{where}: not an object"]
    if spec in SCHEMA["shapes"]:
        fields: dict[str, Any] = SCHEMA["shapes"][spec]
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        problems = [f"{where}.{k}: written, not in the schema's {spec}" for k in sorted(value.keys() - fields.keys())]
        problems += [f"{where}.{k}: in the schema's {spec}, not written" for k in sorted(fields.keys() - value.keys())]
        return problems + [
            p for k in sorted(fields.keys() & value.keys()) for p in shape_problems(value[k], fields[k], f"{where}.{k}")
        ]
    return [] if isinstance(value, SCALARS[spec]) else [f"{where}: {value!r} is not a {spec}"]


def logged(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def decision_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The decision log line, as log_decision writes it, for a record with one element in each of its lists."""
    record = DecisionRecord(
        event_id="e1",
        alert_id="a1",
        source="sentinel",
        sources=(Source("sentinel", "a1", AT),),
        user="alice@contoso.com",
        decision=Decision(Outcome.UNBLOCK, (Reason("allow:staff", "alice is staff"),)),
        actions=(Action(ActionKind.UNBLOCK, ActionStatus.SKIPPED, "report-only: would remove alice@contoso.com"),),
        mode="report-only",
        policy_version="v1",
        at=AT,
        evidence={"restriction": None},
        notes=(Note("risk-unknown", "no Entra ID P2"),),
    )
    with caplog.at_level(logging.INFO, logger="restricted_sender.decision"):
        log_decision(record)
    [line] = logged(caplog, "restricted_sender.decision")
    # The workbook picks the decision lines out of traces by these two marks.
    assert line.startswith("{")
    assert '"policy_version"' in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_the_schema_states_exactly_the_fields_of_the_decision_log_line(caplog: pytest.LogCaptureFixture) -> None:
    assert shape_problems(decision_line(caplog), "decision", "line") == []


@pytest.mark.parametrize("field", ["policy_version", "sources", "at"])
def test_a_field_the_decision_line_stops_carrying_fails_the_schema_comparison(
    caplog: pytest.LogCaptureFixture, field: str
) -> None:
    line = decision_line(caplog)
    del line[field]
    assert shape_problems(line, "decision", "line") == [f"line.{field}: in the schema's decision, not written"]


def test_the_schema_states_exactly_the_fields_of_the_doctors_line() -> None:
    report = Report((Probe("exchange", Verdict.OK), Probe("graph-mail", Verdict.MISSING_PERMISSION)))
    line = report.log_line()
    assert line.startswith('{"doctor"')  # the workbook's and the runbook's filter
    assert shape_problems(json.loads(line), "doctor", "line") == []


def test_the_schema_states_exactly_the_fields_of_the_exchange_shape_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="restricted_sender.core.rows"):
        note_shape("Get-Mailbox", {"Zzz": 1}, frozenset({"Identity", "Alias"}), frozenset({"Alias"}))
    [line] = logged(caplog, "restricted_sender.core.rows")
    assert line.startswith("exchange-unexpected-shape {")
    assert shape_problems(json.loads(line[line.index("{") :]), "exchange_shape", "line") == []


def test_the_workbooks_budget_parameters_default_to_the_policys_budgets() -> None:
    workbook = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    [parameters] = [item["content"]["parameters"] for item in workbook["items"] if item["type"] == 9]
    value = {p["name"]: p["value"] for p in parameters}
    user, tenant = Guards().max_unblocks_per_user, Guards().max_unblocks_per_tenant
    assert user is not None
    assert tenant is not None
    assert (int(value["UserBudget"]), int(value["UserWindowDays"]) * 24) == (user.count, user.window_hours)
    assert (int(value["TenantBudget"]), int(value["TenantWindowHours"])) == (tenant.count, tenant.window_hours)


# The words the app writes as values (reason codes, outcomes, action kinds and statuses, modes), and the one other
# lower-case word the queries use (a datetime_diff unit).
VOCABULARY = (
    {str(c) for c in ReasonCode}
    | {str(o) for o in Outcome}
    | {str(k) for k in ActionKind}
    | {str(s) for s in ActionStatus}
    | set(MODES)
    | {"second"}
)


def test_every_code_a_workbook_query_compares_with_is_one_the_app_writes() -> None:
    # The analyzer checks names, not values: a misspelt reason code would silently match nothing.
    workbook = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    for name, content in workbook_queries(workbook).items():
        literals = re.findall(r'(?<!@)"((?:[^"\\]|\\.)*)"', content["query"])
        words = [w for w in literals if re.fullmatch(r"[a-z][a-z-]*(:[a-z-]+)?", w)]
        assert set(words) - VOCABULARY == set(), name


def test_every_workbook_query_reads_the_apps_application_insights_over_the_chosen_time_range() -> None:
    workbook = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    queries = workbook_queries(workbook)
    names = [item["name"] for item in workbook["items"]]
    assert len(names) == len(set(names))
    for name, content in queries.items():
        assert content["resourceType"] == "microsoft.insights/components", name
        assert content["timeContextFromParameter"] == "TimeRange", name
    # The views the dashboard promises (README "Dashboard").
    assert {
        "decisions-per-day",
        "top-reasons",
        "sources",
        "time-to-decision",
        "unblock-to-lift",
        "failed-actions",
        "poison-messages",
        "tenant-budget",
        "user-budget",
        "would-have-done",
    } <= set(queries)


@pytest.mark.parametrize(
    ("restriction", "at", "anchor"),
    [
        ({"created": "2026-11-27T08:02:11Z", "changed": "2026-11-27T08:05:00Z", "anchor": "created"},
         "2026-11-27T08:02:11Z", "created"),
        ({"created": None, "changed": "2026-11-27T08:05:00Z", "anchor": "changed"}, "2026-11-27T08:05:00Z", "changed"),
        ({"created": None, "changed": None, "first_seen": "2026-11-27T09:00:00Z", "anchor": "first-seen"},
         "2026-11-27T09:00:00Z", "first-seen"),
        (None, "", "none"),
    ],
    ids=["created", "changed", "first seen", "no block"],
)  # fmt: skip
def test_the_decision_line_carries_the_blocks_own_time_for_the_dashboard(
    caplog: pytest.LogCaptureFixture, restriction: dict[str, Any] | None, at: str, anchor: str
) -> None:
    record = DecisionRecord(
        event_id="e1", alert_id="a1", source="sentinel", sources=(Source("sentinel", "a1", AT),),
        user="alice@contoso.com", decision=Decision(Outcome.TICKET, (Reason("no-allow-rule", "none"),)),
        actions=(), mode="enforce", policy_version="v1", at=AT, evidence={"restriction": restriction},
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="restricted_sender.decision"):
        log_decision(record)
    [line] = logged(caplog, "restricted_sender.decision")
    parsed = json.loads(line)
    assert (parsed["restriction_at"], parsed["restriction_anchor"]) == (at, anchor)
    assert {k: v for k, v in parsed.items() if not k.startswith("restriction_")} == record.to_dict()
