"""Token authentication for the local API and UI.

Every request needs the node's API token (``<data dir>/api.token``), either as
``Authorization: Bearer TOKEN`` (CLI, scripts) or as the session cookie that the one-time
login URL sets (web UI). Without it the answer is 401 with no data. Tokens are compared in
constant time and never logged.

A session is bound to the Host its login link was opened with (the UI's own name,
``ui.localhost:PORT``; see :mod:`meshcloud.web.origin`): the same cookie presented with
any other Host is ignored.
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
        self._sessions: dict[str, str] = {}
        """session id -> the Host it is valid for"""
        self._tickets: dict[str, float] = {}

    def check_token(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def allowed(self, conn: HTTPConnection) -> bool:
        header = conn.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and self.check_token(header[7:].strip()):
            return True
        session = conn.cookies.get(SESSION_COOKIE)
        if session is None:
            return False
        host = conn.headers.get("host", "").strip().lower()
        return any(hmac.compare_digest(session, known) and host == bound
                   for known, bound in self._sessions.items())

    def new_login_ticket(self) -> str:
        """A one-time ticket for a login URL (``/ui/login?ticket=...``)."""
        now = time.monotonic()
        self._tickets = {t: exp for t, exp in self._tickets.items() if exp > now}
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = now + LOGIN_TICKET_TTL
        return ticket

    def redeem_ticket(self, ticket: str, host: str) -> str | None:
        """Trade a valid ticket (once) for a session id valid with the Host header
        ``host`` only; None if unknown or expired."""
        expires = self._tickets.pop(ticket, None)
        if expires is None or expires < time.monotonic():
            return None
        session = secrets.token_urlsafe(32)
        self._sessions[session] = host.strip().lower()
        return session
