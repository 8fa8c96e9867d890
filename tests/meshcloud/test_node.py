"""A node end to end on the in-memory transport: init, invite, join, status over the API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import trio

from meshcloud.agent.lifecycle import init_mesh, join_mesh
from meshcloud.agent.node import Node
from meshcloud.client import ApiClient
from meshcloud.clock import SystemClock
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.errors import InviteError, MeshError
from meshcloud.identity.invites import create_invite
from meshcloud.identity.keys import SigningKey
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
            await node.book.changed.wait()


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


# --- admission under attack: uses counted by the invite's ledger, revocation ---------------


async def three_node_mesh(tmp_path, nursery, network):
    """a (admin), b and c, all connected and alive in a's view."""
    dirs = [DataDir(tmp_path / name) for name in "abc"]
    init_mesh(dirs[0], "home", {})
    a = await start_node(nursery, dirs[0], network)
    nodes = [a]
    for d in dirs[1:]:
        await join_mesh(d, a.create_invite(ttl_s=60, uses=1).encode(), {},
                        transport_factory=factory(network))
        nodes.append(await start_node(nursery, d, network))
    with trio.fail_after(30):
        while not a.alive_peer_ids() >= {n.node_id for n in nodes[1:]}:
            await trio.sleep(0.1)
    return nodes


async def ask_for_cert(network, token, bootstrap_address, key=None):
    """A joiner that chooses which member to ask (an attacker can)."""
    from meshcloud.auth import MeshAuthenticator
    from meshcloud.identity.certs import make_join_proof
    from meshcloud.join import request_certificate
    from meshcloud.membership import MemoryMembershipRecords

    key = key or SigningKey.generate()
    body = token.invite.body
    proof = make_join_proof(token, key, now=SystemClock().wall_ms())
    auth = MeshAuthenticator(body.root_public, MemoryMembershipRecords(),
                             SystemClock().wall_ms, None, proof)
    transport = network.add(key, auth)
    failure: MeshError | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            accepted = await request_certificate(transport, [bootstrap_address])
        except MeshError as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return accepted


async def test_three_concurrent_redemptions_of_one_use_admit_at_most_one(
        tmp_path, nursery, network, autojump_clock):
    nodes = await three_node_mesh(tmp_path, nursery, network)
    token = nodes[0].create_invite(ttl_s=60, uses=1)
    assert set(token.invite.body.ledger) == {n.node_id for n in nodes}
    results: list[object] = []

    async def attempt(node):
        try:
            results.append(await ask_for_cert(network, token, node.transport.listen_addresses[0]))
        except InviteError as exc:
            results.append(exc)

    for _round in range(3):  # the same token, through a, b and c at once, three times over
        async with trio.open_nursery() as race:
            for node in nodes:
                race.start_soon(attempt, node)
    admitted = [r for r in results if not isinstance(r, Exception)]
    assert len(admitted) <= 1, f"{len(admitted)} certificates from a one-use invite"
    refusals = {str(r) for r in results if isinstance(r, Exception)}
    assert all("invite refused" in r or "cannot count" in r for r in refusals), refusals


async def test_a_member_cut_off_from_the_ledger_cannot_issue(tmp_path, nursery, network,
                                                             autojump_clock):
    a, b, c = await three_node_mesh(tmp_path, nursery, network)
    token = a.create_invite(ttl_s=60, uses=5)
    joiner = SigningKey.generate()
    network.partition({c.node_id, joiner.id}, {a.node_id, b.node_id})
    with trio.fail_after(30):  # open connections die once keepalives fail
        while {p.node_id for p in c.transport.connected_peers()} & {a.node_id, b.node_id}:
            await trio.sleep(0.1)
    before = snapshot(c)
    with pytest.raises(InviteError, match="cannot count this invite's uses"):
        await ask_for_cert(network, token, c.transport.listen_addresses[0], joiner)
    assert snapshot(c)[1] == before[1]  # nothing recorded in the state
    network.heal()
    accepted = await ask_for_cert(network, token, c.transport.listen_addresses[0])
    assert accepted.cert.issuer_id == c.node_id and accepted.cert.depth == 2


async def test_revoking_a_node_cuts_it_off_everywhere_within_seconds(tmp_path, nursery,
                                                                    network, autojump_clock):
    a, b, c = await three_node_mesh(tmp_path, nursery, network)
    await wait_connected(c, b.node_id)
    revoked_at = trio.current_time()
    a.revoke("node", b.node_id)
    with trio.fail_after(5):
        while any(b.node_id in {p.node_id for p in n.transport.connected_peers()}
                  for n in (a, c)):
            await trio.sleep(0.05)
    took = trio.current_time() - revoked_at
    assert took < 5
    # once cut it is out of the live view at once (reads and placement stop waiting on it),
    # though gossip has not found it dead yet
    assert all(b.node_id not in n.alive_peer_ids() for n in (a, c))
    # and b cannot come back: a fresh dial is refused by every member
    for member in (a, c):
        with pytest.raises(MeshError, match="revoked"):
            await b.transport.dial(member.transport.listen_addresses[0])
    assert ("node", b.node_id) in {(k, s) for k, s, _ in c.records.revocations()}


async def test_only_the_admin_key_revokes(tmp_path, nursery, network, autojump_clock):
    a, b, c = await three_node_mesh(tmp_path, nursery, network)
    with pytest.raises(MeshError, match="no admin key"):
        b.revoke("node", c.node_id)
    # a member writing an unsigned revocation row directly changes nothing
    from meshcloud.state.tables import MembershipRecord

    b.state.put("membership", ("revoked_node", c.node_id, b""), MembershipRecord(at_ms=1))
    await trio.sleep(3)
    assert not a.records.is_revoked(c.node_id, b"")
    assert c.node_id in {p.node_id for p in a.transport.connected_peers()}
