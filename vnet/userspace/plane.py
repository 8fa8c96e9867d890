"""The userspace mode's DataPlane: a SOCKS5 server and port forwards into one V-Net.

:meth:`UserspacePlane.apply` records the peers (and hands the config to the node's
:class:`VnetTcpServer`, so this node answers streams to its own V-Net address on
127.0.0.1) and, the first time, opens the SOCKS5 listener and the forwards. A connection
to an address routed to a peer travels over a mesh stream to that peer's node
(:mod:`vnet.userspace.stream`); one to this node's own V-Net address goes to 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from apps.ingress.forward import splice_stream, splice_tcp
from meshcloud.errors import MeshError
from meshcloud.transport.base import Stream
from meshcloud.transport.peers import PeerAuth
from vnet.plane import PeerStats, PlaneConfig, PlaneError
from vnet.userspace.routing import Local, Refused, Remote, locate, parse_ipv4
from vnet.userspace.socks import Reply, SocksError, SocksHandshake, reply
from vnet.userspace.stream import OPEN_TIMEOUT, VnetTcpError, VnetTcpServer, open_vnet_tcp

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Forward:
    """``-L [BIND:]LISTEN_PORT:ADDRESS:PORT``: connections to BIND:LISTEN_PORT go to the
    V-Net's ADDRESS:PORT."""

    listen_port: int
    address: str
    port: int
    bind: str = "127.0.0.1"


def parse_forward(spec: str) -> Forward:
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise PlaneError(f"forward {spec!r}: expected [BIND:]LISTEN_PORT:ADDRESS:PORT")
    bind = parts[0] if len(parts) == 4 else "127.0.0.1"
    listen, address, port = parts[-3:]
    if parse_ipv4(address) is None or parse_ipv4(bind) is None:
        raise PlaneError(f"forward {spec!r}: addresses are IPv4")
    try:
        forward = Forward(int(listen), address, int(port), bind)
    except ValueError as exc:
        raise PlaneError(f"forward {spec!r}: ports are numbers") from exc
    if not (0 <= forward.listen_port < 65536 and 0 < forward.port < 65536):
        raise PlaneError(f"forward {spec!r}: ports are 1 to 65535")
    return forward


class _Refusal(Exception):
    def __init__(self, code: Reply, why: str) -> None:
        super().__init__(why)
        self.code = code


_REMOTE_CODES = {"connect_failed": Reply.CONNECTION_REFUSED}


class _Counted:
    """A mesh stream that counts the bytes it carries into the plane's per-peer totals."""

    def __init__(self, stream: Stream, totals: list[int]) -> None:
        self._stream = stream
        self._totals = totals  # [rx, tx]
        self.peer: PeerAuth = stream.peer
        self.protocol: str = stream.protocol

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)
        self._totals[1] += len(data)

    async def receive(self) -> bytes:
        data = await self._stream.receive()
        self._totals[0] += len(data)
        return data

    async def close(self) -> None:
        await self._stream.close()

    async def abort(self, reason: str = "") -> None:
        await self._stream.abort(reason)


