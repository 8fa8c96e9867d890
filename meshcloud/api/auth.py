"""Token authentication for the local API and UI.

Every request needs the node's API token (``<data dir>/api.token``), either as
``Authorization: Bearer TOKEN`` (CLI, scripts) or as the session cookie that the one-time
login URL sets (web UI). Without it the answer is 401 with no data. Tokens are compared in
constant time and never logged.
"""

from __future__ import annotations

import hmac
import secrets
import time

from starlette.requests import HTTPConnection

SESSION_COOKIE = "meshcloud_session"
LOGIN_TICKET_TTL = 300.0
"""A one-time UI login link works for five minutes."""


class TokenAuth:
    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._sessions: set[str] = set()
        self._tickets: dict[str, float] = {}

    def check_token(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def allowed(self, conn: HTTPConnection) -> bool:
        header = conn.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and self.check_token(header[7:].strip()):
            return True
        session = conn.cookies.get(SESSION_COOKIE)
        return session is not None and any(
            hmac.compare_digest(session, known) for known in self._sessions
        )

    def new_login_ticket(self) -> str:
        """A one-time ticket for a login URL (``/ui/login?ticket=...``)."""
        now = time.monotonic()
        self._tickets = {t: exp for t, exp in self._tickets.items() if exp > now}
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = now + LOGIN_TICKET_TTL
        return ticket

    def redeem_ticket(self, ticket: str) -> str | None:
        """Trade a valid ticket (once) for a session id; None if unknown or expired."""
        expires = self._tickets.pop(ticket, None)
        if expires is None or expires < time.monotonic():
            return None
        session = secrets.token_urlsafe(32)
        self._sessions.add(session)
        return session
