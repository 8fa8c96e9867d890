"""request_certificate: the joiner retries busy or unreachable bootstrap nodes with back-off
within its overall timeout, and stops at once on a refusal."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from meshcloud.auth import MeshAuthenticator
from meshcloud.errors import InviteError, TransportError
from meshcloud.identity.certs import make_join_proof
from meshcloud.identity.keys import SigningKey
from meshcloud.join import JOIN_PROTOCOL, JoinService, request_certificate
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.testing import TestMesh
from meshcloud.transport.tcp import TcpTransport


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def start_joiner(nursery, mesh: TestMesh, uses: int = 1) -> TcpTransport:
    token = mesh.invite(uses=uses, ttl_ms=60_000)
    key = SigningKey.generate()
    joiner = TcpTransport(key, MeshAuthenticator(
        mesh.root.public, MemoryMembershipRecords(), mesh.wall_ms, None,
        make_join_proof(token, key, now=mesh.now_ms)))
    await nursery.start(joiner.run)
    return joiner


async def start_bootstrap(nursery, mesh: TestMesh, address: str) -> JoinService:
    host = mesh.members[0]
    transport = TcpTransport(host.key, host.authenticator, listen=[address])
    service = host.join_service(mesh, transport)
    transport.serve(JOIN_PROTOCOL, service.handle)
    await nursery.start(transport.run)
    return service


async def test_the_joiner_retries_until_a_bootstrap_node_answers(nursery):
    mesh = TestMesh.with_members(1)
    joiner = await start_joiner(nursery, mesh)
    dead, late = free_address(), free_address()
    result = []

    async def join() -> None:
        result.append(await request_certificate(joiner, [dead, late], timeout=30))

    nursery.start_soon(join)
    with trio.fail_after(10):  # a first round fails on both addresses, then it backs off
        while joiner.counters.dials_failed < 2:
            await trio.testing.wait_all_tasks_blocked()
    assert not result
    service = await start_bootstrap(nursery, mesh, late)  # the node comes up late
    with trio.fail_after(10):
        while not result:
            await trio.testing.wait_all_tasks_blocked()
    assert result[0].cert.node_public == joiner.key.public and service.admitted == 1


async def test_the_joiner_gives_up_within_its_overall_timeout(nursery):
    mesh = TestMesh.with_members(1)
    joiner = await start_joiner(nursery, mesh)
    started = trio.current_time()
    with pytest.raises(TransportError, match="within 1 s"):
        await request_certificate(joiner, [free_address(), free_address()], timeout=1.0)
    assert trio.current_time() - started < 3
    assert joiner.counters.dials_failed >= 4  # more than one round


async def test_a_refusal_is_final(nursery):
    mesh = TestMesh.with_members(1)
    address = free_address()
    await start_bootstrap(nursery, mesh, address)
    joiner = await start_joiner(nursery, mesh)
    await request_certificate(joiner, [address], timeout=10)
    outsider_key, outsider_auth = mesh.outsider()
    outsider = TcpTransport(outsider_key, outsider_auth)
    await nursery.start(outsider.run)
    with pytest.raises(InviteError):
        await request_certificate(outsider, [address], timeout=10)
    assert outsider.counters.dials_failed == 1  # no retry after a refusal
