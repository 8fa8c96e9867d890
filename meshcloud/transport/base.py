"""The transport interface every meshcloud service uses.

Small on purpose (ARCHITECTURE.md §3), so that the real stack (Noise over TCP,
:mod:`meshcloud.transport.tcp`), the in-memory one (:mod:`meshcloud.transport.memory`)
and, later, a libp2p-backed one can all sit behind it:

* **streams**: :meth:`Transport.open_stream` to a peer id for a protocol name, and
  :meth:`Transport.serve` a protocol name. A stream is message-oriented: each
  :meth:`Stream.send` arrives as one :meth:`Stream.receive`. Closing is half-close (the
  peer's ``receive`` raises :class:`trio.EndOfChannel` after the last message); aborting
  resets both directions (the peer's next call raises :class:`StreamReset`). A stream
  whose connection dies raises :class:`ConnectionLost`.
* **datagrams**: :meth:`Transport.send_datagram` is best effort (gossip): it never blocks
  on a slow peer and never raises because a peer is unreachable; it just may not arrive.
* **peers**: :meth:`Transport.dial` an address, learn who answered; an address book filled
  by the DHT and gossip; :meth:`Transport.peer_events` reports connects and disconnects.

Every peer behind this interface has been authenticated: its node key proven in the
handshake and its mesh certificate checked by the node's :class:`Authenticator`. A
*joining* peer (no certificate yet, but a valid invite) may only open the protocols in
:data:`JOIN_PROTOCOLS`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, overload

import trio

from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import ConnectionLost, StreamReset, TransportError
from meshcloud.transport.peers import JOIN_PROTOCOLS, Authenticator, NodeId, PeerAuth

__all__ = [
    "JOIN_PROTOCOLS",
    "Authenticator",
    "ConnectionLost",
    "NodeId",
    "PeerAuth",
    "PeerConnected",
    "PeerDisconnected",
    "PeerUnreachable",
    "Stream",
    "StreamHandler",
    "StreamReset",
    "Transport",
    "TransportError",
]

T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class PeerConnected:
    peer: PeerAuth
    address: str
    we_dialed: bool


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    node_id: NodeId
    reason: str
    unused: bool = False
    """The pool closed the connection because no stream used it (idle, or over the cap),
    both sides agreeing: it says nothing about the peer, which is dialled again on demand
    (membership need not probe it; nobody need re-sync with it when it reconnects)."""


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """A datagram to the peer came back as an ICMP error (port or host unreachable): its
    process or host is probably gone, whether or not a connection to it is open. A hint
    for membership to probe it now (what a connection reset tells for streams); nothing
    more, since anyone on the path can forge such an error."""

    node_id: NodeId
    reason: str


PeerEvent = PeerConnected | PeerDisconnected | PeerUnreachable


class Stream(Protocol):
    """One message-oriented, flow-controlled, bidirectional stream to a peer."""

    peer: PeerAuth
    protocol: str

    async def send(self, data: bytes) -> None:
        """Send one message. Blocks while the peer's receive window is full."""
        ...

    async def receive(self) -> bytes:
        """The next message. EndOfChannel after a clean close, StreamReset after an abort."""
        ...

    async def close(self) -> None:
        """Half-close: we send no more; the peer may still send until it closes."""
        ...

    async def abort(self, reason: str = "") -> None:
        """Reset the stream in both directions; pending data is discarded."""
        ...


StreamHandler = Callable[[Stream], Awaitable[None]]


