"""The trio driver on the in-memory transport, under a virtual clock.

Real keys, real certificates, real admission: each node runs a MemoryTransport with its
MeshAuthenticator and a GossipDriver with Ed25519 signatures and MeshCert membership.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import trio

from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.driver import GossipDriver, GossipError
from gossip.hooks import cert_hooks
from gossip.member import MemberState
from gossip.messages import GOSSIP_PROTOCOL, SYNC_PROTOCOL, Alive, Ping, PushPull, SyncDelta
from gossip.outputs import MemberFailed, MemberJoined, MemberLeft
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.testing import TestMember as MeshMember
from meshcloud.testing import TestMesh
from meshcloud.transport.base import PeerUnreachable
from meshcloud.transport.memory import MemoryNetwork, MemoryTransport

CONFIG = GossipConfig.lan()


@dataclass
class Node:
    member: MeshMember
    transport: MemoryTransport
    driver: GossipDriver
    scope: trio.CancelScope

    @property
    def id(self) -> bytes:
        return self.member.id


async def run_inline(fn: Callable[[], Capacity]) -> Capacity:
    """Read capacity in the test's thread: a worker thread would let the autojump clock
    race ahead while the reading is pending."""
    await trio.lowlevel.checkpoint()
    return fn()


async def start_node(nursery: trio.Nursery, network: MemoryNetwork, mesh: TestMesh,
                     member: MeshMember, *, name: str | None = None,
                     capacity: Capacity | None = None,
                     capacity_source: Callable[[], Capacity] | None = None) -> Node:
    transport = network.add(member.key, member.authenticator, name=name)
    hooks = cert_hooks(member.key, member.cert, mesh.root.public, member.records)
    driver = GossipDriver(transport, CONFIG, hooks, capacity=capacity,
                          rng=random.Random(member.id), capacity_source=capacity_source,
                          run_sync=run_inline)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            async with trio.open_nursery() as inner:
                await inner.start(transport.run)
                await inner.start(driver.run)
                task_status.started()

    await nursery.start(run)
    return Node(member, transport, driver, scope)


async def wait_until(predicate, timeout: float = 30.0, step: float = 0.05) -> float:
    """Poll ``predicate`` in virtual time; returns the time it took."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)
    return trio.current_time() - start


def kill(network: MemoryNetwork, node: Node) -> None:
    """kill -9: the process stops at once, its connections reset, its address is silent.

    (The process is stopped first: MemoryTransport.send_datagram can raise "nursery is
    closed" if a datagram is sent while the transport is shutting down.)"""
    node.scope.cancel()
    network.crash(node.id)


def sees(node: Node, subject: bytes, state: MemberState) -> bool:
    info = node.driver.member(subject)
    return info is not None and info.state is state


async def five_node_mesh(nursery, network, mesh) -> list[Node]:
    nodes = [await start_node(nursery, network, mesh, m) for m in mesh.members]
    seed = nodes[0].transport.listen_addresses[0]
    for node in nodes[1:]:
        assert await node.driver.join([seed]) == 1
    await wait_until(lambda: all(sees(a, b.id, MemberState.ALIVE)
                                 for a in nodes for b in nodes))
    return nodes


async def test_five_nodes_converge_and_share_capacity(nursery, autojump_clock):
    mesh = TestMesh.with_members(5)
    network = MemoryNetwork(latency=0.002, jitter=0.002)
    nodes = await five_node_mesh(nursery, network, mesh)
    events = nodes[1].driver.subscribe()
    nodes[0].driver.update_capacity(Capacity(cpu_cores=16, runtimes=("podman",)))
    await wait_until(lambda: all(n.driver.member(nodes[0].id).capacity.cpu_cores == 16
                                 for n in nodes))
    got = []
    while True:
        try:
            got.append(events.receive_nowait())
        except trio.WouldBlock:
            break
    assert any(e.member.node_id == nodes[0].id and e.member.capacity.cpu_cores == 16
               for e in got)
    stats = nodes[0].driver.statistics()
    assert stats.datagrams_sent > 0 and stats.bytes_received > 0 and stats.syncs_ok >= 0
    assert stats.hostile_dropped == 0
    members = nodes[2].driver.members()
    assert len(members) == 5 and all(m.addresses for m in members)


