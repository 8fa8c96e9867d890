"""The connection handshake: Noise XX carrying the node's identity and membership, sans-IO.

Wire layout (every message framed by :mod:`meshcloud.transport.channel`: 2-byte length)::

    dialer (initiator)                             listener (responder)
    -> e                                   msg 1   (payload empty)
    <- e, ee, s, es, {HandshakePayload}    msg 2   listener's identity, encrypted
    -> s, se, {HandshakePayload}           msg 3   dialer's identity, sent only after the
                                                   dialer accepted the listener
    <- {HandshakeVerdict}                  first transport message: accepted, or why not

The prologue :data:`PROLOGUE` binds the protocol version into the handshake hash.

**Identity binding.** A node's Noise static key *is* its Ed25519 node key converted to
X25519 (``SigningKey.to_curve25519_private``). A payload names an Ed25519 ``node_public``;
it is accepted only if ``crypto_sign_ed25519_pk_to_curve25519(node_public)`` equals the
static key the peer proved in the handshake (the DH tokens ``es``/``se`` prove possession of
its private half). So the identity needs no extra signature, and a payload copied from
another node is useless.

**Admission.** Once the peer's key is proven, the node's
:class:`~meshcloud.transport.base.Authenticator` decides (certificate of this mesh,
not revoked; or a join proof, admitted as a joiner). The dialer also checks that the
listener is the node it ``expect``-ed. The dialer decides first (before revealing itself in
message 3); the listener decides on message 3 and tells the dialer with the verdict, so a
refused dialer gets a clear reason instead of a closed socket.

Errors: malformed bytes are :class:`HandshakeError` or another
:class:`~meshcloud.errors.RemoteProtocolError`; a refused peer is an
:class:`~meshcloud.errors.AuthError`. After either, the handshake is FAILED and refuses more
input; :meth:`HandshakeCore.data_to_send` may still hold the refusal verdict to flush.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import nacl.bindings
import nacl.exceptions

from meshcloud.codec.messages import decode_message, encode_message, message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import AuthError, LocalProtocolError, MeshError, RemoteProtocolError
from meshcloud.identity.certs import MemberProof, MeshCert
from meshcloud.identity.keys import SigningKey, key_id
from meshcloud.transport.channel import MessageReader, SecureChannel, frame
from meshcloud.transport.noise import BLAKE2B, HandshakeState, NoiseHash
from meshcloud.transport.peers import Authenticator, NodeId, PeerAuth

PROLOGUE = b"meshcloud/transport/1"
"""Mixed into the handshake hash: a peer speaking another version fails at message 2."""

MAX_ADDRESSES = 16
"""Listen addresses a peer may announce (a node has a few interfaces, not hundreds)."""

MAX_ADDRESS_LENGTH = 256
MAX_AGENT_VERSION = 64
MAX_REASON = 200
"""Refusal reasons are one line for a log, not a document."""

MAX_PAYLOAD = 16 * 1024
"""A payload is a certificate (~1 KiB) and a few addresses; 16 KiB is generous."""


class HandshakeError(RemoteProtocolError):
    """The peer broke the handshake protocol (bad payload, wrong key binding, bad verdict)."""

    code = "handshake_error"


@message(TagBlock.TRANSPORT + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakePayload:
    """What each side says about itself inside the encrypted handshake."""

    node_public: bytes
    cert: MeshCert | None = None
    join_proof: MemberProof | None = None
    listen_addresses: tuple[str, ...] = ()
    agent_version: str = ""

    def check_limits(self) -> None:
        """Raise HandshakeError for a payload outside the limits (checked on receipt)."""
        if len(self.node_public) != 32:
            raise HandshakeError("node_public must be a 32-byte Ed25519 key")
        if len(self.listen_addresses) > MAX_ADDRESSES:
            raise HandshakeError(f"more than {MAX_ADDRESSES} listen addresses")
        if any(len(a) > MAX_ADDRESS_LENGTH for a in self.listen_addresses):
            raise HandshakeError(f"a listen address is longer than {MAX_ADDRESS_LENGTH}")
        if len(self.agent_version) > MAX_AGENT_VERSION:
            raise HandshakeError(f"agent version is longer than {MAX_AGENT_VERSION}")


@message(TagBlock.TRANSPORT + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeVerdict:
    """The listener's answer to the dialer's identity: the first transport message."""

    accepted: bool
    reason: str = ""


class HandshakeStatus(Enum):
    IN_PROGRESS = "in_progress"
    DONE = "done"
    FAILED = "failed"


def static_key_of(node_public: bytes) -> bytes:
    """The X25519 public key a node with Ed25519 key ``node_public`` must use in Noise."""
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(node_public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.TypeError,
            nacl.exceptions.ValueError, nacl.exceptions.CryptoError):
        raise AuthError("peer's node key is not a valid Ed25519 key") from None


class HandshakeCore:
    """One side of the handshake. Feed bytes with :meth:`receive_data`, send
    :meth:`data_to_send`; when :attr:`status` is DONE, :attr:`peer` is the admitted peer and
    :attr:`channel` the encrypted channel (any transport data that arrived early was
    returned by :meth:`receive_data`)."""

    def __init__(self, *, initiator: bool, key: SigningKey, authenticator: Authenticator,
                 listen_addresses: tuple[str, ...] = (), agent_version: str = "",
                 expect: NodeId | None = None, ephemeral_private: bytes | None = None,
                 noise_hash: NoiseHash = BLAKE2B) -> None:
        cert, proof = authenticator.local_credentials()
        self._payload = encode_message(HandshakePayload(
            node_public=key.public, cert=cert, join_proof=proof,
            listen_addresses=tuple(listen_addresses)[:MAX_ADDRESSES],
            agent_version=agent_version[:MAX_AGENT_VERSION]))
        self.initiator = initiator
        self._local_id = key.id
        self.authenticator = authenticator
        self.expect = expect
        self._noise = HandshakeState(initiator=initiator,
                                     static_private=key.to_curve25519_private(),
                                     prologue=PROLOGUE, ephemeral_private=ephemeral_private,
                                     noise_hash=noise_hash)
        self._reader = MessageReader()
        self._out = bytearray()
        self.peer: PeerAuth | None = None
        self.channel: SecureChannel | None = None
        self.status = HandshakeStatus.IN_PROGRESS
        self._error: MeshError | None = None
        if initiator:
            self._out += frame(self._noise.write_message(b""))

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[bytes | bytearray]:
        """Feed bytes from the peer. Returns transport plaintexts that followed the handshake."""
        if self._error is not None:
            raise self._error
        if self.status is HandshakeStatus.DONE:
            raise LocalProtocolError("handshake is over: feed the channel instead")
        try:
            return self._receive(data)
        except MeshError as exc:
            self._error = exc
            self.status = HandshakeStatus.FAILED
            self.peer = None
            raise

    def _receive(self, data: bytes) -> list[bytes | bytearray]:
        messages = self._reader.feed(data, limit=1)
        while messages and self.status is HandshakeStatus.IN_PROGRESS:
            if self._noise.ciphers is not None:
                # dialer waiting for the verdict: it was the first transport message
                self._start_channel()
                return self._on_verdict(messages[0])
            if self._on_handshake_message(messages[0]):
                break
            messages = self._reader.feed(b"", limit=1)
        if self.status is HandshakeStatus.DONE and self.channel is not None:
            return self.channel.decrypt(self._reader.take_rest())
        return []

    def _on_handshake_message(self, raw: bytes) -> bool:
        """Process one handshake message; True once the handshake is done (listener)."""
        noise = self._noise
        index = noise.message_index
        payload = noise.read_message(raw)
        if index == 0:  # listener got msg 1: answer with our identity
            if payload:
                raise HandshakeError("the first handshake message must carry no payload")
            self._out += frame(noise.write_message(self._payload))
        elif index == 1:  # dialer got msg 2: check the listener before revealing ourselves
            self.peer = self._admit(payload, we_dialed=True)
            self._out += frame(noise.write_message(self._payload))
        else:  # listener got msg 3: admit or refuse, and say so
            self._start_channel()
            assert self.channel is not None
            try:
                self.peer = self._admit(payload, we_dialed=False)
            except AuthError as exc:
                reason = str(exc)[:MAX_REASON]
                self._out += self.channel.encrypt(encode_message(
                    HandshakeVerdict(accepted=False, reason=reason)))
                raise
            self._out += self.channel.encrypt(encode_message(HandshakeVerdict(accepted=True)))
            self.status = HandshakeStatus.DONE
        return self.status is HandshakeStatus.DONE

    def _start_channel(self) -> None:
        if self.channel is None:
            assert self._noise.ciphers is not None
            self.channel = SecureChannel(self._noise.ciphers)

    def _on_verdict(self, raw: bytes) -> list[bytes | bytearray]:
        assert self.channel is not None
        verdict = decode_message(self.channel.decrypt_message(raw), HandshakeVerdict,
                                 max_size=1024)
        if not verdict.accepted:
            raise AuthError(f"refused by the peer: {verdict.reason[:MAX_REASON]}")
        self.status = HandshakeStatus.DONE
        return self.channel.decrypt(self._reader.take_rest())

    def _admit(self, raw: bytes, *, we_dialed: bool) -> PeerAuth:
        payload = decode_message(raw, HandshakePayload, max_size=MAX_PAYLOAD)
        payload.check_limits()
        remote_static = self._noise.remote_static
        if remote_static is None or static_key_of(payload.node_public) != remote_static:
            raise AuthError("peer's node key does not match the key it proved in the handshake")
        node_id = key_id(payload.node_public)
        if node_id == self._local_id:
            raise AuthError("this address is our own node")
        if we_dialed and self.expect is not None and node_id != self.expect:
            raise AuthError("the address answered with another node than the one expected")
        peer = PeerAuth(node_id=node_id, node_public=payload.node_public, cert=payload.cert,
                        join_proof=payload.join_proof,
                        listen_addresses=payload.listen_addresses,
                        agent_version=payload.agent_version)
        self.authenticator.check_peer(peer, we_dialed=we_dialed)
        return peer
