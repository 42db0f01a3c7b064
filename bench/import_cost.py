"""What importing the function app costs (a cold start pays it), next to the SDKs it keeps off that path.

Each import runs in a fresh interpreter; the figure is the import statement's own wall time (interpreter
start-up excluded), median of the runs. ``function_app`` must import none of the heavy modules (exit code 1
otherwise).

    .venv/bin/python bench/import_cost.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("msgraph", "azure.identity", "aiohttp")
CREDENTIAL = "from azure.identity.aio import ManagedIdentityCredential\nManagedIdentityCredential()"
# (label, set-up run untimed, code timed). Importing azure.identity.aio alone does not load aiohttp; creating
# the async credential does, which is what the processor side does first.
CASES: tuple[tuple[str, str, str], ...] = (
    ("function_app", "", "import function_app"),
    ("msgraph.graph_service_client", "", "import msgraph.graph_service_client"),
    ("azure.identity.aio", "", "import azure.identity.aio"),
    ("azure.identity.aio credential", "", CREDENTIAL),
    ("processor SDKs after app", "import function_app", "import msgraph.graph_service_client\n" + CREDENTIAL),
)

PROBE = """\
import json, sys, time
sys.path.insert(0, sys.argv[1])
heavy = tuple(json.loads(sys.argv[4]))
exec(sys.argv[2])
started = time.perf_counter()
exec(sys.argv[3])
elapsed = time.perf_counter() - started
loaded = sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")})
print(json.dumps({"seconds": elapsed, "heavy": loaded, "modules": len(sys.modules)}))
"""


def measure(setup: str, timed: str) -> tuple[float, list[str], int]:
    """Seconds ``timed`` took, the heavy modules loaded by then, and how many modules were loaded in all."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT), setup, timed, json.dumps(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"running {timed!r} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), [str(name) for name in result["heavy"]], int(result["modules"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per module (default 5)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    rows: dict[str, tuple[float, list[str], int]] = {}
    for label, setup, timed in CASES:
        runs = [measure(setup, timed) for _ in range(args.runs)]
        median_ms = statistics.median(seconds for seconds, _, _ in runs) * 1000
        heavy = sorted({name for _, names, _ in runs for name in names})
        modules = max(count for _, _, count in runs)
        rows[label] = (median_ms, heavy, modules)

    base_ms = rows["function_app"][0]
    print(f"import wall time in ms, a fresh interpreter each, median of {args.runs}")
    print(f"{'import':<30} {'median ms':>10} {'x function_app':>15} {'sys.modules':>12}  heavy modules imported")
    for label, (median_ms, heavy, modules) in rows.items():
        print(
            f"{label:<30} {median_ms:>10.1f} {median_ms / base_ms:>15.2f} {modules:>12}  {', '.join(heavy) or 'none'}"
        )
    app_heavy = rows["function_app"][1]
    print(f"heavy modules imported by function_app: {', '.join(app_heavy) or 'none'}")
    return 1 if app_heavy else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
