"""Sealed datagrams: membership's probes, acks and gossip between members without a
standing connection (sans-IO: no sockets, no clock, no tasks).

A stream needs a connection (Noise XX, certificates, keepalives while streams wait); a
probe does not. Two members that have *once* proven themselves to each other (a
connection's handshake checked both certificates) derive a key per direction from their
static node keys and seal datagrams with it, so a probe to any member costs one UDP packet
whatever the size of the mesh, and no connection is kept for it.

* **keys**: each node's Ed25519 key converted to X25519; the shared secret of the pair
  (X25519 of our private and their public key) through BLAKE2b with both node ids in
  sender → receiver order gives one key per direction (a datagram reflected back to its
  sender does not open). A peer whose key converts to a small-order point is refused.
* **packet**: ``version (1) | sender tag (8) | boot (8) | counter (8) |
  XChaCha20-Poly1305(body)``: 41 bytes with the tag, less than a connection's framing. The
  sender tag is the first 8 bytes of its node id (a peer whose tag collides with a known
  one's is refused: it uses connections); the associated data is the header plus both
  full node ids, so a packet opens only between the two. The body is
  ``len(protocol) (1) | protocol | data``, or ``0 | index (1) | data`` for the few
  well-known protocol names of :data:`WELL_KNOWN` (a probe is then 30 bytes smaller).
* **nonce**: the sender's *boot stamp* (chosen by the driver at start: the wall clock in
  ns, so a restarted node's stamp is larger) and a counter, then 8 zero bytes. Each
  counter value is used once per boot and direction.
* **replay**: per sender, the newest boot stamp seen and a window of the last
  :data:`WINDOW` counters. An older boot stamp, a counter below the window or one seen
  already is refused. The window moves only once a packet has opened.
* **membership**: :meth:`SealCore.add_peer` is called by the driver with a peer whose
  certificate was checked (a connection's handshake); a datagram from any other sender is
  :class:`UnknownSender` (the driver may then authenticate it with a connection and retry).

Every refusal raises one :class:`DatagramRefused` subclass and changes no state.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import nacl.bindings as sodium
import nacl.exceptions

from meshcloud.errors import RemoteProtocolError

VERSION = 1
ID_SIZE = 32
SENDER_TAG = 8
NONCE_SIZE = 24
WIRE_NONCE = 16
TAG_SIZE = 16
HEADER_SIZE = 1 + SENDER_TAG + WIRE_NONCE
OVERHEAD = HEADER_SIZE + TAG_SIZE + 1
"""Bytes a sealed datagram adds to its protocol name (or well-known index) and data."""
WELL_KNOWN = ("/meshcloud/gossip/1", "/meshcloud/state/1")
"""Protocol names sent as a one-byte index (append only: the index is on the wire)."""
MAX_PACKET = 65_507
"""The largest UDP payload over IPv4."""
MAX_DATA = MAX_PACKET - OVERHEAD - 255
WINDOW = 256
"""Counters below the newest one by less than this are still accepted once (reordering)."""
MAX_PEERS = 16_384
"""Peers whose keys are kept; the least recently used is forgotten past this (it proves
itself again with a connection)."""
_PERSON = b"meshcloud-dgram1"


class DatagramRefused(RemoteProtocolError):
    """A received datagram was not accepted (the reason is in the subclass and message)."""

    code = "datagram_refused"


class MalformedDatagram(DatagramRefused):
    code = "datagram_malformed"


class UnknownSender(DatagramRefused):
    """The sender has not proven its membership to us yet (no key for it)."""

    code = "datagram_unknown_sender"

    def __init__(self, message: str, sender: bytes) -> None:
        super().__init__(message)
        self.sender = sender


class ForgedDatagram(DatagramRefused):
    """The datagram does not open with the pair's key: forged, damaged or misaddressed."""

    code = "datagram_forged"


class ReplayedDatagram(DatagramRefused):
    code = "datagram_replayed"


@dataclass(frozen=True, slots=True)
class Opened:
    sender: bytes
    protocol: str
    data: bytes


