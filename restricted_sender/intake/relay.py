"""The ``alert-content`` queue's messages: what the webhooks hand to :mod:`restricted_sender.intake.content`."""

from __future__ import annotations

import json

from restricted_sender.intake.defender import AlertInfo, DefenderBatch, UserEvidence
from restricted_sender.intake.o365 import ContentPointer

MAX_MESSAGE_CHARS = 40_000  # a queue message holds 64 KiB, base64 makes 48 KiB of that: leave headroom


def o365_message(pointer: ContentPointer) -> str:
    return json.dumps({"kind": "o365", "pointer": pointer.to_dict()}, separators=(",", ":"))


def defender_messages(batch: DefenderBatch) -> list[str]:
    """The batch as queue messages, split so that each fits a queue message."""
    messages: list[str] = []
    infos: list[AlertInfo] = []
    evidence: list[UserEvidence] = []
    size = 0
    rows: list[AlertInfo | UserEvidence] = [*batch.infos, *batch.evidence]
    for row in rows:
        text = json.dumps(row.to_dict(), separators=(",", ":"))
        if size + len(text) > MAX_MESSAGE_CHARS and (infos or evidence):
            messages.append(_defender_message(DefenderBatch(tuple(infos), tuple(evidence))))
            infos, evidence, size = [], [], 0
        if isinstance(row, AlertInfo):
            infos.append(row)
        else:
            evidence.append(row)
        size += len(text)
    if infos or evidence:
        messages.append(_defender_message(DefenderBatch(tuple(infos), tuple(evidence))))
    return messages


def _defender_message(batch: DefenderBatch) -> str:
    return json.dumps({"kind": "defender", "batch": batch.to_dict()}, separators=(",", ":"))
