"""The in-memory transport: the Transport interface without sockets, for tests.

A :class:`MemoryNetwork` connects :class:`MemoryTransport` objects by address
(``mem://NAME``). It runs on trio's clock, so under ``MockClock(autojump_threshold=0)``
a test with seconds of latency and timeouts runs instantly and deterministically enough
for assertions (the seeded ``random.Random`` decides loss and latency).

What it models, and how:

* **latency**: every stream message and datagram is delivered ``latency`` seconds after it
  was sent (plus up to ``jitter``), in order per connection direction;
* **loss**: datagrams are dropped with probability ``loss`` (streams are reliable, as TCP);
* **partitions**: :meth:`MemoryNetwork.partition` makes groups unreachable from each other:
  datagrams vanish, dials fail after ``dial_timeout``, and open connections across the cut
  die after ``dead_after`` (what keepalives do on the real transport);
* **crashes**: :meth:`MemoryNetwork.crash` kills a node's connections at once (peers see
  :class:`ConnectionLost`) and its address stops answering until :meth:`revive`.

Authentication is the real thing: both sides show their credentials and run their
:class:`~meshcloud.transport.base.Authenticator`, so certificate checks are exercised here
too. The simulator (``sim/``) does not use this module: it drives cores directly.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from meshcloud.errors import AuthError, ConnectionLost, StreamReset, TransportError
from meshcloud.identity.keys import SigningKey
from meshcloud.transport.base import (
    JOIN_PROTOCOLS,
    Authenticator,
    NodeId,
    PeerAuth,
    PeerConnected,
    PeerDisconnected,
    PeerEvent,
    ProtocolRegistry,
    StreamHandler,
)

STREAM_WINDOW = 64
"""Messages a stream buffers before ``send`` blocks: the in-memory form of flow control."""

_EOF = object()


@dataclass(slots=True)
class _Reset:
    reason: str


@dataclass(slots=True)
class _Lost:
    reason: str


class MemoryStream:
    """One end of an in-memory stream."""

    def __init__(self, conn: _Connection, stream_id: int, protocol: str, peer: PeerAuth) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.protocol = protocol
        self.peer = peer
        self._inbox_send, self._inbox = trio.open_memory_channel[object](STREAM_WINDOW)
        self._other: MemoryStream | None = None
        self._send_closed = False
        self._failure: Exception | None = None
        self._eof = False

    async def send(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        if self._send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")
        other = self._other
        assert other is not None
        await self._conn.network._delay(self._conn)
        if self._failure is not None:
            raise self._failure
        try:
            await other._inbox_send.send(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._failure or StreamReset("peer stopped reading this stream") from None

    async def receive(self) -> bytes:
        if self._eof:
            raise trio.EndOfChannel
        if self._failure is not None and self._inbox.statistics().current_buffer_used == 0:
            raise self._failure
        try:
            item = await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._failure or trio.EndOfChannel from None
        if item is _EOF:
            self._eof = True
            raise trio.EndOfChannel
        if isinstance(item, _Reset):
            self._failure = StreamReset(f"peer aborted the stream: {item.reason}")
            raise self._failure
        if isinstance(item, _Lost):
            self._failure = ConnectionLost(item.reason)
            raise self._failure
        assert isinstance(item, bytes)
        return item

    async def close(self) -> None:
        if self._send_closed or self._failure is not None:
            return
        self._send_closed = True
        other = self._other
        if other is not None:
            await self._conn.network._delay(self._conn)
            try:
                await other._inbox_send.send(_EOF)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def abort(self, reason: str = "") -> None:
        if self._failure is not None:
            return
        self._failure = StreamReset(f"stream aborted here: {reason}")
        self._send_closed = True
        other = self._other
        if other is not None:
            other._push_nowait(_Reset(reason))
        self._inbox.close()

    def _push_nowait(self, item: object) -> None:
        """Deliver a control item even when the window is full (resets, connection loss)."""
        try:
            self._inbox_send.send_nowait(item)
        except trio.WouldBlock:
            self._failure = (ConnectionLost(item.reason) if isinstance(item, _Lost)
                             else StreamReset(getattr(item, "reason", "")))
            self._inbox_send.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def __aenter__(self) -> MemoryStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            await self.close()
        else:
            await self.abort("error in handler")


@dataclass(eq=False)
class _Connection:
    network: MemoryNetwork
    a: MemoryTransport
    b: MemoryTransport
    streams: dict[int, tuple[MemoryStream, MemoryStream]] = field(default_factory=dict)
    alive: bool = True

    def other(self, side: MemoryTransport) -> MemoryTransport:
        return self.b if side is self.a else self.a

    def kill(self, reason: str) -> None:
        if not self.alive:
            return
        self.alive = False
        for one, two in self.streams.values():
            for end in (one, two):
                end._push_nowait(_Lost(reason))
        self.streams.clear()
        for side in (self.a, self.b):
            side._forget(self, reason)


class MemoryNetwork:
    """A network of in-memory transports with latency, loss, partitions and crashes."""

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        dial_timeout: float = 3.0,
        dead_after: float = 4.0,
    ) -> None:
        self.random = random.Random(seed)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.dial_timeout = dial_timeout
        self.dead_after = dead_after
        self.transports: dict[str, MemoryTransport] = {}
        self._groups: list[frozenset[NodeId]] | None = None
        self._crashed: set[NodeId] = set()
        self._names = itertools.count(1)

    def add(self, key: SigningKey, authenticator: Authenticator, name: str | None = None,
            agent_version: str = "test") -> MemoryTransport:
        name = name or f"n{next(self._names)}"
        if name in self.transports:
            raise ValueError(f"address mem://{name} is taken")
        transport = MemoryTransport(self, key, authenticator, name, agent_version)
        self.transports[name] = transport
        return transport

    # --- faults ---------------------------------------------------------------------------

    def reachable(self, a: NodeId, b: NodeId) -> bool:
        if a in self._crashed or b in self._crashed:
            return False
        if self._groups is None:
            return True
        return any(a in group and b in group for group in self._groups)

    def partition(self, *groups: set[NodeId] | frozenset[NodeId]) -> None:
        """Only nodes in the same group reach each other; nodes in no group reach nobody."""
        self._groups = [frozenset(g) for g in groups]
        for transport in self.transports.values():
            for conn in list(transport._connections):
                if not self.reachable(conn.a.local_id, conn.b.local_id):
                    transport._schedule_death(conn, "partitioned: peer unreachable")

    def heal(self) -> None:
        self._groups = None

    def crash(self, node: NodeId) -> None:
        self._crashed.add(node)
        for transport in self.transports.values():
            if transport.local_id == node:
                for conn in list(transport._connections):
                    conn.kill("peer crashed (connection reset)")

    def revive(self, node: NodeId) -> None:
        self._crashed.discard(node)

    # --- delivery -------------------------------------------------------------------------

    def _sample_delay(self) -> float:
        if self.latency <= 0 and self.jitter <= 0:
            return 0.0
        return self.latency + (self.random.random() * self.jitter if self.jitter else 0.0)

    async def _delay(self, conn: _Connection) -> None:
        delay = self._sample_delay()
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        if not conn.alive:
            raise ConnectionLost("connection lost while sending")


class MemoryTransport:
    """One node's endpoint on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, key: SigningKey, authenticator: Authenticator,
                 name: str, agent_version: str) -> None:
        self.network = network
        self.key = key
        self.local_id: NodeId = key.id
        self.authenticator = authenticator
        self.name = name
        self.agent_version = agent_version
        self.registry = ProtocolRegistry()
        self._connections: list[_Connection] = []
        self._addresses: dict[NodeId, list[str]] = {}
        self._subscribers: list[trio.MemorySendChannel[PeerEvent]] = []
        self._nursery: trio.Nursery | None = None
        self._stream_ids = itertools.count(1)
        self.on_datagram_dropped: Callable[[str], None] | None = None

    @property
    def listen_addresses(self) -> list[str]:
        return [f"mem://{self.name}"]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (handlers run in this nursery)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for conn in list(self._connections):
                conn.kill("peer shut down")

    # --- identity -------------------------------------------------------------------------

    def _auth(self) -> PeerAuth:
        cert, proof = self.authenticator.local_credentials()
        return PeerAuth(node_id=self.local_id, node_public=self.key.public, cert=cert,
                        join_proof=proof, listen_addresses=tuple(self.listen_addresses),
                        agent_version=self.agent_version)

    def _peer_of(self, conn: _Connection) -> PeerAuth:
        return conn.other(self)._auth()

    # --- connections ----------------------------------------------------------------------

    def connected_peers(self, *, retiring: bool = False) -> list[PeerAuth]:
        # connections here are never retired, so ``retiring`` changes nothing
        seen: dict[NodeId, PeerAuth] = {}
        for conn in self._connections:
            peer = self._peer_of(conn)
            seen.setdefault(peer.node_id, peer)
        return list(seen.values())

    def set_addresses(self, peer: NodeId, addresses: list[str]) -> None:
        self._addresses[peer] = list(addresses)

    def _connection_to(self, peer: NodeId) -> _Connection | None:
        for conn in reversed(self._connections):
            if conn.alive and conn.other(self).local_id == peer:
                return conn
        return None

    async def dial(self, address: str, *, expect: NodeId | None = None) -> PeerAuth:
        if self._nursery is None:
            raise TransportError("transport is not running")
        name = address.removeprefix("mem://")
        target = self.network.transports.get(name)
        if target is None or target._nursery is None or not self.network.reachable(
            self.local_id, target.local_id
        ):
            await trio.sleep(self.network.dial_timeout)
            raise TransportError(f"cannot reach {address}: connection timed out")
        if expect is not None and target.local_id != expect:
            raise AuthError(f"{address} is another node than the one expected")
        existing = self._connection_to(target.local_id)
        if existing is not None:
            return self._peer_of(existing)
        await trio.sleep(self.network._sample_delay() * 3)  # a handshake is 1.5 round trips
        if target._nursery is None or not self.network.reachable(self.local_id,
                                                                 target.local_id):
            # partitioned or crashed while the handshake was in flight: it times out
            await trio.sleep(self.network.dial_timeout)
            raise TransportError(f"cannot reach {address}: handshake timed out")
        mine, theirs = self._auth(), target._auth()
        target.authenticator.check_peer(mine, we_dialed=False)  # raises AuthError: refused
        self.authenticator.check_peer(theirs, we_dialed=True)
        conn = _Connection(self.network, self, target)
        self._adopt(conn, address, we_dialed=True)
        target._adopt(conn, f"mem://{self.name}", we_dialed=False)
        return theirs

    def _adopt(self, conn: _Connection, address: str, *, we_dialed: bool) -> None:
        self._connections.append(conn)
        self._publish(PeerConnected(peer=self._peer_of(conn), address=address,
                                    we_dialed=we_dialed))

    def _forget(self, conn: _Connection, reason: str) -> None:
        if conn in self._connections:
            self._connections.remove(conn)
            peer = conn.other(self).local_id
            if self._connection_to(peer) is None:
                self._publish(PeerDisconnected(node_id=peer, reason=reason))

    def _schedule_death(self, conn: _Connection, reason: str) -> None:
        if self._nursery is None:
            conn.kill(reason)
            return

        async def die_later() -> None:
            await trio.sleep(self.network.dead_after)
            if not self.network.reachable(conn.a.local_id, conn.b.local_id):
                conn.kill(reason)

        self._nursery.start_soon(die_later)

    async def disconnect(self, peer: NodeId, reason: str = "") -> None:
        for conn in list(self._connections):
            if conn.other(self).local_id == peer:
                conn.kill(reason or "disconnected by peer")
        await trio.lowlevel.checkpoint()

    async def _ensure_connection(self, peer: NodeId) -> _Connection:
        conn = self._connection_to(peer)
        if conn is not None:
            return conn
        addresses = self._addresses.get(peer)
        if not addresses:
            raise TransportError(f"no known address for peer {peer.hex()[:12]}")
        errors = []
        for address in addresses:
            try:
                await self.dial(address, expect=peer)
            except (TransportError, AuthError) as exc:
                errors.append(str(exc))
                continue
            conn = self._connection_to(peer)
            if conn is not None:
                return conn
        raise TransportError(f"cannot reach peer {peer.hex()[:12]}: {'; '.join(errors)}")

    # --- streams --------------------------------------------------------------------------

    async def open_stream(self, peer: NodeId, protocol: str) -> MemoryStream:
        conn = await self._ensure_connection(peer)
        other = conn.other(self)
        mine = MemoryStream(conn, next(self._stream_ids), protocol, self._peer_of(conn))
        theirs = MemoryStream(conn, mine.stream_id, protocol, other._peer_of(conn))
        mine._other, theirs._other = theirs, mine
        if self._auth().joining and protocol not in JOIN_PROTOCOLS:
            raise AuthError(f"a joining node may not open {protocol}")
        handler = other.registry.handlers.get(protocol)
        if handler is None or other._nursery is None:
            await theirs.abort(f"protocol {protocol} is not served")
            raise StreamReset(f"peer does not serve {protocol}")
        try:
            other._nursery.start_soon(other._run_handler, handler, theirs, conn, mine)
        except RuntimeError:  # the peer is shutting down: its nursery takes no new task
            await theirs.abort("peer is shutting down")
            raise ConnectionLost(f"peer {other.local_id.hex()[:12]} is shutting down") from None
        conn.streams[id(mine)] = (mine, theirs)
        return mine

    async def _run_handler(self, handler: StreamHandler, stream: MemoryStream,
                           conn: _Connection, opener: MemoryStream) -> None:
        try:
            await handler(stream)
        except (TransportError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.EndOfChannel):
            pass
        finally:
            conn.streams.pop(id(opener), None)

    def serve(self, protocol: str, handler: StreamHandler) -> None:
        self.registry.serve(protocol, handler)

    # --- datagrams ------------------------------------------------------------------------

    def datagrams(self, protocol: str) -> trio.MemoryReceiveChannel[tuple[NodeId, bytes]]:
        return self.registry.datagrams(protocol)

    def send_datagram(self, peer: NodeId, protocol: str, data: bytes) -> None:
        network = self.network
        if self._nursery is None:
            return
        if network.loss and network.random.random() < network.loss:
            return
        payload = bytes(data)
        conn = self._connection_to(peer)
        if conn is None and not self._addresses.get(peer):
            return
        try:
            self._nursery.start_soon(self._deliver_datagram, conn, peer, protocol, payload)
        except RuntimeError:
            return  # shutting down: the nursery takes no new tasks (never raise, as documented)

    async def _deliver_datagram(self, conn: _Connection | None, peer: NodeId, protocol: str,
                                payload: bytes) -> None:
        if conn is None:  # like the TCP transport: dial in the background, then send
            try:
                conn = await self._ensure_connection(peer)
            except (TransportError, AuthError):
                return
        delay = self.network._sample_delay()
        if delay > 0:
            await trio.sleep(delay)
        if conn.alive and self.network.reachable(self.local_id, peer):
            conn.other(self).registry.deliver_datagram(self.local_id, protocol, payload)

    # --- events ---------------------------------------------------------------------------

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        send, receive = trio.open_memory_channel[PeerEvent](math.inf)
        self._subscribers.append(send)
        return receive

    def _publish(self, event: PeerEvent) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)
