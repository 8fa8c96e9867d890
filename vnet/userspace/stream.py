"""``/meshcloud/vnet-tcp/1``: one TCP connection to a V-Net address over one mesh stream.

The entry node opens a stream to the node the address is routed to and sends
:class:`VnetTcpOpen`; that node checks the request against its *own* PlaneConfig for the
V-Net (the requester is a peer of it; the address is local here), connects, and answers
:class:`VnetTcpReply`; then each stream message is a chunk of bytes, spliced exactly as
the ingress forwards (:mod:`apps.ingress.forward`): the transport encrypts and
authenticates the stream and its credit is the flow control.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from apps.ingress.forward import splice_stream
from meshcloud.codec.messages import decode_message, encode_message, message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import MeshError
from meshcloud.transport.base import Stream, Transport
from vnet.plane import PlaneConfig
from vnet.userspace.routing import Local, accepts

log = logging.getLogger(__name__)

VNET_TCP_PROTOCOL = "/meshcloud/vnet-tcp/1"
OPEN_TIMEOUT = 10.0
MAX_CONTROL = 4096
_ERRORS = (MeshError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
           trio.EndOfChannel, trio.TooSlowError)


@message(TagBlock.VNET + 90)
@dataclass(frozen=True, slots=True, kw_only=True)
class VnetTcpOpen:
    vnet: str
    address: str
    port: int


@message(TagBlock.VNET + 91)
@dataclass(frozen=True, slots=True, kw_only=True)
class VnetTcpReply:
    ok: bool
    code: str = ""
    message: str = ""


class VnetTcpError(MeshError):
    """The far node refused or failed the connection (code: not_member, not_here,
    no_vnet, connect_failed, bad_request)."""

    code = "vnet_tcp_failed"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message or code, code=code)


Dial = Callable[[str, int], Awaitable[trio.SocketStream]]


async def open_vnet_tcp(transport: Transport, node: bytes, vnet: str, address: str,
                        port: int) -> Stream:
    """A stream connected to ``address:port`` through ``node``; VnetTcpError if refused."""
    stream = await transport.open_stream(node, VNET_TCP_PROTOCOL)
    try:
        with trio.fail_after(OPEN_TIMEOUT):
            await stream.send(encode_message(VnetTcpOpen(vnet=vnet, address=address,
                                                         port=port)))
            answer = decode_message(await stream.receive(), VnetTcpReply,
                                    max_size=MAX_CONTROL)
    except BaseException:
        with trio.move_on_after(1):
            await stream.abort("vnet-tcp open failed")
        raise
    if not answer.ok:
        with trio.move_on_after(1):
            await stream.abort("refused")
        raise VnetTcpError(answer.code or "refused", answer.message)
    return stream


class VnetTcpServer:
    """The target side, one per node: serves the protocol for every V-Net this node takes
    part in (any plane calls :meth:`update`; ``loopback`` for planes with no interface)."""

    def __init__(self, transport: Transport, dial: Dial | None = None) -> None:
        self.transport = transport
        self._dial: Dial = dial or trio.open_tcp_stream
        self._configs: dict[str, tuple[PlaneConfig, bool]] = {}
        transport.serve(VNET_TCP_PROTOCOL, self.handle)

    def update(self, config: PlaneConfig, *, loopback: bool) -> None:
        self._configs[config.vnet] = (config, loopback)

    def remove(self, vnet: str) -> None:
        self._configs.pop(vnet, None)

    async def handle(self, stream: Stream) -> None:
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                request = decode_message(await stream.receive(), VnetTcpOpen,
                                         max_size=MAX_CONTROL)
                target = self._check(stream.peer.node_id, request)
                if isinstance(target, VnetTcpReply):
                    await stream.send(encode_message(target))
                    await stream.close()
                    return
                try:
                    tcp = await self._dial(target.host, request.port)
                except OSError as exc:
                    await stream.send(encode_message(VnetTcpReply(
                        ok=False, code="connect_failed",
                        message=f"{request.address}:{request.port}: {exc}")))
                    await stream.close()
                    return
        except _ERRORS as exc:
            log.debug("vnet-tcp open from %s failed: %r", stream.peer, exc)
            with trio.move_on_after(1):
                await stream.abort("bad vnet-tcp open")
            return
        try:
            await stream.send(encode_message(VnetTcpReply(ok=True)))
        except _ERRORS:
            await tcp.aclose()
            return
        await splice_stream(tcp, stream)

    def _check(self, node_id: bytes, request: VnetTcpOpen) -> Local | VnetTcpReply:
        entry = self._configs.get(request.vnet)
        if entry is None:
            return VnetTcpReply(ok=False, code="no_vnet",
                                message=f"this node is not in V-Net {request.vnet!r}")
        try:
            address = ipaddress.IPv4Address(request.address)
        except ValueError:
            return VnetTcpReply(ok=False, code="bad_request", message="not an IPv4 address")
        if not 0 < request.port < 65536:
            return VnetTcpReply(ok=False, code="bad_request", message="bad port")
        config, loopback = entry
        verdict = accepts(config, node_id, address, loopback=loopback)
        if isinstance(verdict, Local):
            return verdict
        return VnetTcpReply(ok=False, code=verdict.reason,
                            message=f"{address} in {request.vnet}: {verdict.reason}")
