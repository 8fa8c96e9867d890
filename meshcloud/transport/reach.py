"""``/meshcloud/reach/1``: members tell a node whether it can be dialled.

The prober sends :class:`~meshcloud.transport.natmessages.ReachProbe` with the addresses
it listens on; the member answers with the address the prober's connection came from (if
the prober dialled it: otherwise it does not know) and which of the addresses it could
open a TCP connection to (a *dial-back*: a bare connect, closed at once, at most
:data:`MAX_DIALBACKS` addresses, each within :data:`DIALBACK_TIMEOUT`). The verdict is
the prober's (:mod:`~meshcloud.transport.reachability`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from meshcloud.errors import ConfigError, TransportError
from meshcloud.transport.addresses import parse_address
from meshcloud.transport.base import Stream, receive_message, request, send_message
from meshcloud.transport.natmessages import REACH_PROTOCOL, ReachProbe, ReachReport
from meshcloud.transport.sockets import connect

if TYPE_CHECKING:
    from meshcloud.transport.tcp import TcpTransport

logger = logging.getLogger(__name__)

MAX_DIALBACKS = 4
DIALBACK_TIMEOUT = 2.0


async def can_connect(address: str, timeout: float = DIALBACK_TIMEOUT) -> bool:
    try:
        host, port = parse_address(address)
    except ConfigError:
        return False
    if host in ("0.0.0.0", "::") or port == 0:
        return False
    with trio.move_on_after(timeout):
        try:
            sock = await connect(host, port, address)
        except TransportError:
            return False
        sock.close()
        return True
    return False


def serve_reach(transport: TcpTransport) -> None:
    async def handle(stream: Stream) -> None:
        probe = await receive_message(stream, ReachProbe)
        observed = ""
        for conn in transport.connections_to(stream.peer.node_id):
            if not conn.we_dialed and not conn.relayed and not conn.lost:
                observed = conn.address
        dialable = []
        for address in probe.addresses[:MAX_DIALBACKS]:
            if await can_connect(address):
                dialable.append(address)
        await send_message(stream, ReachReport(observed=observed, dialable=tuple(dialable)))

    transport.serve(REACH_PROTOCOL, handle)


async def probe(transport: TcpTransport, member: bytes, addresses: list[str]) -> ReachReport:
    """Ask ``member`` about us. Callers bound it with trio.fail_after."""
    report: ReachReport = await request(transport, member, REACH_PROTOCOL,
                                        ReachProbe(addresses=tuple(addresses[:8])),
                                        ReachReport)
    return report