@dataclass(slots=True)
class ReplayWindow:
    """The newest (boot, counter) of one sender and which of the last WINDOW were seen."""

    boot: int = -1
    top: int = -1
    seen: int = 0
    """Bit i set: counter ``top - i`` was accepted."""

    def check(self, boot: int, counter: int) -> None:
        """Raise ReplayedDatagram unless (boot, counter) is new. Changes nothing."""
        if boot < self.boot:
            raise ReplayedDatagram("datagram from an earlier boot of its sender")
        if boot > self.boot or counter > self.top:
            return
        behind = self.top - counter
        if behind >= WINDOW:
            raise ReplayedDatagram("datagram counter below the replay window")
        if self.seen >> behind & 1:
            raise ReplayedDatagram("datagram already received")

    def accept(self, boot: int, counter: int) -> None:
        """Record (boot, counter), which :meth:`check` passed."""
        if boot > self.boot:
            self.boot, self.top, self.seen = boot, counter, 1
        elif counter > self.top:
            shift = counter - self.top
            self.seen = ((self.seen << shift) | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self.top = counter
        else:
            self.seen |= 1 << (self.top - counter)


@dataclass(slots=True)
class _Pair:
    send_key: bytes
    receive_key: bytes
    node_public: bytes
    counter: int = 0
    window: ReplayWindow | None = None


def _direction_key(shared: bytes, sender: bytes, receiver: bytes) -> bytes:
    return hashlib.blake2b(shared + sender + receiver, digest_size=32,
                           person=_PERSON).digest()


class SealCore:
    """Keys, counters and replay windows of one node's sealed datagrams."""

    def __init__(self, local_id: bytes, curve_private: bytes, boot: int) -> None:
        if len(local_id) != ID_SIZE or len(curve_private) != 32:
            raise ValueError("a 32-byte node id and X25519 private key are needed")
        if not 0 <= boot < 1 << 64:
            raise ValueError("boot stamp must fit in 8 bytes")
        self.local_id = local_id
        self._private = curve_private
        self._boot = boot.to_bytes(8, "big")
        self._pairs: OrderedDict[bytes, _Pair] = OrderedDict()
        self._by_tag: dict[bytes, bytes] = {}

    def knows(self, node_id: bytes) -> bool:
        return node_id in self._pairs

    def peers(self) -> list[bytes]:
        return list(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def add_peer(self, node_id: bytes, node_public: bytes) -> None:
        """Derive the keys for a peer whose membership was checked; idempotent."""
        pair = self._pairs.get(node_id)
        if pair is not None and pair.node_public == node_public:
            self._pairs.move_to_end(node_id)
            return
        if len(node_id) != ID_SIZE or len(node_public) != 32 or node_id == self.local_id:
            raise ValueError("not a peer's node id and Ed25519 public key")
        tag = node_id[:SENDER_TAG]
        if self._by_tag.get(tag, node_id) != node_id or tag == self.local_id[:SENDER_TAG]:
            raise ValueError("its sender tag collides with another node's")
        try:
            curve_public = sodium.crypto_sign_ed25519_pk_to_curve25519(node_public)
            shared = sodium.crypto_scalarmult(self._private, curve_public)
        except nacl.exceptions.CryptoError as exc:
            raise ValueError(f"unusable peer key: {exc}") from None
        if shared == bytes(32):
            raise ValueError("unusable peer key: small-order point")
        self._pairs[node_id] = _Pair(
            send_key=_direction_key(shared, self.local_id, node_id),
            receive_key=_direction_key(shared, node_id, self.local_id),
            node_public=node_public)
        self._by_tag[tag] = node_id
        while len(self._pairs) > MAX_PEERS:
            self.forget(next(iter(self._pairs)))

    def forget(self, node_id: bytes) -> None:
        if self._pairs.pop(node_id, None) is not None:
            self._by_tag.pop(node_id[:SENDER_TAG], None)

    def seal(self, peer: bytes, protocol: str, data: bytes | bytearray | memoryview) -> bytes:
        """One packet for ``peer`` (KeyError if its keys are unknown; ValueError if too big)."""
        pair = self._pairs[peer]
        if protocol in WELL_KNOWN:
            name = bytes((0, WELL_KNOWN.index(protocol)))
        else:
            encoded = protocol.encode()
            if not 0 < len(encoded) <= 255:
                raise ValueError("protocol name must be 1-255 bytes")
            name = bytes((len(encoded),)) + encoded
        if len(data) > MAX_DATA:
            raise ValueError("data larger than one datagram")
        pair.counter += 1
        wire_nonce = self._boot + pair.counter.to_bytes(8, "big")
        header = bytes((VERSION,)) + self.local_id[:SENDER_TAG] + wire_nonce
        sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            name + bytes(data), header + self.local_id + peer, wire_nonce + bytes(8),
            pair.send_key)
        return header + sealed

    def sender_of(self, packet: bytes) -> bytes:
        """The known node a packet claims to come from (not authenticated yet).
        MalformedDatagram if it has no header; UnknownSender (with the 8-byte tag as
        ``sender``) if no known peer has its tag."""
        if len(packet) < HEADER_SIZE + TAG_SIZE + 2 or packet[0] != VERSION:
            raise MalformedDatagram("not a sealed datagram of this version")
        tag = bytes(packet[1:1 + SENDER_TAG])
        sender = self._by_tag.get(tag)
        if sender is None:
            raise UnknownSender("datagram from a node that has not proven its membership",
                                tag)
        return sender

    def open(self, packet: bytes) -> Opened:
        """Authenticate, decrypt and replay-check one packet. Raises DatagramRefused."""
        sender = self.sender_of(packet)
        pair = self._pairs[sender]
        header = bytes(packet[:HEADER_SIZE])
        wire_nonce = header[1 + SENDER_TAG:]
        boot = int.from_bytes(wire_nonce[:8], "big")
        counter = int.from_bytes(wire_nonce[8:], "big")
        window = pair.window or ReplayWindow()
        window.check(boot, counter)
        try:
            body = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(packet[HEADER_SIZE:]), header + sender + self.local_id,
                wire_nonce + bytes(8), pair.receive_key)
        except nacl.exceptions.CryptoError:
            raise ForgedDatagram("datagram does not open with the pair's key") from None
        protocol, start = _protocol(body)
        window.accept(boot, counter)
        pair.window = window
        self._pairs.move_to_end(sender)
        return Opened(sender=sender, protocol=protocol, data=body[start:])


def _protocol(body: bytes) -> tuple[str, int]:
    """The protocol name of an opened body and where its data starts."""
    if len(body) < 2:
        raise MalformedDatagram("datagram body has no protocol name")
    size = body[0]
    if size == 0:
        if body[1] >= len(WELL_KNOWN):
            raise MalformedDatagram("datagram names an unknown well-known protocol")
        return WELL_KNOWN[body[1]], 2
    if size >= len(body):
        raise MalformedDatagram("datagram protocol name is cut short")
    try:
        return body[1:1 + size].decode(), 1 + size
    except UnicodeDecodeError:
        raise MalformedDatagram("datagram protocol name is not UTF-8") from None
