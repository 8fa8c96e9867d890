"""Relay circuits (``/meshcloud/relay/1``): reach a node that cannot be dialled.

A node behind NAT keeps a *reservation* with one or more members that can be dialled: a
stream opened with :class:`~meshcloud.transport.natmessages.RelayReserve` and kept open
(:func:`hold_reservation`); its address records then say ``relay://<relay id>``. A peer
dialling such an address (:meth:`TcpTransport._dial_relayed`) asks the relay for a
circuit (:func:`open_circuit`); the relay opens a stream to the target over the target's
standing connection (:class:`RelayIncoming`) and splices the two streams. The ends then
run the ordinary Noise handshake and multiplexer *through* the spliced streams, so the
relay forwards ciphertext only and cannot pose as either end (each checks the other's
node key and certificate).

The seam that lets the transport run a connection over a stream: a Unix socket pair. The
connection gets one end, exactly like a TCP socket; :func:`pump` copies between the other
end and the stream. Relays count circuits and bytes per source peer
(:mod:`~meshcloud.transport.relaylimits`). Only members reach this protocol: the
transport refuses peers without a valid certificate, and joining nodes may not open it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from meshcloud.errors import ConnectionLost, StreamReset, TransportError
from meshcloud.identity.keys import short_id
from meshcloud.transport.addresses import relay_address
from meshcloud.transport.base import Stream, receive_message, send_message
from meshcloud.transport.natmessages import (
    RELAY_PROTOCOL,
    RelayConnect,
    RelayIncoming,
    RelayReply,
    RelayReserve,
)
from meshcloud.transport.relaylimits import RelayConfig, RelayLimits
from meshcloud.transport.sockets import tune

if TYPE_CHECKING:
    from meshcloud.transport.tcp import TcpTransport

logger = logging.getLogger(__name__)

CHUNK = 256 * 1024
"""Bytes moved per stream message by a pump."""
REPLY_TIMEOUT = 5.0
"""Seconds a relay waits for the target's answer to a circuit."""

_ENDED = (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError,
          ConnectionLost, StreamReset, TransportError, OSError)


