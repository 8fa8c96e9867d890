"""Attaching or detaching a running workload restarts its replicas into (out of) their
V-Nets: the attachment is part of the replicas' desired spec (the reconciler core, with
hand-made runtime reports; no I/O)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from apps.runtimes.base import ReplicaState, ReplicaStatus
from apps.workloads.config import ReconcilerConfig
from apps.workloads.core import (
    NETWORKS_ENV,
    ClaimState,
    ReconcilerCore,
    WorkloadEntry,
    restart_reason,
    with_networks,
)
from apps.workloads.outputs import StartReplica, StopReplica, WriteClaim
from apps.workloads.spec import parse_spec
from apps.workloads.tables import ReplicaClaim
from vnet.core import Delete, Put, View
from vnet.wiring import netns_name

ME = b"\x01" * 32
API = parse_spec({"name": "api", "command": ["python3", "-c", "pass"], "replicas": 1})


def running(spec) -> ReplicaStatus:
    return ReplicaStatus(name=spec.name, runtime="process", state=ReplicaState.RUNNING,
                         id="p1", restarts=0, workload="api", replica=0,
                         fencing_token=1, spec_hash=spec.spec_hash())


def step(core, now, observed, claim_state=ClaimState.RUNNING):
    claims = {("api", 0): ReplicaClaim(node=ME, fencing=1, state=claim_state, restarts=0,
                                       updated_ms=1, generation=1, message="")}
    return core.step(now, 1000, workloads={"api": WorkloadEntry(API, 1, 1)},
                     assignment={"api": {0: ME}}, claims=claims, observed=observed)


def of(outputs, kind):
    return [o for o in outputs if isinstance(o, kind)]


def test_attach_then_detach_restarts_the_running_replica_each_time():
    core = ReconcilerCore(ME, ReconcilerConfig())
    nets: list[str] = []
    core.networks = lambda workload: nets if workload == "api" else ["other"]
    plain = API.container_spec(0, 1)
    assert NETWORKS_ENV not in plain.env
    # running outside any V-Net, nothing attached: kept
    assert of(step(core, 0.0, [running(plain)]), StopReplica) == []

    nets[:] = ["blue"]  # `vnet attach blue api`
    out = step(core, 1.0, [running(plain)])
    (stop,) = of(out, StopReplica)
    assert stop.name == "api-0" and stop.reason == "spec changed"
    (write,) = of(out, WriteClaim)
    assert write.claim.state == ClaimState.STOPPING
    assert write.claim.message == "restarting to join V-Net blue"  # `meshcloud ps`
    # it ended (stopped on purpose): started again, with the V-Net in its spec, and no
    # failure counted
    out = step(core, 2.0, [_exited(running(plain))], ClaimState.STOPPING)
    (start,) = of(out, StartReplica)
    assert start.spec.env[NETWORKS_ENV] == "blue"
    assert core.failures(("api", 0)) == 0
    joined = start.spec
    assert of(step(core, 3.0, [running(joined)]), StopReplica) == []

    nets[:] = []  # `vnet detach blue api`
    out = step(core, 4.0, [running(joined)])
    assert len(of(out, StopReplica)) == 1
    assert of(out, WriteClaim)[0].claim.message == "restarting to leave V-Net blue"
    out = step(core, 5.0, [_exited(running(joined))], ClaimState.STOPPING)
    (start,) = of(out, StartReplica)
    assert NETWORKS_ENV not in start.spec.env
    assert start.spec.spec_hash() == plain.spec_hash()


def _exited(status: ReplicaStatus) -> ReplicaStatus:
    from dataclasses import replace

    return replace(status, state=ReplicaState.EXITED, exit_code=0)


def test_a_replica_adopted_after_an_agent_restart_joins_with_a_clear_reason():
    """The core knows nothing of the replica's past: its spec hash says it runs outside
    every V-Net."""
    core = ReconcilerCore(ME, ReconcilerConfig())
    core.networks = lambda workload: ["red", "blue"]
    out = step(core, 0.0, [running(API.container_spec(0, 1))])
    assert of(out, WriteClaim)[0].claim.message == "restarting to join V-Net blue, red"


def test_no_network_hook_leaves_specs_as_they_were():
    core = ReconcilerCore(ME, ReconcilerConfig())
    out = step(core, 0.0, [])
    (start,) = of(out, StartReplica)
    assert start.spec == API.container_spec(0, 1)


names = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), max_size=4,
                 unique=True)


@given(names, names)
def test_the_spec_hash_follows_the_set_of_networks(a, b):
    plain = API.container_spec(0, 1)
    ha = with_networks(plain, a).spec_hash()
    hb = with_networks(plain, list(reversed(b))).spec_hash()
    assert (ha == hb) == (set(a) == set(b))
    assert (ha == plain.spec_hash()) == (not a)


@given(names, names)
def test_restart_reason_names_what_changed(before, after):
    text = restart_reason(tuple(before), tuple(after))
    if set(before) == set(after) and tuple(before) == tuple(after):
        assert text == "restarting with a new spec"
        return
    for n in set(after) - set(before):
        assert n in text and "join" in text
    for n in set(before) - set(after):
        assert n in text and "leave" in text
    assert restart_reason(None, tuple(after)) == "restarting with a new spec"


# --- the node's side: the namespace of a replica whose workload is attached, detached ---

async def test_detach_removes_the_namespace_veths_and_row_before_the_next_run(
        monkeypatch, tmp_path):
    """ReplicaNets with a fake ``ip`` (it records the commands; ``netns add`` makes the
    handle file): the restarted replica of an attached workload starts in a wired
    namespace; once detached, its next run starts on the host's network, after the
    namespace and its veth are deleted and its row (its address) is released. A
    container's namespace left named after a detach goes on the next pass."""
    from apps.runtimes.spec import ContainerSpec
    from vnet import replicas
    from vnet.core import reconcile
    from vnet.records import AttachRecord, VNetRecord

    node, key = b"\xaa" * 32, b"\x01" * 32
    ran: list[tuple[str, ...]] = []

    async def fake_ip(*cmd: str, check: bool = True) -> str:
        ran.append(cmd)
        if cmd[:3] == ("ip", "netns", "add"):
            (tmp_path / cmd[3]).touch()
        elif cmd[:3] == ("ip", "netns", "del"):
            (tmp_path / cmd[3]).unlink(missing_ok=True)
        return ""

    monkeypatch.setattr(replicas, "run", fake_ip)
    monkeypatch.setattr(replicas, "NETNS_DIR", tmp_path)
    monkeypatch.setattr(replicas, "sysctls", lambda w: [])
    monkeypatch.setattr(replicas.os, "geteuid", lambda: 0)
    vnets = {"blue": VNetRecord(cidr="10.42.0.0/24", created_ms=0)}
    attachments = {("blue", "api"): AttachRecord(created_ms=0)}
    members: dict = {}
    running = {"api": frozenset({0})}

    def view() -> View:
        return View(vnets=vnets, members=dict(members), attachments=dict(attachments),
                    running=running)

    def write_rows(netted) -> View:
        for order in reconcile(view(), node, key, {"blue": 5000}, 1, netted):
            if isinstance(order, Put):
                members[(order.vnet, order.member)] = order.record
            elif isinstance(order, Delete):
                members.pop((order.vnet, order.member), None)
        return view()

    nets = replicas.ReplicaNets(node, view, write_rows)
    assert nets.networks("api") == ("blue",) and nets.networks("other") == ()
    spec = ContainerSpec(name="api-0", image=None, command=("true",), workload="api")
    placed = await nets.prepare(spec)
    assert placed is not None and placed.netns == str(tmp_path / netns_name(node, "api-0"))
    address = members[("blue", "wl:api/0")].address
    assert address and placed.env["MESHCLOUD_VNET_BLUE"] == str(ipaddress.IPv4Address(
        address))
    link = nets.entries["api-0"].wired["blue"].link
    assert any(c[:4] == ("ip", "link", "add", link) for c in ran)

    attachments.clear()  # `vnet detach blue api`
    assert nets.networks("api") == ()
    ran.clear()
    assert await nets.prepare(spec) is None  # its next run: the host's network
    assert ("ip", "link", "del", link) in ran
    assert ("ip", "netns", "del", netns_name(node, "api-0")) in ran
    assert nets.entries == {} and list(tmp_path.iterdir()) == []
    write_rows(nets.netted(view()))
    assert ("blue", "wl:api/0") not in members  # the address is free again

    # a container: wired when it starts attached, unwired by the pass after a detach
    attachments[("blue", "api")] = AttachRecord(created_ms=0)
    await nets.joined(spec, 4242)
    assert ("ip", "netns", "attach", netns_name(node, "api-0"), "4242") in ran
    assert nets.entries["api-0"].wired
    attachments.clear()
    ran.clear()
    await nets.sync()
    assert nets.entries == {}
    assert ("ip", "netns", "del", netns_name(node, "api-0")) in ran


