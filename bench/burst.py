"""A burst of restriction alerts with throttling (429s) and re-posted duplicates: nothing lost, nothing done twice,
and how close the throughput comes to what the design allows.

A simulated tenant of N restricted users: half in the policy's allowed domain (each is unblocked), half outside it
(each gets a ticket), and about 1% of the allowed ones past Microsoft's unblock limit (the unblock is refused, so
they get a ticket). The alerts go through ``Intake.accept`` into a ``MemoryQueue`` (half of them in
``{"value": [...]}`` batches), about 5% are posted a second time, and the queue is drained into the processor
(wired as ``replay`` wires it, the ticket webhook served by the simulator) with bounded concurrency, the way the
Functions host runs a queue trigger: a message whose processing raises goes back on the queue, and after
``--max-deliveries`` deliveries it is poisoned. About 5% of the expected calls to Get-BlockedSenderAddress,
Remove-BlockedSenderAddress, the Graph user and the ticket webhook are answered 429 with a short Retry-After.

The simulator runs in a process of its own (its CPU is not the processor's, as with the real services) with
``--latency`` (default 50 ms) on every route. Before the burst, ``--probes`` events are processed one at a time:
their median wall time is the critical path, and the design's limit is ``--concurrency`` (host.json's batchSize,
16) x 1 instance / critical path. The burst ratio is the events/s measured against that limit. The peak RSS is this
process's (the processor's; the simulator is elsewhere).

The bar: zero lost events (every accepted delivery has its terminal audit record, or is poisoned),
every effect exactly once (one successful Remove per unblocked address, one ticket per ticketed user, none for
anyone else), and one audit record per processed delivery. Exit code 1 otherwise.

    .venv/bin/python bench/burst.py [--count 1000] [--concurrency 16] [--latency 0.05] [--faults spread|front]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import synthetic  # bench/ is on sys.path
from synthetic import TENANT_ID, blocked, policy_yaml, user, user_id

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_DOMAIN = "contoso.com"
OTHER_DOMAIN = "fabrikam.com"
LIMIT_EVERY = 100  # every 100th user (an allowed one) is past Microsoft's unblock limit
GET = "exchange.Get-BlockedSenderAddress"
REMOVE = "exchange.Remove-BlockedSenderAddress"
USER = "graph.user"
TICKET = "tickets.webhook"
THROTTLED_ROUTES = (GET, REMOVE, USER, TICKET)
POLICY_YAML = policy_yaml(ALLOWED_DOMAIN)


# -- the tenant and the alerts ----------------------------------------------------------------------------------


def allowed(index: int) -> bool:
    return index % 2 == 0


def limit_reached(index: int) -> bool:
    return index % LIMIT_EVERY == 0  # even, so always an allowed user


def domain(index: int) -> str:
    return ALLOWED_DOMAIN if allowed(index) else OTHER_DOMAIN


def address(index: int) -> str:
    return synthetic.address(index, domain(index))


def tenant(count: int) -> dict[str, Any]:
    return {
        "tenantId": TENANT_ID,
        "users": [
            user(
                i,
                ALLOWED_DOMAIN if allowed(i) else OTHER_DOMAIN,
                **({"x-unblockLimitReached": True} if limit_reached(i) else {}),
            )
            for i in range(count)
        ],
        "domains": [
            {"id": ALLOWED_DOMAIN, "isVerified": True, "isDefault": True},
            {"id": OTHER_DOMAIN, "isVerified": True, "isDefault": False},
        ],
        "blockedSenders": [blocked(address(i)) for i in range(count)],
    }


def alert(index: int) -> dict[str, Any]:
    return synthetic.alert(f"burst-{index:07d}", address(index), user_id(index))


def bodies(count: int, batch: int, duplicates: int, rng: random.Random) -> list[bytes]:
    """Every alert once (every other group of ``batch`` alerts as one ``{"value": [...]}`` body, the rest one
    alert per body), and ``duplicates`` alerts posted again a little later, while the first may still be running."""
    placed: list[tuple[float, bytes]] = []
    position: dict[int, float] = {}
    for group, start in enumerate(range(0, count, batch)):
        members = list(range(start, min(start + batch, count)))
        if group % 2 == 0:
            placed.append((float(start), json.dumps({"value": [alert(i) for i in members]}).encode("utf-8")))
            position.update((i, float(start)) for i in members)
        else:
            placed.extend((float(i), json.dumps(alert(i)).encode("utf-8")) for i in members)
            position.update((i, float(i)) for i in members)
    for i in rng.sample(range(count), duplicates):
        placed.append((position[i] + rng.uniform(0.5, 3.0 * batch), json.dumps(alert(i)).encode("utf-8")))
    placed.sort(key=lambda item: item[0])
    return [body for _, body in placed]


# -- the simulator, in a process of its own ----------------------------------------------------------------------


SERVE = "import sys; from simulator import serve; serve(sys.argv[1], identity_header=sys.argv[2])"


class SimulatorProcess:
    """``simulator.serve`` in a child process, driven through its ``/_sim`` control endpoints: its CPU (every answer
    is JSON built in Python) is not the processor's, as with the real services. Has the attributes the product's
    wiring (``on_simulator``) reads from a :class:`simulator.Simulator`."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        import httpx

        from simulator.entra import AdminApi

        self._dir = tempfile.TemporaryDirectory()
        path = Path(self._dir.name) / "tenant.json"
        path.write_text(json.dumps(state), encoding="utf-8")
        self.identity_header = secrets.token_hex(16)
        self.tenant_id = str(state["tenantId"])
        self.admin_api = AdminApi()
        self._child = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(path), self.identity_header],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._child.stdout is not None
        found = re.search(r"listening on (\S+)", self._child.stdout.readline())
        if found is None:
            self.close()
            raise RuntimeError("the simulator did not start")
        self.url = found.group(1)
        teams = re.search(r"TEAMS_WEBHOOK_URL: (\S+)", self._child.stdout.readline())
        self.teams_url = teams.group(1) if teams else f"{self.url}/teams/unset"
        self._control = httpx.Client(base_url=self.url, timeout=30)
        self.graph_url = f"{self.url}/v1.0"
        self.tickets_url = f"{self.url}/tickets/webhook"
        self.identity_endpoint = f"{self.url}/msi/token"
        self.itsm_credentials = dict.fromkeys(("SERVICENOW_INSTANCE_URL", "JIRA_SITE_URL"), self.url) | dict.fromkeys(
            ("SERVICENOW_USERNAME", "SERVICENOW_PASSWORD", "JIRA_EMAIL", "JIRA_API_TOKEN"), "unused"
        )

    def control(self, method: str, path: str, body: Any = None) -> Any:
        # One kept client: a client per call built a TLS context (~20 ms of CPU) inside the processor's event loop
        # each time a 429 was armed mid-burst, which the burst then counted against the processor.
        answer = self._control.request(method, f"/_sim/{path}", json=body)
        answer.raise_for_status()
        return answer.json()

    def inject_fault(self, route: str, **spec: Any) -> None:
        self.control("POST", "faults", {"route": route, **spec})

    def set_latency(self, route: str, seconds: float) -> None:
        self.control("POST", "latency", {"route": route, "seconds": seconds})

    def close(self) -> None:
        if hasattr(self, "_control"):
            self._control.close()
        self._child.terminate()
        self._child.wait(timeout=30)
        if self._child.stdout is not None:
            self._child.stdout.close()
        self._dir.cleanup()


