"""``python -m restricted_sender``: replay, check, unblock, restore, demo, simulator, decisions, o365 subscribe|status,
policy validate|schema, permissions, doctor (the README's "The command line" says what each does).

``replay`` runs alert files through the very intake and processor code the function app runs, with Graph,
Exchange, the identity endpoint and the ticket webhook all served by the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from restricted_sender.core.policy import load_policy_file
from restricted_sender.entrypoints.console import (
    audit_records,
    load_policy_or_escalate,
    loaded,
    masked_subscription,
    print_records,
    read_alert_files,
    since_delta,
    summarize,
    without_key,
)
from restricted_sender.errors import (
    ConfigurationError,
    InputError,
    PolicyError,
    ResponderError,
    ServiceError,
    ServiceRefused,
)
from restricted_sender.model import DecisionRecord, Operator
from restricted_sender.timeutil import FixedClock, parse_instant

if TYPE_CHECKING:
    from restricted_sender.processing.admin import Admin

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
DEMO_NOW = "2026-11-27T22:30:00Z"  # 90 minutes before the day blocks lift


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except ResponderError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m restricted_sender", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    replay = commands.add_parser("replay", help="run alert files through intake and processing against the simulator")
    replay.add_argument("alerts", nargs="+", type=Path, metavar="ALERT_FILE", help="a body as POSTed to /api/alerts")
    replay.add_argument("--tenant", required=True, type=Path, help="tenant file (see the README) to seed the simulator")
    replay.add_argument("--policy", required=True, type=Path, help="policy file (see the README)")
    replay.add_argument("--now", type=parse_instant, help="fix the clock (ISO 8601, e.g. 2026-11-27T09:00:00Z)")
    replay.add_argument("--json", action="store_true", help="print one decision record per line")
    replay.add_argument("--requests-log", type=Path, help="write every request the simulator received (JSON lines)")
    replay.set_defaults(run=_replay)

    for name, help_text in (
        ("check", "gather the facts about a user and print the decision, without acting"),
        ("unblock", "unblock a user by hand (recorded with --operator and --justification, verified later)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("upn", metavar="UPN", help="the user's UPN or mail address")
        command.add_argument("--tenant", type=Path, help="run against the simulator seeded with this tenant file")
        command.add_argument("--policy", type=Path, help="policy file (default: POLICY_FILE / POLICY_YAML)")
        command.add_argument("--now", type=parse_instant, help="fix the clock (ISO 8601)")
        command.add_argument("--json", action="store_true", help="print the decision record as JSON")
        if name == "unblock":
            command.add_argument("--justification", required=True, help="why this user may send again")
            command.add_argument("--force", action="store_true", help="override the deny list and the budgets")
            command.add_argument(
                "--operator", default=os.environ.get("USER", "cli"), help="who is unblocking (recorded)"
            )
        command.set_defaults(run=_check if name == "check" else _unblock)

    restore = commands.add_parser(
        "restore", help="put back what mailbox remediation changed for a user (recorded with --operator, at most once)"
    )
    restore.add_argument("upn", metavar="UPN", help="the user's UPN or mail address")
    restore.add_argument("--justification", required=True, help="why the rules and forwarding may come back")
    restore.add_argument("--event", help="the remediated decision's event_id (default: the user's latest)")
    restore.add_argument("--operator", default=os.environ.get("USER", "cli"), help="who is restoring (recorded)")
    restore.add_argument("--tenant", type=Path, help="run against the simulator seeded with this tenant file")
    restore.add_argument(
        "--replay", nargs="+", type=Path, default=(), metavar="ALERT_FILE",
        help="with --tenant: replay these alerts first, so there is a remediation to restore",
    )  # fmt: skip
    restore.add_argument("--policy", type=Path, help="policy file (default: POLICY_FILE / POLICY_YAML)")
    restore.add_argument("--now", type=parse_instant, help="fix the clock (ISO 8601)")
    restore.add_argument("--json", action="store_true", help="print the restore's record as JSON")
    restore.set_defaults(run=_restore)

    demo = commands.add_parser("demo", help="replay the shipped sample alerts against the sample tenant and policy")
    demo.add_argument("--json", action="store_true", help="print one decision record per line")
    demo.set_defaults(run=_demo)

    sim = commands.add_parser("simulator", help="run the tenant simulator standalone (for func start)")
    sim.add_argument("--tenant", required=True, type=Path)
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--identity-header", help="the X-IDENTITY-HEADER value to require (default: random)")
    sim.set_defaults(run=_simulator)

    decisions = commands.add_parser(
        "decisions", help="summarize the recorded decisions (the audit table) over a period, e.g. a report-only week"
    )
    decisions.add_argument("--since", default="7d", help="how far back: 7d, 24h, 90m (default 7d)")
    decisions.add_argument(
        "--table-endpoint",
        help="https://<account>.table.core.windows.net (signs in with DefaultAzureCredential; needs Storage Table "
        "Data Reader); default: the app settings' storage",
    )
    decisions.add_argument("--now", type=parse_instant, help="the end of the period (ISO 8601; default: now)")
    decisions.add_argument(
        "--json", action="store_true", help="print the review (counts, timings and the records) as one JSON document"
    )
    decisions.add_argument(
        "--html", type=Path, metavar="FILE", help="also write the review as one self-contained HTML page"
    )
    decisions.set_defaults(run=_decisions)

    o365 = commands.add_parser("o365", help="manage the Office 365 Management Activity API subscription")
    o365_commands = o365.add_subparsers(required=True, metavar="ACTION")
    subscribe = o365_commands.add_parser(
        "subscribe", help="start (or re-enable) the Audit.General subscription with this webhook"
    )
    subscribe.add_argument("--webhook", required=True, help="https://<app>.azurewebsites.net/api/alerts/o365?code=...")
    subscribe.set_defaults(run=_o365_subscribe)
    status = o365_commands.add_parser("status", help="list the subscriptions and their webhooks")
    status.set_defaults(run=_o365_status)

    policy = commands.add_parser("policy", help="work with policy files")
    policy_commands = policy.add_subparsers(required=True, metavar="ACTION")
    validate = policy_commands.add_parser("validate", help="report every problem of a policy file")
    validate.add_argument("file", type=Path)
    validate.set_defaults(run=_policy_validate)
    schema = policy_commands.add_parser("schema", help="print the policy file's JSON Schema")
    schema.set_defaults(run=_policy_schema)

    permissions = commands.add_parser(
        "permissions", help="what the app's identity must be granted for a policy and the intake paths in use"
    )
    permissions.add_argument("--policy", type=Path, help="policy file (default: POLICY_FILE / POLICY_YAML)")
    shape = permissions.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the plan scripts/grant-permissions reads")
    shape.add_argument("--markdown", action="store_true", help="the README table (every permission, and when)")
    permissions.add_argument("--poll-minutes", type=float, help="plan for this POLL_ALERTS_MINUTES (0: poller off)")
    permissions.add_argument(
        "--o365", action=argparse.BooleanOptionalAction, help="plan with(out) the Management Activity API"
    )
    permissions.add_argument(
        "--defender", action=argparse.BooleanOptionalAction, help="plan with(out) the Defender Event Hub trigger"
    )
    permissions.set_defaults(run=_permissions)

    doctor = commands.add_parser(
        "doctor", help="prove a deployment: read-only probes with the app's own identity (exit 1 when one fails)"
    )
    where = doctor.add_mutually_exclusive_group(required=True)
    where.add_argument("--app", metavar="URL", help="https://<host>: GET /api/doctor with your Azure CLI sign-in")
    where.add_argument("--simulated", action="store_true", help="run the probes here against the simulator")
    doctor.add_argument("--tenant", type=Path, default=SAMPLES / "tenant.yaml", help="with --simulated")
    doctor.add_argument("--policy", type=Path, default=SAMPLES / "policy.yaml", help="with --simulated")
    doctor.add_argument(
        "--audience",
        default=os.environ.get("ADMIN_API_AUDIENCE", "").split(",")[0].strip() or None,
        help="the admin API's Application ID URI or client id (default: ADMIN_API_AUDIENCE)",
    )
    doctor.add_argument(
        "--function-key", default=os.environ.get("FUNCTION_KEY"), help="x-functions-key (default: FUNCTION_KEY)"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(run=_doctor)
    return parser


def _replay(args: argparse.Namespace) -> int:
    from restricted_sender.entrypoints.simulated import replay

    bodies = read_alert_files(args.alerts)
    policy = load_policy_or_escalate(args.policy)
    outcome = asyncio.run(replay([b for _, b in bodies], tenant=args.tenant, policy=policy, now=args.now))
    print_records(outcome.records, as_json=args.json, out=sys.stdout)
    if args.requests_log:
        with args.requests_log.open("w", encoding="utf-8") as log:
            for request in outcome.requests:
                logged = {k: request.get(k) for k in ("method", "path", "query", "body")}
                log.write(json.dumps(logged, sort_keys=True) + "\n")
    return 0


@asynccontextmanager
async def _admin_for(args: argparse.Namespace) -> AsyncIterator[Admin]:
    """The admin side against the simulator (``--tenant``) or, without it, the tenant the app settings name."""
    from restricted_sender.entrypoints.compose import bootstrap
    from restricted_sender.entrypoints.simulated import simulated
    from restricted_sender.settings import Settings

    if args.tenant is not None:
        policy = load_policy_or_escalate(args.policy or SAMPLES / "policy.yaml")
        async with simulated(args.tenant, policy, args.now) as (bundle, _, _):
            yield bundle.admin
        return
    # Without --policy, bootstrap loads the one the settings name.
    chosen = load_policy_or_escalate(args.policy) if args.policy else None
    bundle = bootstrap(Settings.from_env(), chosen, clock=FixedClock(args.now) if args.now else None)
    try:
        yield bundle.admin
    finally:
        await bundle.aclose()


def _print_admin_record(args: argparse.Namespace, act: Callable[[Admin], Awaitable[DecisionRecord]]) -> int:
    """Print the record ``act`` returns on the admin side ``_admin_for`` picks; with ``--replay`` (restore), on the
    simulator after those alerts went through it."""

    async def run() -> DecisionRecord:
        if getattr(args, "replay", ()):
            from restricted_sender.entrypoints.simulated import replay_then

            return await replay_then(
                [b for _, b in read_alert_files(args.replay)],
                tenant=args.tenant,
                policy=load_policy_or_escalate(args.policy or SAMPLES / "policy.yaml"),
                now=args.now,
                then=act,
            )
        async with _admin_for(args) as admin:
            return await act(admin)

    print_records([asyncio.run(run())], as_json=args.json, out=sys.stdout)
    return 0


def _operator(args: argparse.Namespace) -> Operator:
    return Operator(object_id=f"cli:{args.operator}", name=args.operator)


def _check(args: argparse.Namespace) -> int:
    return _print_admin_record(args, lambda admin: admin.check(args.upn))


def _unblock(args: argparse.Namespace) -> int:
    from restricted_sender.processing.admin import parse_unblock_request

    request = parse_unblock_request(json.dumps({"justification": args.justification, "force": args.force}).encode())
    return _print_admin_record(args, lambda admin: admin.unblock(args.upn, request, _operator(args)))


def _restore(args: argparse.Namespace) -> int:
    from restricted_sender.processing.admin import parse_restore_request

    if args.replay and args.tenant is None:
        raise InputError("--replay needs --tenant: alerts are replayed against the simulator only")
    body = {"justification": args.justification, **({"event_id": args.event} if args.event else {})}
    request = parse_restore_request(json.dumps(body).encode())
    return _print_admin_record(args, lambda admin: admin.restore(args.upn, request, _operator(args)))


def _demo(args: argparse.Namespace) -> int:
    from restricted_sender.entrypoints.simulated import replay

    alerts = sorted((SAMPLES / "alerts").glob("*.json"))
    bodies = read_alert_files(alerts)
    policy = load_policy_or_escalate(SAMPLES / "policy.yaml")
    now = parse_instant(DEMO_NOW)
    outcome = asyncio.run(replay([b for _, b in bodies], tenant=SAMPLES / "tenant.yaml", policy=policy, now=now))
    if args.json:
        print_records(outcome.records, as_json=True, out=sys.stdout)
        return 0
    mode = policy.mode if policy.valid else "invalid policy"
    print(f"Replayed {len(alerts)} sample alert(s) from samples/alerts against samples/tenant.yaml")
    print(f"(policy samples/policy.yaml, mode {mode}, clock fixed at {DEMO_NOW})\n")
    print_records(outcome.records, as_json=False, out=sys.stdout)
    still = ", ".join(str(r["SenderAddress"]) for r in outcome.simulator_state["blocked_senders"]) or "nobody"
    print(f"\nStill restricted in the simulated tenant: {still}")
    print(f"Tickets received by the simulated webhook: {len(outcome.simulator_state['tickets'])}")
    return 0


def _o365_subscribe(args: argparse.Namespace) -> int:
    from restricted_sender.adapters.management_activity import CONTENT_TYPE
    from restricted_sender.entrypoints.compose import management_api
    from restricted_sender.settings import Settings

    if not args.webhook.startswith("https://") and not args.webhook.startswith("http://127.0.0.1"):
        raise InputError("the webhook must be an https:// address (the API refuses anything else)")

    async def run() -> Any:
        async with management_api(Settings.from_env()) as (api, settings):
            if settings.o365_auth_id is None:
                raise ConfigurationError("set O365_WEBHOOK_AUTH_ID first: the webhook checks it on every call")
            webhook = {"address": args.webhook, "authId": settings.o365_auth_id.reveal(), "expiration": ""}
            try:
                return await api.start(CONTENT_TYPE, webhook)
            except ServiceError as error:
                # The service echoes the address back, function key and all: keep the key out of the terminal.
                raise ServiceRefused(error.service, without_key(error.message, args.webhook)) from None

    print(without_key(json.dumps(masked_subscription(asyncio.run(run())), indent=2, sort_keys=True), args.webhook))
    return 0


def _o365_status(args: argparse.Namespace) -> int:
    from restricted_sender.entrypoints.compose import management_api
    from restricted_sender.settings import Settings

    async def run() -> Any:
        async with management_api(Settings.from_env()) as (api, _):
            return await api.subscriptions()

    subscriptions = asyncio.run(run())
    print(json.dumps([masked_subscription(s) for s in subscriptions], indent=2, sort_keys=True))
    return 0


def _decisions(args: argparse.Namespace) -> int:
    from restricted_sender.core.review import review
    from restricted_sender.core.review_page import render_review
    from restricted_sender.entrypoints.compose import audit_store
    from restricted_sender.settings import Settings

    window = since_delta(args.since)

    async def read() -> list[DecisionRecord]:
        store = audit_store(Settings.from_env(), args.table_endpoint)
        try:
            return audit_records(await store.audit())
        finally:
            await store.close()

    # Computed once: the text, --json and --html are all this one value.
    summary = review(asyncio.run(read()), until=args.now or datetime.now(UTC), period=window)
    if args.html:
        try:
            args.html.write_text(render_review(summary, period=args.since), encoding="utf-8")
        except OSError as error:
            raise InputError(f"{args.html}: cannot write: {error.strerror or error}") from error
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
        return 0
    print(summarize(summary))
    if summary.records:
        print()
        print_records(summary.records, as_json=False, out=sys.stdout)
    return 0


def _simulator(args: argparse.Namespace) -> int:
    from simulator import serve

    serve(args.tenant, host=args.host, port=args.port, identity_header=args.identity_header)
    return 0


def _policy_validate(args: argparse.Namespace) -> int:
    try:
        policy = load_policy_file(args.file)
    except PolicyError as error:
        for problem in error.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid (mode {policy.mode}, version {policy.version})")
    for note in policy.notes:
        print(f"{args.file}: note: {note}")
    return 0


def _policy_schema(args: argparse.Namespace) -> int:
    from restricted_sender.core.policy_schema import POLICY_SCHEMA

    print(json.dumps(POLICY_SCHEMA, indent=2))
    return 0


def _permissions(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from restricted_sender.core.policy import default_policy, load_policy_text
    from restricted_sender.entrypoints.permissions import IntakePaths, markdown_table, plan_json, required
    from restricted_sender.settings import Settings

    if args.markdown:
        print(markdown_table(), end="")
        return 0
    intake = IntakePaths.from_env()
    if args.poll_minutes is not None:
        intake = replace(intake, poll_alerts=args.poll_minutes != 0)
    if args.o365 is not None:
        intake = replace(intake, management_activity=args.o365)
    if args.defender is not None:
        intake = replace(intake, defender_stream=args.defender)
    settings = Settings.from_env()
    if args.policy is not None:
        source, load = str(args.policy), lambda: load_policy_file(args.policy)
    elif settings.policy_yaml:
        source, load = "POLICY_YAML", lambda: load_policy_text(settings.policy_yaml or "", source="POLICY_YAML")
    elif settings.policy_file:
        source, load = settings.policy_file, lambda: load_policy_file(settings.policy_file or "")
    else:
        source, load = "default policy", default_policy
    policy = loaded(load)
    if isinstance(policy, PolicyError):
        for problem in policy.problems:
            print(f"{source}: {problem}", file=sys.stderr)
        print("error: fix the policy first: a plan for a policy that does not load would be a guess", file=sys.stderr)
        return 1
    plan = plan_json(policy, intake, policy_source=source)
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    print(f"policy {source} (mode {policy.mode}); intake: {json.dumps(plan['intake'])}")
    for permission in required(policy, intake):
        print(f"{permission.resource:<28}  {permission.value:<32}  {permission.when}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    if args.app:
        if not args.audience:
            print("error: say which admin API to ask: --audience (or ADMIN_API_AUDIENCE)", file=sys.stderr)
            return 2
        from restricted_sender.entrypoints.remote import remote_doctor

        report = asyncio.run(remote_doctor(args.app, args.audience, args.function_key))
    else:
        from restricted_sender.entrypoints.simulated import simulated_doctor

        report = asyncio.run(simulated_doctor(args.tenant, loaded(lambda: load_policy_file(args.policy))))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table(), end="\n" if args.json else "")
    return 0 if report.ok else 1
