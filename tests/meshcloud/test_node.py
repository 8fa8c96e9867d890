"""A node end to end on the in-memory transport: init, invite, join, status over the API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import trio

from meshcloud.client import ApiClient
from meshcloud.clock import SystemClock
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.errors import InviteError, MeshError
from meshcloud.identity.invites import create_invite
from meshcloud.identity.keys import SigningKey
from meshcloud.lifecycle import init_mesh, join_mesh
from meshcloud.node import Node
from meshcloud.transport.memory import MemoryNetwork


class ShiftableClock(SystemClock):
    def __init__(self) -> None:
        self.shift_ms = 0

    def wall_ms(self) -> int:
        return super().wall_ms() + self.shift_ms


@pytest.fixture
def network():
    return MemoryNetwork()


def factory(network):
    return lambda key, auth, config: network.add(key, auth)


CONFIG = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0")


async def start_node(nursery, datadir, network, clock=None):
    node = Node(datadir, CONFIG, transport_factory=factory(network), clock=clock)
    await nursery.start(node.run)
    return node


async def wait_connected(node, peer_id):
    with trio.fail_after(10):
        while not (peer_id in node.peers and node.peers[peer_id].connected):
            await node._peer_set_changed.wait()


def snapshot(node: Node) -> tuple[bytes, list]:
    """What admission may change: the redemption ledger and the membership table."""
    path = node.datadir.path / "redemption-ledger.json"
    return (path.read_bytes() if path.exists() else b"", node.state.scan("membership"))


async def test_join_through_invite_then_status_over_api(tmp_path, nursery, network):
    a_dir, b_dir = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    init_mesh(a_dir, "home", {})
    a = await start_node(nursery, a_dir, network)
    token = a.create_invite(ttl_s=60, uses=1)
    accepted = await join_mesh(b_dir, token.encode(), {}, transport_factory=factory(network))
    assert accepted.cert.issuer_id == a.mesh.mesh_id  # the admin's node issues as root
    assert accepted.cert.depth == 1
    assert accepted.mesh_name == "home"
    b = await start_node(nursery, b_dir, network)
    await wait_connected(a, b.node_id)
    await wait_connected(b, a.node_id)

    status = await trio.to_thread.run_sync(lambda: ApiClient(a_dir).get("/v1/status"))
    assert status["node"]["id"] == a.node_id.hex()
    assert [p["id"] for p in status["peers"] if p["connected"]] == [b.node_id.hex()]
    assert status["versions"]["meshcloud"]

    kinds = [e["kind"] for e in a.events.recent()]
    assert "node.admitted" in kinds and "peer.connected" in kinds


async def test_api_refuses_requests_without_the_token(tmp_path, nursery, network):
    a_dir = DataDir(tmp_path / "a")
    init_mesh(a_dir, "home", {})
    a = await start_node(nursery, a_dir, network)
    url = a.api_urls[0]
    assert url.startswith("http://127.0.0.1:")

    def fetch(headers):
        request = urllib.request.Request(url + "/v1/status", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    code, body = await trio.to_thread.run_sync(fetch, {})
    assert code == 401 and a.node_id.hex() not in body.decode()
    code, body = await trio.to_thread.run_sync(fetch, {"Authorization": "Bearer wrong"})
    assert code == 401 and json.loads(body)["error"]["code"] == "unauthorized"


async def test_reused_invite_is_refused_and_changes_nothing(tmp_path, nursery, network):
    a_dir = DataDir(tmp_path / "a")
    init_mesh(a_dir, "home", {})
    a = await start_node(nursery, a_dir, network)
    token = a.create_invite(ttl_s=60, uses=1).encode()
    await join_mesh(DataDir(tmp_path / "b"), token, {}, transport_factory=factory(network))
    before = snapshot(a)
    with pytest.raises(InviteError, match="already used"):
        await join_mesh(DataDir(tmp_path / "c"), token, {}, transport_factory=factory(network))
    assert snapshot(a) == before
    # refused at the handshake already (a used-up invite gets no joiner session)
    assert a.authenticator.refused == 1 and a.join_service.admitted == 1


async def test_expired_invite_is_refused_by_the_bootstrap_clock(tmp_path, nursery, network):
    a_dir = DataDir(tmp_path / "a")
    init_mesh(a_dir, "home", {})
    clock = ShiftableClock()
    a = await start_node(nursery, a_dir, network, clock=clock)
    token = a.create_invite(ttl_s=60, uses=1).encode()
    clock.shift_ms = 120_000  # the bootstrap's clock says the invite is two minutes old
    before = snapshot(a)
    with pytest.raises(InviteError, match="expired"):
        await join_mesh(DataDir(tmp_path / "b"), token, {}, transport_factory=factory(network))
    assert snapshot(a) == before


async def test_forged_invite_is_refused(tmp_path, nursery, network):
    a_dir = DataDir(tmp_path / "a")
    init_mesh(a_dir, "home", {})
    a = await start_node(nursery, a_dir, network)
    forger = SigningKey.generate()
    forged = create_invite(forger, now=SystemClock().wall_ms(), ttl_ms=60_000, uses=1,
                           bootstrap=tuple(a.transport.listen_addresses), ledger=(a.node_id,))
    before = snapshot(a)
    with pytest.raises(InviteError, match="another mesh"):
        await join_mesh(DataDir(tmp_path / "b"), forged.encode(), {},
                        transport_factory=factory(network))
    assert snapshot(a) == before
    assert a.peers == {}


async def test_revoked_invite_is_refused(tmp_path, nursery, network):
    a_dir = DataDir(tmp_path / "a")
    init_mesh(a_dir, "home", {})
    a = await start_node(nursery, a_dir, network)
    token = a.create_invite(ttl_s=60, uses=5)
    a.revoke("invite", token.invite.invite_id)
    with pytest.raises(InviteError, match="revoked"):
        await join_mesh(DataDir(tmp_path / "b"), token.encode(), {},
                        transport_factory=factory(network))


async def test_only_the_admin_node_creates_invites(tmp_path, nursery, network):
    a_dir, b_dir = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    init_mesh(a_dir, "home", {})
    a = await start_node(nursery, a_dir, network)
    await join_mesh(b_dir, a.create_invite(ttl_s=60, uses=1).encode(), {},
                    transport_factory=factory(network))
    b = await start_node(nursery, b_dir, network)
    with pytest.raises(MeshError, match="no admin key"):
        b.create_invite(ttl_s=60, uses=1)


async def test_ping_and_held_stream_report_a_crashed_peer(tmp_path, nursery, network,
                                                          autojump_clock):
    a_dir, b_dir = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    init_mesh(a_dir, "home", {})
    a = await start_node(nursery, a_dir, network)
    await join_mesh(b_dir, a.create_invite(ttl_s=60, uses=1).encode(), {},
                    transport_factory=factory(network))
    b = await start_node(nursery, b_dir, network)
    await wait_connected(a, b.node_id)
    reply = await a.diagnostics.ping(b.node_id)
    assert reply["peer"] == b.node_id.hex()
    events = a.events.subscribe()
    await a.diagnostics.hold(b.node_id)
    network.crash(b.node_id)
    with trio.fail_after(5):
        async for event in events:
            if event["kind"] == "stream.ended":
                break
    assert event["peer"] == b.node_id.hex() and "connection_lost" in event["reason"]