# -- the run ----------------------------------------------------------------------------------------------------


def throttle_plan(count: int, rate: float) -> dict[str, int]:
    """How many 429s each route gets: ``rate`` of the calls a clean run makes to it."""
    unblocks = sum(1 for i in range(count) if allowed(i))
    tickets = sum(1 for i in range(count) if not allowed(i) or limit_reached(i))
    expected = {GET: count, USER: count, REMOVE: unblocks, TICKET: tickets}
    return {route: max(1, round(rate * calls)) if calls else 0 for route, calls in expected.items()}


def spread_schedule(plan: Mapping[str, int], deliveries: int) -> dict[int, list[str]]:
    """At which dispatched delivery one more 429 is armed on each route, evenly over the first pass."""
    schedule: dict[int, list[str]] = {}
    for route, times in plan.items():
        for k in range(times):
            schedule.setdefault(math.floor((k + 0.5) * deliveries / times), []).append(route)
    return schedule


@dataclass
class Outcome:
    accepted: list[tuple[str, str]]  # (event_id, delivery_id) of every accepted delivery
    poisoned: list[tuple[str, str]]
    failures: Counter[str]  # errors that sent a message back to the queue, by type
    audit: list[Mapping[str, Any]]
    requests: list[dict[str, Any]]
    tickets: list[dict[str, Any]]
    pending_faults: int
    plan: dict[str, int]  # 429s armed per route
    intake_seconds: float
    drain_seconds: float
    processed: int  # deliveries that ended in a decision
    bodies: int
    value_bodies: int
    critical_path: float  # seconds: one event alone, median
    peak_rss_mb: float  # of this process (the processor; the simulator runs in its own)


