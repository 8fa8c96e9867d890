"""A forward's direct connection spoken by the agent itself: the HTTP ingress's upstream.

A TCP forward's opener hands its client socket to its node's forward relay
(:mod:`apps.ingress.fastpath`). The HTTP ingress parses every byte of its upstream
connections anyway, so it dials the *target's* relay itself and seals and opens the
records (:mod:`apps.ingress.fastseal`) in its own loop: per request, one process less
to wake on each way (no relay of its own), and the target's agent is off the path as
for any direct forward. :class:`SealedStream` is a half-closeable byte stream
(``receive_some``, ``send_all``, ``send_eof``, ``aclose``) over such a connection;
:func:`lifeline` ties it to the forward's mesh stream.
"""

from __future__ import annotations

import contextlib
import logging
import os

import trio

from apps.ingress.fastseal import FIN, HELLO, MAX_RECORD, Sealer, SealError, Unsealer
from meshcloud.errors import MeshError
from meshcloud.transport.base import Stream

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
_STREAM_ERRORS = (MeshError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class SealedStream:
    """Plain bytes in and out of a sealed connection to a target's forward relay."""

    def __init__(self, tcp: trio.SocketStream, sealer: Sealer, unsealer: Unsealer) -> None:
        self.tcp = tcp
        self.sealer = sealer
        self.unsealer = unsealer
        self.scope = trio.CancelScope()
        """The lifeline's: cancelled when this stream is closed."""
        self.closed = False

    async def hello(self, token: bytes) -> None:
        """The dialer's greeting: the forward's token and an empty HELLO record."""
        await self.tcp.send_all(token + self.sealer.seal(b"", HELLO))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.sealer.finished:
            raise trio.ClosedResourceError("this direction has ended")
        view = memoryview(data)
        records = [self.sealer.seal(view[i:i + MAX_RECORD])
                   for i in range(0, len(view), MAX_RECORD)]
        if records:
            await self.tcp.send_all(records[0] if len(records) == 1 else b"".join(records))

    async def send_eof(self) -> None:
        if not self.sealer.finished:
            await self.tcp.send_all(self.sealer.seal(b"", FIN))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next plaintext bytes; b"" at the peer's FIN. A connection cut before its
        FIN, or a record that does not open, is ``trio.BrokenResourceError``."""
        unsealer = self.unsealer
        while not unsealer.finished:
            data = await self.tcp.receive_some(READ_SIZE)
            if not data:
                raise trio.BrokenResourceError("sealed connection cut short (no FIN record)")
            try:
                out = unsealer.feed(data)
            except SealError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            if out:
                return out[0] if len(out) == 1 else b"".join(out)
        return b""

    def cut(self) -> None:
        """Fail pending and later reads and writes (the forward's lifeline was lost)."""
        with contextlib.suppress(OSError):
            self.tcp.socket.shutdown(trio.socket.SHUT_RDWR)

    async def aclose(self) -> None:
        """Close: a FIN record first if ours was not sent (the relay ends the forward
        cleanly), without waiting for room in the socket."""
        if not self.closed:
            self.closed = True
            self.scope.cancel()
            if not self.sealer.finished:
                with contextlib.suppress(OSError, SealError):
                    os.write(self.tcp.socket.fileno(), self.sealer.seal(b"", FIN))
        await self.tcp.aclose()


async def lifeline(stream: Stream, sealed: SealedStream) -> None:
    """Hold the forward's mesh stream while ``sealed`` is open: a stream that fails (the
    target's relay failed the forward, its node died, the mesh connection was lost) cuts
    ``sealed``; closing ``sealed`` closes the stream. Never raises."""
    ok = True
    with sealed.scope:
        try:
            while True:
                await stream.receive()
        except trio.EndOfChannel:
            pass  # the target's relay ended the forward cleanly
        except _STREAM_ERRORS as exc:
            log.debug("forward lifeline lost: %r", exc)
            ok = False
    if not ok:
        sealed.cut()
    with trio.move_on_after(1):
        try:
            if ok:
                await stream.close()
            else:
                await stream.abort("forward failed")
        except _STREAM_ERRORS:
            pass
