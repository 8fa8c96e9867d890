"""The handshake: Noise IK over X25519, BLAKE2b and ChaCha20-Poly1305, in one round trip.

Both sides know each other's static key from the control plane (PlaneConfig and
PeerConfig), so no mesh stream is needed: the two messages travel on the plane's own UDP
socket and are authenticated by the static keys alone.

* INIT: the initiator mixes ``es`` (its fresh ephemeral, the responder's static) to
  encrypt its own static key, then ``ss`` to encrypt a timestamp. Only the holder of the
  responder's static key can read it; only the holder of the initiator's static key could
  have made it; the timestamp, which must grow, stops a replayed INIT.
* RESPONSE: the responder adds its own ephemeral and mixes ``ee`` and ``se``; the AEAD of
  an empty payload proves it holds its static key. The transport keys come from the
  chaining key, so they depend on both ephemerals: each session has fresh keys and a
  stolen static key does not open recorded traffic (forward secrecy).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vnet.pyplane.crypto import AuthError, dh, hash32, kdf2, open_, public_key, seal
from vnet.pyplane.messages import Init, PacketError, Response

CONSTRUCTION = b"meshcloud vnet-py/1 Noise_IK_25519_ChaChaPoly_BLAKE2b"
_CK0 = hash32(CONSTRUCTION)
_TS = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class Keys:
    send: bytes
    receive: bytes


@dataclass(frozen=True, slots=True)
class InitiatorState:
    """What the initiator keeps between sending INIT and reading the RESPONSE."""

    sender: int
    peer_static: bytes
    ephemeral_private: bytes
    chaining_key: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ReceivedInit:
    """A verified INIT: who sent it, when, and what the responder needs to answer."""

    sender: int
    peer_static: bytes
    timestamp: int
    peer_ephemeral: bytes
    chaining_key: bytes
    hash: bytes


def create_init(static_private: bytes, peer_static: bytes, sender: int,
                ephemeral_private: bytes, timestamp: int) -> tuple[Init, InitiatorState]:
    ephemeral = public_key(ephemeral_private)
    h = hash32(_CK0, peer_static)
    h = hash32(h, ephemeral)
    ck, k = kdf2(_CK0, dh(ephemeral_private, peer_static))
    static_sealed = seal(k, 0, public_key(static_private), h)
    h = hash32(h, static_sealed)
    ck, k = kdf2(ck, dh(static_private, peer_static))
    ts_sealed = seal(k, 0, _TS.pack(timestamp), h)
    h = hash32(h, ts_sealed)
    return (Init(sender, ephemeral, static_sealed, ts_sealed),
            InitiatorState(sender, peer_static, ephemeral_private, ck, h))


def consume_init(static_private: bytes, static_public: bytes, msg: Init) -> ReceivedInit:
    """Verify an INIT addressed to us; PacketError("auth") if it does not authenticate."""
    try:
        h = hash32(_CK0, static_public)
        h = hash32(h, msg.ephemeral)
        ck, k = kdf2(_CK0, dh(static_private, msg.ephemeral))
        peer_static = open_(k, 0, msg.static_sealed, h)
        h = hash32(h, msg.static_sealed)
        ck, k = kdf2(ck, dh(static_private, peer_static))
        (timestamp,) = _TS.unpack(open_(k, 0, msg.timestamp_sealed, h))
        h = hash32(h, msg.timestamp_sealed)
    except AuthError as exc:
        raise PacketError("auth", f"handshake init: {exc}") from exc
    return ReceivedInit(msg.sender, peer_static, timestamp, msg.ephemeral, ck, h)


def _transport(ck: bytes) -> tuple[bytes, bytes]:
    """(initiator's sending key, responder's sending key)."""
    return kdf2(ck, b"")


def create_response(received: ReceivedInit, sender: int, ephemeral_private: bytes
                    ) -> tuple[Response, Keys]:
    ephemeral = public_key(ephemeral_private)
    try:
        h = hash32(received.hash, ephemeral)
        ck, _ = kdf2(received.chaining_key, dh(ephemeral_private, received.peer_ephemeral))
        ck, _ = kdf2(ck, dh(ephemeral_private, received.peer_static))
    except AuthError as exc:
        raise PacketError("auth", f"handshake init: {exc}") from exc
    ck, k = kdf2(ck, b"")
    sealed = seal(k, 0, b"", h)
    to_responder, to_initiator = _transport(ck)
    return (Response(sender, received.sender, ephemeral, sealed),
            Keys(send=to_initiator, receive=to_responder))


def consume_response(state: InitiatorState, static_private: bytes, msg: Response) -> Keys:
    """Finish our handshake; PacketError("auth") if the response does not authenticate."""
    try:
        h = hash32(state.hash, msg.ephemeral)
        ck, _ = kdf2(state.chaining_key, dh(state.ephemeral_private, msg.ephemeral))
        ck, _ = kdf2(ck, dh(static_private, msg.ephemeral))
        ck, k = kdf2(ck, b"")
        open_(k, 0, msg.empty_sealed, h)
    except AuthError as exc:
        raise PacketError("auth", f"handshake response: {exc}") from exc
    to_responder, to_initiator = _transport(ck)
    return Keys(send=to_responder, receive=to_initiator)