async def drain(
    messages: Sequence[str],
    processor: Any,
    *,
    concurrency: int,
    max_deliveries: int,
    on_dispatch: Any,
) -> tuple[int, list[tuple[str, str]], Counter[str]]:
    """Process every message with at most ``concurrency`` at a time; a failed message goes back to the end of the
    queue until it has been delivered ``max_deliveries`` times, then it is poisoned."""
    from restricted_sender.entrypoints.edge import process_message

    pending: deque[tuple[str, int]] = deque((text, 1) for text in messages)
    gate = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    poisoned: list[tuple[str, str]] = []
    failures: Counter[str] = Counter()
    processed = 0
    dispatched = 0

    async def deliver(text: str, delivery: int) -> None:
        nonlocal processed
        try:
            await process_message(text, processor)
            processed += 1
        except Exception as error:
            failures[type(error).__name__] += 1
            if delivery >= max_deliveries:
                data = json.loads(text)
                poisoned.append((str(data["event_id"]), str(data["delivery_id"])))
            else:
                pending.append((text, delivery + 1))
        finally:
            gate.release()

    while pending or running:
        if not pending:
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            continue
        await gate.acquire()
        if not pending:  # a task finished meanwhile and put nothing back
            gate.release()
            continue
        text, delivery = pending.popleft()
        on_dispatch(dispatched)
        dispatched += 1
        task = asyncio.create_task(deliver(text, delivery))
        running.add(task)
        task.add_done_callback(running.discard)
    return processed, poisoned, failures


PROBE_BASE = 100_002  # probe users: allowed (even), under no unblock limit, never among the burst's users
LATENCY_ROUTES = ("graph.*", "exchange.*", "identity.token", "tickets.*")


def probe_index(j: int) -> int:
    return PROBE_BASE + 2 * j


async def critical_path_seconds(sim: SimulatorProcess, policy: Any, clock: Any, probes: int) -> float:
    """The median wall time of one event processed alone, tokens warm: the critical path the design's limit
    (batch size x instances / critical path) divides by. Its own processor and store: nothing of it is counted."""
    from restricted_sender.entrypoints.compose import build_intake
    from restricted_sender.entrypoints.edge import process_message
    from restricted_sender.fakes import MemoryQueue
    from restricted_sender.testing import on_simulator, simulator_settings

    queue = MemoryQueue()
    intake = build_intake(simulator_settings(sim), policy, queue=queue, clock=clock)  # type: ignore[arg-type]
    for j in range(probes + 1):
        intake.accept(
            json.dumps(synthetic.alert(f"probe-{j}", address(probe_index(j)), user_id(probe_index(j)))).encode()
        )
    walls = []
    async with on_simulator(sim, policy, clock) as (bundle, _):  # type: ignore[arg-type]
        for k, text in enumerate(queue.drain()):
            started = time.monotonic()
            await process_message(text, bundle.processor)
            if k:  # the first one fetches the tokens
                walls.append(time.monotonic() - started)
    sim.control("POST", "reset-requests")
    return statistics.median(walls)


