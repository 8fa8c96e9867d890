"""V-Net names: the sans-IO lookup and the resolver's DNS answers (dnspython)."""

from __future__ import annotations

import ipaddress

import dns.message
import dns.rcode
import dns.rdatatype
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.dns import answer, serve
from vnet.names import resolve_name
from vnet.records import MemberRecord

A, B = b"\xaa" * 32, b"\xbb" * 32


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


MEMBERS = {
    ("blue", "host:" + A.hex()): MemberRecord(kind="host", node=A, address=ip("10.42.0.1"),
                                              claimed_ms=1),
    ("blue", "host:" + B.hex()): MemberRecord(kind="host", node=B, address=ip("10.42.0.2"),
                                              claimed_ms=1),
    ("blue", "wl:web/0"): MemberRecord(kind="replica", node=A, address=0, claimed_ms=2),
    ("blue", "wl:web/1"): MemberRecord(kind="replica", node=B, address=0, claimed_ms=2),
    ("red", "host:" + B.hex()): MemberRecord(kind="host", node=B, address=ip("10.43.0.7"),
                                             claimed_ms=1),
    ("red", "wl:db/0"): MemberRecord(kind="replica", node=B, address=0, claimed_ms=2),
}


def names(name, vnet="blue"):
    found = resolve_name(name, vnet, MEMBERS)
    return None if found is None else [str(a) for a in found]


def test_workload_replica_and_host_names():
    assert names("web.blue.vnet") == ["10.42.0.1", "10.42.0.2"]
    assert names("WEB.Blue.vnet.") == ["10.42.0.1", "10.42.0.2"]
    assert names("1.web.vnet") == ["10.42.0.2"]
    assert names(f"{B.hex()[:12]}.blue.vnet") == ["10.42.0.2"]
    assert names("9.web.vnet") == [] and names("nope.blue.vnet") == []
    assert names("example.com") is None
    # another V-Net's names never resolve here, and its addresses never show
    assert names("db.red.vnet") == [] and names("0.db.vnet") == []
    assert names("db.red.vnet", "red") == ["10.43.0.7"]


def test_dns_answers():
    query = dns.message.make_query("web.blue.vnet", "A")
    reply = dns.message.from_wire(answer(query.to_wire(), "blue", MEMBERS))
    assert reply.rcode() == dns.rcode.NOERROR and reply.id == query.id
    assert sorted(r.address for r in reply.answer[0]) == ["10.42.0.1", "10.42.0.2"]
    missing = dns.message.from_wire(answer(
        dns.message.make_query("x.blue.vnet", "A").to_wire(), "blue", MEMBERS))
    assert missing.rcode() == dns.rcode.NXDOMAIN
    outside = dns.message.from_wire(answer(
        dns.message.make_query("example.com", "A").to_wire(), "blue", MEMBERS))
    assert outside.rcode() == dns.rcode.REFUSED
    aaaa = dns.message.from_wire(answer(
        dns.message.make_query("web.blue.vnet", "AAAA").to_wire(), "blue", MEMBERS))
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_garbage_queries_get_no_answer_or_a_valid_one(data):
    reply = answer(data, "blue", MEMBERS)
    if reply is not None:
        dns.message.from_wire(reply)


async def test_resolver_answers_over_udp():
    async with trio.open_nursery() as nursery:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        await nursery.start(lambda task_status: serve("127.0.0.1", "blue", lambda: MEMBERS,
                                                      port=port, task_status=task_status))
        client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with client:
            await client.sendto(b"\x00garbage", ("127.0.0.1", port))
            query = dns.message.make_query("0.web.vnet", dns.rdatatype.A)
            await client.sendto(query.to_wire(), ("127.0.0.1", port))
            with trio.fail_after(10):
                data, _ = await client.recvfrom(512)
        reply = dns.message.from_wire(data)
        assert [r.address for r in reply.answer[0]] == ["10.42.0.1"]
        nursery.cancel_scope.cancel()