class Transport(Protocol):
    """What services see of the network. See the module docstring."""

    local_id: NodeId

    @property
    def listen_addresses(self) -> list[str]: ...

    async def dial(self, address: str, *, expect: NodeId | None = None) -> PeerAuth:
        """Connect (or reuse a connection) to ``address``; returns the authenticated peer."""
        ...

    async def open_stream(self, peer: NodeId, protocol: str) -> Stream:
        """A new stream to ``peer``, dialling one of its known addresses if not connected."""
        ...

    def serve(self, protocol: str, handler: StreamHandler) -> None:
        """Run ``handler(stream)`` in the transport's nursery for each incoming stream."""
        ...

    def send_datagram(self, peer: NodeId, protocol: str, data: bytes) -> None:
        """Best effort, never blocks, never raises for an unreachable peer."""
        ...

    def datagrams(self, protocol: str) -> trio.MemoryReceiveChannel[tuple[NodeId, bytes]]:
        """Incoming datagrams for ``protocol`` (bounded; excess is dropped, as on a network)."""
        ...

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        """A new subscription to connect/disconnect events."""
        ...

    def set_addresses(self, peer: NodeId, addresses: list[str]) -> None:
        """Record where ``peer`` can be reached (from the DHT, gossip or an invite)."""
        ...

    def connected_peers(self, *, retiring: bool = False) -> list[PeerAuth]:
        """Peers with a connection that takes new streams; with ``retiring``, also those
        whose only connection is draining (what must be cut when a peer is revoked)."""
        ...

    async def disconnect(self, peer: NodeId, reason: str = "") -> None: ...


# --- helpers every service uses -------------------------------------------------------


async def send_message(stream: Stream, msg: Any) -> None:
    await stream.send(encode_message(msg))


@overload
async def receive_message(stream: Stream, expect: type[T]) -> T: ...
@overload
async def receive_message(stream: Stream, expect: tuple[type, ...]) -> Any: ...
async def receive_message(stream: Stream, expect: type | tuple[type, ...]) -> Any:
    """The next message, decoded; a malformed one aborts the stream and raises CodecError."""
    data = await stream.receive()
    try:
        return decode_message(data, expect)
    except Exception:
        await stream.abort("malformed message")
        raise


@overload
async def request(transport: Transport, peer: NodeId, protocol: str, msg: Any,
                  expect: type[T]) -> T: ...
@overload
async def request(transport: Transport, peer: NodeId, protocol: str, msg: Any,
                  expect: tuple[type, ...]) -> Any: ...
async def request(transport: Transport, peer: NodeId, protocol: str, msg: Any,
                  expect: type | tuple[type, ...]) -> Any:
    """One request, one reply, on a fresh stream. Callers bound it with trio.fail_after."""
    stream = await transport.open_stream(peer, protocol)
    try:
        await send_message(stream, msg)
        await stream.close()
        return await receive_message(stream, expect)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.abort("request abandoned")
        raise


def stream_error(exc: BaseException) -> str:
    """One line saying how a stream ended, for logs."""
    if isinstance(exc, trio.EndOfChannel):
        return "closed"
    if isinstance(exc, StreamReset | ConnectionLost | TransportError):
        return f"{exc.code}: {exc}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(slots=True)
class ProtocolRegistry:
    """Stream handlers and datagram channels by protocol name (shared by implementations)."""

    handlers: dict[str, StreamHandler] = field(default_factory=dict)
    datagram_senders: dict[str, trio.MemorySendChannel[tuple[NodeId, bytes]]] = field(
        default_factory=dict
    )

    DATAGRAM_BUFFER = 1024
    """Datagrams queued per protocol before new ones are dropped (like a socket buffer)."""

    def serve(self, protocol: str, handler: StreamHandler) -> None:
        if protocol in self.handlers:
            raise ValueError(f"protocol {protocol} is already served")
        self.handlers[protocol] = handler

    def datagrams(self, protocol: str) -> trio.MemoryReceiveChannel[tuple[NodeId, bytes]]:
        if protocol in self.datagram_senders:
            raise ValueError(f"datagrams for {protocol} already have a reader")
        send, receive = trio.open_memory_channel[tuple[NodeId, bytes]](self.DATAGRAM_BUFFER)
        self.datagram_senders[protocol] = send
        return receive

    def deliver_datagram(self, peer: NodeId, protocol: str, data: bytes) -> bool:
        sender = self.datagram_senders.get(protocol)
        if sender is None:
            return False
        try:
            sender.send_nowait((peer, data))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True
