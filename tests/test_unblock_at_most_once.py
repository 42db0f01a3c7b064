"""At most one Remove per restriction, whatever fails and whenever the processor dies.

Every test runs real processor processes (``tests/processor_child.py``, the app's own composition root) against
Azurite and the simulator; a crash is a SIGKILL of that process while the simulator holds its request open. After
each story: the simulator's request log shows at most one Remove for the user, the user got at most one notice, and
exactly one complete audit record says whether the user was unblocked, and how that was learned.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from simulator import Simulator
from simulator.azurite import Azurite
from tests.conftest import alert_v2, app_settings, audit_rows, blocked, tenant, user
from tests.test_function_app import post, queued

pytestmark = pytest.mark.azurite

ROOT = Path(__file__).resolve().parent.parent
POLICY = """
mode: enforce
allow:
  - name: staff
    domains: [contoso.com]
notify: {user: true, sender: responder@contoso.com}
"""
ALICE = "alice@contoso.com"
LIMIT_TEXT = "You have exceeded the unblock limit for this user. Contact Microsoft Support to unblock the user."
HELD = 60.0  # seconds the simulator holds a request open before dropping it: the child is killed long before


class Story:
    """One restricted user, a queued alert for them, and processor processes to run (and kill) on it."""

    def __init__(self, sim: Simulator, azurite: Azurite, prefix: str, queue: QueueClient, handlers: Any) -> None:
        self.sim = sim
        self.azurite = azurite
        self.prefix = prefix
        self.env = {
            **os.environ,
            **app_settings(sim, azurite, prefix, POLICY_YAML=POLICY, EXCHANGE_TIMEOUT_SECONDS="1"),
        }
        self.env.pop("POLICY_FILE", None)
        self.env.pop("ALERTS_SHARED_SECRET", None)
        for key, value in self.env.items():
            os.environ[key] = value  # the webhook handler below reads the same settings
        from restricted_sender.entrypoints.edge import runtime

        runtime.reset()
        status, _ = post(handlers, alert_v2(ALICE))
        assert status == 202
        [self.message] = queued(queue)
        runtime.reset()

    def start(self, attempt: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.processor_child", self.message, str(attempt)],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, attempt: int) -> int:
        child = self.start(attempt)
        _, err = child.communicate(timeout=120)
        if child.returncode not in (0, 1):
            raise AssertionError(f"the processor crashed: {err}")
        return child.returncode

    def kill_when(self, child: subprocess.Popen[str], route: str) -> None:
        """SIGKILL ``child`` once the simulator has received a request on ``route`` (and holds it open)."""
        deadline = time.monotonic() + 60
        while not any(r["route"] == route for r in self.sim.requests):
            if child.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the processor never reached {route}: {child.communicate()[1]}")
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)

    def removes(self) -> int:
        return sum(1 for r in self.sim.requests if r["route"] == "exchange.Remove-BlockedSenderAddress")

    def notices(self) -> list[Any]:
        return [m for m in self.sim.sent_mail() if ALICE in json.dumps(m["message"]["toRecipients"])]

    def records(self) -> list[dict[str, Any]]:
        return [r for r in audit_rows(self.azurite, self.prefix) if r["user"] == ALICE]

    def final(self) -> dict[str, Any]:
        """The one complete record of the decision: a record whose ticket failed is a try the queue retried, and a
        redelivery after the event completed is recorded as an ignored duplicate."""
        complete = [r for r in self.records() if r["decision"] != "ignore" and not ticket_failed(r)]
        assert len(complete) == 1, complete
        return complete[0]

    def listed(self) -> bool:
        return ALICE in [r["SenderAddress"] for r in self.sim.blocked_senders]


@pytest.fixture
def story(
    simulator_factory: Callable[[dict[str, Any]], Simulator],
    azurite: Azurite,
    table_prefix: str,
    queue: QueueClient,
    handlers: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Story]:
    def make(*, delay: float = 0.0, limit: bool = False, **row: Any) -> Story:
        restricted = {**blocked(ALICE), **row}
        if delay:
            restricted["x-removalDelaySeconds"] = delay
        people = [user("alice", **({"x-unblockLimitReached": True} if limit else {})), user("responder")]
        sim = simulator_factory(tenant(people, [restricted]))
        for key in app_settings(sim, azurite, table_prefix):
            monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
        return Story(sim, azurite, table_prefix, queue, handlers)

    return make


def ticket_failed(record: dict[str, Any]) -> bool:
    return any(a["kind"] == "ticket" and a["status"] == "failed" for a in record["actions"])


def unblock_action(record: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in record["actions"] if a["kind"] == "unblock")


# -- injected failures: one Remove, and the list says what happened -------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "row", "decision", "unblock", "learned"),
    [
        # The answer never came, but Remove took effect: the list says so.
        ({"kind": "timeout", "seconds": HELD, "apply": True}, {}, "unblock", "done",
         "the restricted list no longer lists"),
        # The connection broke before the cmdlet ran; the user is still listed: unknown, a person decides.
        ({"kind": "reset"}, {}, "ticket", "failed", "outcome unknown"),
        # A 500 carrying the cmdlet's exception is its refusal; the list confirms nothing happened.
        ({"status": 500, "body": {"error": {"code": "InternalServerError", "message": "Error executing cmdlet",
          "details": [{"message": "Ex5E6F70|Microsoft.Exchange.Management.Tasks.TaskException|Task failed"}]}}},
         {}, "ticket", "failed", "TaskException: Task failed"),
        # The gateway gave up (no Retry-After) after Remove ran.
        ({"status": 503, "apply": True}, {}, "unblock", "done", "the restricted list no longer lists"),
        # A 200 with a non-terminating error: nothing was removed.
        (None, {"x-removeErrors": ["Ex1|Microsoft.Exchange.Management.Tasks.ValidationException|Not now"]},
         "ticket", "failed", "outcome unknown"),
    ],
    ids=["timeout", "transport-error", "500-cmdlet-exception", "503", "200-adminapi-errors"],
)  # fmt: skip
def test_a_failing_remove_is_never_sent_twice_and_the_record_says_how_it_was_learned(
    story: Callable[..., Story],
    fault: dict[str, Any] | None,
    row: dict[str, Any],
    decision: str,
    unblock: str,
    learned: str,
) -> None:
    s = story(**row)
    if fault is not None:
        s.sim.inject_fault("exchange.Remove-BlockedSenderAddress", times=None, **fault)
    assert s.run(attempt=1) == 0
    s.sim.clear_faults()
    s.run(attempt=2)  # a redelivery of the same message changes nothing
    record = s.final()
    assert (s.removes(), record["decision"], unblock_action(record)["status"]) == (1, decision, unblock)
    assert learned in unblock_action(record)["detail"]
    assert len(s.notices()) == (1 if decision == "unblock" else 0)
    if decision == "ticket":
        assert [t for t in s.sim.tickets if ALICE in json.dumps(t)]


# -- crashes: the processor killed mid-way, then the host's redelivery ---------------------------------------------


def test_killed_after_remove_while_the_block_is_still_listed_the_redelivery_tickets_instead_of_resending(
    story: Callable[..., Story],
) -> None:
    s = story(delay=3600)  # lifting takes an hour
    s.sim.inject_fault("exchange.Remove-BlockedSenderAddress", kind="timeout", seconds=HELD, apply=True)
    s.kill_when(s.start(attempt=1), "exchange.Remove-BlockedSenderAddress")
    s.sim.clear_faults()
    assert s.run(attempt=2) == 0
    record = s.final()
    assert (s.removes(), record["decision"], s.notices()) == (1, "ticket", [])
    assert [r["code"] for r in record["reasons"]] == ["unblock-resumed", "unblock-uncertain"]
    assert "outcome unknown" in unblock_action(record)["detail"]
    assert s.listed()


@pytest.mark.parametrize(
    ("route", "learned"),
    [
        # Killed after Remove, the block already gone: the redelivery reads the list and records the unblock.
        ("exchange.Remove-BlockedSenderAddress", "the restricted list no longer lists alice@contoso.com"),
        # Killed while mailing the user after the unblock: the redelivery records it and mails nobody again.
        ("graph.sendMail", "an earlier try recorded"),
    ],
    ids=["after-remove-block-gone", "while-mailing"],
)
def test_killed_after_the_unblock_the_redelivery_records_it_and_mails_the_user_once(
    story: Callable[..., Story], route: str, learned: str
) -> None:
    s = story()
    s.sim.inject_fault(route, kind="timeout", seconds=HELD, apply=True)
    s.kill_when(s.start(attempt=1), route)
    s.sim.clear_faults()
    assert s.run(attempt=2) == 0
    record = s.final()
    assert (s.removes(), record["decision"], unblock_action(record)["status"]) == (1, "unblock", "done")
    assert learned in unblock_action(record)["detail"]
    assert len(s.notices()) == 1


def test_the_unblock_limit_then_a_failing_ticket_is_redelivered_without_a_second_remove(
    story: Callable[..., Story],
) -> None:
    s = story(limit=True)
    s.sim.inject_fault("tickets.webhook", status=500, times=None)
    assert s.run(attempt=1) == 1  # the ticket failed: the host retries the message
    s.sim.clear_faults()
    assert s.run(attempt=2) == 0
    record = s.final()
    assert (s.removes(), record["decision"], s.notices()) == (1, "ticket", [])
    assert record["reasons"][-1]["code"] == "unblock-failed"
    assert LIMIT_TEXT in record["reasons"][-1]["text"]
    tries = [r for r in s.records() if r["decision"] != "ignore"]
    assert [LIMIT_TEXT in json.dumps(r["reasons"]) for r in tries] == [True, True]
    assert [t for t in s.sim.tickets if ALICE in json.dumps(t)]
