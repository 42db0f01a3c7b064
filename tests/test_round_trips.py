"""Designed, then measured: how many sequential round trips to the tenant a decision costs before it acts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from restricted_sender.core.policy import parse_policy
from restricted_sender.entrypoints.simulated import replay
from restricted_sender.timeutil import parse_instant
from tests.conftest import alert_v2, blocked, tenant, user

EVERY_GUARD = {
    "mode": "enforce",
    "allow": [{"name": "staff", "domains": ["contoso.com"]}, {"name": "bulk", "groups": ["g-bulk"]}],
    "deny": {"groups": ["g-vip"]},
    "guards": {
        "max_unblocks_per_user": {"count": 1, "days": 7},
        "max_unblocks_per_tenant": {"count": 10, "hours": 1},
        "max_risk_level": "low",
        "suspicious_inbox_rules": True,
        "external_forwarding": True,
        "account_enabled": True,
    },
}


def sequential_round_trips(requests: Sequence[Mapping[str, Any]]) -> int:
    """The longest chain of requests each of which started after the one before it had ended."""
    done = sorted((r for r in requests if r.get("ended") is not None), key=lambda r: float(r["ended"]))
    longest: list[int] = []
    for request in done:
        before = [n for n, r in zip(longest, done, strict=False) if float(r["ended"]) <= float(request["started"])]
        longest.append(max(before, default=0) + 1)
    return max(longest, default=0)


def tenant_requests_before_the_unblock(requests: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    remove = next(i for i, r in enumerate(requests) if r["route"] == "exchange.Remove-BlockedSenderAddress")
    # A JSON batch is logged as its own entry beside each request it carried: the requests are what is counted.
    return [r for r in requests[:remove] if r["route"] not in ("identity.token", "graph.batch")]


@pytest.mark.parametrize("with_object_id", [False, True], ids=["address only", "address and its own object id"])
def test_an_eligible_clean_user_costs_at_most_two_sequential_round_trips_before_the_unblock(
    with_object_id: bool,
) -> None:
    # Latency makes concurrency visible: without it each answer arrives before the next request is even sent.
    alice = user("alice", **{"x-riskLevel": "none"})
    state = tenant(
        [alice],
        [blocked("alice@contoso.com")],
        **{"x-latency": {"graph.*": 0.1, "exchange.*": 0.1}},
    )
    # Binding the user to the restricted address costs no round trip when the alert's identities agree.
    alert = alert_v2("alice@contoso.com", object_ids={"alice@contoso.com": alice["id"]} if with_object_id else None)
    outcome = asyncio.run(
        replay(
            [json.dumps(alert).encode()],
            tenant=state,
            policy=parse_policy(EVERY_GUARD),
            now=parse_instant("2026-11-27T12:00:00Z"),
        )
    )
    [record] = outcome.records
    assert record.decision.outcome.value == "unblock"
    before = tenant_requests_before_the_unblock(outcome.requests)
    routes = sorted(r["route"] for r in before)
    assert routes == sorted(
        [
            "exchange.Get-BlockedSenderAddress",
            "exchange.Get-Mailbox",
            "graph.checkMemberGroups",
            "graph.domains",
            "graph.messageRules",
            "graph.riskyUser",
            "graph.roleAssignments",
            "graph.roleEligibilityScheduleInstances",
            "graph.user",
            "graph.userRegistrationDetails",
        ]
    )
    # The privileged guard's two role reads and the MFA evidence go with the risk read: three more requests, no
    # more sequential round trips.
    assert sequential_round_trips(before) <= 2
