"""Nothing depends on the machine's date: the product and the simulated tenant share one injected clock.

A replay judges every sample at ``--now``; replayed years later, the samples decide as at their own date except
where a rule counts time. Access tokens stay on the clock their clients compare with (the machine's), so the
product's token cache works whatever ``--now`` is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from restricted_sender.entrypoints.cli import DEMO_NOW
from restricted_sender.timeutil import FixedClock, iso, parse_instant
from simulator import Simulator
from tests.conftest import ROOT, TENANT_ID, tenant, user

SAMPLES = sorted((ROOT / "samples" / "alerts").glob("*.json"))
NATURAL = parse_instant(DEMO_NOW)  # the samples' own "now": their alerts and blocks are from that day
MANAGE = "https://manage.office.com"
FEED = f"/api/v1.0/{TENANT_ID}/activity/feed"


@dataclass(frozen=True)
class Replayed:
    decisions: list[tuple[str, str, str, tuple[str, ...]]]  # (user, source, decision, reason codes) in order
    judged_at: set[str]
    requests: list[dict[str, Any]]
    stderr: str


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Callable[[datetime], Replayed]:
    """Every sample alert through ``python -m restricted_sender replay --now``, once per instant."""
    runs: dict[datetime, Replayed] = {}

    def at(now: datetime) -> Replayed:
        if now not in runs:
            log = tmp_path_factory.mktemp("replay") / "requests.jsonl"
            done = subprocess.run(
                [sys.executable, "-m", "restricted_sender", "replay", *map(str, SAMPLES), "--tenant",
                 "samples/tenant.yaml", "--policy", "samples/policy.yaml", "--now", iso(now), "--json",
                 "--requests-log", str(log)],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            records = [json.loads(line) for line in done.stdout.splitlines()]
            runs[now] = Replayed(
                decisions=[
                    (r["user"], r["source"], r["decision"], tuple(x["code"] for x in r["reasons"])) for r in records
                ],
                judged_at={r["at"] for r in records},
                requests=[json.loads(line) for line in log.read_text().splitlines()],
                stderr=done.stderr,
            )
        return runs[now]

    return at


def years(count: int) -> timedelta:
    return timedelta(days=round(365.25 * count))


# What changes when the samples are replayed a year or more after their date, each for a rule that counts time:
STAFF = "allow:contoso staff"
CHANGED_LATER = {
    # A sending-limit block lifts within 24 hours: still listed a year on, it is overdue and needs a person.
    "carol@contoso.com": (("wait", (STAFF, "limit-block")), ("ticket", (STAFF, "release-overdue"))),
    # The temporary block's own lift time (2026-11-28T00:00Z) is behind --now: no longer "lifts soon", so unblocked.
    "dave@contoso.com": (("wait", (STAFF, "auto-release-soon")), ("unblock", (STAFF,))),
    # The 7-day user budget no longer holds erin's unblock of 2026-11-24 (samples/tenant.yaml x-history).
    "erin@contoso.com": (("ticket", (STAFF, "guard:user-budget")), ("unblock", (STAFF,))),
}


@pytest.mark.parametrize("later", [1, 10], ids=["a-year-later", "ten-years-later"])
def test_every_sample_replayed_years_later_decides_as_on_its_own_date_but_for_rules_that_count_time(
    replayed: Callable[[datetime], Replayed], later: int
) -> None:
    natural, shifted = replayed(NATURAL), replayed(NATURAL + years(later))

    changed = {
        then[0]: ((then[2], then[3]), (now[2], now[3]))
        for then, now in zip(natural.decisions, shifted.decisions, strict=True)
        if then != now
    }
    assert changed == CHANGED_LATER
    assert ("heidi@contoso.com", "o365", "ignore", ("duplicate",)) in shifted.decisions  # the o365 blob was fetched
    assert shifted.judged_at == {iso(NATURAL + years(later))}
    assert "expired" not in shifted.stderr
    assert "not completed" not in shifted.stderr
    fetched = [r for r in shifted.requests if "/activity/feed/audit/" in r["path"]]
    assert len(fetched) == 1


@pytest.mark.parametrize("offset", [-10, 1, 10], ids=["ten-years-back", "a-year-ahead", "ten-years-ahead"])
def test_a_replay_on_a_clock_years_away_still_caches_one_token_per_resource(
    replayed: Callable[[datetime], Replayed], offset: int
) -> None:
    """Were tokens stamped on ``--now``, azure-identity (which compares with the machine's clock) would find a
    token from a clock in the past already expired and fetch a new one for every call."""
    run = replayed(NATURAL + years(offset))

    resources = [r["query"]["resource"] for r in run.requests if r["path"] == "/msi/token"]

    assert sorted(resources) == sorted(set(resources))
    assert len(run.requests) > 3 * len(resources)


def test_the_simulator_judges_content_expiry_on_its_injected_clock() -> None:
    created = parse_instant("2026-11-27T08:15:00Z")
    content = [{"contentId": "c-1", "contentCreated": iso(created), "records": []}]
    clock = FixedClock(created + timedelta(days=6, hours=23))
    state = tenant([user("alice")], [], **{"x-auditSubscriptions": ["Audit.General"], "x-auditContent": content})
    with Simulator(state, clock=clock) as sim:
        headers = {"Authorization": f"Bearer {sim.issue_token(MANAGE)}"}

        kept = httpx.get(f"{sim.url}{FEED}/audit/c-1", headers=headers)
        clock.advance(timedelta(hours=1))
        gone = httpx.get(f"{sim.url}{FEED}/audit/c-1", headers=headers)

    assert kept.status_code == 200
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "AF20051")


def test_seeded_content_without_a_date_is_published_at_the_simulators_now() -> None:
    state = tenant([user("alice")], [], **{"x-auditContent": [{"contentId": "c-1", "records": []}]})
    created = []
    for offset in (0, 10):
        with Simulator(state, clock=FixedClock(NATURAL + years(offset))) as sim:
            created.append(sim.notification()[0]["contentCreated"])

    assert created == [f"{iso(NATURAL + years(n))[:-1]}.000Z" for n in (0, 10)]


def test_tokens_expire_on_the_token_clock_without_waiting() -> None:
    seconds = [time.time()]
    with Simulator(tenant([user("alice")], []), token_clock=lambda: seconds[0]) as sim:
        headers = {"Authorization": f"Bearer {sim.issue_token('https://graph.microsoft.com', lifetime=60)}"}

        live = httpx.get(f"{sim.url}/v1.0/users", headers=headers)
        seconds[0] += 60
        expired = httpx.get(f"{sim.url}/v1.0/users", headers=headers)

    assert (live.status_code, expired.status_code) == (200, 401)


def test_timestamps_the_simulator_writes_come_from_its_clock() -> None:
    with Simulator(tenant([user("alice")], []), clock=FixedClock(NATURAL + years(10))) as sim:
        headers = {"Authorization": f"Bearer {sim.issue_token('https://graph.microsoft.com')}"}
        httpx.post(f"{sim.url}/v1.0/users/alice@contoso.com/revokeSignInSessions", headers=headers)
        changed = httpx.get(
            f"{sim.url}/v1.0/users/alice@contoso.com",
            params={"$select": "signInSessionsValidFromDateTime"},
            headers=headers,
        ).json()

    assert changed["signInSessionsValidFromDateTime"] == iso(NATURAL + years(10))
