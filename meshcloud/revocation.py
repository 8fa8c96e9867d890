"""Revocation: the admin takes a node or an invite out of the mesh, everywhere, at once.

A revocation is signed by the mesh root key over ``(mesh id, kind, subject, at)`` and
stored in the replicated ``membership`` table, so it reaches every member within an
anti-entropy round (the state pushes new rows to live peers at once). Rows without a
valid root signature are ignored: one member cannot revoke another. Every node then:

* refuses the revoked node (or anyone admitted with the revoked invite, or admitted by a
  revoked node: :func:`meshcloud.auth.is_cert_revoked` checks the whole chain) at every
  handshake and in gossip;
* cuts connections already open to such peers (:class:`RevocationEnforcer`, within a
  second of the row's arrival: it checks them when a row of the records changes);
* refuses S3 keys created through the revoked node (the blobstore consults the records).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio

from meshcloud.clock import next_tick
from meshcloud.codec import cbor
from meshcloud.identity.keys import SigningKey, short_id, verify
from meshcloud.transport.base import Transport

log = logging.getLogger(__name__)

KINDS = ("node", "invite")
ENFORCE_INTERVAL = 0.5
"""Seconds between checks of the open connections against the revocation records (when
no change watch of the records is given)."""
WATCHED_RECHECK = 60.0
"""With a watch of the records' table, the connections are checked when a row changes
(then on the next ``interval`` tick), and at least this often anyway."""


class ChangeWatch(Protocol):
    """What :meth:`meshcloud.state.driver.StateDriver.watch` returns."""

    def clear(self) -> None: ...

    async def wait(self, deadline: float = ...) -> bool: ...


def revocation_bytes(mesh_id: bytes, kind: str, subject: bytes, at_ms: int) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown revocation kind {kind!r}")
    return b"meshcloud-revocation-v1" + cbor.encode_canonical([mesh_id, kind, subject, at_ms])


def sign_revocation(root: SigningKey, kind: str, subject: bytes, at_ms: int) -> bytes:
    return root.sign(revocation_bytes(root.id, kind, subject, at_ms))


def revocation_valid(root_public: bytes, kind: str, subject: bytes, at_ms: int,
                     signature: bytes) -> bool:
    from meshcloud.identity.keys import key_id

    try:
        data = revocation_bytes(key_id(root_public), kind, subject, at_ms)
    except ValueError:
        return False
    return verify(root_public, data, signature)


class RevocationEnforcer:
    """Cuts open connections to peers whose certificate the records now revoke."""

    def __init__(self, transport: Transport, is_revoked_peer: Callable[[Any], bool],
                 on_cut: Callable[[bytes], None] | None = None,
                 interval: float = ENFORCE_INTERVAL, watch: ChangeWatch | None = None) -> None:
        self.interval = interval
        self.watch = watch
        """Set by changes of the records: no check while none came (an idle node does not
        wake twice a second to re-check every connection's certificate)."""
        self.checks = 0
        self.transport = transport
        self.is_revoked_peer = is_revoked_peer
        self.on_cut = on_cut
        self.cut = 0

    async def check_once(self) -> None:
        self.checks += 1
        for peer in self.transport.connected_peers(retiring=True):
            if not self.is_revoked_peer(peer):
                continue
            self.cut += 1
            log.warning("revoked peer cut off", extra={"peer": short_id(peer.node_id)})
            if self.on_cut is not None:
                self.on_cut(peer.node_id)
            await self.transport.disconnect(peer.node_id, "membership revoked")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            if self.watch is not None:
                self.watch.clear()  # a row from here on means another check
            await self.check_once()
            if self.watch is not None:
                await self.watch.wait(trio.current_time() + WATCHED_RECHECK)
            await trio.sleep_until(next_tick(trio.current_time(), self.interval))


def resolve_subject(text: str, node_ids: list[bytes], invite_ids: list[bytes],
                    kind: str | None = None) -> tuple[str, bytes]:
    """What ``meshcloud revoke TEXT`` names: a node or an invite, by id or unique prefix.

    Raises MeshError (``bad_request`` / ``not_found``) with what matched, if not exactly one.
    """
    from meshcloud.errors import MeshError

    text = text.strip().lower()
    try:
        bytes.fromhex(text if len(text) % 2 == 0 else text + "0")
    except ValueError:
        raise MeshError(f"{text!r} is not a node or invite id (hex)", code="bad_request") from None
    if len(text) < 4:
        raise MeshError("give at least 4 hex digits of the id", code="bad_request")
    candidates: list[tuple[str, bytes]] = []
    if kind in (None, "node"):
        candidates += [("node", n) for n in dict.fromkeys(node_ids) if n.hex().startswith(text)]
    if kind in (None, "invite"):
        candidates += [("invite", i) for i in dict.fromkeys(invite_ids)
                       if i.hex().startswith(text)]
        if not candidates and kind == "invite" and len(text) == 32:
            candidates = [("invite", bytes.fromhex(text))]
    if not candidates:
        what = kind or "node or invite"
        raise MeshError(f"no {what} id starts with {text}", code="not_found")
    if len(candidates) > 1:
        names = ", ".join(f"{k} {s.hex()[:12]}" for k, s in candidates[:5])
        raise MeshError(f"{text} is ambiguous ({names}): give more digits", code="bad_request")
    return candidates[0]
