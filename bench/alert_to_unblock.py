"""Alert -> unblock wall time against the simulator, compared with the simulated network round trips it waits for.

The processor is wired exactly as ``replay`` wires it (the real managed-identity credential through
IDENTITY_ENDPOINT/IDENTITY_HEADER, the real httpx and msgraph-sdk clients, the in-memory store, the policy
in enforce mode), against a simulated tenant of restricted, allowed users (spam blocks, one allowed domain) with
a latency of L seconds on every Graph and Exchange route and on the token endpoint. One warm-up event fetches
the tokens; then every measured event is processed on its own and timed.

The simulator's request log says which requests of an event overlapped: the critical path is the longest chain
of requests each of which started after the previous one ended, and its expected time is the sum of their
injected latencies. The bar: p50 wall <= 1.2 x expected, with at most 4 sequential round trips
(exit code 1 otherwise, and when an event does not end in a done unblock).

    .venv/bin/python bench/alert_to_unblock.py [--count 50] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from synthetic import TENANT_ID, address, alert, blocked, policy_yaml, user, user_id  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
BAR_RATIO = 1.2
BAR_ROUND_TRIPS = 4
DOMAIN = "contoso.com"
LATENCY_ROUTES = ("graph.*", "exchange.*", "identity.token")
POLICY_YAML = policy_yaml(DOMAIN)


def tenant(users: int) -> dict[str, Any]:
    """``users`` restricted, enabled users of the allowed domain, each on a spam (not temporary) block."""
    return {
        "tenantId": TENANT_ID,
        "users": [user(i, DOMAIN) for i in range(users)],
        "domains": [{"id": DOMAIN, "isVerified": True, "isDefault": True}],
        "blockedSenders": [blocked(address(i, DOMAIN)) for i in range(users)],
    }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def critical_path(requests: Sequence[Mapping[str, Any]], latency_of: Mapping[str, float]) -> list[Mapping[str, Any]]:
    """The chain of strictly sequential requests (each started after the previous one ended) that carries the
    most injected latency; ties go to the longer chain. Requests that overlap in time are never both on it."""
    done = sorted((r for r in requests if r.get("ended") is not None), key=lambda r: float(r["ended"]))
    best: list[tuple[float, list[Mapping[str, Any]]]] = []
    for request in done:
        before = [b for b, r in zip(best, done, strict=False) if float(r["ended"]) <= float(request["started"])]
        weight, chain = max(before, key=lambda b: (b[0], len(b[1])), default=(0.0, []))
        best.append((weight + latency_of.get(str(request["route"]), 0.0), [*chain, request]))
    return max(best, key=lambda b: (b[0], len(b[1])), default=(0.0, []))[1]


def path_gaps(chain: Sequence[Mapping[str, Any]], window: tuple[float, float]) -> tuple[float, float, float, float]:
    """Seconds before the first request of the critical path arrived, between an answer and the next request
    (summed), spent answering the path's requests (latency included), and after the last answer."""
    if not chain:
        return window[1] - window[0], 0.0, 0.0, 0.0
    start, end = window
    between = sum(float(b["started"]) - float(a["ended"]) for a, b in pairwise(chain))
    served = sum(float(r["ended"]) - float(r["started"]) for r in chain)
    return float(chain[0]["started"]) - start, between, served, end - float(chain[-1]["ended"])


@dataclass
class Measured:
    wall: list[float]  # seconds per measured event
    windows: list[tuple[float, float]]  # monotonic (start, end) per measured event
    requests: list[dict[str, Any]]  # the simulator's log, warm-up included
    failures: list[str]


async def run(count: int, latency: float) -> Measured:
    from restricted_sender.core.policy import load_policy_text
    from restricted_sender.entrypoints.compose import build_intake
    from restricted_sender.fakes import MemoryQueue
    from restricted_sender.model import ActionStatus, Outcome, RestrictionEvent
    from restricted_sender.testing import on_simulator, simulator_settings
    from restricted_sender.timeutil import SystemClock
    from simulator import Simulator

    policy = load_policy_text(POLICY_YAML, source="bench policy")
    clock = SystemClock()
    with Simulator(tenant(count + 1), port=0, clock=clock) as sim:
        for route in LATENCY_ROUTES:
            sim.set_latency(route, latency)
        settings = simulator_settings(sim)
        queue = MemoryQueue()
        intake = build_intake(settings, policy, queue=queue, clock=clock)
        for index in range(count + 1):  # user 0 is the warm-up
            intake.accept(json.dumps(alert(f"a2u-{index:07d}", address(index, DOMAIN), user_id(index))).encode())
        events = [RestrictionEvent.from_message(text) for text in queue.drain()]
        assert len(events) == count + 1, f"the intake queued {len(events)} events for {count + 1} alerts"

        wall: list[float] = []
        windows: list[tuple[float, float]] = []
        failures: list[str] = []
        async with on_simulator(sim, policy, clock) as (bundle, _):
            for position, event in enumerate(events):
                started = time.monotonic()
                record = await bundle.processor.process(event)
                ended = time.monotonic()
                done = record.decision.outcome is Outcome.UNBLOCK and any(
                    a.kind == "unblock" and a.status is ActionStatus.DONE for a in record.actions
                )
                if not done:
                    failures.append(f"{record.user}: {record.decision.outcome.value} {record.decision.codes}")
                if position > 0:
                    wall.append(ended - started)
                    windows.append((started, ended))
        return Measured(wall=wall, windows=windows, requests=sim.requests, failures=failures)


