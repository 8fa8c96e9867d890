"""Gossip wire messages (tags ``TagBlock.GOSSIP + n``, append-only).

Datagrams on ``/meshcloud/gossip/1`` carry one message or a :class:`Compound` (a primary
message followed by piggybacked broadcasts). Push-pull full-state syncs travel on the
stream ``/meshcloud/gossip-sync/1``: a join as one :class:`PushPull` each way; a periodic
sync as a :class:`SyncDigest` (about 40 bytes a member), a :class:`SyncDelta` back (the
full entries the initiator's digest shows it lacks or holds differently, and the nodes the
responder wants), and a last :class:`PushPull` with the wanted entries, so two agreeing
nodes exchange digests only (a full entry with its certificate is ~1.3 KB).

=====  ==============  =====================================================================
tag    message         meaning
=====  ==============  =====================================================================
+1     Ping            "are you there?" (SWIM probe); answered by Ack with the same seq
+2     PingReq         "ping ``target`` for me" (indirect probe); the relay answers the
                       requester with the target's Ack, or a Nack (Lifeguard) when it got none
+3     Ack             reply to Ping, or an Ack relayed for a PingReq
+4     Nack            "I asked ``target`` and heard nothing" (the relay is alive and well)
+5     Alive           a node's own signed statement: incarnation, addresses, capacity
+6     Suspect         ``from_node`` suspects ``node`` at ``incarnation``
+7     Dead            ``from_node`` declares ``node`` dead; from the node itself, signed,
                       it is a graceful leave (state LEFT)
+8     PushPullEntry   one member in a full-state sync
+9     PushPull        a full-state sync (sent by both sides)
+10    Compound        several messages in one datagram
+11    DigestEntry     one member in a sync digest: node, incarnation, state
+12    SyncDigest      the first message of a periodic sync: every member in brief
+13    SyncDelta       the answer to a digest: the entries that differ, and what we lack
+20    Capacity        see :mod:`gossip.capacity`
=====  ==============  =====================================================================

**Signatures.** :meth:`Alive.signed_bytes` covers everything a node says about itself
except ``proof`` (the membership proof is self-certifying: a certificate binding the
node's key to the mesh, which any relay may attach). A leave is a :class:`Dead` whose
``from_node`` is its ``node``, signed over :meth:`Dead.leave_bytes`. Suspect and Dead from
others are not signed: SWIM accepts them from any member (the transport authenticated the
sender), and a wrong accusation is refuted by the accused.

Every field is bounded in ``__post_init__`` (the codec turns a violation into
:class:`~meshcloud.errors.CodecError`), so a decoded message is safe to keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from gossip.capacity import Capacity
from gossip.member import MAX_INCARNATION, MemberState
from meshcloud.codec import cbor
from meshcloud.codec.messages import message, to_wire
from meshcloud.codec.tags import TagBlock

GOSSIP_PROTOCOL = "/meshcloud/gossip/1"
SYNC_PROTOCOL = "/meshcloud/gossip-sync/1"

MAX_NODE_ID = 64
"""Node ids are 32 bytes (BLAKE2b-256 of the key); 64 leaves room, refuses junk."""

MAX_SEQ = (1 << 64) - 1
MAX_ADDRESSES = 8
MAX_ADDRESS_LENGTH = 256
MAX_PUBLIC_KEY = 64
MAX_SIGNATURE = 128
MAX_PROOF = 12 * 1024
"""A MeshCert is about 0.7 KiB a link and at most 4 links (with 16 bootstrap addresses in
each invite, ~1.7 KiB a link): 12 KiB leaves room."""

MAX_COMPOUND_PARTS = 255
MAX_SYNC_ENTRIES = 100_000
"""Far above any mesh we target (5,000 nodes), far below what would exhaust memory."""

_ALIVE_DOMAIN = b"meshcloud-gossip-alive-v1"
_LEAVE_DOMAIN = b"meshcloud-gossip-leave-v1"


def _check_node(value: bytes, name: str) -> None:
    if not 0 < len(value) <= MAX_NODE_ID:
        raise ValueError(f"{name} must be 1..{MAX_NODE_ID} bytes")


def _check_incarnation(value: int) -> None:
    if not 0 <= value <= MAX_INCARNATION:
        raise ValueError("incarnation out of range")


def _check_seq(value: int) -> None:
    if not 0 <= value <= MAX_SEQ:
        raise ValueError("sequence number out of range")


@message(TagBlock.GOSSIP + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    seq: int
    target: bytes

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_node(self.target, "target")


@message(TagBlock.GOSSIP + 2)
@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq:
    seq: int
    target: bytes
    escalate: bool = False
    """Set by a regular probe: a relay that gets no answer runs its own probe round of the
    target (a quick, independent confirmation). Never set by such a confirmation round."""

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_node(self.target, "target")


@message(TagBlock.GOSSIP + 3)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@message(TagBlock.GOSSIP + 4)
@dataclass(frozen=True, slots=True, kw_only=True)
class Nack:
    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@message(TagBlock.GOSSIP + 5)
@dataclass(frozen=True, slots=True, kw_only=True)
class Alive:
    node: bytes
    incarnation: int
    addresses: tuple[str, ...]
    capacity: Capacity
    public_key: bytes
    signature: bytes
    proof: bytes = b""
    """Membership proof (e.g. MeshCert bytes) for receivers that do not know ``node`` yet;
    not signed, attached by whoever sends the Alive while the node is new."""

    def __post_init__(self) -> None:
        _check_node(self.node, "node")
        _check_incarnation(self.incarnation)
        if len(self.addresses) > MAX_ADDRESSES or any(
            len(a) > MAX_ADDRESS_LENGTH for a in self.addresses
        ):
            raise ValueError("too many addresses, or an address too long")
        if len(self.public_key) > MAX_PUBLIC_KEY or len(self.signature) > MAX_SIGNATURE:
            raise ValueError("public key or signature too long")
        if len(self.proof) > MAX_PROOF:
            raise ValueError("membership proof too long")

    def signed_bytes(self) -> bytes:
        """What the node signs: every field but ``signature`` and ``proof``."""
        body = [self.node, self.incarnation, list(self.addresses), to_wire(self.capacity),
                self.public_key]
        return _ALIVE_DOMAIN + cbor.encode_canonical(body)

    def same_statement(self, other: Alive) -> bool:
        """Same signed content (ignoring the attached proof)."""
        return (self.node == other.node and self.incarnation == other.incarnation
                and self.addresses == other.addresses and self.capacity == other.capacity
                and self.public_key == other.public_key)


@message(TagBlock.GOSSIP + 6)
@dataclass(frozen=True, slots=True, kw_only=True)
class Suspect:
    node: bytes
    incarnation: int
    from_node: bytes

    def __post_init__(self) -> None:
        _check_node(self.node, "node")
        _check_node(self.from_node, "from_node")
        _check_incarnation(self.incarnation)


@message(TagBlock.GOSSIP + 7)
@dataclass(frozen=True, slots=True, kw_only=True)
class Dead:
    node: bytes
    incarnation: int
    from_node: bytes
    signature: bytes = b""
    """Only for a leave (``from_node == node``): the leaver's signature of leave_bytes()."""

    def __post_init__(self) -> None:
        _check_node(self.node, "node")
        _check_node(self.from_node, "from_node")
        _check_incarnation(self.incarnation)
        if len(self.signature) > MAX_SIGNATURE:
            raise ValueError("signature too long")

    @property
    def is_leave(self) -> bool:
        return self.node == self.from_node

    def leave_bytes(self) -> bytes:
        return leave_bytes(self.node, self.incarnation)