async def pump(sock: socket.socket, stream: Stream) -> None:
    """Copy bytes both ways between ``sock`` and ``stream`` until both directions end;
    closes ``sock``, and aborts ``stream`` if either side failed."""
    tsock = trio.socket.from_stdlib_socket(sock)
    failed = False

    async def outbound() -> None:  # socket → stream
        nonlocal failed
        try:
            while True:
                data = await tsock.recv(CHUNK)
                if not data:
                    await stream.close()
                    return
                await stream.send(data)
        except _ENDED:
            failed = True
            nursery.cancel_scope.cancel()

    async def inbound() -> None:  # stream → socket
        nonlocal failed
        try:
            while True:
                try:
                    data = await stream.receive()
                except trio.EndOfChannel:
                    tsock.shutdown(socket.SHUT_WR)
                    return
                view = memoryview(data)
                while view:
                    view = view[await tsock.send(view):]
        except _ENDED:
            failed = True
            nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbound)
            nursery.start_soon(inbound)
    finally:
        tsock.close()
        if failed:
            with trio.CancelScope(shield=True):
                await stream.abort("relayed connection ended")


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking sockets: the connection's end and the pump's end."""
    ours, theirs = socket.socketpair()
    tune(ours)
    tune(theirs)
    return ours, theirs


async def open_circuit(transport: TcpTransport, relay: bytes, target: bytes) -> socket.socket:
    """A circuit to ``target`` through ``relay``: the socket to run the handshake on (its
    pump runs in the transport's nursery and ends with it)."""
    if transport.authenticator.local_credentials()[0] is None:
        raise TransportError("a joining node cannot use relays")
    stream = await transport.open_stream(relay, RELAY_PROTOCOL)
    try:
        await send_message(stream, RelayConnect(target=target))
        with trio.fail_after(REPLY_TIMEOUT * 2):
            reply = await receive_message(stream, RelayReply)
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.abort("circuit abandoned")
        raise
    if not reply.ok:
        await stream.abort("refused")
        raise TransportError(f"relay {short_id(relay)} refused a circuit to "
                             f"{short_id(target)}: {reply.reason}")
    ours, theirs = socket_pair()
    transport.spawn(pump, theirs, stream)
    return ours


async def hold_reservation(transport: TcpTransport, relay: bytes, *,
                           task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Ask ``relay`` to relay for us; started once it accepted; returns (or raises) when
    the reservation ends: the relay went away, or refused."""
    stream = await transport.open_stream(relay, RELAY_PROTOCOL)
    try:
        await send_message(stream, RelayReserve())
        with trio.fail_after(REPLY_TIMEOUT * 2):
            reply = await receive_message(stream, RelayReply)
        if not reply.ok:
            raise TransportError(f"relay {short_id(relay)} refused a reservation: "
                                 f"{reply.reason}")
        task_status.started()
        while True:  # the relay never sends more; this waits for the stream to end
            await stream.receive()
    except trio.EndOfChannel:
        return
    finally:
        with trio.CancelScope(shield=True):
            await stream.abort("reservation ended")


class _Started:
    """A task status that calls back when started (to know if a failure came after)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def started(self, value: object = None) -> None:
        self.callback()


class RelayService:
    """Serves ``/meshcloud/relay/1`` on a transport: as a relay (reservations, circuits)
    and as a target (circuits arriving through relays we reserved with)."""

    def __init__(self, transport: TcpTransport, config: RelayConfig | None = None) -> None:
        self.transport = transport
        self.limits = RelayLimits(config or RelayConfig())
        self.reserved_with: set[bytes] = set()
        """Relays we hold a reservation with (circuits from others are refused)."""
        self.reservation_streams: dict[bytes, Stream] = {}

    def install(self) -> None:
        self.transport.serve(RELAY_PROTOCOL, self.handle)

    async def reserve(self, relay: bytes, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """:func:`hold_reservation`, remembering the relay while it lasts; returns when
        it ends (a refusal before it started raises)."""
        self.reserved_with.add(relay)
        started = False

        def now_started() -> None:
            nonlocal started
            started = True
            task_status.started()

        status = _Started(now_started)
        try:
            await hold_reservation(self.transport, relay, task_status=status)
        except _ENDED as exc:
            if not started:
                raise
            logger.info("reservation with %s ended: %s", short_id(relay), exc)
        finally:
            self.reserved_with.discard(relay)

    async def handle(self, stream: Stream) -> None:
        first = await receive_message(stream, (RelayReserve, RelayConnect, RelayIncoming))
        if isinstance(first, RelayReserve):
            await self._reservation(stream)
        elif isinstance(first, RelayConnect):
            await self._circuit(stream, first.target)
        else:
            await self._incoming(stream, first.source)

    # --- as a relay -----------------------------------------------------------------------

    async def _reservation(self, stream: Stream) -> None:
        peer = stream.peer.node_id
        reason = self.limits.reserve(peer)
        if reason is not None:
            await send_message(stream, RelayReply(ok=False, reason=reason))
            return
        self.reservation_streams[peer] = stream
        logger.info("relaying for %s", short_id(peer))
        try:
            await send_message(stream, RelayReply(ok=True))
            while True:
                await stream.receive()
        except _ENDED:
            pass
        finally:
            if self.reservation_streams.get(peer) is stream:
                del self.reservation_streams[peer]
                self.limits.release(peer)
            logger.info("no longer relaying for %s", short_id(peer))

    async def _circuit(self, stream: Stream, target: bytes) -> None:
        source = stream.peer.node_id
        reason = self.limits.open_circuit(source, target, trio.current_time())
        if reason is not None:
            await send_message(stream, RelayReply(ok=False, reason=reason))
            return
        try:
            try:
                with trio.fail_after(REPLY_TIMEOUT):
                    onward = await self._open_to(target)
                    await send_message(onward, RelayIncoming(source=source))
                    reply = await receive_message(onward, RelayReply)
            except (trio.TooSlowError, *_ENDED) as exc:
                await send_message(stream, RelayReply(ok=False, reason=f"target: {exc}"))
                return
            await send_message(stream, reply)
            if not reply.ok:
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward, stream, onward, source, nursery)
                nursery.start_soon(self._forward, onward, stream, source, nursery)
        finally:
            self.limits.close_circuit(source)

    async def _open_to(self, target: bytes) -> Stream:
        """A stream to ``target`` over the connection it keeps with us (never a dial)."""
        conn = self.transport._usable(target)
        if conn is None or conn.relayed:  # never a circuit inside a circuit
            raise TransportError("the target is not connected to this relay")
        return await self.transport.open_stream(target, RELAY_PROTOCOL)

    async def _forward(self, src: Stream, dst: Stream, source: bytes,
                       nursery: trio.Nursery) -> None:
        limits = self.limits
        try:
            while True:
                try:
                    data = await src.receive()
                except trio.EndOfChannel:
                    await dst.close()
                    return
                wait = limits.take(source, len(data), trio.current_time())
                if wait > 0:
                    await trio.sleep(wait)
                await dst.send(data)
        except _ENDED:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await src.abort("circuit ended")
                await dst.abort("circuit ended")

    # --- as a target ----------------------------------------------------------------------

    async def _incoming(self, stream: Stream, source: bytes) -> None:
        relay = stream.peer.node_id
        if relay not in self.reserved_with:
            await send_message(stream, RelayReply(ok=False, reason="no reservation with you"))
            return
        await send_message(stream, RelayReply(ok=True))
        ours, theirs = socket_pair()
        self.transport.spawn(self._answer, ours, relay, source)
        await pump(theirs, stream)

    async def _answer(self, sock: socket.socket, relay: bytes, source: bytes) -> None:
        try:
            await self.transport.handshake_over(sock, relay_address(relay), expect=source,
                                                initiator=False, relayed=True)
        except _ENDED as exc:
            logger.debug("relayed connection from %s failed: %s", short_id(source), exc)
        except Exception as exc:  # AuthError and the like: this circuit only
            logger.info("relayed connection from %s refused: %s", short_id(source), exc)

    def status(self) -> dict[str, object]:
        return {**self.limits.to_json(),
                "reserved_with": sorted(r.hex() for r in self.reserved_with)}
