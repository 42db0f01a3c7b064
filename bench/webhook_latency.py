"""Latency of the ``alerts`` webhook handler, in process, against Azurite's queue service.

Calls the function app's own user function (as the worker does, minus the host's HTTP hop) with a valid
alerts_v2 alert, each call followed by a bare ``QueueClient.send_message`` of the event message it queues, so
the handler's own overhead can be told apart from the emulator's. The bar: handler p99 < 20 ms (exit code 1
otherwise, and when the events queue does not hold one message per call).

    .venv/bin/python bench/webhook_latency.py [--count 1000] [--warmup 50]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from restricted_sender.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BAR_P99_MS = 20.0
EVENTS_QUEUE = "restriction-events"
RAW_QUEUE = "bench-raw-enqueue"
ALERT_TITLE = "User restricted from sending email"
SHARED_SECRET = "bench-shared-secret"  # noqa: S105  (a throwaway value for the local run)
POLICY_YAML = f"""\
mode: report-only
alert_names: ["{ALERT_TITLE}"]
"""
# The app's queue adapter's timeouts, so the two loops compare like for like (retries play no part unless a send
# fails, and a failed handler call stops the run).
CLIENT_OPTIONS: dict[str, Any] = {"connection_timeout": 3, "read_timeout": 5}


def alert_body(index: int) -> bytes:
    alert_id = f"bench-{index:07d}"
    alert = {
        "@odata.type": "#microsoft.graph.security.alert",
        "id": alert_id,
        "title": ALERT_TITLE,
        "serviceSource": "microsoftDefenderForOffice365",
        "alertWebUrl": f"https://security.microsoft.com/alerts/{alert_id}",
        "createdDateTime": "2026-11-27T08:03:12Z",
        "evidence": [
            {
                "@odata.type": "#microsoft.graph.security.userEvidence",
                "userAccount": {
                    "userPrincipalName": "alice@contoso.com",
                    "azureAdUserId": "0b1c2d3e-0001-4a5b-8c9d-000000000001",
                },
                "verdict": "suspicious",
                "roles": [],
            }
        ],
    }
    return json.dumps(alert).encode("utf-8")


def percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    rank = max(1, math.ceil(fraction * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def summary(samples_ns: Sequence[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50": percentile_ms(ordered, 0.50),
        "p95": percentile_ms(ordered, 0.95),
        "p99": percentile_ms(ordered, 0.99),
        "max": ordered[-1] / 1e6,
    }


def line(label: str, stats: dict[str, float]) -> str:
    figures = "  ".join(f"{key}={value:7.3f} ms" for key, value in stats.items())
    return f"{label:<12} {figures}"


@functools.cache
def alerts_handler() -> Callable[..., Any]:
    # get_functions() raises when called a second time on the same app: resolve the handler once per process.
    import function_app

    by_name = {fn.get_function_name(): fn for fn in function_app.app.get_functions()}
    handler: Callable[..., Any] = by_name["alerts"].get_user_function()
    return handler


class UnexpectedAnswer(RuntimeError):
    pass


def call_handler(handler: Callable[..., Any], index: int) -> int:
    """One webhook call with a fresh alert; its duration in ns."""
    import azure.functions as func

    request = func.HttpRequest(
        method="POST",
        url="http://localhost/api/alerts",
        body=alert_body(index),
        headers={"Content-Type": "application/json", "x-webhook-secret": SHARED_SECRET},
    )
    started = time.perf_counter_ns()
    response = handler(request)
    elapsed = time.perf_counter_ns() - started
    if response.status_code != 202:
        raise UnexpectedAnswer(f"call {index}: status {response.status_code}: {response.get_body().decode('utf-8')}")
    return elapsed


def run(connection: str, count: int, warmup: int) -> tuple[list[int], list[int], str]:
    """Handler and raw enqueue timings (ns) of the measured calls, and one queued event message."""
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    handler = alerts_handler()
    for index in range(warmup):
        call_handler(handler, index)
    _, message = queued_events(connection)
    handler_ns: list[int] = []
    raw_ns: list[int] = []
    with QueueClient.from_connection_string(
        connection, RAW_QUEUE, message_encode_policy=TextBase64EncodePolicy(), **CLIENT_OPTIONS
    ) as raw:
        raw.create_queue()
        for _ in range(warmup):
            raw.send_message(message)
        # Interleaved, so both loops see the same load on the machine and the same emulator state.
        for index in range(warmup, warmup + count):
            handler_ns.append(call_handler(handler, index))
            started = time.perf_counter_ns()
            raw.send_message(message)
            raw_ns.append(time.perf_counter_ns() - started)
    return handler_ns, raw_ns, message


def queued_events(connection: str) -> tuple[int, str]:
    """How many messages the events queue holds, and one of them (decoded)."""
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    with QueueClient.from_connection_string(
        connection, EVENTS_QUEUE, message_decode_policy=TextBase64DecodePolicy()
    ) as client:
        count = client.get_queue_properties().approximate_message_count or 0
        peeked = client.peek_messages(max_messages=1)
        return count, str(peeked[0].content) if peeked else ""


def bench_settings(connection: str) -> Settings:
    """The function app's settings for this run, given to the runtime explicitly (the environment is left alone)."""
    from restricted_sender.settings import Secret, Settings

    return Settings(
        storage_connection=Secret(connection), policy_yaml=POLICY_YAML, alerts_shared_secret=Secret(SHARED_SECRET)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000, help="measured calls (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="calls before measuring (default 50)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 1:
        parser.error("--count and --warmup must be at least 1")

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from restricted_sender.adapters.queue import StorageQueue
    from restricted_sender.entrypoints.edge import runtime
    from simulator import azurite as local_storage

    with local_storage.running(services=("queue",)) as azurite:
        runtime.reset(bench_settings(azurite.connection_string))
        try:
            handler_ns, raw_ns, sample_message = run(azurite.connection_string, args.count, args.warmup)
            queued, _ = queued_events(azurite.connection_string)
        except UnexpectedAnswer as error:
            print(f"handler failed: {error}")
            return 1
        finally:
            queue = runtime.intake().queue
            if isinstance(queue, StorageQueue):  # its client holds a connection pool
                queue.close()
            runtime.reset()

    handler = summary(handler_ns)
    raw = summary(raw_ns)
    expected = args.count + args.warmup
    bar_holds = handler["p99"] < BAR_P99_MS
    print(f"alerts handler, in process, against Azurite's queue: count={args.count} warmup={args.warmup}")
    print(f"event message: {len(sample_message)} chars")
    print(line("handler", handler))
    print(line("raw enqueue", raw))
    print(f"ratio handler p99 / raw enqueue p99: {handler['p99'] / raw['p99']:.2f}")
    print(f"handler overhead at p50 (handler - raw enqueue): {handler['p50'] - raw['p50']:.3f} ms")
    print(f"messages in {EVENTS_QUEUE}: {queued} (expected {expected})")
    print(f"bar handler p99 < {BAR_P99_MS:g} ms: {'holds' if bar_holds else 'FAILS'}")
    return 0 if bar_holds and queued == expected else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
