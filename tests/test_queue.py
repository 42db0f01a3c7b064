"""The events queue: what the webhook stores is what the Functions queue trigger will decode, or a 503."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from restricted_sender.adapters.queue import StorageQueue
from restricted_sender.errors import QueueUnavailable
from restricted_sender.fakes import MemoryQueue
from simulator.azurite import DEV_ACCOUNT, DEV_KEY, Azurite, free_port
from tests.conftest import ROOT

EVENT = json.dumps({"schema": 1, "event_id": "3f9a0c1d", "user": {"address": "alice@contoso.com"}})
UNICODE = "Zoë Ångström — ✉ 日本語 🚫📨"


@pytest.fixture
def queue_name() -> str:
    return f"events-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def events(azurite: Azurite, queue_name: str) -> Iterator[StorageQueue]:
    queue = StorageQueue.from_connection_string(azurite.connection_string, queue_name)
    yield queue
    queue.close()


def stored_messages(azurite: Azurite, queue_name: str) -> list[str]:
    """The messages exactly as stored: a plain client, no decode policy."""
    from azure.storage.queue import QueueClient

    with QueueClient.from_connection_string(azurite.connection_string, queue_name) as client:
        return [str(message.content) for message in client.peek_messages(max_messages=32)]


def queue_exists(azurite: Azurite, queue_name: str) -> bool:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    with QueueClient.from_connection_string(azurite.connection_string, queue_name) as client:
        try:
            client.get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True


@pytest.mark.azurite
def test_the_first_send_creates_the_queue_and_stores_the_message(
    azurite: Azurite, queue_name: str, events: StorageQueue
) -> None:
    assert not queue_exists(azurite, queue_name)

    events.send(EVENT)
    events.send(EVENT.replace("3f9a0c1d", "5b7c6a1e"))

    assert queue_exists(azurite, queue_name)
    assert len(stored_messages(azurite, queue_name)) == 2


@pytest.mark.azurite
@pytest.mark.parametrize("text", [EVENT, UNICODE], ids=["event-json", "unicode"])
def test_a_message_is_stored_as_base64_of_its_utf8_text(
    azurite: Azurite, queue_name: str, events: StorageQueue, text: str
) -> None:
    events.send(text)

    (raw,) = stored_messages(azurite, queue_name)
    assert base64.b64decode(raw, validate=True).decode("utf-8") == text


def test_host_json_tells_the_queue_trigger_to_decode_base64() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["extensions"]["queues"]["messageEncoding"] == "base64"


def unreachable_storage_queue() -> StorageQueue:
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"QueueEndpoint=http://127.0.0.1:{free_port()}/{DEV_ACCOUNT};"
    )
    return StorageQueue.from_connection_string(connection, "events")


def unavailable_memory_queue() -> MemoryQueue:
    queue = MemoryQueue()
    queue.available = False
    return queue


@pytest.mark.parametrize(
    "make_queue",
    [unreachable_storage_queue, unavailable_memory_queue],
    ids=["storage-queue-at-a-closed-port", "memory-queue-marked-unavailable"],
)
def test_a_queue_that_cannot_take_the_event_raises_queue_unavailable_quickly(
    make_queue: Callable[[], Any],
) -> None:
    queue = make_queue()
    started = time.monotonic()
    try:
        with pytest.raises(QueueUnavailable) as caught:
            queue.send(EVENT)
    finally:
        if isinstance(queue, StorageQueue):
            queue.close()
    assert time.monotonic() - started < 10
    assert caught.value.status == 503
    assert caught.value.service == "queue"
