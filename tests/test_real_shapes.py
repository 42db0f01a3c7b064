"""The product against the Exchange endpoint's shapes that are not confirmed: the same tenant in every field casing
gets the same decisions, and a ForwardingAddress that names an external mail contact is caught. Through the CLI's
replay: the real adapters, over HTTP, against the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import alert_v2

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-27T22:30:00Z"
NINA = {
    "id": "0b1c2d3e-0099-4a5b-8c9d-000000000099",
    "userPrincipalName": "nina@contoso.com",
    "mail": "nina@contoso.com",
    "displayName": "Nina Travel",
    "accountEnabled": True,
    "x-mailbox": {"ForwardingAddress": "Travel Desk", "DeliverToMailboxAndForward": True},
}
TRAVEL_DESK = {  # a mail contact: inside the address book, its mail goes outside the tenant
    "Name": "Travel Desk",
    "Alias": "traveldesk",
    "RecipientType": "MailContact",
    "RecipientTypeDetails": "MailContact",
    "PrimarySmtpAddress": "traveldesk@contoso.com",
    "ExternalEmailAddress": "SMTP:m.travel@freemail.example",
}


def replay(tmp_path: Path, casing: str, *alerts: str) -> list[dict[str, Any]]:
    document = yaml.safe_load((ROOT / "samples" / "tenant.yaml").read_text(encoding="utf-8"))
    document["users"].append(NINA)
    document["recipients"] = [TRAVEL_DESK]
    document["blockedSenders"].append(
        {"SenderAddress": "nina@contoso.com", "Reason": "OutboundSpamLast24Hours=40;OutboundMailLast24Hours=41;"
         "OutboundSpamPercent=97", "TemporaryBlock": False, "CreatedDatetime": "2026-11-27T21:00:00Z",
         "ChangedDatetime": "2026-11-27T21:00:00Z"}
    )  # fmt: skip
    document["x-exchangeFieldCasing"] = casing
    tenant_file = tmp_path / f"tenant-{casing}.yaml"
    tenant_file.write_text(yaml.safe_dump(document), encoding="utf-8")
    nina_alert = tmp_path / "nina.json"
    nina_alert.write_text(json.dumps(alert_v2("nina@contoso.com", alert_id="nina-1")), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "restricted_sender", "replay", *alerts, str(nina_alert), "--tenant", str(tenant_file),
         "--policy", "samples/policy.yaml", "--now", NOW, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def decisions(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["user"], r["decision"], [x["code"] for x in r["reasons"]], [(a["kind"], a["status"]) for a in r["actions"]])
        for r in records
    ]


SAMPLES = ("samples/alerts/01-three-users-one-alert.json", "samples/alerts/05-compromised-looking-users.json")


@pytest.mark.parametrize("casing", ["DateTime", "camelCase"])
def test_every_field_casing_gets_the_same_decisions_on_the_same_tenant(tmp_path: Path, casing: str) -> None:
    as_written = decisions(replay(tmp_path, "as-written", *SAMPLES))
    assert len(as_written) >= 5
    assert decisions(replay(tmp_path, casing, *SAMPLES)) == as_written


def test_forwarding_to_an_external_mail_contact_through_forwarding_address_fails_the_guard(tmp_path: Path) -> None:
    [nina] = [r for r in replay(tmp_path, "as-written") if r["user"] == "nina@contoso.com"]
    assert nina["decision"] == "ticket"
    guard = next(r for r in nina["reasons"] if r["code"] == "guard:forwarding")
    assert "MailContact 'Travel Desk' (m.travel@freemail.example, outside the tenant)" in guard["text"]