def leave_bytes(node: bytes, incarnation: int) -> bytes:
    """What a leaving node signs."""
    return _LEAVE_DOMAIN + cbor.encode_canonical([node, incarnation])


@message(TagBlock.GOSSIP + 8)
@dataclass(frozen=True, slots=True, kw_only=True)
class PushPullEntry:
    alive: Alive
    """The member's latest signed Alive (with its proof)."""
    state: MemberState
    incarnation: int
    """The entry's incarnation: at least ``alive.incarnation`` (a suspicion may be higher)."""
    leave_signature: bytes = b""
    """For LEFT entries: the leaver's signature, so the leave can be checked."""

    def __post_init__(self) -> None:
        _check_incarnation(self.incarnation)
        if self.incarnation < self.alive.incarnation:
            raise ValueError("entry incarnation below its Alive's")
        if len(self.leave_signature) > MAX_SIGNATURE:
            raise ValueError("signature too long")


@message(TagBlock.GOSSIP + 9)
@dataclass(frozen=True, slots=True, kw_only=True)
class PushPull:
    join: bool
    entries: tuple[PushPullEntry, ...]

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_SYNC_ENTRIES:
            raise ValueError("too many entries in a push-pull")


@message(TagBlock.GOSSIP + 11)
@dataclass(frozen=True, slots=True, kw_only=True)
class DigestEntry:
    node: bytes
    incarnation: int
    state: MemberState

    def __post_init__(self) -> None:
        _check_node(self.node, "node")
        _check_incarnation(self.incarnation)


@message(TagBlock.GOSSIP + 12)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncDigest:
    entries: tuple[DigestEntry, ...]

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_SYNC_ENTRIES:
            raise ValueError("too many entries in a sync digest")


@message(TagBlock.GOSSIP + 13)
@dataclass(frozen=True, slots=True, kw_only=True)
class SyncDelta:
    entries: tuple[PushPullEntry, ...]
    """Members the digest's sender lacks or holds at another (incarnation, state)."""
    wants: tuple[bytes, ...] = ()
    """Members in the digest that we hold differently: send us your entries."""
    wants_new: tuple[bytes, ...] = ()
    """Members in the digest that we do not know: send them with their proofs."""

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_SYNC_ENTRIES:
            raise ValueError("too many entries in a sync delta")
        if len(self.wants) + len(self.wants_new) > MAX_SYNC_ENTRIES:
            raise ValueError("too many wants in a sync delta")
        for node in (*self.wants, *self.wants_new):
            _check_node(node, "wanted node")


Broadcastable = Alive | Suspect | Dead
"""News that is gossiped (queued, piggybacked, retransmitted)."""

Primary = Ping | PingReq | Ack | Nack
"""Point-to-point probe messages."""


@message(TagBlock.GOSSIP + 10)
@dataclass(frozen=True, slots=True, kw_only=True)
class Compound:
    parts: tuple[Ping | PingReq | Ack | Nack | Alive | Suspect | Dead, ...]

    def __post_init__(self) -> None:
        if not 0 < len(self.parts) <= MAX_COMPOUND_PARTS:
            raise ValueError(f"a compound holds 1..{MAX_COMPOUND_PARTS} parts")


Packet = Ping | PingReq | Ack | Nack | Alive | Suspect | Dead | Compound
"""What a gossip datagram decodes to."""

PACKET_TYPES = (Ping, PingReq, Ack, Nack, Alive, Suspect, Dead, Compound)
