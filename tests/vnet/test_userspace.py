"""The userspace mode: SOCKS5 and port forwards into a V-Net, carried over mesh streams
between two nodes' transports, to a real TCP echo server."""

from __future__ import annotations

import functools
import ipaddress
import struct

import pytest
import trio
import trio.testing

from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.testing import TestMesh
from meshcloud.transport.memory import MemoryNetwork
from meshcloud.transport.tcp import TcpTransport
from vnet.plane import PeerConfig, PlaneConfig, PlaneError
from vnet.userspace.plane import Forward, UserspacePlane, parse_forward
from vnet.userspace.socks import Reply
from vnet.userspace.stream import (
    VNET_TCP_PROTOCOL,
    VnetTcpOpen,
    VnetTcpReply,
    VnetTcpServer,
)

A_IP, B_IP = "10.42.0.1", "10.42.0.2"


def config(me: str, peer_ip: str, peer_node: bytes) -> PlaneConfig:
    return PlaneConfig(vnet="lab", interface="unused", address=ipaddress.IPv4Interface(
        f"{me}/24"), private_key=bytes(32), listen_port=0, peers=(PeerConfig(
            public_key=peer_node[:32].ljust(32, b"\0"), endpoint=None,
            allowed_ips=(ipaddress.IPv4Network(f"{peer_ip}/32"),), node_id=peer_node),))


async def echo_server(nursery: trio.Nursery) -> int:
    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
    listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0,
                                                      host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def socks_connect(port: int, host: str, target_port: int) -> tuple[int, trio.SocketStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"\x05\x01\x00")
    assert await receive_exactly(stream, 2) == b"\x05\x00"
    await stream.send_all(b"\x05\x01\x00\x01" + ipaddress.IPv4Address(host).packed
                          + struct.pack("!H", target_port))
    answer = await receive_exactly(stream, 10)
    assert answer[:2] == b"\x05" + answer[1:2] and answer[2:4] == b"\x00\x01"
    return answer[1], stream


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def round_trip(stream: trio.SocketStream, payload: bytes) -> bytes:
    async with trio.open_nursery() as nursery:
        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()
        nursery.start_soon(send)
        got = b""
        while data := await stream.receive_some(65536):
            got += data
    await stream.aclose()
    return got


@pytest.fixture(params=["memory", "tcp"])
async def mesh(request, nursery: trio.Nursery):
    """Three members' transports: in memory, or the real Noise-over-TCP stack on loopback."""
    test_mesh = TestMesh.with_members(3)
    if request.param == "memory":
        network = MemoryNetwork(seed=4)
        transports = [network.add(m.key, m.authenticator) for m in test_mesh.members]
    else:
        transports = [TcpTransport(m.key, m.authenticator) for m in test_mesh.members]
    for transport in transports:
        await nursery.start(transport.run)
    for transport in transports:
        for other in transports:
            if other is not transport:
                transport.set_addresses(other.local_id, other.listen_addresses)
    return transports


async def test_socks_and_forward_reach_a_peer_node_over_mesh_streams(nursery, mesh) -> None:
    a_t, b_t, _ = mesh
    echo_port = await echo_server(nursery)
    a = UserspacePlane(VnetTcpServer(a_t), nursery,
                       forwards=[Forward(0, B_IP, echo_port)])
    b = UserspacePlane(VnetTcpServer(b_t), nursery)
    await a.apply(config(A_IP, B_IP, b_t.local_id))
    await b.apply(config(B_IP, A_IP, a_t.local_id))

    payload = bytes(range(256)) * 2000  # 512 KB, more than one stream window
    code, stream = await socks_connect(a.listen_port(), B_IP, echo_port)
    assert code == Reply.SUCCEEDED
    assert await round_trip(stream, payload) == payload

    forwarded = await trio.open_tcp_stream("127.0.0.1", a.forward_ports[0])
    assert await round_trip(forwarded, b"through the forward") == b"through the forward"

    stats, = a.stats()
    assert stats.tx_bytes >= len(payload) and stats.rx_bytes >= len(payload)

    # B reaches A's own address (A's loopback) the same way
    code, stream = await socks_connect(b.listen_port(), A_IP, echo_port)
    assert code == Reply.SUCCEEDED
    assert await round_trip(stream, b"back") == b"back"

    socks_port = a.listen_port()
    await a.close()
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(OSError):  # close() stopped the SOCKS listener
        await trio.open_tcp_stream("127.0.0.1", socks_port)
    with pytest.raises(PlaneError):
        a.listen_port()
    await b.close()


