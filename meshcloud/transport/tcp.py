"""The real transport: Noise XX + the multiplexer over TCP, driven by trio.

Usage::

    transport = TcpTransport(key, authenticator, listen=["0.0.0.0:7946"])
    transport.serve("/meshcloud/echo/1", handler)
    await nursery.start(transport.run)          # listening once this returns
    peer = await transport.dial("192.168.1.20:7946")
    stream = await transport.open_stream(peer.node_id, "/meshcloud/echo/1")

What this module does (the protocol logic lives in the sans-IO cores):

* **listen** on each address; every accepted socket waits for its first message in a
  bounded silent pool, then runs the handshake (:mod:`~meshcloud.transport.handshake`) in
  a bounded slot under ``handshake_timeout`` (:mod:`~meshcloud.transport.admission`); a
  refused peer gets the reason and is closed, and nothing about it is remembered;
* **dial** with ``connect_timeout`` for TCP and ``handshake_timeout`` for the handshake.
  Concurrent dials of one address share one attempt; a dial of an address (or an
  ``expect``-ed node) we are already connected to returns that connection;
* **connections** (:mod:`~meshcloud.transport.connection`) carry the streams. One peer
  normally has one connection. **Simultaneous dials** (both sides dial each other at once)
  leave two; both sides then apply the same rule: keep the connection dialled by the node
  with the smaller node id (among connections of the same dialer, the newest), and retire
  the other: GOAWAY, no new streams, and it closes once both sides said GOAWAY and its
  last stream ended, so no stream is cut;
* **open_stream** uses the peer's connection, or dials the addresses of the address book
  (:meth:`set_addresses`, filled by the DHT and gossip; a dialled address and, for inbound
  peers, their announced listen addresses are learnt automatically);
* **datagrams** never block or raise. To a member whose certificate a handshake once
  checked, they go as sealed UDP packets from the listening port
  (:mod:`~meshcloud.transport.udp`, :mod:`~meshcloud.transport.sealed`): no connection
  is needed per member, so connections carry streams only and close when idle. Otherwise
  (first contact, joining or relayed peers, UDP filtered) on a connection they are queued
  in the mux (dropped when its backlog is full); to a peer we are not connected to they
  wait in a small queue while a background dial runs, and are dropped if the queue is
  full or the dial fails;
* **peer events**: :class:`PeerConnected` when a peer's first connection is up,
  :class:`PeerDisconnected` when its last one is gone, :class:`PeerUnreachable` when a
  datagram to it came back as an ICMP error;
* **failures** of one handshake, dial, connection or handler end that one only, and are
  counted once in :attr:`TcpTransport.counters` and logged once; received bytes are
  bounded per connection and per node (:mod:`~meshcloud.transport.buffers`).

Keys are never logged; peers appear in logs as short node ids.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from meshcloud.errors import (
    AuthError,
    ConfigError,
    MeshError,
    RemoteProtocolError,
    TransportError,
)
from meshcloud.identity.keys import SigningKey, short_id
from meshcloud.transport.addresses import format_address, parse_address, relay_of
from meshcloud.transport.admission import HandshakeSlots, TransportCounters
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
from meshcloud.transport.buffers import BufferBudget
from meshcloud.transport.connection import Connection, TcpStream
from meshcloud.transport.handshake import HandshakeCore, HandshakeStatus
from meshcloud.transport.mux import MuxConfig
from meshcloud.transport.sockets import bind, connect, run_handshake, tune
from meshcloud.transport.udp import DatagramPath
from meshcloud.transport.usage import UsageTable

logger = logging.getLogger(__name__)

AGENT_VERSION = "meshcloud/0.1"

_IDLE_REASON = "idle"
_CAP_REASON = "connection limit: least recently used"

_STANDARD_ERRORS = (TransportError, trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.EndOfChannel)


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Settings of the TCP transport; the multiplexer's are in ``mux``."""

    mux: MuxConfig = field(default_factory=MuxConfig)
    """Windows, message size, stream limit and keepalive (see :class:`MuxConfig`)."""

    connect_timeout: float = 3.0
    """Seconds for the TCP connection: a LAN answers in milliseconds, a SYN to a machine
    that is off gets no answer at all, and dialling is often a search among addresses."""

    handshake_timeout: float = 5.0
    """Seconds for the Noise handshake and admission (1.5 round trips and six signature
    checks: milliseconds normally, seconds on a loaded phone)."""

    datagram_queue: int = 64
    """Datagrams held for a peer while it is being dialled; more are dropped."""

    max_handshakes: int = 64
    """Inbound handshakes past their first message (doing the key exchange and checks)
    at once; a socket finding no slot is closed. See :mod:`~meshcloud.transport.admission`."""

    max_handshakes_per_source: int = 16
    """The same from one source address: one address (a flooder, or a machine full of
    members on 127.0.0.1) never holds every slot (at most ``max_handshakes``)."""

    max_silent: int = 256
    """Accepted sockets waiting for their first message; a newcomer finding this (or its
    address's share) full sheds the oldest silent socket of the busiest address."""

    max_silent_per_source: int = 64
    """The same from one source address (at most ``max_silent``)."""

    first_message_timeout: float = 1.0
    """Seconds an accepted socket may stay silent: a dialer sends its first handshake
    message with the connection, so only a flood waits this long (and is then closed)."""

    max_buffered: int = 256 * 1024 * 1024
    """Received message bytes all connections together may hold before the application
    reads them (each connection also has ``mux.max_buffered``); beyond it sockets are
    not read. See :mod:`~meshcloud.transport.buffers`."""

    max_connections: int = 64
    """Connections this node keeps; beyond, idle ones (no open stream) are retired
    gracefully, the least recently used first (a connection carrying streams is never
    cut, so the count may pass this while they last). Peers are dialled again on demand.
    An idle connection costs no traffic (no keepalive without streams), only memory; a
    miss costs a handshake, and membership gossips to random members several times a
    second, so a cap well below the mesh size trades a little memory for constant
    redials (measured in docs/benchmarks.md, "idle")."""

    idle_timeout: float | None = 30.0
    """Seconds without a stream and without any traffic after which a connection is
    retired gracefully (GOAWAY both ways, then closed); ``None`` keeps it open. Membership
    probes and gossip go as sealed datagrams (``sealed_datagrams``), so only streams keep
    a connection: an idle mesh holds the few its periodic syncs use."""

    sealed_datagrams: bool = True
    """Send datagrams to members as sealed UDP packets from the listening port (see
    :mod:`~meshcloud.transport.udp`); False: every datagram rides a connection."""

    agent_version: str = AGENT_VERSION
    """Told to peers in the handshake (shown by ``meshcloud status``)."""

    reuse_port: bool = True
    """Listen with SO_REUSEPORT, so that a hole punch can connect *from* the listening
    port (:mod:`~meshcloud.transport.punch`). A port another socket already listens on is
    still refused (checked before binding)."""

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.handshake_timeout, self.first_message_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.datagram_queue < 0 or self.max_handshakes < 1:
            raise ValueError("datagram_queue must be >= 0 and max_handshakes >= 1")
        if min(self.max_handshakes_per_source, self.max_silent, self.max_silent_per_source) < 1:
            raise ValueError("handshake and silent socket limits must be >= 1")
        if self.max_connections < 1 or (self.idle_timeout is not None
                                        and self.idle_timeout <= 0):
            raise ValueError("max_connections must be >= 1 and idle_timeout positive")
        if self.max_buffered < self.mux.max_buffered:
            raise ValueError("max_buffered (node) must be >= mux.max_buffered (connection)")

    @classmethod
    def lan(cls) -> TcpConfig:
        return cls()

    @classmethod
    def phone(cls) -> TcpConfig:
        """Slow radios and sleepy CPUs: longer timeouts, the phone mux preset."""
        return cls(mux=MuxConfig.phone(), connect_timeout=10.0, handshake_timeout=15.0,
                   first_message_timeout=5.0, datagram_queue=32,
                   max_buffered=64 * 1024 * 1024)


