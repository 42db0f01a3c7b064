"""Credentials: one managed-identity credential per process; tokens are cached by the credential itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import TransientServiceError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
EXCHANGE_SCOPE = "https://outlook.office365.com/.default"

TokenProvider = Callable[[], Awaitable[str]]


def managed_identity(client_id: str | None) -> AsyncTokenCredential:
    """The user-assigned (``client_id``) or system-assigned managed identity.

    Outside Azure it reads ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` like App Service does, which is how the
    simulator and the tests exercise the real credential.
    """
    from azure.identity.aio import ManagedIdentityCredential  # heavy (aiohttp): never on the webhook path

    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def bearer(credential: AsyncTokenCredential, scope: str) -> TokenProvider:
    async def token() -> str:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            return (await credential.get_token(scope)).token
        except ClientAuthenticationError as error:
            # The identity endpoint being down or slow is worth a later retry; the message says which.
            raise TransientServiceError("identity", f"could not get a token for {scope}: {error.message}") from error

    return token