async def test_refusals_get_the_right_socks_reply(nursery, mesh) -> None:
    a_t, b_t, _ = mesh
    echo_port = await echo_server(nursery)
    a_server = VnetTcpServer(a_t)  # one per node
    a = UserspacePlane(a_server, nursery)
    b = UserspacePlane(VnetTcpServer(b_t), nursery)
    await a.apply(config(A_IP, B_IP, b_t.local_id))
    await b.apply(config(B_IP, A_IP, a_t.local_id))
    closed_port = await unused_port()

    cases = [
        ("8.8.8.8", echo_port, Reply.NOT_ALLOWED),  # not a V-Net address: no open proxy
        ("10.42.0.9", echo_port, Reply.NOT_ALLOWED),  # in the V-Net, nobody has it
        (B_IP, closed_port, Reply.CONNECTION_REFUSED),  # B connects and is refused
    ]
    for host, port, expected in cases:
        code, stream = await socks_connect(a.listen_port(), host, port)
        assert code == expected, (host, port)
        assert await stream.receive_some(10) == b""
        await stream.aclose()

    # a name the node's resolver knows, one it does not
    a_named = UserspacePlane(a_server, nursery, resolve={"echo.lab.vnet": B_IP}.get)
    await a_named.apply(config(A_IP, B_IP, b_t.local_id))
    for name, expected in (("echo.lab.vnet", Reply.SUCCEEDED),
                           ("other.lab.vnet", Reply.HOST_UNREACHABLE)):
        stream = await trio.open_tcp_stream("127.0.0.1", a_named.listen_port())
        await stream.send_all(b"\x05\x01\x00\x05\x01\x00\x03" + bytes([len(name)])
                              + name.encode() + struct.pack("!H", echo_port))
        answer = await receive_exactly(stream, 12)
        assert answer[:2] == b"\x05\x00" and answer[3] == expected, (name, answer)
        if expected == Reply.SUCCEEDED:
            assert await round_trip(stream, b"by name") == b"by name"
        else:
            await stream.aclose()
    await a_named.close()

    # a domain name we cannot resolve, and a BIND command
    stream = await trio.open_tcp_stream("127.0.0.1", a.listen_port())
    await stream.send_all(b"\x05\x01\x00\x05\x02\x00\x01" + bytes(6))
    assert await receive_exactly(stream, 12) == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)
    await stream.aclose()


async def unused_port() -> int:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def test_the_target_refuses_non_members_and_foreign_addresses(nursery, mesh) -> None:
    a_t, b_t, c_t = mesh
    echo_port = await echo_server(nursery)
    b = UserspacePlane(VnetTcpServer(b_t), nursery)
    await b.apply(config(B_IP, A_IP, a_t.local_id))

    async def ask(transport, request: VnetTcpOpen) -> VnetTcpReply:
        stream = await transport.open_stream(b_t.local_id, VNET_TCP_PROTOCOL)
        await stream.send(encode_message(request))
        return decode_message(await stream.receive(), VnetTcpReply)

    # C is in the mesh but not a peer of the V-Net
    answer = await ask(c_t, VnetTcpOpen(vnet="lab", address=B_IP, port=echo_port))
    assert (answer.ok, answer.code) == (False, "not_member")
    # A may not use B to reach anything but B's own V-Net address
    answer = await ask(a_t, VnetTcpOpen(vnet="lab", address="127.0.0.1", port=echo_port))
    assert (answer.ok, answer.code) == (False, "not_here")
    answer = await ask(a_t, VnetTcpOpen(vnet="lab", address=A_IP, port=echo_port))
    assert (answer.ok, answer.code) == (False, "not_here")
    answer = await ask(a_t, VnetTcpOpen(vnet="other", address=B_IP, port=echo_port))
    assert (answer.ok, answer.code) == (False, "no_vnet")
    answer = await ask(a_t, VnetTcpOpen(vnet="lab", address="not-an-ip", port=echo_port))
    assert (answer.ok, answer.code) == (False, "bad_request")
    answer = await ask(a_t, VnetTcpOpen(vnet="lab", address=B_IP, port=echo_port))
    assert answer.ok
    await b.close()
    answer = await ask(a_t, VnetTcpOpen(vnet="lab", address=B_IP, port=echo_port))
    assert (answer.ok, answer.code) == (False, "no_vnet")


@pytest.mark.parametrize("spec, expected", [
    ("8080:10.42.0.2:80", Forward(8080, "10.42.0.2", 80)),
    ("0.0.0.0:8080:10.42.0.2:80", Forward(8080, "10.42.0.2", 80, "0.0.0.0")),
])
def test_parse_forward(spec: str, expected: Forward) -> None:
    assert parse_forward(spec) == expected


@pytest.mark.parametrize("spec", ["", "80", "a:b:c", "8080:host:80", "8080:10.0.0.1:0",
                                  "8080:10.0.0.1:70000", "1:2:3:4:5"])
def test_parse_forward_refuses(spec: str) -> None:
    with pytest.raises(PlaneError):
        parse_forward(spec)