async def test_crash_is_marked_dead_by_every_survivor_within_six_seconds(nursery,
                                                                         autojump_clock):
    mesh = TestMesh.with_members(5)
    network = MemoryNetwork(latency=0.002, jitter=0.002)
    nodes = await five_node_mesh(nursery, network, mesh)
    victim, survivors = nodes[3], nodes[:3] + nodes[4:]
    failed = [n.driver.subscribe() for n in survivors]
    kill(network, victim)
    took = await wait_until(lambda: all(sees(n, victim.id, MemberState.DEAD)
                                        for n in survivors), timeout=10.0)
    assert took <= 6.0
    for channel in failed:
        seen = []
        while True:
            try:
                seen.append(channel.receive_nowait())
            except trio.WouldBlock:
                break
        assert any(type(e) is MemberFailed and e.member.node_id == victim.id for e in seen)


async def test_an_unreachable_hint_hastens_a_probe_but_a_live_member_stays_alive(
        nursery, autojump_clock):
    mesh = TestMesh.with_members(5)
    network = MemoryNetwork(latency=0.002, jitter=0.002)
    nodes = await five_node_mesh(nursery, network, mesh)
    a, b = nodes[0], nodes[1]
    core = a.driver.core
    a.transport._publish(PeerUnreachable(node_id=b.id, reason="port unreachable"))  # forged
    await wait_until(lambda: core.statistics().probes_hastened == 1, timeout=5.0)
    await wait_until(lambda: b.id not in core._rounds, timeout=5.0)  # b's ack ended it
    assert core.statistics().probes_failed == 0
    assert sees(a, b.id, MemberState.ALIVE)


async def test_leave_is_seen_as_left(nursery, autojump_clock):
    mesh = TestMesh.with_members(5)
    network = MemoryNetwork(latency=0.002)
    nodes = await five_node_mesh(nursery, network, mesh)
    events = nodes[0].driver.subscribe()
    with trio.fail_after(CONFIG.leave_timeout + 1):
        await nodes[2].driver.leave()
    nodes[2].scope.cancel()
    await wait_until(lambda: all(sees(n, nodes[2].id, MemberState.LEFT)
                                 for n in nodes if n is not nodes[2]), timeout=5.0)
    event = await events.receive()
    while type(event) is not MemberLeft:
        event = await events.receive()
    assert event.member.node_id == nodes[2].id
    await trio.sleep(10.0)
    assert all(sees(n, nodes[2].id, MemberState.LEFT) for n in nodes if n is not nodes[2])


async def test_restart_with_the_same_key_returns_alive_with_a_higher_incarnation(
        nursery, autojump_clock):
    mesh = TestMesh.with_members(5)
    network = MemoryNetwork(latency=0.002)
    nodes = await five_node_mesh(nursery, network, mesh)
    old = nodes[4]
    kill(network, old)
    await wait_until(lambda: all(sees(n, old.id, MemberState.DEAD) for n in nodes[:4]))
    dead_incarnation = nodes[0].driver.member(old.id).incarnation
    network.revive(old.id)
    reborn = await start_node(nursery, network, mesh, old.member, name="reborn")
    joined = nodes[0].driver.subscribe()
    await reborn.driver.join([nodes[0].transport.listen_addresses[0]])
    await wait_until(lambda: all(sees(n, old.id, MemberState.ALIVE) for n in nodes[:4]))
    for n in nodes[:4]:
        info = n.driver.member(old.id)
        assert info.incarnation > dead_incarnation
        assert info.addresses == ("mem://reborn",)
    event = await joined.receive()
    while type(event) is not MemberJoined:
        event = await joined.receive()
    assert event.member.node_id == old.id


async def test_join_fails_clearly_when_no_seed_answers(nursery, autojump_clock):
    mesh = TestMesh.with_members(1)
    network = MemoryNetwork()
    node = await start_node(nursery, network, mesh, mesh.members[0])
    with pytest.raises(GossipError, match="could not join the mesh: mem://nobody"):
        await node.driver.join(["mem://nobody"])
    assert await node.driver.join([]) == 0


