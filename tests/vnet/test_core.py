"""The control core: plane configs from rows and membership, and reconcile orders."""

from __future__ import annotations

import ipaddress

from vnet.core import Delete, Put, View, new_host_member, plane_configs, reconcile
from vnet.records import AttachRecord, MemberRecord, VNetRecord

A, B, C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
KEYS = {A: b"\x01" * 32, B: b"\x02" * 32, C: b"\x03" * 32}


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def host(node: bytes, address: str, port: int = 51820, ms: int = 1) -> MemberRecord:
    return MemberRecord(kind="host", node=node, address=ip(address), claimed_ms=ms,
                        public_key=KEYS[node], port=port)


def view() -> View:
    return View(vnets={"blue": VNetRecord(cidr="10.42.0.0/24", created_ms=0),
                       "red": VNetRecord(cidr="10.43.0.0/24", created_ms=0)},
                members={("blue", "host:" + A.hex()): host(A, "10.42.0.1"),
                         ("blue", "host:" + B.hex()): host(B, "10.42.0.2", 4000),
                         ("red", "host:" + B.hex()): host(B, "10.43.0.9", 4001),
                         ("red", "host:" + C.hex()): host(C, "10.43.0.5", 4002)})


def test_configs_only_for_vnets_the_node_is_in_with_peers_from_membership():
    addresses = {B: ["10.213.5.11:7000"], C: ["10.213.5.12:7000"]}
    configs = plane_configs(view(), A, b"\x09" * 32, addresses)
    assert list(configs) == ["blue"]
    blue = configs["blue"]
    assert blue.interface == "mc-blue" and str(blue.address) == "10.42.0.1/24"
    (peer,) = blue.peers
    assert peer.public_key == KEYS[B] and peer.endpoint == ("10.213.5.11", 4000)
    assert peer.allowed_ips == (ipaddress.IPv4Network("10.42.0.2/32"),)
    assert "\\x09" not in repr(blue) and "09" * 4 not in repr(blue)
    # B roams: its endpoint follows the membership view
    moved = plane_configs(view(), A, b"\x09" * 32, {B: ["10.213.5.77:7000"]})
    assert moved["blue"].peers[0].endpoint == ("10.213.5.77", 4000)
    # B is no longer a member: no tunnel to it
    gone = plane_configs(view(), A, b"\x09" * 32, addresses, alive=frozenset({C}))
    assert gone["blue"].peers == ()
    # B sits in both V-Nets, each its own config, peers never mixed
    both = plane_configs(view(), B, b"\x08" * 32, {A: ["10.0.0.1:1"], C: ["10.0.0.3:1"]})
    assert {p.node_id for p in both["blue"].peers} == {A}
    assert {p.node_id for p in both["red"].peers} == {C}


def test_endpoint_skips_loopback_unless_only_loopback():
    from vnet.core import endpoint_host

    assert endpoint_host(["127.0.0.1:5", "10.1.2.3:5"]) == "10.1.2.3"
    assert endpoint_host(["127.0.0.51:5"]) == "127.0.0.51"
    assert endpoint_host(["[fd00::1]:7", "bad"]) == "fd00::1"
    assert endpoint_host(["0.0.0.0:1"]) is None


def test_a_collision_loser_is_not_routed_and_re_allocates():
    v = view()
    members = dict(v.members)
    members[("blue", "host:" + C.hex())] = host(C, "10.42.0.2", 4002, ms=5)  # B's, later
    v = View(vnets=v.vnets, members=members)
    configs = plane_configs(v, A, b"\x09" * 32, {B: ["1.1.1.1:1"], C: ["1.1.1.2:1"]})
    assert [p.node_id for p in configs["blue"].peers] == [B]
    assert "blue" not in plane_configs(v, C, b"\x07" * 32, {})
    orders = reconcile(v, C, KEYS[C], {}, now_ms=100)
    (put,) = [o for o in orders if isinstance(o, Put) and o.vnet == "blue"]
    assert put.record.address not in (ip("10.42.0.1"), ip("10.42.0.2"))
    assert put.record.claimed_ms == 100


def test_reconcile_publishes_port_and_key_and_drops_removed_vnets():
    v = view()
    orders = reconcile(v, B, b"\x05" * 32, {"blue": 4100}, now_ms=7)
    puts = {o.vnet: o.record for o in orders if isinstance(o, Put)}
    assert puts["blue"].port == 4100 and puts["blue"].public_key == b"\x05" * 32
    assert puts["blue"].address == ip("10.42.0.2")  # the address stays
    gone = View(vnets={"red": v.vnets["red"]}, members=v.members)
    assert Delete("blue", "host:" + B.hex()) in reconcile(gone, B, KEYS[B], {}, 7)


def test_attached_workload_running_here_attaches_the_host():
    v = View(vnets=view().vnets, members={}, attachments={("blue", "web"): AttachRecord(
        created_ms=0)}, running={"web": frozenset({0})})
    orders = reconcile(v, A, KEYS[A], {}, now_ms=9)
    kinds = {(o.member, o.record.kind) for o in orders if isinstance(o, Put)}
    assert kinds == {("host:" + A.hex(), "host"), ("wl:web/0", "replica")}
    # the replica stops running here: its row goes
    members = {(o.vnet, o.member): o.record for o in orders if isinstance(o, Put)}
    stopped = View(vnets=v.vnets, members=members, attachments=v.attachments, running={})
    assert reconcile(stopped, A, KEYS[A], {}, 10) == [Delete("blue", "wl:web/0")]


def test_new_host_member_keeps_an_existing_address():
    v = view()
    put = new_host_member(v, "blue", A, 99, plane="wireguard")
    assert put.record.address == ip("10.42.0.1") and put.record.plane == "wireguard"