async def run(args: argparse.Namespace) -> Outcome:
    from restricted_sender.core.policy import load_policy_text
    from restricted_sender.entrypoints.compose import build_intake
    from restricted_sender.fakes import MemoryQueue
    from restricted_sender.testing import on_simulator, simulator_settings
    from restricted_sender.timeutil import SystemClock

    rng = random.Random(args.seed)
    policy = load_policy_text(POLICY_YAML, source="bench policy")
    clock = SystemClock()
    posted = bodies(args.count, args.batch, round(args.duplicates * args.count), rng)
    state = tenant(args.count)
    state["users"] += [user(probe_index(j), ALLOWED_DOMAIN) for j in range(args.probes + 1)]
    state["blockedSenders"] += [blocked(address(probe_index(j))) for j in range(args.probes + 1)]
    sim = SimulatorProcess(state)
    try:
        for route in LATENCY_ROUTES:
            sim.set_latency(route, args.latency)
        critical = await critical_path_seconds(sim, policy, clock, args.probes)
        settings = simulator_settings(sim)  # type: ignore[arg-type]
        queue = MemoryQueue()
        intake = build_intake(settings, policy, queue=queue, clock=clock)
        started = time.monotonic()
        accepted: list[tuple[str, str]] = []
        for body in posted:
            accepted.extend((e.event_id, e.delivery_id) for e in intake.accept(body).accepted)
        messages = queue.drain()
        intake_seconds = time.monotonic() - started

        plan = throttle_plan(args.count, args.throttle)
        schedule: dict[int, list[str]] = {}
        if args.faults == "front":
            for route, times in plan.items():
                if times:
                    sim.inject_fault(route, status=429, retry_after=args.retry_after, times=times)
        else:
            schedule = spread_schedule(plan, len(messages))

        def on_dispatch(index: int) -> None:
            for route in schedule.get(index, ()):
                sim.inject_fault(route, status=429, retry_after=args.retry_after, times=1)

        async with on_simulator(sim, policy, clock) as (bundle, _):  # type: ignore[arg-type]
            started = time.monotonic()
            processed, poisoned, failures = await drain(
                messages,
                bundle.processor,
                concurrency=args.concurrency,
                max_deliveries=args.max_deliveries,
                on_dispatch=on_dispatch,
            )
            drain_seconds = time.monotonic() - started
            audit = list(await bundle.processor.store.audit())
        final = sim.control("GET", "state")
        requests = sim.control("GET", "requests")["value"]
    finally:
        sim.close()
    return Outcome(
        accepted=accepted,
        poisoned=poisoned,
        failures=failures,
        audit=audit,
        requests=requests,
        tickets=final["tickets"],
        pending_faults=sum(f.get("times") or 0 for f in final["faults"]),
        plan=plan,
        intake_seconds=intake_seconds,
        drain_seconds=drain_seconds,
        processed=processed,
        bodies=len(posted),
        value_bodies=sum(1 for b in posted if b.startswith(b'{"value"')),
        critical_path=critical,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


# -- the checks -------------------------------------------------------------------------------------------------


def decision_label(row: Mapping[str, Any]) -> str:
    decision = str(row.get("decision"))
    codes = [str(r.get("code")) for r in row.get("reasons", [])]
    if decision == "ignore":
        return f"ignore:{','.join(codes)}"
    if "unblock-failed" in codes:
        return f"{decision} (unblock-failed)"
    return decision


def removed_address(request: Mapping[str, Any]) -> str:
    body = request.get("body")
    parameters = body.get("CmdletInput", {}).get("Parameters", {}) if isinstance(body, dict) else {}
    return str(parameters.get("SenderAddress", "")).lower()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000, help="restricted users, one alert each (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="messages processed at once (default 16)")
    parser.add_argument("--throttle", type=float, default=0.05, help="share of calls answered 429 (default 0.05)")
    parser.add_argument("--retry-after", type=float, default=0.05, help="Retry-After of the 429s, in seconds")
    parser.add_argument("--duplicates", type=float, default=0.05, help="share of alerts posted twice (default 0.05)")
    parser.add_argument("--batch", type=int, default=10, help="alerts per {'value': [...]} body (default 10)")
    parser.add_argument("--max-deliveries", type=int, default=5, help="deliveries before a message is poisoned")
    parser.add_argument(
        "--faults",
        choices=("spread", "front"),
        default="spread",
        help="arm the 429s evenly over the burst (default), or all at once up front (they then come in a row)",
    )
    parser.add_argument("--seed", type=int, default=1, help="for the choice of duplicates")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every route (default 0.05)")
    parser.add_argument("--probes", type=int, default=10, help="events timed alone for the critical path")
    args = parser.parse_args(argv)
    if args.count < 2 or args.concurrency < 1 or args.batch < 1 or args.max_deliveries < 1:
        parser.error("--count must be at least 2; --concurrency, --batch and --max-deliveries at least 1")
    if not (0 <= args.throttle < 1 and 0 <= args.duplicates <= 1 and args.retry_after >= 0):
        parser.error("--throttle must be in [0, 1), --duplicates in [0, 1], --retry-after >= 0")

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    outcome = asyncio.run(run(args))

    # Deliveries and their terminal records, per event.
    accepted_by_event = Counter(event_id for event_id, _ in outcome.accepted)
    poisoned_by_event = Counter(event_id for event_id, _ in outcome.poisoned)
    audit_by_event = Counter(str(row.get("event_id")) for row in outcome.audit)
    lost = extra_rows = 0
    for event_id in accepted_by_event.keys() | audit_by_event.keys():
        due = accepted_by_event[event_id] - poisoned_by_event[event_id]
        lost += max(0, due - audit_by_event[event_id])
        extra_rows += max(0, audit_by_event[event_id] - due)
    handled = {str(r.get("event_id")) for r in outcome.audit if "ignore:duplicate" not in decision_label(r)}
    unhandled = len(accepted_by_event.keys() - handled)
    decisions = Counter(decision_label(row) for row in outcome.audit)

    # Effects, as the simulated tenant saw them.
    expected_unblocked = {address(i).lower() for i in range(args.count) if allowed(i) and not limit_reached(i)}
    expected_ticketed = {address(i).lower() for i in range(args.count) if not allowed(i) or limit_reached(i)}
    removes = Counter(removed_address(r) for r in outcome.requests if r["route"] == REMOVE and r.get("status") == 200)
    refused = sum(1 for r in outcome.requests if r["route"] == REMOVE and r.get("status") == 400)
    removed_twice = sum(1 for n in removes.values() if n > 1)
    tickets_by_user = Counter(str(t["body"]["record"]["user"]).lower() for t in outcome.tickets)
    correlation_ids = Counter(str(t["idempotency_key"]) for t in outcome.tickets)
    ticketed_wrongly = sum(1 for user, n in tickets_by_user.items() if n != 1 or user not in expected_ticketed)
    missing_unblocks = len(expected_unblocked - removes.keys())
    missing_tickets = len(expected_ticketed - tickets_by_user.keys())
    unexpected_unblocks = len(removes.keys() - expected_unblocked)
    webhook_posts = sum(1 for r in outcome.requests if r["route"] == TICKET and r.get("status") in (200, 201))
    served_429 = Counter(str(r["route"]) for r in outcome.requests if r.get("status") == 429)
    plan = outcome.plan
    events_per_second = outcome.processed / outcome.drain_seconds if outcome.drain_seconds else math.inf

    bar_holds = (
        lost == 0
        and extra_rows == 0
        and removed_twice == 0
        and unexpected_unblocks == 0
        and missing_unblocks == 0
        and ticketed_wrongly == 0
        and missing_tickets == 0
        and all(n == 1 for n in correlation_ids.values())
    )
    print(
        f"burst against the simulator: alerts={args.count} bodies={outcome.bodies} "
        f"(value batches={outcome.value_bodies}) concurrency={args.concurrency} "
        f"429s={args.throttle:.0%} of expected calls (Retry-After {args.retry_after:g} s, {args.faults})"
    )
    print(f"events accepted: {len(outcome.accepted)} deliveries of {len(accepted_by_event)} distinct events")
    print(f"terminal decisions recorded (audit rows): {len(outcome.audit)}")
    print("  " + ", ".join(f"{label} {n}" for label, n in sorted(decisions.items())))
    print(f"lost events: {lost}")
    print(f"extra audit rows: {extra_rows}")
    print(f"poisoned: {len(outcome.poisoned)}")
    retried = ", ".join(f"{name} {n}" for name, n in sorted(outcome.failures.items())) or "none"
    print(f"deliveries that raised and went back to the queue: {sum(outcome.failures.values())} ({retried})")
    print(f"events with no decision other than duplicate: {unhandled}")
    print(
        f"successful Remove calls: {sum(removes.values())} for {len(removes)} addresses "
        f"(expected {len(expected_unblocked)}); addresses removed more than once: {removed_twice}; "
        f"not meant to be unblocked: {unexpected_unblocks}; missing: {missing_unblocks}"
    )
    print(f"max successful Remove calls per address: {max(removes.values(), default=0)}")
    print(f"Remove refused (unblock limit): {refused}")
    print(
        f"tickets: {len(outcome.tickets)} for {len(correlation_ids)} correlation ids "
        f"(expected {len(expected_ticketed)} ticketed users); users with other than exactly one ticket, or "
        f"not meant to get one: {ticketed_wrongly}; missing: {missing_tickets}"
    )
    print(f"max tickets per correlation id: {max(correlation_ids.values(), default=0)}")
    print(
        f"ticket webhook deliveries answered 2xx: {webhook_posts} "
        f"({webhook_posts - len(outcome.tickets)} repeats deduplicated by Idempotency-Key)"
    )
    print(
        f"429s served: {sum(served_429.values())} of {sum(plan.values())} armed ("
        + ", ".join(f"{route} {served_429[route]}/{plan[route]}" for route in THROTTLED_ROUTES)
        + f"); still armed at the end: {outcome.pending_faults}"
    )
    print(
        f"wall time: {outcome.intake_seconds + outcome.drain_seconds:.2f} s "
        f"(intake {outcome.intake_seconds:.2f} s, processing {outcome.drain_seconds:.2f} s)"
    )
    print(f"events/s: {events_per_second:.1f} ({outcome.processed} deliveries processed)")
    # The design's limit: a batch of queue messages at once per instance, each as long as one event alone.
    limit = args.concurrency / outcome.critical_path
    print(
        f"critical path (one event alone, median of {args.probes}): {outcome.critical_path * 1000:.0f} ms at "
        f"{args.latency * 1000:g} ms per call; limit {args.concurrency} x 1 / critical path = {limit:.1f} events/s"
    )
    print(f"burst ratio (events/s / limit): {events_per_second / limit:.0%}")
    # HTTP requests, not requests served: a JSON batch is one HTTP request however many reads it carries.
    http = [r for r in outcome.requests if not r.get("batched")]
    graph_http = sum(1 for r in http if str(r["route"]).startswith("graph."))
    graph_reads = sum(
        1 for r in outcome.requests if str(r["route"]).startswith("graph.") and r["route"] != "graph.batch"
    )
    per = max(1, outcome.processed)
    print(
        f"HTTP requests per delivery: {len(http) / per:.1f} (Graph {graph_http / per:.1f}, "
        f"carrying {graph_reads / per:.1f} Graph requests)"
    )
    print(f"peak RSS of the processor process: {outcome.peak_rss_mb:.0f} MB")
    print(f"bar zero lost events and zero duplicate actions: {'holds' if bar_holds else 'FAILS'}")
    return 0 if bar_holds else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
