"""Asynchronous invocations (pure, no I/O): ids, attempts and back-off.

An invocation is queued as a ``fn_queue`` row; the holder of the scheduler lease runs
each due row and records the outcome: ``done``, or another attempt after a back-off
(1 s, 2 s, 4 s … capped), or ``failed`` after :data:`MAX_ATTEMPTS`. A holder that dies
mid-run leaves the row ``queued``: the next holder runs it again (at least once; the
invocation id is the handler's request id, for dedup).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace

from apps.functions.core import FunctionError
from apps.functions.messages import QueuedInvocation

MAX_ATTEMPTS = 5
BACKOFF_MS = 1000
MAX_BACKOFF_MS = 60_000
MAX_ASYNC_PAYLOAD = 48 << 10
"""Queued payloads live in the replicated state: kept small."""
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def invocation_id(dedup: str | None) -> str:
    """The caller's dedup id (checked) or a fresh one."""
    if dedup is None or dedup == "":
        return secrets.token_hex(12)
    if not _ID.match(dedup):
        raise FunctionError(f"bad invocation id {dedup!r}: 1-64 of A-Z a-z 0-9 . _ -")
    return dedup


def enqueue(payload: bytes, now_ms: int) -> QueuedInvocation:
    if len(payload) > MAX_ASYNC_PAYLOAD:
        raise FunctionError(f"an asynchronous payload is at most {MAX_ASYNC_PAYLOAD >> 10} "
                            "KiB")
    return QueuedInvocation(payload=payload, created_ms=now_ms, updated_ms=now_ms,
                            next_ms=now_ms)


def backoff_ms(attempts: int) -> int:
    """Wait before attempt ``attempts + 1`` (``attempts`` ≥ 1 made so far)."""
    return min(MAX_BACKOFF_MS, BACKOFF_MS << max(0, attempts - 1))


def after_attempt(row: QueuedInvocation, ok: bool, message: str, now_ms: int
                  ) -> QueuedInvocation:
    attempts = row.attempts + 1
    if ok:
        return replace(row, state="done", attempts=attempts, updated_ms=now_ms, message="",
                       payload=b"")
    if attempts >= MAX_ATTEMPTS:
        return replace(row, state="failed", attempts=attempts, updated_ms=now_ms,
                       message=message[:500])
    return replace(row, attempts=attempts, updated_ms=now_ms, message=message[:500],
                   next_ms=now_ms + backoff_ms(attempts))


def is_due(row: QueuedInvocation, now_ms: int) -> bool:
    return row.state == "queued" and row.next_ms <= now_ms