# --- a rolling restart: one replica at a time, each live before the next goes ----------

WEB = parse_spec({"name": "web", "command": ["python3", "-c", "pass"], "replicas": 3})


def web_status(index, spec) -> ReplicaStatus:
    return ReplicaStatus(name=spec.name, runtime="process", state=ReplicaState.RUNNING,
                         id=f"p{index}", restarts=0, workload="web", replica=index,
                         fencing_token=1, spec_hash=spec.spec_hash())


def web_claim(state=ClaimState.RUNNING, networks=()) -> ReplicaClaim:
    return ReplicaClaim(node=ME, fencing=1, state=state, restarts=0, updated_ms=1,
                        generation=1, message="", networks=networks)


def test_replicas_join_a_vnet_one_at_a_time_in_index_order():
    """Three replicas (here on one node; the rule reads only the replicated claims, so it
    holds across nodes): replica 1 waits until replica 0 runs in blue, replica 2 until
    replica 1 does; a failed replica is not waited for."""
    core = ReconcilerCore(ME, ReconcilerConfig())
    core.networks = lambda workload: ["blue"]
    old = {i: web_status(i, WEB.container_spec(i, 1)) for i in range(3)}
    new = {i: web_status(i, with_networks(WEB.container_spec(i, 1), ["blue"]))
           for i in range(3)}
    blue = ("blue",)

    def run(now, observed, claims):
        return core.step(now, 1000, workloads={"web": WorkloadEntry(WEB, 3, 1)},
                         assignment={"web": {0: ME, 1: ME, 2: ME}},
                         claims={("web", i): c for i, c in claims.items()},
                         observed=list(observed))

    out = run(0.0, old.values(), {i: web_claim() for i in range(3)})
    assert [s.key for s in of(out, StopReplica)] == [("web", 0)]
    said = {w.key[1]: w.claim for w in of(out, WriteClaim)}
    assert said[0].state == ClaimState.STOPPING and said[0].networks == ()
    assert said[1].state == ClaimState.RUNNING
    assert said[1].message == "waiting for replica 0 before restarting to join V-Net blue"
    assert said[2].message.startswith("waiting for replica 0")

    # replica 0 starting in blue: not live yet, the others wait
    claims = {0: web_claim(ClaimState.STARTING, blue), 1: said[1], 2: said[2]}
    out = run(1.0, [new[0], old[1], old[2]], claims)
    assert of(out, StopReplica) == []
    # replica 0 live in blue: replica 1 goes, replica 2 waits for it
    claims[0] = web_claim(ClaimState.RUNNING, blue)
    out = run(2.0, [new[0], old[1], old[2]], claims)
    assert [s.key for s in of(out, StopReplica)] == [("web", 1)]
    said = {w.key[1]: w.claim for w in of(out, WriteClaim)}
    assert said[2].message.startswith("waiting for replica 1")
    # replica 1 failed in blue: replica 2 does not wait for it
    claims[1] = web_claim(ClaimState.FAILED, blue)
    out = run(3.0, [new[0], old[2]], claims)
    assert ("web", 2) in [s.key for s in of(out, StopReplica)]


