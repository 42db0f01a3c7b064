"""The events queue (Azure Storage Queue), synchronous: the webhook handler is a plain sync function.

Messages are base64-encoded: the queue trigger decodes base64 by default (host.json ``messageEncoding``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from restricted_sender.errors import QueueUnavailable

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient


def _client_options() -> dict[str, Any]:
    """Fail fast: the sender (Sentinel, a Logic App) retries a 503, so hanging here only delays that retry.

    An explicit retry policy: the storage SDK's default backs off 15 s, then 18 s (about 35 s to give up).
    """
    from azure.storage.queue import LinearRetry

    retry = LinearRetry(backoff=1, random_jitter_range=1, retry_total=2)  # 0-2 s apart
    return {"connection_timeout": 3, "read_timeout": 5, "retry_policy": retry}


class StorageQueue:
    def __init__(self, client: QueueClient) -> None:
        self._client = client
        self._created = False
        self._lock = threading.Lock()

    @classmethod
    def from_connection_string(cls, connection: str, queue_name: str) -> StorageQueue:
        from azure.storage.queue import QueueClient, TextBase64EncodePolicy

        return cls(
            QueueClient.from_connection_string(
                connection, queue_name, message_encode_policy=TextBase64EncodePolicy(), **_client_options()
            )
        )

    @classmethod
    def with_identity(cls, account_url: str, queue_name: str, client_id: str | None) -> StorageQueue:
        from azure.identity import ManagedIdentityCredential  # the sync credential: no aiohttp
        from azure.storage.queue import QueueClient, TextBase64EncodePolicy

        credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
        return cls(
            QueueClient(
                account_url,
                queue_name,
                credential=credential,
                message_encode_policy=TextBase64EncodePolicy(),
                **_client_options(),
            )
        )

    def send(self, message: str, *, visibility_timeout: int | None = None) -> None:
        """Store ``message``; with ``visibility_timeout`` (seconds, at most 7 days) it is delivered only then."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            try:
                self._client.send_message(message, visibility_timeout=visibility_timeout)
            except ResourceNotFoundError:
                self._create()  # a new storage account: the queue does not exist until first use
                self._client.send_message(message, visibility_timeout=visibility_timeout)
        except AzureError as error:
            raise QueueUnavailable("queue", f"could not queue the event: {error.message}") from error

    def exists(self) -> bool:
        """Read the queue's properties (read-only, for the doctor): ``False`` when it is not created yet."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        try:
            self._client.get_queue_properties()
        except ResourceNotFoundError:
            return False
        except AzureError as error:
            status = error.status_code if isinstance(error, HttpResponseError) else None
            raise QueueUnavailable("queue", f"could not read the queue: {error.message}", http_status=status) from error
        return True

    def _create(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self._lock:
            if self._created:
                return
            with contextlib.suppress(ResourceExistsError):
                self._client.create_queue()
            self._created = True

    def close(self) -> None:
        self._client.close()


MAX_VISIBILITY_DELAY = timedelta(days=7)  # the Storage queue service's limit


class DelayedStorageQueue:
    """The verification queue for the (async) processor: a send is a few milliseconds, done off the event loop."""

    def __init__(self, queue: StorageQueue) -> None:
        self._queue = queue

    async def send_later(self, message: str, delay: timedelta) -> None:
        seconds = int(min(max(delay, timedelta(0)), MAX_VISIBILITY_DELAY).total_seconds())
        await asyncio.to_thread(self._queue.send, message, visibility_timeout=seconds or None)

    async def close(self) -> None:
        self._queue.close()
