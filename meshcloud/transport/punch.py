"""Hole punching (``/meshcloud/punch/1``): turn a relayed connection into a direct one.

Over the relayed connection, the node that dialled it (the *offerer*) sends
:class:`~meshcloud.transport.natmessages.PunchOffer` with where it expects to be
reachable from outside; the other answers with its own (:class:`PunchAnswer`). The
offerer measures that round trip, sends :class:`PunchGo` and waits half of it, while the
answerer starts at once on receiving it: both then connect *to each other at the same
time*, each from its own listening port (SO_REUSEADDR/SO_REUSEPORT), to the other's
predicted address. Each outgoing SYN opens the sender's NAT for the other's SYN, and TCP's
simultaneous open turns the two into one connection. It then carries a new Noise session
(the node with the smaller id initiates), and the transport retires the relayed
connection in favour of the direct one (:meth:`TcpTransport._preference`).

Attempts are repeated for :data:`PUNCH_WINDOW` seconds (an early SYN may be refused or
dropped); a failed punch leaves the relayed connection as it was.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from meshcloud.errors import (
    AuthError,
    ConfigError,
    MeshError,
    RemoteProtocolError,
    TransportError,
)
from meshcloud.identity.keys import short_id
from meshcloud.transport.addresses import parse_address
from meshcloud.transport.base import Stream, receive_message, send_message
from meshcloud.transport.natmessages import (
    PUNCH_PROTOCOL,
    PunchAnswer,
    PunchGo,
    PunchOffer,
)
from meshcloud.transport.sockets import bind_for_punch, connect, connect_socket

if TYPE_CHECKING:
    from meshcloud.transport.connection import Connection
    from meshcloud.transport.tcp import TcpTransport

logger = logging.getLogger(__name__)

PUNCH_WINDOW = 5.0
"""Seconds both sides keep trying to connect."""
RETRY = 0.05
"""Seconds between two connect attempts after a refusal."""
EXCHANGE_TIMEOUT = 5.0



async def simultaneous_open(local: str, remote: str, window: float = PUNCH_WINDOW
                            ) -> socket.socket | None:
    """Connect from ``local`` (our listening address) to ``remote`` until it works or
    ``window`` passes; the connected socket, or None."""
    try:
        target = parse_address(remote)
    except ConfigError:
        return None
    with trio.move_on_after(window):
        while True:
            try:
                sock = bind_for_punch(local)
            except OSError as exc:
                logger.info("cannot punch from %s: %s", local, exc)
                return None
            try:
                await connect_socket(sock, target)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno not in (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRINUSE,
                                     errno.EADDRNOTAVAIL):
                    logger.debug("punch to %s failed: %s", remote, exc)
                    return None
            except BaseException:
                sock.close()
                raise
            await trio.sleep(RETRY)
    return None


async def _connect_both(transport: TcpTransport, peer: bytes, remotes: tuple[str, ...], *,
                        peer_public: bool) -> Connection | None:
    """Both behind NAT: simultaneous open. The peer can be dialled: a plain dial to it
    (a connection reversal). Then the handshake, and the transport keeps the direct one."""
    local = transport.listen_addresses[0]
    for remote in remotes[:2]:
        if peer_public:
            try:
                host, port = parse_address(remote)
                with trio.fail_after(PUNCH_WINDOW):
                    sock = await connect(host, port, remote)
            except (ConfigError, TransportError, trio.TooSlowError):
                continue
            initiator = True
        else:
            found = await simultaneous_open(local, remote)
            if found is None:
                continue
            sock, initiator = found, transport.local_id < peer
        try:
            conn = await transport.handshake_over(sock, remote, expect=peer,
                                                  initiator=initiator, punched=True)
        except (MeshError, AuthError, RemoteProtocolError) as exc:
            logger.info("punched to %s but the handshake failed: %s", short_id(peer), exc)
            continue
        logger.info("direct connection to %s after a hole punch (%s)", short_id(peer), remote)
        return conn
    return None


async def punch(transport: TcpTransport, peer: bytes, addresses: list[str], *,
                public: bool = False) -> Connection | None:
    """As the offerer, over the (relayed) connection to ``peer``: the direct connection
    (None if the punch failed, or if we are the side to be dialled: then the peer
    connects to us and our listener accepts it)."""
    if not addresses or not transport.listen_addresses:
        return None
    stream = await transport.open_stream(peer, PUNCH_PROTOCOL)
    try:
        with trio.fail_after(EXCHANGE_TIMEOUT):
            start = trio.current_time()
            await send_message(stream, PunchOffer(addresses=tuple(addresses[:8]),
                                                  public=public))
            answer = await receive_message(stream, PunchAnswer)
            rtt = trio.current_time() - start
            await send_message(stream, PunchGo())
            await stream.close()
    except (trio.TooSlowError, trio.EndOfChannel, MeshError) as exc:
        with trio.CancelScope(shield=True):
            await stream.abort("punch abandoned")
        logger.debug("punch exchange with %s failed: %r", short_id(peer), exc)
        return None
    if not answer.addresses or public:
        return None
    await trio.sleep(rtt / 2)
    return await _connect_both(transport, peer, answer.addresses, peer_public=answer.public)


def serve_punch(transport: TcpTransport, addresses: Callable[[], tuple[list[str], bool]],
                on_direct: Callable[[bytes], None] | None = None) -> None:
    """Answer punch offers with ``addresses()``: where we expect to be reachable, and
    whether we can be dialled."""

    async def handle(stream: Stream) -> None:
        peer = stream.peer.node_id
        offer = await receive_message(stream, PunchOffer)
        mine, public = addresses()
        await send_message(stream, PunchAnswer(addresses=tuple(mine[:8]), public=public))
        if not mine:
            return
        with trio.fail_after(EXCHANGE_TIMEOUT):
            await receive_message(stream, PunchGo)
        if public:
            return  # the offerer dials us
        conn = await _connect_both(transport, peer, offer.addresses, peer_public=offer.public)
        if conn is not None and on_direct is not None:
            on_direct(peer)

    transport.serve(PUNCH_PROTOCOL, handle)
