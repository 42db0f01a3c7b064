"""``decisions --html``: the review page, opened in a real headless Chromium, shows what ``decisions --json`` says.

A report-only replay of the sample alerts against the sample tenant (one inbox rule renamed to markup an attacker
could choose) writes its decision records to the audit table on Azurite; ``decisions --html`` and
``decisions --json`` then run over that table, and the page's rendered text is read through the DevTools protocol.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from restricted_sender.adapters.tables import TableStore
from restricted_sender.core.policy import load_policy_text
from restricted_sender.entrypoints.cli import DEMO_NOW, SAMPLES
from restricted_sender.entrypoints.simulated import replay
from restricted_sender.timeutil import parse_instant
from simulator.azurite import Azurite
from tests.chromium import Chromium, chromium
from tests.conftest import ROOT

pytestmark = pytest.mark.azurite

HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned';console.log('pwned')</script>"
NOW = "2026-11-28T09:00:00Z"
# Each table of the page as rows of rendered cell texts.
TABLES = """JSON.stringify({
  title: document.title,
  csp: document.querySelector('meta[http-equiv="Content-Security-Policy"]').content,
  injected: document.querySelectorAll('script, img, iframe, object, embed, link, [onerror]').length,
  text: document.body.innerText,
  tables: Object.fromEntries([...document.querySelectorAll('table[id]')].map(t => [t.id,
    [...t.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim()))]))
})"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    if os.environ.get("SKIP_BROWSER_TESTS") == "1":
        pytest.skip("SKIP_BROWSER_TESTS=1: the browser tests are left out on purpose")
    with chromium() as running:  # raises with the install command when Chromium is missing: never a silent skip
        yield running


@pytest.fixture(scope="module")
def replayed(azurite: Azurite) -> dict[str, str]:
    """The environment of a ``decisions`` run over the audit table of a report-only replay of the samples."""
    tenant = yaml.safe_load((SAMPLES / "tenant.yaml").read_text(encoding="utf-8"))
    judy = next(u for u in tenant["users"] if u["userPrincipalName"] == "judy@contoso.com")
    judy["x-inboxRules"][0]["displayName"] = HOSTILE
    policy_text = (SAMPLES / "policy.yaml").read_text(encoding="utf-8").replace("mode: enforce", "mode: report-only")
    policy = load_policy_text(policy_text)
    bodies = [path.read_bytes() for path in sorted((SAMPLES / "alerts").glob("*.json"))]
    outcome = asyncio.run(replay(bodies, tenant=tenant, policy=policy, now=parse_instant(DEMO_NOW)))
    prefix = "review" + os.urandom(4).hex()

    async def write() -> None:
        store = TableStore.from_connection_string(azurite.connection_string, prefix=prefix)
        try:
            for record in outcome.records:  # the rows the processor appends: the record and its evidence
                await store.append_audit({**record.to_dict(), "evidence": dict(record.evidence)})
        finally:
            await store.close()

    asyncio.run(write())
    return {**os.environ, "AzureWebJobsStorage": azurite.connection_string, "TABLE_PREFIX": prefix}


def decisions(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, "-m", "restricted_sender", "decisions", "--since", "7d", "--now", NOW, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.fixture(scope="module")
def page(replayed: dict[str, str], browser: Chromium, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    html = tmp_path_factory.mktemp("review") / "report.html"
    decisions(replayed, "--html", str(html))
    shown = browser.read(html.as_uri(), TABLES, screenshot=bool(os.environ.get("REVIEW_SCREENSHOT")))
    if shown.screenshot:
        Path(os.environ["REVIEW_SCREENSHOT"]).write_bytes(shown.screenshot)
    return {**json.loads(shown.value), "console": shown.console}


@pytest.fixture(scope="module")
def as_json(replayed: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(decisions(replayed, "--json"))
    return data


def test_the_page_shows_the_counts_by_outcome_that_decisions_json_prints(
    page: dict[str, Any], as_json: dict[str, Any]
) -> None:
    shown = {outcome: int(count) for outcome, count, _ in page["tables"]["by-outcome"]}
    assert shown == as_json["by_outcome"]
    assert sum(shown.values()) == as_json["decisions"] > 0
    assert min(shown["ticket"], shown["unblock"]) > 0  # the samples decide both ways


def test_the_page_shows_the_top_reasons_that_decisions_json_prints_in_their_order(
    page: dict[str, Any], as_json: dict[str, Any]
) -> None:
    shown = [{"code": code, "count": int(count)} for code, count, _ in page["tables"]["top-reasons"]]
    assert shown == as_json["top_reasons"]
    assert {"guard:inbox-rule", "allow:contoso staff"} <= {r["code"] for r in shown}


def test_the_page_says_what_report_only_would_have_done_and_lists_every_decision(
    page: dict[str, Any], as_json: dict[str, Any]
) -> None:
    would = {kind: int(count) for kind, count, _ in page["tables"]["would-have"]}
    assert would == as_json["report_only_would_have_run"]
    assert would["unblock"] > 0
    assert len(page["tables"]["records"]) == len(as_json["records"]) == as_json["decisions"] + as_json["checks"]
    days = {day: int(total) for day, *_, total, _ in page["tables"]["per-day"]}
    assert days == {d["day"]: sum(v for k, v in d.items() if k != "day") for d in as_json["per_day"]}


def test_a_hostile_inbox_rule_name_is_shown_as_text_and_runs_nothing(page: dict[str, Any]) -> None:
    assert page["title"].startswith("Restricted Sender Responder: decisions of 7d")  # no script changed it
    assert page["injected"] == 0  # no element came from the rule's name
    assert "<script>document.title='pwned'" in page["text"]  # shown, as text
    assert page["console"] == []  # nothing ran, nothing was even blocked: there was no script to block
    assert page["csp"].startswith("default-src 'none'")  # and had there been one, the page forbids it
