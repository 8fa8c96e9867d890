"""Replicas with addresses of their own: the control core's rows, the plane configs that
route them, their names, and the wiring of their namespaces (all sans-IO)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.core import Put, View, plane_configs, reconcile
from vnet.names import resolve_name
from vnet.records import AttachRecord, MemberRecord, VNetRecord
from vnet.wiring import netns_name, replica_env, replica_of, setup, wirings

A, B, C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
KEYS = {A: b"\x01" * 32, B: b"\x02" * 32, C: b"\x03" * 32}
VNETS = {"blue": VNetRecord(cidr="10.42.0.0/24", created_ms=0),
         "red": VNetRecord(cidr="10.43.0.0/24", created_ms=0)}
ATTACHED = {("blue", "web"): AttachRecord(created_ms=0)}
WEB0 = ("blue", "wl:web/0")


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def apply(members: dict, orders: list) -> dict:
    out = dict(members)
    for order in orders:
        if isinstance(order, Put):
            out[(order.vnet, order.member)] = order.record
        else:
            out.pop((order.vnet, order.member), None)
    return out


def run_here(node: bytes, members: dict, running: dict, netted=frozenset(), now=10) -> dict:
    v = View(vnets=VNETS, members=members, attachments=ATTACHED, running=running)
    return apply(members, reconcile(v, node, KEYS[node], {"blue": 5000}, now, netted))


def test_a_netted_replica_gets_its_own_address_routed_to_its_node():
    members = run_here(A, {}, {"web": frozenset({0})}, frozenset({WEB0}))
    members = run_here(B, members, {}, frozenset())
    members = apply(members, [Put("blue", "host:" + B.hex(), MemberRecord(
        kind="host", node=B, address=ip("10.42.0.200"), claimed_ms=1,
        public_key=KEYS[B], port=5001))])
    replica, host_a = members[WEB0], members[("blue", "host:" + A.hex())]
    assert replica.node == A and replica.address not in (0, host_a.address)
    # B's tunnel to A carries both of A's addresses, with A's key and port (host row)
    config = plane_configs(View(vnets=VNETS, members=members), B, b"\x09" * 32,
                           {A: ["10.213.0.1:7000"]})["blue"]
    (peer,) = config.peers
    assert peer.public_key == KEYS[A] and peer.endpoint == ("10.213.0.1", 5000)
    assert {str(n) for n in peer.allowed_ips} == {
        f"{ipaddress.IPv4Address(replica.address)}/32",
        f"{ipaddress.IPv4Address(host_a.address)}/32"}
    # by name: the replica's own address, not its node's
    for name in ("web.blue.vnet", "0.web.vnet"):
        assert resolve_name(name, "blue", members) == [ipaddress.IPv4Address(replica.address)]
    # its namespace on A: one veth into blue, the node's address as gateway
    (wiring,) = wirings(View(vnets=VNETS, members=members, attachments=ATTACHED), A,
                        "web-0", "web", 0).values()
    assert (wiring.address, wiring.gateway) == (ipaddress.IPv4Address(replica.address),
                                                ipaddress.IPv4Address(host_a.address))
    assert wiring.inner == "mc-blue" and len(wiring.link) == 15
    assert replica_env({"blue": wiring}) == {
        "MESHCLOUD_VNET_BLUE": str(wiring.address),
        "MESHCLOUD_VNET_BLUE_RESOLVER": str(wiring.gateway)}
    cmds = setup("ns1", wiring)
    assert ["ip", "-n", "ns1", "addr", "add", f"{wiring.address}/32", "dev", "mc-blue"] in cmds
    assert cmds[-1][-2:] == ["src", str(wiring.address)]
    # B does not wire A's replica
    assert wirings(View(vnets=VNETS, members=members, attachments=ATTACHED), B,
                   "web-0", "web", 0) == {}


def test_a_replica_re_placed_on_another_node_keeps_its_address():
    members = run_here(A, {}, {"web": frozenset({0})}, frozenset({WEB0}), now=10)
    first = members[WEB0]
    # A dies; B inherits the replica and makes its namespace: same address, same claim
    moved_rows = run_here(B, members, {"web": frozenset({0})}, frozenset({WEB0}), now=60)
    moved = moved_rows[WEB0]
    assert (moved.node, moved.address, moved.claimed_ms) == (B, first.address,
                                                             first.claimed_ms)
    # B's pass may run before the namespace exists (the row then shares B's address);
    # the address the namespace gets next is the same (searched from the member's point)
    members = run_here(B, members, {"web": frozenset({0})}, frozenset(), now=50)
    assert members[WEB0].node == B and members[WEB0].address == 0
    members = run_here(B, members, {"web": frozenset({0})}, frozenset({WEB0}), now=60)
    assert (members[WEB0].node, members[WEB0].address) == (B, first.address)
    # A comes back without the replica: it leaves B's row alone
    again = run_here(A, members, {}, frozenset(), now=70)
    assert again[WEB0] == members[WEB0]
    # and stable: nothing more to write on B
    v = View(vnets=VNETS, members=members, attachments=ATTACHED,
             running={"web": frozenset({0})})
    assert [o for o in reconcile(v, B, KEYS[B], {"blue": 5000}, 80, frozenset({WEB0}))
            if o.member == "wl:web/0"] == []


def test_a_moved_replica_keeps_an_address_that_was_not_its_first_choice():
    first = run_here(A, {}, {"web": frozenset({0})}, frozenset({WEB0}), now=10)[WEB0]
    # its first choice was taken when it started on A: it holds another address
    other = first.address + 1 if first.address < ip("10.42.0.250") else first.address - 1
    members = {WEB0: MemberRecord(kind="replica", node=A, address=other, claimed_ms=10),
               ("blue", "host:" + A.hex()): MemberRecord(
                   kind="host", node=A, address=first.address, claimed_ms=1,
                   public_key=KEYS[A], port=1)}
    members = run_here(B, members, {"web": frozenset({0})}, frozenset({WEB0}), now=60)
    assert (members[WEB0].node, members[WEB0].address) == (B, other)


def test_a_replica_without_a_namespace_shares_the_host_address():
    members = run_here(A, {}, {"web": frozenset({0})}, frozenset({WEB0}))
    assert members[WEB0].address != 0
    members = run_here(A, members, {"web": frozenset({0})}, frozenset())
    assert members[WEB0].address == 0
    host_a = members[("blue", "host:" + A.hex())]
    assert resolve_name("0.web.vnet", "blue", members) == [
        ipaddress.IPv4Address(host_a.address)]


def test_a_replica_whose_address_lost_a_collision_moves_and_is_not_named_meanwhile():
    members = run_here(A, {}, {"web": frozenset({0})}, frozenset({WEB0}), now=10)
    taken = members[WEB0].address
    # a member of B claimed the same address earlier (rows met after a partition)
    members[("blue", "wl:web/1")] = MemberRecord(kind="replica", node=B, address=taken,
                                                 claimed_ms=5)
    assert resolve_name("0.web.vnet", "blue", members) == []
    members = run_here(A, members, {"web": frozenset({0})}, frozenset({WEB0}), now=20)
    assert members[WEB0].address not in (0, taken)
    assert resolve_name("0.web.vnet", "blue", members) == [
        ipaddress.IPv4Address(members[WEB0].address)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.integers(0, 5)), min_size=1,
                max_size=25))
def test_replicas_moving_around_never_share_an_address(moves):
    """Replicas of one workload start, move and stop on three nodes in any order: after
    every node has run, the held addresses of live replicas are distinct and each live
    netted replica has one, routed to the node that runs it."""
    members: dict = {}
    placed: dict[int, bytes] = {}
    for now, (node, index) in enumerate(moves, start=1):
        if placed.get(index) == node:
            del placed[index]  # a second move to the same node: the replica stops
        else:
            placed[index] = node
        for n in (A, B, C):
            running = {"web": frozenset(i for i, m in placed.items() if m == n)}
            netted = frozenset(("blue", f"wl:web/{i}") for i in running["web"])
            members = run_here(n, members, running, netted, now)
    live = {k: r for k, r in members.items() if k[1].startswith("wl:")}
    assert {int(k[1].split("/")[1]) for k in live} == set(placed)
    addresses = [r.address for r in live.values()]
    assert 0 not in addresses and len(set(addresses)) == len(addresses)
    hosts = {r.address for k, r in members.items() if k[1].startswith("host:")}
    assert not hosts & set(addresses)
    for (_, member), row in live.items():
        assert row.node == placed[int(member.split("/")[1])]


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), st.integers(0, 999),
       st.binary(min_size=32, max_size=32))
def test_namespace_names_round_trip(workload, index, node):
    name = netns_name(node, f"{workload}-{index}")
    assert replica_of(node, name) == (workload, index)
    assert replica_of(b"\x00" * 32 if node != b"\x00" * 32 else b"\x01" * 32, name) is None


async def test_the_runtime_hook_answers_none_or_one_clear_error(monkeypatch):
    """ReplicaNets.prepare: nothing for a workload on no V-Net (no command run); a
    failing ``ip`` becomes one VNetError (the runtime refuses the start with it)."""
    import os

    import pytest

    from apps.runtimes.spec import ContainerSpec
    from vnet import replicas
    from vnet.ipam import VNetError
    from vnet.plane import PlaneError

    ran: list[tuple[str, ...]] = []

    async def failing(*cmd: str, check: bool = True) -> str:
        ran.append(cmd)
        raise PlaneError("`ip` is not installed")

    monkeypatch.setattr(replicas, "run", failing)
    monkeypatch.setattr(replicas, "NETNS_DIR", replicas.Path("/nonexistent-netns-dir"))
    view = View(vnets=VNETS, members={}, attachments=ATTACHED)
    nets = replicas.ReplicaNets(A, lambda: view, lambda netted: view)
    spec = ContainerSpec(name="db-0", image=None, command=("true",), workload="db")
    assert await nets.prepare(spec) is None and ran == []
    if os.geteuid() != 0:
        return  # a non-root agent never makes namespaces
    with pytest.raises(VNetError, match="web-0: its V-Net namespace: `ip` is not"):
        await nets.prepare(ContainerSpec(name="web-0", image=None, command=("true",),
                                         workload="web"))
    assert ran and "web-0" not in nets.entries