async def test_malformed_and_forged_datagrams_are_dropped_and_counted(nursery,
                                                                      autojump_clock):
    mesh = TestMesh.with_members(3)
    network = MemoryNetwork()
    nodes = [await start_node(nursery, network, mesh, m) for m in mesh.members[:2]]
    await nodes[1].driver.join([nodes[0].transport.listen_addresses[0]])
    await wait_until(lambda: sees(nodes[0], nodes[1].id, MemberState.ALIVE))
    target, liar = nodes[0], nodes[1]
    liar.transport.send_datagram(target.id, GOSSIP_PROTOCOL, b"\xff\x00garbage")
    # An Alive for the third member (never seen), claiming an incarnation it never signed.
    third = mesh.members[2]
    forged = Alive(node=third.id, incarnation=9, addresses=("mem://x",),
                   capacity=Capacity(), public_key=third.key.public, signature=b"\0" * 64,
                   proof=encode_message(third.cert))
    liar.transport.send_datagram(target.id, GOSSIP_PROTOCOL, encode_message(forged))
    # An Alive claiming a higher incarnation for the liar's peer, signed by the liar.
    real = target.driver.member(liar.id)
    assert real is not None
    victim_alive = Alive(node=target.id, incarnation=50, addresses=("mem://evil",),
                         capacity=Capacity(), public_key=liar.member.key.public,
                         signature=b"")
    victim_alive = Alive(node=target.id, incarnation=50, addresses=("mem://evil",),
                         capacity=Capacity(), public_key=liar.member.key.public,
                         signature=liar.member.key.sign(victim_alive.signed_bytes()))
    liar.transport.send_datagram(target.id, GOSSIP_PROTOCOL, encode_message(victim_alive))
    await wait_until(lambda: target.driver.statistics().hostile_dropped >= 3)
    stats = target.driver.statistics()
    assert stats.dropped_malformed == 1
    assert stats.core.dropped_bad_signature == 2
    assert target.driver.member(third.id) is None
    assert target.driver.core.incarnation == 0


