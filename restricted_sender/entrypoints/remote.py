"""Asking a deployed app: ``doctor --app`` signs in with the operator's Azure CLI and reads ``/api/doctor``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from restricted_sender.errors import MalformedPayload, ServiceRefused

if TYPE_CHECKING:
    from restricted_sender.processing.doctor import Report


async def remote_doctor(app: str, audience: str, function_key: str | None) -> Report:
    """``GET {app}/api/doctor`` with a token for ``audience`` from the operator's Azure CLI sign-in."""
    import httpx
    from azure.identity.aio import AzureCliCredential

    from restricted_sender.processing.doctor import Report

    scope = audience if audience.endswith("/.default") else f"{audience.rstrip('/')}/.default"
    async with AzureCliCredential() as credential:
        token = (await credential.get_token(scope)).token
    headers = {"Authorization": f"Bearer {token}"}
    if function_key:
        headers["x-functions-key"] = function_key
    async with httpx.AsyncClient(timeout=300) as http:
        response = await http.get(f"{app.rstrip('/')}/api/doctor", headers=headers)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else response.text[:200]
        raise ServiceRefused("doctor", f"HTTP {response.status_code}: {message}", http_status=response.status_code)
    try:
        return Report.from_dict(body)
    except (ValueError, KeyError, TypeError) as problem:
        raise MalformedPayload(f"the app's doctor answered an unreadable report: {problem}") from problem
