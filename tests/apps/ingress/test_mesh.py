"""The ingress on real nodes in one process (in-memory transport, process runtime).

Replicas are real processes (``echo_server.py`` listening on ``$PORT``); connections are
real TCP on 127.0.0.1, carried between nodes by ``/meshcloud/forward/1`` streams.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from apps.ingress.messages import Exposure
from apps.ingress.ports import ephemeral_port
from apps.ingress.routing import Target
from apps.ingress.service import IngressService
from apps.ingress.tables import EXPOSURES, endpoint_rows
from meshcloud.transport.memory import MemoryNetwork
from tests.apps.workloads.mesh import LocalMesh, wait_for
from tests.workload_python import inline_script

ECHO = inline_script(Path(__file__).with_name("echo_server.py"))


@pytest.fixture(autouse=True)
def process_runtime_only(monkeypatch):
    monkeypatch.setenv("MESHCLOUD_RUNTIMES", "process")


@pytest.fixture
async def mesh3(tmp_path, nursery):
    mesh = await LocalMesh.create(tmp_path, nursery, 3, MemoryNetwork(seed=2))
    yield mesh
    await mesh.close()


def ingress_of(member) -> IngressService:
    return next(s for s in member.running.services if isinstance(s, IngressService))


def healthy_rows(member, workload):
    return {k: r for k, r in endpoint_rows(member.running.state).items()
            if k[0] == workload and r.healthy}


async def exchange(port: int, payload: bytes, host: str = "127.0.0.1") -> tuple[str, bytes]:
    """Connect, send ``payload``, half-close, read to EOF: (replica name, echoed bytes)."""
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            async def send() -> None:
                for i in range(0, len(payload), 65536):
                    await stream.send_all(payload[i:i + 65536])
                await stream.send_eof()

            received = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while data := await stream.receive_some(1 << 16):
                    received += data
    name, _, rest = bytes(received).partition(b"\n")
    return name.decode(), rest


async def through(ingress: IngressService, nursery, workload: str, endpoint: str) -> int:
    """A listener on an ephemeral port whose connections ``ingress`` forwards."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handle(client):
        await ingress.forward(client, workload, endpoint)

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return listeners[0].socket.getsockname()[1]


async def test_endpoint_rows_forwarding_and_failover(mesh3, nursery):
    a = mesh3.members[0]
    a.service.submit({"name": "echo", "command": ECHO, "replicas": 2,
                      "publish": ["echo"]}, replace_existing=False)
    for member in mesh3.up():  # every node sees both replicas healthy, from its own state
        await wait_for(lambda m=member: len(healthy_rows(m, "echo")) == 2, "rows", 30)
    rows = healthy_rows(a, "echo")
    holders = {r.node for r in rows.values()}
    assert len(holders) == 2
    spare = next(m for m in mesh3.up() if m.node_id not in holders)
    port = await through(ingress_of(spare), nursery, "echo", "echo")
    payload = bytes(range(256)) * 4096  # 1 MiB
    seen = set()
    for _ in range(8):
        name, echoed = await exchange(port, payload)
        assert echoed == payload
        seen.add(name)
    assert seen <= {"echo-0", "echo-1"} and seen
    assert ingress_of(spare).forwarded == 8 and ingress_of(spare).failed == 0

    # a holder's agent dies (its replica process lives on, unreachable through the mesh)
    victim = mesh3.member_of(sorted(holders)[0])
    mesh3.stop(victim)
    for _ in range(6):  # at once: a failed open is retried on another replica (the
        # survivor, or the victim's index restarted elsewhere)
        name, echoed = await exchange(port, b"after the crash")
        assert name in {"echo-0", "echo-1"} and echoed == b"after the crash"
    assert ingress_of(spare).failed == 0


async def test_local_replica_is_used_directly_and_half_close_keeps_the_other_way(
        mesh3, nursery):
    a = mesh3.members[0]
    a.service.submit({"name": "solo", "command": ECHO, "replicas": 1,
                      "publish": ["tcp"]}, replace_existing=False)
    await wait_for(lambda: len(healthy_rows(a, "solo")) == 1, "row", 30)
    (_key, row), = healthy_rows(a, "solo").items()
    holder = mesh3.member_of(row.node)
    other = next(m for m in mesh3.up() if m is not holder)
    for member in (holder, other):  # local: direct TCP; remote: a forward stream
        await wait_for(lambda m=member: healthy_rows(m, "solo"), "row everywhere", 30)
        port = await through(ingress_of(member), nursery, "solo", "tcp")
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"first")
            await stream.send_eof()  # our FIN: the replica still answers
            received = bytearray()
            while data := await stream.receive_some(1 << 16):
                received += data
            await stream.aclose()
        assert bytes(received) == b"solo-0\nfirst"