async def test_outsider_alive_with_a_valid_signature_but_no_certificate_is_refused(
        nursery, autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    nodes = [await start_node(nursery, network, mesh, m) for m in mesh.members]
    await nodes[1].driver.join([nodes[0].transport.listen_addresses[0]])
    outsider_key, _ = mesh.outsider()
    unsigned = Alive(node=outsider_key.id, incarnation=0, addresses=("mem://o",),
                     capacity=Capacity(), public_key=outsider_key.public, signature=b"",
                     proof=b"not a certificate")
    alive = Alive(node=outsider_key.id, incarnation=0, addresses=("mem://o",),
                  capacity=Capacity(), public_key=outsider_key.public,
                  signature=outsider_key.sign(unsigned.signed_bytes()),
                  proof=b"not a certificate")
    nodes[1].transport.send_datagram(nodes[0].id, GOSSIP_PROTOCOL, encode_message(alive))
    await wait_until(lambda: nodes[0].driver.statistics().core.dropped_non_member == 1)
    assert nodes[0].driver.member(outsider_key.id) is None


async def test_oversize_sync_is_refused(nursery, autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    nodes = [await start_node(nursery, network, mesh, m) for m in mesh.members]
    await nodes[1].driver.join([nodes[0].transport.listen_addresses[0]])
    stream = await nodes[1].transport.open_stream(nodes[0].id, SYNC_PROTOCOL)
    await stream.send(b"\x00" * (CONFIG.max_sync_bytes + 1))
    await wait_until(lambda: nodes[0].driver.statistics().dropped_malformed == 1)
    valid = encode_message(PushPull(join=False, entries=()))
    stream = await nodes[1].transport.open_stream(nodes[0].id, SYNC_PROTOCOL)
    await stream.send(valid)
    await stream.close()
    reply = await stream.receive()
    assert reply  # a well-formed sync is answered


async def test_sampled_capacity_is_announced_to_the_mesh(nursery, autojump_clock, tmp_path):
    from gossip.sysinfo import read_capacity

    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    readings = iter([Capacity(cpu_cores=2), Capacity(cpu_cores=2, load=0.1)])

    def source() -> Capacity:
        return next(readings, None) or read_capacity(tmp_path, use_termux=False)

    a = await start_node(nursery, network, mesh, mesh.members[0], capacity=Capacity())
    b = await start_node(nursery, network, mesh, mesh.members[1], capacity_source=source)
    await b.driver.join([a.transport.listen_addresses[0]])
    await wait_until(lambda: a.driver.member(b.id).capacity.cpu_cores == 2, timeout=60)
    await wait_until(lambda: a.driver.member(b.id).capacity.ram_total > 0, timeout=60)
    info = a.driver.member(b.id)
    assert info.capacity.disk_free > 0 and "process" in info.capacity.runtimes
    assert info.incarnation >= 2  # each announcement outbid the last


async def test_periodic_syncs_are_digest_first_and_small(nursery, autojump_clock):
    mesh = TestMesh.with_members(5)
    network = MemoryNetwork(latency=0.002, jitter=0.002)
    nodes = await five_node_mesh(nursery, network, mesh)
    full = len(encode_message(PushPull(join=False,
                                       entries=nodes[0].driver.core._local_state())))
    before = {n.id: n.driver.statistics() for n in nodes}
    await trio.sleep(2 * CONFIG.push_pull_interval)
    syncs = sent = 0
    for n in nodes:
        now, then = n.driver.statistics(), before[n.id]
        syncs += now.syncs_ok - then.syncs_ok
        sent += now.sync_bytes_sent - then.sync_bytes_sent
        assert now.syncs_failed == then.syncs_failed and now.dropped_malformed == 0
    assert syncs >= 5  # every node syncs about once a period
    # converged views: a digest each way and two empty deltas, not the full state
    assert sent / syncs < full / 2


async def test_malformed_digest_sync_entries_are_dropped_and_counted(nursery,
                                                                     autojump_clock):
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    nodes = [await start_node(nursery, network, mesh, m) for m in mesh.members]
    await nodes[1].driver.join([nodes[0].transport.listen_addresses[0]])
    before = nodes[0].driver.members()
    stream = await nodes[1].transport.open_stream(nodes[0].id, SYNC_PROTOCOL)
    await stream.send(encode_message(nodes[1].driver.core.sync_digest()))
    delta = decode_message(await stream.receive(), SyncDelta)
    assert delta.entries == () and delta.wants == () and delta.wants_new == ()
    await stream.send(b"\xff\x00junk")
    await wait_until(lambda: nodes[0].driver.statistics().dropped_malformed == 1)
    assert nodes[0].driver.members() == before


async def test_datagrams_queued_at_once_are_handled_in_one_step_not_one_per_round(
        nursery, autojump_clock):
    """A starved loop runs each runnable task about once per scheduling round: a driver
    that took one datagram per round let a burst's traffic queue up for tens of seconds
    (probes acked and accusations refuted far too late). What is queued is handled
    before the other tasks run again."""
    mesh = TestMesh.with_members(2)
    network = MemoryNetwork()
    a, b = [await start_node(nursery, network, mesh, m) for m in mesh.members]
    await b.driver.join([a.transport.listen_addresses[0]])
    await wait_until(lambda: sees(a, b.id, MemberState.ALIVE))
    queued = 50
    before = a.driver.statistics().datagrams_received
    for seq in range(1, queued + 1):  # all at once, as a socket's backlog is read
        ping = encode_message(Ping(seq=seq, target=a.id))
        assert a.transport.registry.deliver_datagram(b.id, GOSSIP_PROTOCOL, ping)
    rounds = 0
    while a.driver.statistics().datagrams_received < before + queued:
        await trio.lowlevel.cancel_shielded_checkpoint()  # one scheduling round
        rounds += 1
        assert rounds <= 5, "the driver took the queued datagrams one per round"
