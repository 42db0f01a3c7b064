"""Faults around one event: a record belongs to the delivery that wrote it, and a retry always decides."""

from __future__ import annotations

import asyncio
import json

from restricted_sender.model import RestrictionEvent
from tests.conftest import alert_v2, blocked
from tests.test_pipeline import ALICE, NOW, World


def test_a_first_deliverys_retry_decides_although_a_repost_was_recorded_as_a_duplicate_meanwhile() -> None:
    world = World([blocked("alice@contoso.com")], [ALICE])
    for _ in range(2):  # the alert, then its re-post while the first delivery is failing
        world.intake.accept(json.dumps(alert_v2("alice@contoso.com")).encode())
    first, repost = (RestrictionEvent.from_message(m) for m in world.queue.drain())
    assert first.event_id == repost.event_id
    assert first.delivery_id != repost.delivery_id

    async def story() -> tuple[str, str]:
        await world.store.claim(first.claim_key, first.delivery_id, NOW)  # the first try claimed it, then failed
        duplicate = await world.processor.process(repost)
        retried = await world.processor.process(first, attempt=2)
        return duplicate.decision.codes[0], retried.decision.outcome.value

    assert asyncio.run(story()) == ("duplicate", "unblock")
    assert world.exchange.removed == ["alice@contoso.com"]
    rows = asyncio.run(world.store.audit("alice@contoso.com"))
    assert [(r["delivery_id"], r["decision"]) for r in rows] == [
        (repost.delivery_id, "ignore"),
        (first.delivery_id, "unblock"),
    ]
