"""One peer's sessions: its keypairs (current, previous, next), the handshake in flight and
the packets waiting for it, and the timers that say when to rekey.

Keypair rotation follows the shape WireGuard uses. The initiator of a handshake may send on
the new keypair as soon as the RESPONSE arrives (it becomes ``current``, the old one
``previous``). The responder keeps its new keypair as ``next`` until the first packet the
initiator sends on it proves the initiator has it, and only then rotates. ``previous`` is
kept for :attr:`SessionConfig.previous_ttl` seconds so that packets in flight under the old
key are still read, and once the peer is seen using the new one (until then the old one
is what the peer still sends on, as long as it is not older than ``reject_after_time``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vnet.plane import Endpoint, PeerConfig
from vnet.pyplane.handshake import InitiatorState, Keys
from vnet.pyplane.replay import DEFAULT_SIZE, ReplayWindow


@dataclass(frozen=True, slots=True)
class SessionConfig:
    rekey_after_messages: int = 1 << 48
    """Start a new handshake once a key has sent this many packets."""
    reject_after_messages: int = (1 << 64) - (1 << 13) - 1
    """Never send or accept more than this many packets under one key."""
    rekey_after_time: float = 120.0
    """Start a new handshake (on the next packet sent) once a key is this old."""
    reject_after_time: float = 180.0
    """A key this old is dropped: nothing is sent or accepted under it."""
    rekey_timeout: float = 5.0
    """Resend an unanswered handshake after this many seconds."""
    rekey_attempt_time: float = 90.0
    """Give up (drop the queued packets) after trying to handshake for this long."""
    keepalive_timeout: float = 10.0
    """Answer a peer's packets with a keepalive if we sent nothing for this long; and if a
    peer answers none of ours for this long plus ``rekey_timeout``, handshake again."""
    previous_ttl: float = 15.0
    """Seconds the replaced key still reads packets in flight."""
    replay_window: int = DEFAULT_SIZE
    queue_limit: int = 256
    """Packets kept per peer while a handshake is in flight (older ones are dropped)."""


class Keypair:
    """The two directions of one session, with the send counter and the replay window."""

    __slots__ = ("created", "initiator", "local_index", "receive_key", "received",
                 "remote_index", "send_counter", "send_key", "window")

    def __init__(self, keys: Keys, local_index: int, remote_index: int, created: float,
                 initiator: bool, window: int) -> None:
        self.send_key = keys.send
        self.receive_key = keys.receive
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.initiator = initiator
        self.send_counter = 0
        self.received = False
        """True once a packet from the peer authenticated under this keypair."""
        self.window = ReplayWindow(window)


@dataclass(eq=False)
class PeerSession:
    public_key: bytes
    endpoint: Endpoint | None
    allowed_ips: tuple[int, ...]
    """The allowed networks as (address, prefix) pairs, flattened: a0, p0, a1, p1…"""
    node_id: bytes = b""
    config_endpoint: Endpoint | None = None
    """The endpoint the control plane last gave (a roaming peer's packets override it)."""
    current: Keypair | None = None
    previous: Keypair | None = None
    previous_until: float = 0.0
    next: Keypair | None = None
    pending: InitiatorState | None = None
    pending_since: float = 0.0
    first_attempt: float = 0.0
    queue: deque[bytes] = field(default_factory=deque)
    unanswered_since: float | None = None
    """When we first sent a packet the peer has not answered (nothing authenticated since)."""
    owes_keepalive_since: float | None = None
    """When the peer first sent a packet we have not answered (we sent nothing since)."""
    last_timestamp: int = -1
    """The newest handshake timestamp this peer sent us (an older INIT is a replay)."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake: float | None = None

    def allows(self, address: int) -> bool:
        """True if the V-Net address (as an int) is one this peer may send from."""
        ips = self.allowed_ips
        for i in range(0, len(ips), 2):
            prefix = ips[i + 1]
            if (address >> (32 - prefix) if prefix else 0) == ips[i]:
                return True
        return False

    def keypairs(self) -> list[Keypair]:
        return [kp for kp in (self.current, self.previous, self.next) if kp is not None]


def flatten_allowed(peer: PeerConfig) -> tuple[int, ...]:
    out: list[int] = []
    for net in peer.allowed_ips:
        prefix = net.prefixlen
        out += [int(net.network_address) >> (32 - prefix) if prefix else 0, prefix]
    return tuple(out)
