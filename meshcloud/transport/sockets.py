"""Socket plumbing for the TCP transport: non-blocking stdlib sockets driven by trio.

The transport talks to sockets directly (``trio.lowlevel.wait_readable``/``wait_writable``
around ``recv``/``send``): one syscall per read or write and no buffering layer in between.
This module holds the parts that are not about connections: binding, connecting with
address resolution, and exchanging handshake messages.
"""

from __future__ import annotations

import ipaddress
import os
import socket

import trio

from meshcloud.errors import AuthError, ConfigError, RemoteProtocolError, TransportError
from meshcloud.transport.addresses import parse_address
from meshcloud.transport.admission import TransportCounters
from meshcloud.transport.handshake import HandshakeCore, HandshakeStatus


def tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # we coalesce ourselves


def _open(family: int, kind: int, proto: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


async def bind(address: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket on ``address``. With ``reuse_port`` (hole punching connects from
    the listening port) SO_REUSEPORT is set only *after* binding: the bind itself still
    refuses a port in use, and port 0 still gets a port nobody holds."""
    host, port = parse_address(address)
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                          flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = _open(family, kind, proto, reuse_port=False)
    try:
        sock.bind(sockaddr)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


def bind_for_punch(local: str) -> socket.socket:
    """A non-blocking socket bound to our listening address (SO_REUSEPORT), to connect
    from: the NAT maps it like the address peers saw us at."""
    host, port = parse_address(local)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _open(family, socket.SOCK_STREAM, 0, reuse_port=True)
    try:
        sock.bind((host, port))
        tune(sock)
    except OSError:
        sock.close()
        raise
    return sock


def source_for(listen: list[str], target: str) -> str | None:
    """Where a connection to ``target`` starts from: for a loopback target, the first
    loopback address this node listens on, so that several nodes on one machine, each on
    its own 127.x address, connect *from* that address and can be partitioned by source
    with iptables. Otherwise None: the kernel picks (a multi-homed machine's routing
    knows better than a listen address)."""
    try:
        if not ipaddress.ip_address(target).is_loopback:
            return None
    except ValueError:
        return None
    for spec in listen:
        try:
            host, _ = parse_address(spec)
            ip = ipaddress.ip_address(host)
        except (ConfigError, ValueError):
            continue
        if ip.is_loopback and ip.version == ipaddress.ip_address(target).version:
            # 127.0.0.1 and ::1 are what the kernel picks anyway: leave its path alone
            return None if str(ip) in ("127.0.0.1", "::1") else str(ip)
    return None


async def connect_socket(sock: socket.socket, address: socket._Address) -> None:
    """Connect a non-blocking ``sock`` to ``address`` (OSError if the connect fails)."""
    try:
        sock.connect(address)
    except BlockingIOError:
        await trio.lowlevel.wait_writable(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error)) from None


async def connect(host: str, port: int, address: str, *,
                  listen: list[str] | None = None) -> socket.socket:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError(f"cannot resolve {address}: {exc}") from None
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            tune(sock)
            source = source_for(listen or [], str(sockaddr[0]))
            if source is not None:
                sock.bind((source, 0))
            await connect_socket(sock, sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    reason = (last.strerror or str(last)).lower() if last is not None else "no address"
    raise TransportError(f"cannot reach {address}: {reason}")


async def send_all(sock: socket.socket, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]
    await trio.lowlevel.checkpoint()


async def receive_some(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)


async def run_handshake(sock: socket.socket, core: HandshakeCore,
                        counters: TransportCounters | None = None
                        ) -> tuple[list[bytes | bytearray], bytes]:
    """Exchange handshake messages until the core is done; a refusal is sent before raising.

    Returns the transport data that arrived early and the bytes still to send (the
    listener's verdict): the caller registers the connection first, so that a dialer told
    "accepted" always finds it registered here.
    """
    if counters is None:
        counters = TransportCounters()  # counted nowhere

    async def send(data: bytes) -> None:
        counters.packets_sent += 1
        counters.bytes_sent += len(data)
        await send_all(sock, data)

    try:
        await send(core.data_to_send())
        while True:
            data = await receive_some(sock)
            if not data:
                raise TransportError("peer closed the connection during the handshake")
            counters.packets_received += 1
            counters.bytes_received += len(data)
            try:
                early = core.receive_data(data)
            except (AuthError, RemoteProtocolError):
                verdict = core.data_to_send()
                if verdict:
                    with trio.move_on_after(1.0):
                        await send(verdict)
                raise
            out = core.data_to_send()
            if core.status is HandshakeStatus.DONE:
                return early, out
            if out:
                await send(out)
    except OSError as exc:
        raise TransportError(f"connection failed during the handshake: "
                             f"{exc.strerror or exc}") from None