def per_event(requests: Sequence[dict[str, Any]], windows: Sequence[tuple[float, float]]) -> list[list[dict[str, Any]]]:
    """The requests that arrived while each measured event was being processed."""
    grouped: list[list[dict[str, Any]]] = [[] for _ in windows]
    for request in requests:
        at = float(request["started"])
        for index, (start, end) in enumerate(windows):
            if start <= at <= end:
                grouped[index].append(request)
                break
    return grouped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=50, help="measured events (default 50)")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every simulated round trip")
    args = parser.parse_args(argv)
    if args.count < 1 or args.latency <= 0:
        parser.error("--count must be at least 1 and --latency greater than 0")

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from simulator.faults import route_matches

    measured = asyncio.run(run(args.count, args.latency))
    grouped = per_event(measured.requests, measured.windows)
    routes = sorted({str(r["route"]) for group in grouped for r in group})
    latency_of = {
        route: args.latency if any(route_matches(p, route) for p in LATENCY_ROUTES) else 0.0 for route in routes
    }
    chains = [critical_path(group, latency_of) for group in grouped]
    sequential = Counter(len(chain) for chain in chains)
    typical = sequential.most_common(1)[0][0]
    worst = max(sequential)
    expected = statistics.median(sum(latency_of[str(r["route"])] for r in chain) for chain in chains)
    ordered = sorted(measured.wall)
    p50, p99 = percentile(ordered, 0.50), percentile(ordered, 0.99)
    ratio = p50 / expected if expected > 0 else math.inf
    by_route = Counter(str(r["route"]) for group in grouped for r in group)
    example = " -> ".join(str(r["route"]) for r in chains[len(chains) // 2])
    gaps = [path_gaps(chain, window) for chain, window in zip(chains, measured.windows, strict=True)]
    before, between, served, after = (statistics.median(g[i] for g in gaps) for i in range(4))
    bar_holds = ratio <= BAR_RATIO and worst <= BAR_ROUND_TRIPS

    print(f"alert -> unblock against the simulator: count={args.count} latency={args.latency * 1000:g} ms")
    print(f"wall per event: p50={p50 * 1000:7.2f} ms  p99={p99 * 1000:7.2f} ms  max={ordered[-1] * 1000:7.2f} ms")
    print("requests per event by route:")
    for route in sorted(by_route):
        print(f"  {route:<40} {by_route[route] / len(grouped):5.2f}")
    print(f"token requests during measured events: {by_route.get('identity.token', 0)}")
    spread = ", ".join(f"{n}: {sequential[n]} event(s)" for n in sorted(sequential))
    print(f"sequential simulated round trips on the critical path: {typical} ({spread})")
    print(f"critical path (median event): {example}")
    print(f"expected = sequential round trips x latency: {expected * 1000:.2f} ms")
    print(f"ratio p50 wall / expected: {ratio:.3f}")
    print(f"overhead at p50 (wall - expected): {(p50 - expected) * 1000:.2f} ms")
    print(
        "where the wall time goes (median event, ms): "
        f"before the first request arrives {before * 1000:.2f}, "
        f"answering the critical-path requests {served * 1000:.2f}, "
        f"between an answer and the next request {between * 1000:.2f}, "
        f"after the last answer {after * 1000:.2f}"
    )
    print(f"events not ending in a done unblock: {len(measured.failures)}")
    for failure in measured.failures[:5]:
        print(f"  {failure}")
    print(
        f"bar ratio <= {BAR_RATIO:g} and <= {BAR_ROUND_TRIPS} sequential round trips: "
        f"{'holds' if bar_holds else 'FAILS'}"
    )
    return 0 if bar_holds and not measured.failures else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
