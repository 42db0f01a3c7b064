"""``decisions``: what the app decided over a period, read back from the audit table (on Azurite)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from restricted_sender.adapters.tables import TableStore
from restricted_sender.model import Action, ActionStatus, Decision, DecisionRecord, Outcome, Reason, Source
from restricted_sender.timeutil import parse_instant
from simulator.azurite import Azurite
from tests.conftest import ROOT

pytestmark = pytest.mark.azurite

NOW = "2026-11-27T12:00:00Z"  # the end of the period, passed as --now: the test never reads the machine's date


def record(user: str, outcome: Outcome, code: str, age: timedelta, action: Action | None = None) -> DecisionRecord:
    at = parse_instant(NOW) - age
    return DecisionRecord(
        event_id=f"e-{user}", alert_id="a1", source="poll", sources=(Source("poll", "a1", at),), user=user,
        decision=Decision(outcome, (Reason(code, "why"),)), actions=(action,) if action else (),
        mode="report-only", policy_version="v1", at=at,
    )  # fmt: skip


def test_decisions_summarizes_the_period_and_what_report_only_would_have_done(
    azurite: Azurite, table_prefix: str
) -> None:
    would = Action("unblock", ActionStatus.SKIPPED, "report-only: would remove a@contoso.com")
    rows = [
        record("a@contoso.com", Outcome.UNBLOCK, "allow:staff", timedelta(days=1), would),
        record("b@contoso.com", Outcome.TICKET, "guard:risk", timedelta(hours=3)),
        record("old@contoso.com", Outcome.TICKET, "no-allow-rule", timedelta(days=10)),
    ]

    async def seed() -> None:
        store = TableStore.from_connection_string(azurite.connection_string, prefix=table_prefix)
        try:
            for row in rows:
                await store.append_audit({**row.to_dict(), "evidence": {}})
        finally:
            await store.close()

    asyncio.run(seed())
    env = {**os.environ, "AzureWebJobsStorage": azurite.connection_string, "TABLE_PREFIX": table_prefix}
    run = [sys.executable, "-m", "restricted_sender", "decisions", "--since", "7d", "--now", NOW]
    summary = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    assert summary.splitlines()[:7] == [
        "2 decision(s) from 2026-11-20T12:00:00Z to 2026-11-27T12:00:00Z",
        "  by decision: unblock 1, ticket 1",
        "  top reasons: allow:staff 1, guard:risk 1",
        "  by source: poll 2",
        "  reported first: poll 2",
        "  report-only would have run: unblock 1",
        "  unblocks done: 0",
    ]
    done = subprocess.run([*run, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    review = json.loads(done.stdout)
    assert review["by_outcome"] == {"unblock": 1, "wait": 0, "ticket": 1, "ignore": 0}
    assert [r["user"] for r in review["records"]] == ["b@contoso.com", "a@contoso.com"]  # newest first


def test_a_period_that_is_not_a_duration_is_refused_with_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "restricted_sender", "decisions", "--since", "a week"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "--since must look like 7d" in done.stderr