@dataclass(slots=True)
class _Dial:
    """One dial in progress; concurrent dials of the same address wait for it (and dial
    again themselves if its caller abandons it: a caller's deadline is not the peer's
    failure)."""

    done: trio.Event = field(default_factory=trio.Event)
    peer: PeerAuth | None = None
    error: MeshError | None = None
    abandoned: bool = False


def _has_data(sock: socket.socket) -> bool:
    """Bytes (or an EOF) are waiting on a non-blocking socket."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True  # an error is news too: the handshake will read it and end
    return True


class TcpTransport:
    """The :class:`~meshcloud.transport.base.Transport` over TCP. See the module docstring."""

    def __init__(self, key: SigningKey, authenticator: Authenticator, *,
                 listen: list[str] | tuple[str, ...] = ("127.0.0.1:0",),
                 config: TcpConfig | None = None) -> None:
        self.key = key
        self.local_id: NodeId = key.id
        self.authenticator = authenticator
        self.config = config or TcpConfig()
        self.registry = ProtocolRegistry()
        self._listen_spec = list(listen)
        self._listeners: list[socket.socket] = []
        self._connections: dict[NodeId, list[Connection]] = {}
        self._dials: dict[str, _Dial] = {}
        self._addresses: dict[NodeId, list[str]] = {}
        self._subscribers: list[trio.MemorySendChannel[PeerEvent]] = []
        self._queued: dict[NodeId, deque[tuple[str, bytes]]] = {}
        self._background_dials: set[NodeId] = set()
        self._unused: set[Connection] = set()  # retired by the pool (idle or over the cap)
        config = self.config
        self._slots = HandshakeSlots(
            total=config.max_handshakes,
            per_source=min(config.max_handshakes_per_source, config.max_handshakes),
            silent_total=config.max_silent,
            silent_per_source=min(config.max_silent_per_source, config.max_silent))
        self._slot_tasks: dict[int, tuple[trio.CancelScope, socket.socket]] = {}
        self.counters = TransportCounters()
        self.usage = UsageTable()
        """Streams and message bytes by protocol (what each service costs on the wire)."""
        mux = config.mux
        self.buffer_budget = BufferBudget(
            config.max_buffered,
            credit_limit=config.max_buffered - mux.max_message - 2 * mux.stream_window)
        self._buffer_lot = trio.lowlevel.ParkingLot()  # readers paused by back-pressure
        self._nursery: trio.Nursery | None = None
        self._serial = itertools.count(1)
        self.udp = DatagramPath(self) if self.config.sealed_datagrams else None
        """Sealed datagrams to members over UDP (None when disabled)."""

    def __repr__(self) -> str:
        return f"<TcpTransport {short_id(self.local_id)} {self.listen_addresses}>"

    @property
    def running(self) -> bool:
        return self._nursery is not None

    @property
    def listen_addresses(self) -> list[str]:
        out = []
        for sock in self._listeners:
            host, port = sock.getsockname()[:2]
            out.append(format_address(host, port))
        return out

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled. ``await nursery.start(transport.run)``."""
        if self._nursery is not None:
            raise TransportError("transport is already running")
        listeners = []
        try:
            for address in self._listen_spec:
                listeners.append(await bind(address, reuse_port=self.config.reuse_port))
            self._listeners = listeners
            if self.udp is not None:
                self.udp.bind(listeners)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener)
                udp = self.udp
                for udp_socket in udp.sockets if udp is not None else ():
                    assert udp is not None
                    nursery.start_soon(udp.receive_loop, udp_socket)
                logger.info("transport %s listening on %s", short_id(self.local_id),
                            ", ".join(self.listen_addresses))
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._shut_down()
        finally:
            self._nursery = None
            self._shut_down()
            for listener in listeners:
                listener.close()
            self._listeners = []
            if self.udp is not None:
                self.udp.close()

    def _shut_down(self) -> None:
        for conns in list(self._connections.values()):
            for conn in list(conns):
                conn.close("shutting down")

    # --- addresses and peers ------------------------------------------------------------

    def set_addresses(self, peer: NodeId, addresses: list[str]) -> None:
        self._addresses[peer] = list(addresses)

    def addresses_of(self, peer: NodeId) -> list[str]:
        return list(self._addresses.get(peer, ()))

    def node_with_prefix(self, prefix: bytes) -> NodeId | None:
        """A node of the address book whose id starts with ``prefix`` (None if none)."""
        return next((node for node in self._addresses if node.startswith(prefix)), None)

    def connected_peers(self, *, retiring: bool = False) -> list[PeerAuth]:
        if retiring:
            return [conns[0].peer for conns in self._connections.values() if conns]
        return [conn.peer for peer in self._connections if (conn := self._usable(peer))]

    def connections_to(self, peer: NodeId) -> list[Connection]:
        """Live connections to ``peer`` (normally one; two while a duplicate drains)."""
        return list(self._connections.get(peer, ()))

    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        send, receive = trio.open_memory_channel[PeerEvent](math.inf)
        self._subscribers.append(send)
        return receive

    def publish(self, event: PeerEvent) -> None:
        """Hand ``event`` to every :meth:`peer_events` subscriber (the datagram path's
        :class:`~meshcloud.transport.base.PeerUnreachable` hints)."""
        self._publish(event)

    def _publish(self, event: PeerEvent) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)

    def _usable(self, peer: NodeId) -> Connection | None:
        best = None
        for conn in self._connections.get(peer, ()):
            if conn.usable and (best is None or self._preference(conn) > self._preference(best)):
                best = conn
        return best

    def _preference(self, conn: Connection) -> tuple[bool, bool, int]:
        """Both ends rank a peer's connections alike: direct before relayed, then smaller
        dialer id first, then newest."""
        smaller = min(self.local_id, conn.peer.node_id)
        return not conn.relayed, conn.dialer_id == smaller, conn.serial

    # --- dialling -----------------------------------------------------------------------

    async def dial(self, address: str, *, expect: NodeId | None = None) -> PeerAuth:
        if self._nursery is None:
            raise TransportError("transport is not running")
        try:
            relay = relay_of(address)
        except ConfigError as exc:
            raise TransportError(str(exc)) from None
        if relay is not None and expect is None:
            raise TransportError(f"dialling {address} needs the node id expected behind it")
        # one relay carries circuits to many nodes: one attempt each
        key = f"{address}>{expect.hex() if expect else ''}" if relay is not None else address
        while True:
            existing = (self._usable(expect) if expect is not None
                        else self._connected_at(address))
            if existing is not None:
                await trio.lowlevel.checkpoint()
                return existing.peer
            attempt = self._dials.get(key)
            if attempt is None:
                break
            await attempt.done.wait()
            if attempt.abandoned:  # its caller gave up (its own deadline), not the peer:
                continue  # dial again ourselves (or join whoever already does)
            if attempt.error is not None:
                raise type(attempt.error)(str(attempt.error))
            assert attempt.peer is not None
            if expect is not None and attempt.peer.node_id != expect:
                raise AuthError("the address answered with another node than the one expected")
            return attempt.peer
        attempt = self._dials[key] = _Dial()
        try:
            attempt.peer = await self._dial_now(key, expect)
            return attempt.peer
        except MeshError as exc:
            self.counters.dials_failed += 1
            attempt.error = exc
            raise
        except BaseException:
            attempt.abandoned = True
            raise
        finally:
            del self._dials[key]
            attempt.done.set()

    def _connected_at(self, address: str) -> Connection | None:
        for peer, addresses in self._addresses.items():
            if address in addresses:
                conn = self._usable(peer)
                if conn is not None:
                    return conn
        return None

    async def _dial_now(self, address: str, expect: NodeId | None) -> PeerAuth:
        if ">" in address and address.startswith("relay://"):
            return await self._dial_relayed(address.partition(">")[0], expect)
        try:
            host, port = parse_address(address)
        except ConfigError as exc:
            raise TransportError(str(exc)) from None
        sock = None
        with trio.move_on_after(self.config.connect_timeout):
            sock = await connect(host, port, address, listen=self._listen_spec)
        if sock is None:
            raise TransportError(f"cannot reach {address}: connection timed out")
        return (await self.handshake_over(sock, address, expect=expect, initiator=True)).peer

    async def _dial_relayed(self, address: str, expect: NodeId | None) -> PeerAuth:
        """A circuit through the relay named in ``address``, then the end-to-end
        handshake through it (:mod:`~meshcloud.transport.relay`)."""
        from meshcloud.transport.relay import open_circuit

        relay = relay_of(address)
        assert relay is not None and expect is not None
        if relay in (self.local_id, expect):
            raise TransportError(f"{address} cannot relay to itself")
        with trio.move_on_after(self.config.connect_timeout + self.config.handshake_timeout):
            sock = await open_circuit(self, relay, expect)
            conn = await self.handshake_over(sock, address, expect=expect, initiator=True,
                                             relayed=True)
            return conn.peer
        raise TransportError(f"cannot reach {short_id(expect)} through {address}: timed out")

    async def handshake_over(self, sock: socket.socket, address: str, *,
                             expect: NodeId | None, initiator: bool, relayed: bool = False,
                             punched: bool = False) -> Connection:
        """Run the Noise handshake on a connected socket (TCP, or one end of a socket
        pair spliced to a relay stream) and adopt the connection; closes ``sock`` on
        failure. As responder, ``expect`` is checked after the handshake."""
        try:
            core = self._handshake_core(initiator=initiator, expect=expect)
            early: list[bytes | bytearray] = []
            first = b""
            try:
                with trio.move_on_after(self.config.handshake_timeout):
                    early, first = await run_handshake(sock, core, self.counters)
            except AuthError:
                self.counters.handshakes_refused += 1
                raise
            except RemoteProtocolError as exc:  # damaged or malformed: this dial failed
                self.counters.handshake_errors += 1
                raise TransportError(f"handshake with {address} failed: {exc}") from None
            if core.status is not HandshakeStatus.DONE:
                self.counters.handshakes_timed_out += 1
                raise TransportError(f"handshake with {address} timed out")
            assert core.peer is not None
            if expect is not None and core.peer.node_id != expect:
                raise AuthError("the address answered with another node than the one expected")
            return self._adopt(sock, core, early, first, we_dialed=initiator, address=address,
                               relayed=relayed, punched=punched)
        except BaseException:
            sock.close()
            raise

    def _handshake_core(self, *, initiator: bool, expect: NodeId | None = None) -> HandshakeCore:
        return HandshakeCore(initiator=initiator, key=self.key, authenticator=self.authenticator,
                             listen_addresses=tuple(self.listen_addresses),
                             agent_version=self.config.agent_version, expect=expect)

    async def ensure_connection(self, peer: NodeId, cause: str = "other") -> Connection:
        """The peer's usable connection, dialling its known addresses if there is none
        (counted as a dial for ``cause``, a protocol name, in :attr:`usage`)."""
        conn = self._usable(peer)
        if conn is not None:
            return conn
        addresses = self._addresses.get(peer)
        if not addresses:
            raise TransportError(f"no known address for peer {short_id(peer)}")
        if peer not in self._connections:  # not just the replacement of a retiring one
            self.usage.dialled(cause)
        errors = []
        for address in list(addresses):
            try:
                await self.dial(address, expect=peer)
            except (TransportError, AuthError, RemoteProtocolError) as exc:
                errors.append(f"{address}: {exc}")
                continue
            conn = self._usable(peer)
            if conn is not None:
                return conn
        raise TransportError(f"cannot reach peer {short_id(peer)}: {'; '.join(errors)}")

    # --- accepting ----------------------------------------------------------------------

    @property
    def _handshaking(self) -> int:
        return len(self._slots)

    async def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    sock, addr = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:  # out of file descriptors...: back off a little
                    logger.warning("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    break
                try:
                    tune(sock)
                except OSError:  # reset before we even looked at it
                    sock.close()
                    continue
                self._admit(sock, format_address(*addr[:2]))

    def _admit(self, sock: socket.socket, address: str) -> None:
        """Give an accepted socket a silent slot, shedding the oldest silent one if full."""
        key = next(self._serial)
        shed = self._slots.admit(key, address.rsplit(":", 1)[0],
                                 ready=lambda k: _has_data(self._slot_tasks[k][1]))
        for victim in shed:
            self.counters.handshakes_shed += 1
            self._slot_tasks.pop(victim)[0].cancel()  # its task closes the socket
        scope = trio.CancelScope()
        self._slot_tasks[key] = (scope, sock)
        assert self._nursery is not None
        self._nursery.start_soon(self._inbound, sock, address, key, scope)

    async def _inbound(self, sock: socket.socket, address: str, key: int,
                       scope: trio.CancelScope) -> None:
        adopted = False
        try:
            with scope:
                adopted = await self._inbound_handshake(sock, address, key)
            if scope.cancelled_caught:
                logger.debug("shed a silent handshake from %s for a newer one", address)
        except Exception as exc:  # a bug must end this handshake only, never the transport
            self.counters.handshake_errors += 1
            logger.exception("handshake from %s failed unexpectedly: %r", address, exc)
        finally:
            self._slots.release(key)
            self._slot_tasks.pop(key, None)
            if not adopted:
                sock.close()

    async def _inbound_handshake(self, sock: socket.socket, address: str, key: int) -> bool:
        """Run an inbound handshake; True once the connection is adopted (it owns ``sock``)."""
        if not await self._first_message(sock):
            self.counters.handshakes_shed += 1
            logger.debug("socket from %s stayed silent: closing", address)
            return False
        if not self._slots.promote(key):
            self.counters.handshakes_shed += 1
            logger.debug("too many handshakes in progress from %s: closing", address)
            return False
        core = self._handshake_core(initiator=False)
        early: list[bytes | bytearray] = []
        first = b""
        try:
            with trio.move_on_after(self.config.handshake_timeout):
                early, first = await run_handshake(sock, core, self.counters)
        except AuthError as exc:
            self.counters.handshakes_refused += 1
            logger.info("refused a peer from %s: %s", address, exc)
            return False
        except (RemoteProtocolError, TransportError, OSError) as exc:
            self.counters.handshake_errors += 1
            logger.debug("handshake from %s failed: %s", address, exc)
            return False
        if core.status is not HandshakeStatus.DONE:
            self.counters.handshakes_timed_out += 1
            logger.debug("handshake from %s timed out", address)
            return False
        # the slot is free once the handshake is over (the connection is not a handshake)
        self._slots.release(key)
        self._slot_tasks.pop(key, None)
        try:
            self._adopt(sock, core, early, first, we_dialed=False, address=address)
        except TransportError:  # stopped meanwhile (_adopt closed the socket)
            return True
        return True

    async def _first_message(self, sock: socket.socket) -> bool:
        """Wait up to ``first_message_timeout`` for the peer's first bytes."""
        with trio.move_on_after(self.config.first_message_timeout):
            await trio.lowlevel.wait_readable(sock)
            return True
        return _has_data(sock)  # came just as the deadline passed

    # --- connections --------------------------------------------------------------------

    def _adopt(self, sock: socket.socket, core: HandshakeCore, early: list[bytes | bytearray],
               first: bytes, *, we_dialed: bool, address: str, relayed: bool = False,
               punched: bool = False) -> Connection:
        peer, channel = core.peer, core.channel
        assert peer is not None and channel is not None
        if self._nursery is None:
            sock.close()
            raise TransportError("transport stopped during the handshake")
        conn = Connection(self, sock, channel, peer, we_dialed=we_dialed, address=address,
                          config=self.config.mux, serial=next(self._serial), first=first)
        conn.relayed, conn.punched = relayed, punched
        conns = self._connections.setdefault(peer.node_id, [])
        new_peer = not conns
        conns.append(conn)
        self.counters.connections_opened += 1
        self._learn_addresses(peer, address if we_dialed else None)
        if self.udp is not None:
            self.udp.learn(peer, address if we_dialed and not (relayed or punched) else None)
        self._nursery.start_soon(conn.run, early)
        logger.info("connected %s %s at %s%s", "to" if we_dialed else "from",
                    short_id(peer.node_id), address, " (joining)" if peer.joining else "")
        if new_peer:
            self._publish(PeerConnected(peer=peer, address=address, we_dialed=we_dialed))
        else:
            self._retire_duplicates(peer.node_id)
        self._flush_queued(peer.node_id)
        self._evict_over_cap(keep=conn)
        return conn

    def statistics(self) -> dict[str, object]:
        """Connections, counters and per-protocol usage, for ``status`` (JSON-ready)."""
        return {"connections": self.connection_count,
                "connected_peers": len(self._connections),
                "datagram_peers": len(self.udp.core) if self.udp is not None else 0,
                "counters": dataclasses.asdict(self.counters),
                "protocols": self.usage.to_json()}

    @property
    def connection_count(self) -> int:
        """Connections open and not being retired."""
        return sum(1 for conns in self._connections.values() for c in conns
                   if not c.retiring and not c.lost)

    def _evict_over_cap(self, keep: Connection) -> None:
        """Retire idle connections, least recently used first, down to the cap."""
        excess = self.connection_count - self.config.max_connections
        if excess <= 0:
            return
        idle = sorted((c for conns in self._connections.values() for c in conns
                       if c is not keep and c.idle and not c.retiring and not c.lost),
                      key=lambda c: c.last_used)
        for conn in idle[:excess]:
            self.counters.evictions += 1
            logger.debug("retiring idle %r: over %d connections", conn,
                         self.config.max_connections)
            self._unused.add(conn)
            conn.retire(_CAP_REASON)

    def _on_idle(self, conn: Connection) -> None:
        """``conn`` had no stream and no traffic for ``idle_timeout``: retire it."""
        self.counters.idle_closes += 1
        logger.debug("retiring idle %r", conn)
        self._unused.add(conn)
        conn.retire(_IDLE_REASON)

    def _learn_addresses(self, peer: PeerAuth, dialled: str | None) -> None:
        if dialled is not None and dialled.startswith("relay://") and ">" in dialled:
            dialled = dialled.partition(">")[0]
        known = self._addresses.setdefault(peer.node_id, [])
        if dialled is not None and dialled not in known:
            known.insert(0, dialled)
        if not known:
            known.extend(peer.listen_addresses)

    def _retire_duplicates(self, peer: NodeId) -> None:
        live = [c for c in self._connections.get(peer, ()) if c.usable]
        if len(live) < 2:
            return
        keep = max(live, key=self._preference)
        for conn in live:
            if conn is not keep:
                logger.debug("retiring duplicate %r", conn)
                conn.retire("duplicate connection")

    def _on_goaway(self, conn: Connection, reason: str) -> None:
        if reason in (_IDLE_REASON, _CAP_REASON):
            self._unused.add(conn)
        conn.retire(reason)  # answer with our GOAWAY: the connection closes once drained

    @property
    def buffered(self) -> int:
        """Received message bytes all connections hold, not yet read by the application."""
        return self.buffer_budget.used

    def _buffers_freed(self) -> None:
        if self._buffer_lot:
            self._buffer_lot.unpark_all()

    def _forget(self, conn: Connection, reason: str) -> None:
        node_id = conn.peer.node_id
        unused = conn in self._unused and conn.mux.drained
        self._unused.discard(conn)
        conns = self._connections.get(node_id)
        if conns is None or conn not in conns:
            return
        conns.remove(conn)
        if not conns:
            del self._connections[node_id]
            (logger.debug if unused else logger.info)(
                "disconnected from %s: %s", short_id(node_id), reason)
            self._publish(PeerDisconnected(node_id=node_id, reason=reason, unused=unused))

    async def disconnect(self, peer: NodeId, reason: str = "") -> None:
        if self.udp is not None:
            self.udp.forget(peer)  # datagrams too need a new handshake now
        for conn in list(self._connections.get(peer, ())):
            conn.close(reason or "disconnected")
        await trio.lowlevel.checkpoint()

    # --- streams ------------------------------------------------------------------------

    def serve(self, protocol: str, handler: StreamHandler) -> None:
        self.registry.serve(protocol, handler)

    async def open_stream(self, peer: NodeId, protocol: str) -> TcpStream:
        if self.authenticator.local_credentials()[0] is None and protocol not in JOIN_PROTOCOLS:
            raise AuthError(f"a joining node may not open {protocol}")
        if self._nursery is None:
            raise TransportError("transport is not running")
        for _ in range(3):
            conn = self._usable(peer)
            if conn is None:
                conn = await self.ensure_connection(peer, protocol)
            else:
                await trio.lowlevel.checkpoint()
            # the connection may have been retired (a simultaneous dial won) or lost while
            # we waited: open on whichever is usable now, dialling again if none is
            if conn.usable:
                return conn.open_stream(protocol)
        raise TransportError(f"no usable connection to {peer.hex()[:12]}: connections kept "
                             f"closing while a stream was being opened")

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` in the transport's nursery (ends when the transport stops)."""
        if self._nursery is None:
            raise TransportError("transport is not running")
        self._nursery.start_soon(fn, *args)

    def _spawn_handler(self, handler: StreamHandler, stream: TcpStream) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._run_handler, handler, stream, name=stream.protocol)

    async def _run_handler(self, handler: StreamHandler, stream: TcpStream) -> None:
        try:
            await handler(stream)
        except _STANDARD_ERRORS as exc:
            logger.debug("%r ended: %s", stream, exc)
            return
        except Exception:
            self.counters.handler_errors += 1
            logger.exception("handler for %s failed", stream.protocol)
            await stream.abort("handler failed")
            return
        # A handler that returns is done with the stream: finish our side cleanly, and
        # reset the peer's side if it is still sending (nobody will read it). Most
        # handlers closed it themselves: then there is nothing to queue, and no second
        # checkpoint (a task step per request) either.
        if not stream._send_closed:
            try:
                await stream.close()
            except (*_STANDARD_ERRORS, trio.BusyResourceError):
                pass
        if not stream._eof:
            await stream.abort("handler finished")

    # --- datagrams ----------------------------------------------------------------------

    def datagrams(self, protocol: str) -> trio.MemoryReceiveChannel[tuple[NodeId, bytes]]:
        return self.registry.datagrams(protocol)

    def send_datagram(self, peer: NodeId, protocol: str, data: bytes) -> None:
        if self._nursery is None:
            return
        if self.udp is not None and self.udp.send(peer, protocol, data):
            return
        conn = self._usable(peer)
        if conn is not None:
            conn.send_datagram(protocol, data)
            return
        if not self._addresses.get(peer):
            return
        queue = self._queued.setdefault(peer, deque())
        if len(queue) >= self.config.datagram_queue:
            return
        queue.append((protocol, bytes(data)))
        if peer not in self._background_dials:
            try:
                self._nursery.start_soon(self._dial_in_background, peer, protocol)
            except RuntimeError:  # the transport is stopping: best effort means dropped
                self._queued.pop(peer, None)
                return
            self._background_dials.add(peer)

    async def _dial_in_background(self, peer: NodeId, protocol: str) -> None:
        try:
            await self.ensure_connection(peer, protocol)
        except MeshError as exc:
            logger.debug("dropping datagrams for %s: %s", short_id(peer), exc)
            self._queued.pop(peer, None)
        except Exception:  # a bug must cost these datagrams, never the transport
            logger.exception("background dial of %s failed", short_id(peer))
            self._queued.pop(peer, None)
        finally:
            self._background_dials.discard(peer)

    def _flush_queued(self, peer: NodeId) -> None:
        queue = self._queued.pop(peer, None)
        conn = self._usable(peer)
        if queue and conn is not None:
            for protocol, data in queue:
                conn.send_datagram(protocol, data)
