"""Wire messages of the NAT protocols: relay circuits, reachability probes, hole punching.

* ``/meshcloud/relay/1`` (:mod:`~meshcloud.transport.relay`): the first message says what
  the stream is for: :class:`RelayReserve` (a node that cannot be dialled asks a member to
  relay for it, and keeps the stream open as its reservation), :class:`RelayConnect` (a
  node asks the relay for a circuit to a reserved node) or :class:`RelayIncoming` (the
  relay tells the reserved node that a circuit from ``source`` arrives on this stream).
  Each is answered by one :class:`RelayReply`; after an accepted connect or incoming, the
  stream carries the raw bytes of the end-to-end connection (Noise ciphertext only).
* ``/meshcloud/reach/1``: :class:`ReachProbe` → :class:`ReachReport` (the address the
  member saw us come from, and which of our addresses it could dial back).
* ``/meshcloud/punch/1``: :class:`PunchOffer` → :class:`PunchAnswer` → :class:`PunchGo`,
  over the relayed connection, then both sides connect to each other at once.

Sizes are bounded on decode: addresses by :data:`MAX_ADDRESSES` and the address length
limit of :mod:`~meshcloud.transport.addresses`.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.transport.addresses import MAX_ADDRESS

RELAY_PROTOCOL = "/meshcloud/relay/1"
REACH_PROTOCOL = "/meshcloud/reach/1"
PUNCH_PROTOCOL = "/meshcloud/punch/1"

MAX_ADDRESSES = 8
"""Addresses one message may carry (a node rarely has more than a few)."""
NODE_ID_SIZE = 32


def _check_addresses(addresses: tuple[str, ...]) -> None:
    if len(addresses) > MAX_ADDRESSES:
        raise ValueError(f"{len(addresses)} addresses, at most {MAX_ADDRESSES}")
    for address in addresses:
        if not address or len(address) > MAX_ADDRESS:
            raise ValueError("an address is empty or too long")


def _check_node_id(node_id: bytes, what: str) -> None:
    if len(node_id) != NODE_ID_SIZE:
        raise ValueError(f"{what} must be a {NODE_ID_SIZE}-byte node id")


@message(TagBlock.TRANSPORT + 20)
@dataclass(frozen=True, slots=True, kw_only=True)
class RelayReserve:
    """Relay for me: I keep this stream open as long as I want the reservation."""


@message(TagBlock.TRANSPORT + 21)
@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConnect:
    """Open a circuit to ``target`` (a node holding a reservation with you)."""

    target: bytes

    def __post_init__(self) -> None:
        _check_node_id(self.target, "target")


@message(TagBlock.TRANSPORT + 22)
@dataclass(frozen=True, slots=True, kw_only=True)
class RelayIncoming:
    """A circuit from ``source`` arrives on this stream."""

    source: bytes

    def __post_init__(self) -> None:
        _check_node_id(self.source, "source")


@message(TagBlock.TRANSPORT + 23)
@dataclass(frozen=True, slots=True, kw_only=True)
class RelayReply:
    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if len(self.reason) > 512:
            raise ValueError("relay reason longer than 512 characters")


@message(TagBlock.TRANSPORT + 24)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReachProbe:
    """Which of ``addresses`` (where I listen) can you dial, and where do I come from?"""

    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_addresses(self.addresses)


@message(TagBlock.TRANSPORT + 25)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReachReport:
    observed: str = ""
    """The address the prober's connection came from ("" if the reporter dialled it)."""
    dialable: tuple[str, ...] = ()
    """Those of the probed addresses the reporter could open a TCP connection to."""

    def __post_init__(self) -> None:
        _check_addresses(self.dialable)
        if len(self.observed) > MAX_ADDRESS:
            raise ValueError("observed address too long")


@message(TagBlock.TRANSPORT + 26)
@dataclass(frozen=True, slots=True, kw_only=True)
class PunchOffer:
    """Where I expect to be reachable from outside (observed host, my listen port), and
    whether I can be dialled at all (then the other side just dials me)."""

    addresses: tuple[str, ...]
    public: bool = False

    def __post_init__(self) -> None:
        _check_addresses(self.addresses)


@message(TagBlock.TRANSPORT + 27)
@dataclass(frozen=True, slots=True, kw_only=True)
class PunchAnswer:
    addresses: tuple[str, ...]
    public: bool = False

    def __post_init__(self) -> None:
        _check_addresses(self.addresses)


@message(TagBlock.TRANSPORT + 28)
@dataclass(frozen=True, slots=True, kw_only=True)
class PunchGo:
    """Connect now (the offerer connects half a round trip later, so both SYNs cross)."""
