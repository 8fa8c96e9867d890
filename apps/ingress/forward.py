"""``/meshcloud/forward/1``: one TCP connection carried over one mesh stream.

The node that accepted the connection opens a stream to the node of the chosen replica
and sends :class:`ForwardOpen`; that node looks the replica's port up in its *own*
records, connects to ``127.0.0.1:PORT`` and answers :class:`ForwardReply`; then each
stream message is a chunk of bytes. The transport encrypts and authenticates the
stream and its credit is the flow control (a slow reader stalls the writer, never a
buffer). Half-close: TCP EOF one way is a stream close (and the reverse), the other way
stays open until it ends too. An error either way resets both.

After the reply, :func:`splice_stream` (the opener) and :func:`serve_forward` (the
target) agree on the path of the bytes (:mod:`apps.ingress.fastpath`): between the two
nodes' forward relays on a direct connection sealed with keys agreed on the stream, or
on the stream itself. An opener that speaks first on the stream (the HTTP ingress)
stays on the stream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from apps.ingress import fastpath
from apps.ingress.messages import FORWARD_PROTOCOL, ForwardOpen, ForwardReply
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError
from meshcloud.transport.base import Stream, Transport

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
"""Bytes read from TCP per stream message."""
OPEN_TIMEOUT = 5.0
"""Seconds for the open handshake (and the target's connect to its replica)."""
MAX_CONTROL = 4096

_ERRORS = (MeshError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
           trio.EndOfChannel, trio.TooSlowError)


class ForwardError(MeshError):
    """A forward could not be opened (the code says why: no_replica, connect_failed…)."""

    code = "forward_failed"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message or code, code=code)