class UserspacePlane:
    """The :class:`vnet.plane.DataPlane` named ``userspace``; its listeners run in
    ``nursery``."""

    name = "userspace"

    def __init__(self, server: VnetTcpServer, nursery: trio.Nursery, *,
                 socks_host: str = "127.0.0.1", socks_port: int = 0,
                 forwards: Sequence[Forward] = (),
                 resolve: Callable[[str], str | None] | None = None) -> None:
        self._server = server
        self._resolve = resolve
        """Names (``web.NAME.vnet``…) to V-Net addresses, if the node has a resolver."""
        self._nursery = nursery
        self._socks_host = socks_host
        self._socks_port = socks_port
        self._forwards = tuple(forwards)
        self._config: PlaneConfig | None = None
        self._scope: trio.CancelScope | None = None
        self._port = 0
        self._bytes: dict[bytes, list[int]] = {}
        self.forward_ports: list[int] = []
        """The ports the forwards listen on (in the order given), once applied."""

    # --- DataPlane -----------------------------------------------------------------------

    async def apply(self, config: PlaneConfig) -> None:
        if self._config is not None and self._config.vnet != config.vnet:
            raise PlaneError("a userspace plane serves one V-Net; close it first")
        self._config = config
        self._server.update(config, loopback=True)
        if self._scope is None:
            await self._listen()

    def listen_port(self) -> int:
        """The SOCKS5 port."""
        if not self._port:
            raise PlaneError("the userspace plane is not running (apply a config first)")
        return self._port

    def stats(self) -> list[PeerStats]:
        if self._config is None:
            return []
        out = []
        for peer in self._config.peers:
            rx, tx = self._bytes.get(peer.node_id, [0, 0])
            out.append(PeerStats(peer.public_key, peer.endpoint, rx, tx, None))
        return out

    async def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        if self._config is not None:
            self._server.remove(self._config.vnet)
            self._config = None
        self._port = 0
        self.forward_ports = []

    # --- listeners -----------------------------------------------------------------------

    async def _listen(self) -> None:
        try:
            socks = await trio.open_tcp_listeners(self._socks_port, host=self._socks_host)
            forwards = [(f, await trio.open_tcp_listeners(f.listen_port, host=f.bind))
                        for f in self._forwards]
        except OSError as exc:
            raise PlaneError(f"userspace plane cannot listen: {exc}") from exc
        self._port = socks[0].socket.getsockname()[1]
        self.forward_ports = [listeners[0].socket.getsockname()[1] for _, listeners in forwards]
        scope = self._scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.serve_listeners, self._socks, socks)
                    for forward, listeners in forwards:
                        nursery.start_soon(trio.serve_listeners, self._forward_handler(forward),
                                           listeners)

        self._nursery.start_soon(run)

    def _forward_handler(self, forward: Forward
                         ) -> Callable[[trio.SocketStream], Awaitable[None]]:
        async def handle(client: trio.SocketStream) -> None:
            try:
                target = await self._open(forward.address, forward.port)
            except _Refusal as exc:
                log.info("forward to %s:%d refused: %s", forward.address, forward.port, exc)
                await client.aclose()
                return
            await self._splice(client, target)
        return handle

    async def _socks(self, client: trio.SocketStream) -> None:
        handshake = SocksHandshake()
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                request = None
                while request is None:
                    data = await client.receive_some(4096)
                    if not data:
                        await client.aclose()
                        return
                    out, request = handshake.feed(bytes(data))
                    if out:
                        await client.send_all(out)
        except SocksError as exc:
            log.debug("SOCKS client refused: %s", exc)
            try:
                if exc.reply:
                    await client.send_all(exc.reply)
            except (OSError, trio.BrokenResourceError):
                pass
            await client.aclose()
            return
        except (OSError, trio.BrokenResourceError, trio.TooSlowError):
            await client.aclose()
            return
        try:
            target = await self._open(request.host, request.port)
        except _Refusal as exc:
            log.info("SOCKS connect to %s:%d refused: %s", request.host, request.port, exc)
            try:
                await client.send_all(reply(exc.code))
            except (OSError, trio.BrokenResourceError):
                pass
            await client.aclose()
            return
        try:
            await client.send_all(reply(Reply.SUCCEEDED))
            if handshake.leftover:
                if isinstance(target, trio.SocketStream):
                    await target.send_all(handshake.leftover)
                else:
                    await target.send(handshake.leftover)
        except (OSError, MeshError, trio.BrokenResourceError, trio.ClosedResourceError):
            await client.aclose()
            await (target.aclose() if isinstance(target, trio.SocketStream)
                   else target.abort("client went away"))
            return
        await self._splice(client, target)

    async def _splice(self, client: trio.SocketStream,
                      target: trio.SocketStream | _Counted) -> None:
        if isinstance(target, trio.SocketStream):
            await splice_tcp(client, target)
        else:
            await splice_stream(client, target)

    async def _open(self, host: str, port: int) -> trio.SocketStream | _Counted:
        config = self._config
        if config is None:
            raise _Refusal(Reply.NETWORK_UNREACHABLE, "no V-Net applied")
        address = parse_ipv4(host)
        if address is None and self._resolve is not None:
            resolved = self._resolve(host)
            address = parse_ipv4(resolved) if resolved else None
        if address is None:
            raise _Refusal(Reply.HOST_UNREACHABLE, f"{host}: not a V-Net address or name")
        where: Local | Remote | Refused = locate(config, address, loopback=True)
        if isinstance(where, Refused):
            code = Reply.NOT_ALLOWED if where.reason == "outside" else Reply.HOST_UNREACHABLE
            raise _Refusal(code, f"{host}: {where.reason}")
        try:
            with trio.fail_after(OPEN_TIMEOUT):
                if isinstance(where, Local):
                    return await trio.open_tcp_stream(where.host, port)
                node = where.peer.node_id
                stream = await open_vnet_tcp(self._server.transport, node, config.vnet,
                                             str(address), port)
        except VnetTcpError as exc:
            raise _Refusal(_REMOTE_CODES.get(exc.code, Reply.HOST_UNREACHABLE),
                           str(exc)) from exc
        except OSError as exc:
            raise _Refusal(Reply.CONNECTION_REFUSED, str(exc)) from exc
        except (MeshError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            raise _Refusal(Reply.HOST_UNREACHABLE, f"{host}: {exc!r}") from exc
        return _Counted(stream, self._bytes.setdefault(node, [0, 0]))
