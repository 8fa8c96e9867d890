"""Joining a mesh: a new node trades an invite for a membership certificate.

1. The joiner makes a **join proof** from the token (its node key bound with the invite's
   one-time key) and dials a bootstrap address from the invite. The handshake carries the
   proof instead of a certificate; the bootstrap node's admission policy
   (:func:`meshcloud.auth.check_join_proof`) lets it in as a *joiner*, restricted to
   ``/meshcloud/join/1``. The joiner checks the bootstrap node's certificate against the
   root key in the invite, so it cannot be fooled by an impostor.
2. The joiner opens ``/meshcloud/join/1`` and sends :class:`JoinRequest`.
3. The bootstrap node checks the proof again, wins a use of the invite from a majority of
   the invite's redemption ledger (:mod:`meshcloud.redemption`: this is what makes
   ``--uses`` hold mesh-wide), records the redemption in the cluster state, issues the
   certificate on its own clock (with the root key if it holds it, else as a link under
   its own certificate) and replies :class:`JoinAccepted` with the certificate and peers
   to contact — or :class:`JoinRefused` with one clear reason.

A refused joiner changes nothing on the bootstrap node's state; a ledger member may keep a
grant for it, which only that same node can use again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from meshcloud.auth import check_join_proof
from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import AuthError, InviteError, MeshError, TransportError
from meshcloud.identity.certs import MemberProof, MeshCert, issue_cert
from meshcloud.identity.keys import SigningKey, short_id
from meshcloud.membership import MembershipRecords
from meshcloud.redemption import LedgerService, redeem
from meshcloud.transport.base import Stream, Transport, receive_message, send_message

log = logging.getLogger(__name__)

JOIN_PROTOCOL = "/meshcloud/join/1"

JOIN_TIMEOUT = 20.0
"""Seconds a join may take end to end (dial, handshake, certificate) before giving up."""


@message(TagBlock.CORE + 20)
@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRequest:
    agent_version: str
    labels: dict[str, str]


@message(TagBlock.CORE + 21)
@dataclass(frozen=True, slots=True, kw_only=True)
class PeerContact:
    node_id: bytes
    addresses: tuple[str, ...]


@message(TagBlock.CORE + 22)
@dataclass(frozen=True, slots=True, kw_only=True)
class JoinAccepted:
    cert: MeshCert
    mesh_name: str
    peers: tuple[PeerContact, ...]


@message(TagBlock.CORE + 23)
@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRefused:
    reason: str


class JoinService:
    """The bootstrap side: serves ``/meshcloud/join/1`` on every member node."""

    def __init__(self, key: SigningKey, cert: MeshCert, root_public: bytes, mesh_name: str,
                 records: MembershipRecords, wall_ms: Callable[[], int],
                 contacts: Callable[[], list[PeerContact]], *,
                 transport: Transport, ledger: LedgerService,
                 root_key: SigningKey | None = None,
                 on_admitted: Callable[[MeshCert], None] | None = None) -> None:
        self.key = key
        self.cert = cert
        self.transport = transport
        self.ledger = ledger
        self.root_key = root_key
        self.root_public = root_public
        self.mesh_name = mesh_name
        self.records = records
        self.wall_ms = wall_ms
        self.contacts = contacts
        self.on_admitted = on_admitted
        self.admitted = 0
        self.refused = 0

    async def handle(self, stream: Stream) -> None:
        peer = stream.peer
        try:
            await receive_message(stream, JoinRequest)
            proof = peer.join_proof
            if proof is None:
                raise InviteError("already a member: nothing to join")
            if proof.binding.node_public != peer.node_public:
                raise InviteError("join proof is for another key")
            check_join_proof(proof, self.root_public, self.records, self.wall_ms())
            await redeem(self.transport, self.ledger, proof.invite, proof.binding.node_id)
            cert = self._issue(proof)
        except MeshError as exc:
            self.refused += 1
            log.info("join refused", extra={"peer": short_id(peer.node_id), "why": str(exc)})
            await send_message(stream, JoinRefused(reason=str(exc)))
            await stream.close()
            return
        self.records.record_redemption(proof.invite.invite_id, proof.binding.node_id,
                                       self.wall_ms())
        self.admitted += 1
        log.info("node admitted", extra={"peer": short_id(peer.node_id),
                                         "invite": proof.invite.invite_id.hex()[:8]})
        if self.on_admitted is not None:
            self.on_admitted(cert)
        await send_message(stream, JoinAccepted(cert=cert, mesh_name=self.mesh_name,
                                                peers=tuple(self.contacts())))
        await stream.close()

    def _issue(self, proof: MemberProof) -> MeshCert:
        # an issuer whose clock is behind the admin's still issues inside the invite's life
        now = max(self.wall_ms(), proof.invite.body.created_at)
        if self.root_key is not None:
            return issue_cert(proof, self.root_key, None, now=now)
        return issue_cert(proof, self.key, self.cert, now=now)


JOIN_ATTEMPT_TIMEOUT = 8.0
"""Seconds one attempt at one bootstrap address may take before the next is tried."""

JOIN_BACKOFF = (0.25, 2.0)
"""First and largest pause between rounds over the bootstrap addresses (doubling)."""


async def request_certificate(transport: Transport, bootstrap: list[str], *,
                              timeout: float = JOIN_TIMEOUT,
                              attempt_timeout: float = JOIN_ATTEMPT_TIMEOUT) -> JoinAccepted:
    """Joiner side: try the bootstrap addresses in turn, in rounds with a doubling pause
    between them, until one admits us or ``timeout`` (the whole join) runs out. A busy or
    unreachable node is retried; a refusal is final. Raises InviteError (refused) or
    TransportError (no bootstrap node answered in time)."""
    errors: dict[str, str] = {}
    pause = JOIN_BACKOFF[0]
    deadline = trio.current_time() + timeout
    while True:
        for address in bootstrap:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            try:
                with trio.fail_after(min(attempt_timeout, remaining)):
                    peer = await transport.dial(address)
                    stream = await transport.open_stream(peer.node_id, JOIN_PROTOCOL)
                    await send_message(stream, JoinRequest(agent_version="", labels={}))
                    await stream.close()
                    reply = await receive_message(stream, (JoinAccepted, JoinRefused))
            except trio.TooSlowError:
                errors[address] = "no answer in time"
                continue
            except AuthError as exc:
                # the bootstrap refused our handshake: the invite is bad (say why) or the
                # node we reached is not of this mesh.
                text = str(exc)
                if "invite refused" in text:
                    text = text[text.index("invite refused"):]
                else:
                    text = f"refused by {address}: {text}"
                raise InviteError(text) from None
            except (TransportError, OSError) as exc:  # busy, unreachable, damaged: retry
                errors[address] = str(exc)
                continue
            if isinstance(reply, JoinRefused):
                raise InviteError(reply.reason)
            return reply
        remaining = deadline - trio.current_time()
        if remaining <= 0 or not bootstrap:
            break
        log.info("no bootstrap node admitted us yet; trying again in %.2f s", pause)
        await trio.sleep(min(pause, remaining))
        pause = min(pause * 2, JOIN_BACKOFF[1])
    detail = "; ".join(f"{address}: {error}" for address, error in errors.items())
    raise TransportError(f"could not reach any bootstrap node of the invite within "
                         f"{timeout:.0f} s: {detail or 'no address'}")
