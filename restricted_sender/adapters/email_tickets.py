"""Tickets as mail to the SOC through Graph ``sendMail``: the first report opens a thread, later ones follow up.

Mail cannot be searched for an open ticket; the store's ticket ledger alone keeps it to one thread per
restriction. The correlation id leads the subject so the SOC's mail rules and replies keep the thread together.
"""

from __future__ import annotations

from restricted_sender.model import Mail, TicketContent, TicketRef
from restricted_sender.ports import Directory


class EmailTickets:
    name = "email"

    def __init__(self, directory: Directory, *, sender: str, to: tuple[str, ...]) -> None:
        self._directory = directory
        self._sender = sender
        self._to = to

    def _subject(self, content: TicketContent) -> str:
        return f"[{content.correlation_id}] {content.title}"

    async def find_open(self, correlation_id: str) -> TicketRef | None:
        return None

    async def create(self, content: TicketContent) -> TicketRef:
        # Graph sends message importance as the mail's Importance header
        # (https://learn.microsoft.com/graph/api/resources/message); the title names the main reason.
        importance = "high" if content.severity == "high" else "normal"
        await self._directory.send_mail(
            self._sender, Mail(self._to, self._subject(content), content.html, html=True, importance=importance)
        )
        return TicketRef(id=content.correlation_id, label=f"mail to {', '.join(self._to)}")

    async def update(self, ticket: TicketRef, content: TicketContent) -> None:
        await self._directory.send_mail(self._sender, Mail(self._to, "Re: " + self._subject(content), content.update))
