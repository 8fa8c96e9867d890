"""IPAM: ranges, allocation, and no duplicate address after partitions heal."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vnet.core import Delete, Put, View, new_host_member, owners, reconcile
from vnet.ipam import (
    ExhaustedError,
    VNetError,
    allocate,
    check_name,
    interface_name,
    parse_cidr,
    resolve,
)
from vnet.records import VNetRecord


@pytest.mark.parametrize("text", ["10.42.0.0/24", "192.168.7.0/28", "172.16.0.0/12",
                                  "100.64.3.0/24", "10.0.0.0/30"])
def test_good_ranges(text):
    assert str(parse_cidr(text)) == text


@pytest.mark.parametrize("text,words", [
    ("10.42.0.1/24", "host bits"), ("10.42.0.0/33", "prefix"), ("8.8.8.0/24", "private"),
    ("10.42.0.0", "prefix length"), ("banana", "not an IPv4"), ("10.0.0.0/31", "/30"),
    ("127.0.0.0/8", "private"), ("", "not an IPv4"), ("fd00::/64", "not an IPv4")])
def test_bad_ranges_get_one_clear_error(text, words):
    with pytest.raises(VNetError, match=words):
        parse_cidr(text)


def test_names_and_interfaces():
    assert check_name("blue-1") == "blue-1"
    for bad in ("", "Blue", "1x", "a_b", "x" * 33, "a-", None):
        with pytest.raises(VNetError):
            check_name(bad)
    assert interface_name("blue") == "mc-blue"
    long_a, long_b = interface_name("averyverylongname1"), interface_name("averyverylongname2")
    assert len(long_a) <= 15 and len(long_b) <= 15 and long_a != long_b


def test_allocate_skips_taken_and_reports_exhaustion():
    net = parse_cidr("10.9.0.0/30")  # .1 and .2 usable
    first = allocate(net, "a", [])
    second = allocate(net, "b", [first])
    assert {first, second} == {int(ipaddress.IPv4Address("10.9.0.1")),
                               int(ipaddress.IPv4Address("10.9.0.2"))}
    with pytest.raises(ExhaustedError, match="full"):
        allocate(net, "c", [first, second])


def test_resolve_earliest_claim_wins_then_member_id():
    owners_, losers = resolve({"x": (5, 20), "y": (5, 10), "z": (6, 30), "w": (0, 1)})
    assert owners_ == {5: "y", 6: "z"} and losers == {"x"}
    owners_, losers = resolve({"b": (5, 10), "a": (5, 10)})
    assert owners_ == {5: "a"} and losers == {"b"}


# --- partitions: a model of nodes each holding a copy of the rows ----------------------

VNET = "blue"


class Model:
    """Nodes with their own copies of the rows; rows merge by a version (the writer's
    counter), like the replicated table's LWW registers with one writer per row."""

    def __init__(self, nodes: int, cidr: str) -> None:
        self.nodes = [bytes([i + 1]) * 4 for i in range(nodes)]
        vnets = {VNET: VNetRecord(cidr=cidr, created_ms=0)}
        self.vnets = vnets
        self.rows: list[dict[tuple[str, str], tuple[int, object]]] = [{} for _ in self.nodes]
        self.version = 0
        self.now = 1000

    def view(self, i: int) -> View:
        return View(vnets=self.vnets, members={k: r for k, (_, r) in self.rows[i].items()
                                               if r is not None})

    def write(self, i: int, orders) -> None:
        for order in orders:
            self.version += 1
            if isinstance(order, Put):
                self.rows[i][(order.vnet, order.member)] = (self.version, order.record)
            else:
                assert isinstance(order, Delete)
                self.rows[i][(order.vnet, order.member)] = (self.version, None)

    def attach(self, i: int) -> None:
        self.now += 1
        try:
            put = new_host_member(self.view(i), VNET, self.nodes[i], self.now,
                                  public_key=bytes(32))
        except ExhaustedError:
            return
        self.write(i, [put])

    def reconcile(self, i: int) -> None:
        self.now += 1
        self.write(i, reconcile(self.view(i), self.nodes[i], bytes(32), {}, self.now))

    def sync(self, group: list[int]) -> None:
        merged: dict = {}
        for i in group:
            for key, (version, row) in self.rows[i].items():
                if key not in merged or merged[key][0] < version:
                    merged[key] = (version, row)
        for i in group:
            self.rows[i] = dict(merged)

    def check_no_duplicate_held(self, i: int) -> None:
        held = owners(self.view(i).members, VNET)
        assert len(set(held.values())) == len(held)


steps = st.lists(st.tuples(st.sampled_from(["attach", "reconcile", "partition", "sync"]),
                           st.integers(0, 1000)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(nodes=st.integers(2, 9), cidr=st.sampled_from(["10.42.0.0/30", "10.42.0.0/29",
                                                      "10.42.0.0/28"]), steps=steps)
def test_partitions_never_leave_a_duplicate_after_heal(nodes, cidr, steps):
    # 2, 6 or 14 addresses: small ranges make two sides of a partition pick the same one
    model = Model(nodes, cidr)
    groups = [list(range(nodes))]
    for action, n in steps:
        i = n % nodes
        if action == "attach":
            model.attach(i)
        elif action == "reconcile":
            model.reconcile(i)
        elif action == "partition":
            cut = n % nodes
            groups = [g for g in (list(range(cut)), list(range(cut, nodes))) if g]
        else:
            for group in groups:
                model.sync(group)
        model.check_no_duplicate_held(i)
    # heal: everyone meets, and every node reconciles until nothing changes
    everyone = list(range(nodes))
    for _ in range(nodes + 2):
        model.sync(everyone)
        for i in everyone:
            model.reconcile(i)
    model.sync(everyone)
    for i in everyone:
        assert reconcile(model.view(i), model.nodes[i], bytes(32), {}, model.now) == []
    view = model.view(0)
    network = parse_cidr(cidr)
    size = network.num_addresses - 2
    held = owners(view.members, VNET)
    # every member that asked holds an address of its own unless the range is full; the
    # rows of those that wait share no address with each other nor with a holder
    # once re-allocated, and are never routed meanwhile
    assert len(held) == min(len(view.members), size)
    assert all(ipaddress.IPv4Address(a) in network for a in held)
    if len(view.members) <= size:
        addresses = [r.address for r in view.members.values()]
        assert len(addresses) == len(set(addresses)), "two members hold one address"
    for i in everyone:
        assert owners(model.view(i).members, VNET) == held  # every node agrees


def test_two_partitions_colliding_resolve_to_the_earlier_claim():
    model = Model(2, "10.42.0.0/30")  # two usable addresses; both pick from one view
    model.rows[0] = {}
    model.attach(0)
    model.attach(1)
    a = model.view(0).members[(VNET, "host:" + model.nodes[0].hex())].address
    b = model.view(1).members[(VNET, "host:" + model.nodes[1].hex())].address
    if a != b:  # the start point differs by member id; force the collision
        model.write(1, [Put(VNET, "host:" + model.nodes[1].hex(), model.view(1).members[
            (VNET, "host:" + model.nodes[1].hex())].__class__(
                kind="host", node=model.nodes[1], address=a, claimed_ms=model.now,
                public_key=bytes(32)))])
    model.sync([0, 1])
    held = owners(model.view(0).members, VNET)
    assert held == {a: "host:" + model.nodes[0].hex()}  # the earlier claim keeps it
    model.reconcile(1)
    model.sync([0, 1])
    rows = model.view(0).members
    assert len({r.address for r in rows.values()}) == 2