async def send_now(stream: Any, data: bytes) -> None:
    """``stream.send_all(data)``, but for a TCP stream whose socket takes all of ``data``
    at once (the usual case for a response or a request head), written straight to it:
    no round trip through trio's scheduler (the checkpoint of each send costs a task
    step). The caller's next read is the checkpoint; the caller is the stream's only
    writer (a write straight to the socket bypasses send_all's conflict check)."""
    if type(stream) is trio.SocketStream:
        try:
            sent = os.write(stream.socket.fileno(), data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    await stream.send_all(data)


async def _tcp_to_stream(tcp: trio.SocketStream, stream: Stream) -> None:
    while data := await tcp.receive_some(CHUNK):
        await stream.send(bytes(data))
    await stream.close()


async def _stream_to_tcp(stream: Stream, tcp: trio.SocketStream) -> None:
    while True:
        try:
            data = await stream.receive()
        except trio.EndOfChannel:
            await tcp.send_eof()
            return
        await send_now(tcp, data)  # (each stream.receive is a checkpoint)


async def _tcp_to_tcp(a: trio.SocketStream, b: trio.SocketStream) -> None:
    while data := await a.receive_some(CHUNK):
        await b.send_all(data)
    await b.send_eof()


async def _both(one: Callable[[], Awaitable[None]], other: Callable[[], Awaitable[None]]
                ) -> bool:
    """Run both directions; the first error cancels the other. True if both ended
    cleanly."""
    failed = False

    async def guard(fn: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        nonlocal failed
        try:
            await fn()
        except _ERRORS as exc:
            failed = True
            log.debug("forward direction ended: %r", exc)
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard, one, nursery.cancel_scope)
        nursery.start_soon(guard, other, nursery.cancel_scope)
    return not failed


async def splice_stream(tcp: trio.SocketStream, stream: Stream) -> bool:
    """Carry a TCP connection on an opened forward stream until both ways ended: on the
    direct path when the target offers it, else on the stream. True if it ended cleanly."""
    try:
        try:
            direct = await fastpath.open_direct(tcp, stream)
        except _ERRORS as exc:
            log.debug("forward path negotiation failed: %r", exc)
            with trio.move_on_after(1):
                await stream.abort("forward path negotiation failed")
            return False
        if direct is not None:
            return direct
        return await _splice(tcp, stream)
    finally:
        await tcp.aclose()


async def _splice(tcp: trio.SocketStream, stream: Stream) -> bool:
    """Copy both ways between a TCP connection and a forward stream until both ended."""
    ok = await _both(lambda: _tcp_to_stream(tcp, stream),
                     lambda: _stream_to_tcp(stream, tcp))
    if not ok:
        with trio.move_on_after(1):
            await stream.abort("forward failed")
    return ok


async def splice_tcp(a: trio.SocketStream, b: trio.SocketStream) -> bool:
    """Copy both ways between two TCP connections (a replica on this node)."""
    try:
        return await _both(lambda: _tcp_to_tcp(a, b), lambda: _tcp_to_tcp(b, a))
    finally:
        await a.aclose()
        await b.aclose()


async def open_forward(transport: Transport, node: bytes, workload: str, endpoint: str,
                       index: int, protocol: str = FORWARD_PROTOCOL) -> Stream:
    """A stream connected to replica ``index`` on ``node``; ForwardError if refused.
    ``protocol`` is the target's forward protocol (a service may serve its own)."""
    stream = await transport.open_stream(node, protocol)
    try:
        with trio.fail_after(OPEN_TIMEOUT):
            await stream.send(encode_message(
                ForwardOpen(workload=workload, endpoint=endpoint, index=index)))
            reply = decode_message(await stream.receive(), ForwardReply,
                                   max_size=MAX_CONTROL)
    except BaseException:
        with trio.move_on_after(1):
            await stream.abort("forward open failed")
        raise
    if not reply.ok:
        with trio.move_on_after(1):
            await stream.abort("refused")
        raise ForwardError(reply.code or "refused", reply.message)
    return stream


async def serve_forward(stream: Stream, resolve: Callable[[ForwardOpen], int | None],
                        host: str = "127.0.0.1") -> None:
    """The target side: check the request against our own records, connect, splice."""
    try:
        with trio.fail_after(OPEN_TIMEOUT):
            request = decode_message(await stream.receive(), ForwardOpen,
                                     max_size=MAX_CONTROL)
            port = resolve(request)
            if port is None:
                await _refuse(stream, "no_replica",
                              f"{request.workload}:{request.endpoint} replica "
                              f"{request.index} does not run here")
                return
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                await _refuse(stream, "connect_failed", f"replica port {port}: {exc}")
                return
    except _ERRORS as exc:
        log.debug("forward open from %s failed: %r", stream.peer, exc)
        with trio.move_on_after(1):
            await stream.abort("bad forward open")
        return
    try:
        try:
            await stream.send(encode_message(ForwardReply(ok=True)))
            first = await stream.receive()
        except trio.EndOfChannel:  # the opener sent nothing and ended its side
            await _splice(tcp, stream)
            return
        except _ERRORS:
            with trio.move_on_after(1):
                await stream.abort("forward failed")
            return
        path = fastpath.decode_path(first)
        if path is None:  # the opener speaks on the stream at once
            try:
                await tcp.send_all(first)
            except _ERRORS:
                with trio.move_on_after(1):
                    await stream.abort("forward failed")
                return
        else:
            try:
                direct = await fastpath.serve_direct(tcp, stream, path)
            except _ERRORS as exc:
                log.debug("forward path negotiation failed: %r", exc)
                with trio.move_on_after(1):
                    await stream.abort("forward path negotiation failed")
                return
            if direct is not None:
                return
        await _splice(tcp, stream)
    finally:
        await tcp.aclose()


async def _refuse(stream: Stream, code: str, message: str) -> None:
    await stream.send(encode_message(ForwardReply(ok=False, code=code, message=message)))
    await stream.close()


async def connect_upstream(here: bool, local: Callable[[], Awaitable[trio.SocketStream]],
                           remote: Callable[[], Awaitable[Stream]],
                           what: str) -> trio.SocketStream | Stream | None:
    """A service's way to its replica: ``local()`` (its TCP port) when it runs on this node
    (``here``), else ``remote()`` (a forward stream to its node), within OPEN_TIMEOUT.
    None, logged with ``what``, when it does not open."""
    try:
        with trio.fail_after(OPEN_TIMEOUT):
            return await (local() if here else remote())
    except _ERRORS as exc:  # ForwardError (a refusal) is a MeshError
        log.info("%s: %r", what, exc)
        return None


async def splice_upstream(client: trio.SocketStream,
                          upstream: trio.SocketStream | Stream) -> bool:
    """Copy both ways between ``client`` and what :func:`connect_upstream` opened."""
    if isinstance(upstream, trio.SocketStream):
        return await splice_tcp(client, upstream)
    return await splice_stream(client, upstream)
