"""The redemption ledger: how an invite's ``uses`` hold across the whole mesh.

An invite names, in its root-signed body, up to three members that count its uses (its
**ledger**). Before a member issues a certificate it asks every ledger member for a use
(:class:`RedeemRequest`) and issues only once a **majority** of them granted it. A ledger
member grants a use to a node it granted before, or to a new node while fewer than
``uses`` nodes hold a grant from it; it writes the grant to disk before it answers. Two
majorities of the same fixed set always share a member, and that member never grants more
than ``uses`` nodes, so an invite admits at most ``uses`` nodes however many joins run at
once, through whichever members, and whatever a partition cuts off. The price is
liveness: three joins racing for one use can each win one ledger member and all fail
(each gets "no quorum"); a retry by a node that holds grants wins them back. A ledger
member judges expiry on its own clock, so a joiner cannot back-date anything.

:class:`LedgerBook` is the sans-IO core (decisions and their record);
:class:`FileLedgerBook` keeps it in one file under the data dir; :func:`redeem` is the
issuer's side, over the transport.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import InviteError, MeshError
from meshcloud.identity.invites import SignedInvite
from meshcloud.identity.keys import short_id
from meshcloud.transport.base import Stream, Transport, receive_message, send_message

log = logging.getLogger(__name__)

REDEEM_PROTOCOL = "/meshcloud/redeem/1"
REDEEM_TIMEOUT = 3.0
"""Seconds an issuer waits for the ledger's answers (within a joiner's attempt, 8 s)."""
KEEP_AFTER_EXPIRY_MS = 24 * 3_600_000
"""Grants of an invite are forgotten a day after it expired (it can never be used again)."""


@message(TagBlock.CORE + 24)
@dataclass(frozen=True, slots=True, kw_only=True)
class RedeemRequest:
    invite: SignedInvite
    node_id: bytes


@message(TagBlock.CORE + 25)
@dataclass(frozen=True, slots=True, kw_only=True)
class RedeemReply:
    granted: bool
    reason: str = ""


class LedgerBook:
    """One ledger member's grants: invite id → (expires at, node ids granted a use)."""

    def __init__(self, self_id: bytes, root_public: bytes,
                 grants: dict[bytes, tuple[int, list[bytes]]] | None = None) -> None:
        self.self_id = self_id
        self.root_public = root_public
        self.grants: dict[bytes, tuple[int, list[bytes]]] = grants or {}

    def decide(self, invite: SignedInvite, node_id: bytes, now_ms: int,
               revoked: bool) -> RedeemReply:
        """Grant or refuse one use; a grant is recorded (and persisted) before it returns."""
        try:
            invite.check_signature(self.root_public)
        except InviteError as exc:
            return RedeemReply(granted=False, reason=str(exc))
        body = invite.body
        if self.self_id not in body.ledger:
            return RedeemReply(granted=False, reason="this node does not count that invite")
        if revoked:
            return RedeemReply(granted=False, reason="invite refused: it has been revoked")
        granted = self.grants.get(body.invite_id, (body.expires_at, []))[1]
        if node_id in granted:
            return RedeemReply(granted=True)
        if now_ms > body.expires_at:
            return RedeemReply(granted=False,
                               reason="invite refused: it has expired; ask an admin for a new one")
        if len(granted) >= body.uses:
            return RedeemReply(granted=False, reason=(
                f"invite refused: it was already used ({len(granted)} of {body.uses} uses)"))
        self.grants[body.invite_id] = (body.expires_at, [*granted, node_id])
        self._forget_expired(now_ms)
        self._changed()
        return RedeemReply(granted=True)

    def _forget_expired(self, now_ms: int) -> None:
        for invite_id in [i for i, (expires, _) in self.grants.items()
                          if expires + KEEP_AFTER_EXPIRY_MS < now_ms]:
            del self.grants[invite_id]

    def _changed(self) -> None:
        """Hook for persistence."""


class FileLedgerBook(LedgerBook):
    """Grants kept in one JSON file, written and fsync'd before a grant is answered."""

    def __init__(self, path: Path, self_id: bytes, root_public: bytes) -> None:
        self.path = path
        grants: dict[bytes, tuple[int, list[bytes]]] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
                for invite, entry in data.items():
                    grants[bytes.fromhex(invite)] = (
                        int(entry["expires_at"]), [bytes.fromhex(n) for n in entry["nodes"]])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise MeshError(f"{path} is damaged; move it away to start a new ledger "
                                "(invites counted here may then be used again)") from None
        super().__init__(self_id, root_public, grants)

    def _changed(self) -> None:
        data = {invite.hex(): {"expires_at": expires, "nodes": [n.hex() for n in nodes]}
                for invite, (expires, nodes) in sorted(self.grants.items())}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


class LedgerService:
    """Serves :data:`REDEEM_PROTOCOL`: answers issuers' requests for a use."""

    def __init__(self, book: LedgerBook, wall_ms: Callable[[], int],
                 is_revoked: Callable[[bytes, bytes], bool]) -> None:
        self.book = book
        self.wall_ms = wall_ms
        self.is_revoked = is_revoked

    def decide(self, request: RedeemRequest) -> RedeemReply:
        revoked = self.is_revoked(request.node_id, request.invite.invite_id)
        return self.book.decide(request.invite, request.node_id, self.wall_ms(), revoked)

    async def handle(self, stream: Stream) -> None:
        try:
            request = await receive_message(stream, RedeemRequest)
        except MeshError as exc:
            log.info("bad redeem request", extra={"peer": short_id(stream.peer.node_id),
                                                   "why": str(exc)})
            await stream.abort(str(exc))
            return
        reply = self.decide(request)
        await send_message(stream, reply)
        await stream.close()


async def redeem(transport: Transport, service: LedgerService, invite: SignedInvite,
                 node_id: bytes) -> None:
    """Win a use of ``invite`` for ``node_id`` from a majority of its ledger, or raise
    InviteError saying why (used up, expired, revoked, or not enough ledger members)."""
    body = invite.body
    request = RedeemRequest(invite=invite, node_id=node_id)
    replies: dict[bytes, RedeemReply | str] = {}

    async def ask(member: bytes) -> None:
        if member == service.book.self_id:
            replies[member] = service.decide(request)
            return
        try:
            stream = await transport.open_stream(member, REDEEM_PROTOCOL)
            await send_message(stream, request)
            await stream.close()
            replies[member] = await receive_message(stream, RedeemReply)
        except (MeshError, OSError) as exc:
            replies[member] = str(exc) or type(exc).__name__

    with trio.move_on_after(REDEEM_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for member in body.ledger:
                nursery.start_soon(ask, member)
    granted = sum(1 for r in replies.values() if isinstance(r, RedeemReply) and r.granted)
    if granted >= body.quorum:
        return
    refusals = [r.reason for r in replies.values() if isinstance(r, RedeemReply) and not r.granted]
    if refusals and len(refusals) > len(body.ledger) - body.quorum:
        raise InviteError(refusals[0])
    answered = sum(isinstance(r, RedeemReply) for r in replies.values())
    unreachable = len(body.ledger) - answered
    if refusals:
        raise InviteError(
            f"invite refused: {refusals[0]} (another join may be using it at the same time; "
            "try again)")
    raise InviteError(
        f"cannot count this invite's uses: {granted} of {len(body.ledger)} ledger members "
        f"granted, {body.quorum} needed, {unreachable} unreachable; try again when more "
        "members are up, or ask an admin for a new invite")