claim_states = st.sampled_from([None, ClaimState.RUNNING, ClaimState.STARTING,
                                ClaimState.STOPPING, ClaimState.FAILED])


@given(st.lists(st.tuples(claim_states, st.booleans()), min_size=1, max_size=5))
def test_a_replica_waits_exactly_for_the_first_earlier_one_not_live_in_the_new_vnets(rows):
    from apps.workloads.core import _turn

    nets = ("blue",)
    claims = {("web", j): web_claim(state, nets if joined else ())
              for j, (state, joined) in enumerate(rows) if state is not None}
    index = len(rows)
    expected = next((j for j, (state, joined) in enumerate(rows)
                     if state not in (None, ClaimState.FAILED)
                     and not (state == ClaimState.RUNNING and joined)), None)
    assert _turn(claims, "web", index, index + 1, nets) == expected


async def test_an_attachment_row_wakes_the_reconciler_at_once(nursery, autojump_clock):
    """The reconciler watches the tables the replica network reads (``network_tables``):
    an attach starts a pass at once, not at the next idle resync (30 s and more)."""
    from apps.workloads.catalogue import IMAGES
    from apps.workloads.offers import OFFERS
    from apps.workloads.reconciler import Reconciler
    from tests.apps.workloads.test_reconciler_watch import next_pass
    from tests.meshcloud.state.test_driver import start_cluster
    from vnet import core
    from vnet.records import AttachRecord, VNetRecord
    from vnet.replicas import ReplicaNets
    from vnet.tables import ATTACHMENTS, VNETS, all_attachments, all_vnets

    _, ids, drivers = await start_cluster(nursery, 1)
    state = drivers[0]
    for schema in (OFFERS, IMAGES, VNETS, ATTACHMENTS):
        state.open_table(schema)
    state.put(VNETS.name, ("blue",), VNetRecord(cidr="10.42.0.0/24", created_ms=1))
    nets = ReplicaNets(ids[0], lambda: core.View(), lambda keys: core.View(), Path("/nonexistent"),
                       attachments=lambda: core.View(vnets=all_vnets(state), members={},
                                                     attachments=all_attachments(state)))
    reconciler = Reconciler(ids[0], state, {}, lambda: [])
    reconciler.core.networks = nets.networks
    reconciler.watch_also = nets.network_tables
    await nursery.start(reconciler.run)
    idle = reconciler.config.idle_resync_interval
    await next_pass(reconciler, idle + 5)  # the first pass; nothing runs here: it idles
    assert nets.networks("api") == ()

    state.put(ATTACHMENTS.name, ("blue", "api"), AttachRecord(created_ms=2))
    took = await next_pass(reconciler, idle + 5)
    assert took < 1.0, f"an attach waited {took:.1f} s for a pass"
    assert nets.networks("api") == ("blue",)
