"""The resolver a node runs on its address in each V-Net (UDP port 53), answering the
names of :mod:`vnet.names` with dnspython's message codec."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

from vnet.core import MemberKey
from vnet.names import resolve_name
from vnet.records import MemberRecord

log = logging.getLogger(__name__)

PORT = 53
TTL = 5
MAX_QUERY = 512


def answer(query: bytes, vnet: str, members: Mapping[MemberKey, MemberRecord]
           ) -> bytes | None:
    """The response to one query (None for something that is not a DNS query)."""
    try:
        request = dns.message.from_wire(query)
    except (dns.exception.DNSException, ValueError):
        return None
    response = dns.message.make_response(request)
    response.flags |= dns.flags.AA
    if len(request.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    question = request.question[0]
    name = question.name.to_text()
    found = resolve_name(name, vnet, members)
    if found is None:
        response.set_rcode(dns.rcode.REFUSED)
    elif not found:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
        response.answer.append(dns.rrset.from_text_list(
            question.name, TTL, dns.rdataclass.IN, dns.rdatatype.A,
            [str(a) for a in found]))
    wire: bytes = response.to_wire()
    return wire


async def serve(address: str, vnet: str,
                members: Callable[[], Mapping[MemberKey, MemberRecord]], *,
                port: int = PORT,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer queries on ``address:port`` until cancelled."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind((address, port))
        task_status.started()
        while True:
            data, peer = await sock.recvfrom(MAX_QUERY)
            try:
                reply = answer(data, vnet, members())
            except Exception:  # one bad query never stops the resolver
                log.exception("V-Net resolver: a query failed")
                continue
            if reply is not None:
                await sock.sendto(reply, peer)