async def test_unknown_endpoint_or_no_replica_closes_the_client(mesh3, nursery):
    ingress = ingress_of(mesh3.members[0])
    port = await through(ingress, nursery, "nothing", "here")
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await stream.receive_some(100) == b""
    assert ingress.failed == 1 and ingress.forwarded == 0


async def test_exposure_listens_and_forwards(mesh3):
    a = mesh3.members[0]
    a.service.submit({"name": "web", "command": ECHO, "replicas": 2,
                      "publish": ["http"]}, replace_existing=False)
    port = ephemeral_port()
    a.running.state.put(EXPOSURES.name, (port,), Exposure(workload="web", endpoint="http"))
    await wait_for(lambda: len(healthy_rows(a, "web")) == 2, "rows", 30)
    # all three nodes share 127.0.0.1 here: one of them holds the port
    await wait_for(lambda: any(port in ingress_of(m).listeners and
                               port not in ingress_of(m).listen_errors
                               for m in mesh3.up()), "listener", 30)
    for _ in range(20):
        try:
            name, echoed = await exchange(port, b"hello")
            break
        except OSError:  # the listener is being bound
            await trio.sleep(0.1)
    assert name in {"web-0", "web-1"} and echoed == b"hello"
    a.running.state.delete(EXPOSURES.name, (port,))
    await wait_for(lambda: all(port not in ingress_of(m).listeners for m in mesh3.up()),
                   "listeners gone", 30)


async def test_a_refused_or_unreachable_replica_is_retried_on_another(mesh3, nursery):
    a = mesh3.members[0]
    a.service.submit({"name": "solo", "command": ECHO, "replicas": 1,
                      "publish": ["tcp"]}, replace_existing=False)
    await wait_for(lambda: len(healthy_rows(a, "solo")) == 1, "row", 30)
    (_key, row), = healthy_rows(a, "solo").items()
    other = next(m for m in mesh3.up() if m.node_id != row.node)
    ingress = ingress_of(other)
    real = Target("solo", "tcp", 0, row.node, row.port)
    # a node that does not run replica 7 refuses it; then a dead node; then the real one
    stale = Target("solo", "tcp", 7, row.node, row.port)
    ghost = Target("solo", "tcp", 8, b"\x01" * 32, 1)
    ingress.targets = lambda w, e: [stale, ghost, real]  # type: ignore[method-assign]
    ingress.open[real.key] = 10  # the least loaded are tried first
    ingress.open[ghost.key] = 5
    port = await through(ingress, nursery, "solo", "tcp")
    name, echoed = await exchange(port, b"retried")
    assert (name, echoed) == ("solo-0", b"retried")
    assert ingress.retries == 2 and ingress.forwarded == 1


async def test_a_bad_forward_open_is_refused_and_the_node_carries_on(mesh3):
    from apps.ingress.messages import FORWARD_PROTOCOL, ForwardOpen, ForwardReply
    from meshcloud.codec.messages import decode_message, encode_message
    from meshcloud.errors import StreamReset

    a, b = mesh3.members[0], mesh3.members[1]
    with trio.fail_after(20):
        stream = await a.running.transport.open_stream(b.node_id, FORWARD_PROTOCOL)
        await stream.send(b"\xff not a message")
        with pytest.raises((StreamReset, trio.EndOfChannel)):
            await stream.receive()
        # a well-formed open for a replica b does not run: a typed refusal
        stream = await a.running.transport.open_stream(b.node_id, FORWARD_PROTOCOL)
        await stream.send(encode_message(ForwardOpen(workload="x", endpoint="y", index=0)))
        reply = decode_message(await stream.receive(), ForwardReply)
        assert not reply.ok and reply.code == "no_replica"
    assert b.node is not None and ingress_of(b).status()["failed"] == 0
