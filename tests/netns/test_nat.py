"""Nodes behind NAT, for real: two agents each behind its own NAT (iptables MASQUERADE),
two public agents. The NATed agents find out they cannot be dialled, keep reservations
with the public ones, reach each other through a relay, then directly after a hole punch;
an object written on one is read on the other, and one's ingress reaches a workload
replica on the other; when a relay dies, the other public member
carries on. Every namespace, veth, rule and route is removed at the end."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
from pathlib import Path

import pytest

from sim.agents import Agent, LocalCluster, wait_until
from tests.netns.natlab import NatLab, leftovers
from tests.workload_python import inline_script_line

pytestmark = [pytest.mark.netns, pytest.mark.real, pytest.mark.slow]

PEER, API, S3, EXPOSED = 7946, 7947, 7948, 7960
ECHO = inline_script_line(Path(__file__).parents[1] / "apps/ingress/echo_server.py")
DEADLINE = 90


def kill_replicas(agent: Agent) -> None:
    """Process replicas outlive a killed agent: end their groups."""
    from apps.runtimes.process_state import ReplicaRecord

    for path in agent.data_dir.glob("runtimes/process/*/state.json"):
        with contextlib.suppress(Exception):
            os.killpg(ReplicaRecord.load(path.parent).pid, signal.SIGKILL)


def reach(agent: Agent) -> dict:
    try:
        return agent.get("/v1/status")["reachability"]
    except http.client.HTTPException as exc:  # a reply cut short: wait_until asks again
        raise ValueError(f"status of {agent.name}: {exc!r}") from None


def events(agent: Agent, kind: str) -> list[dict]:
    return agent.get(f"/v1/events?kind={kind}&limit=2000")


def stage(predicate, message: str) -> None:
    took = wait_until(predicate, DEADLINE, interval=0.2, message=message)
    print(f"{message}: {took:.1f} s")


def endpoints(agent: Agent) -> list[dict]:
    return [e for e in agent.get("/v1/ingress")["endpoints"] if e["workload"] == "echo"]


def exchange(host: str, port: int, payload: bytes) -> tuple[str, bytes]:
    """Send, half-close, read to EOF: (replica name, echoed bytes)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
    name, _, rest = b"".join(chunks).partition(b"\n")
    return name.decode(), rest


def alive_ids(agent: Agent) -> set[str]:
    return {m["id"] for m in agent.get("/v1/members") if m["state"] == "alive"}


def test_two_nodes_behind_two_nats_reach_each_other_relayed_then_direct(tmp_path):
    lab = NatLab()
    cluster = LocalCluster(tmp_path / "agents", extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process"})
    try:
        hosts = [lab.add_public(), lab.add_public(), lab.add_private(), lab.add_private()]

        def flags(host) -> dict:
            return {"listen": f"{host.ip}:{PEER}", "api": f"{host.ip}:{API}",
                    "s3": f"{host.ip}:{S3}", "prefix": host.prefix()}

        p0 = cluster.init_first("p0", **flags(hosts[0]))
        p1 = cluster.join(p0, "p1", **flags(hosts[1]))
        a = cluster.join(p0, "a", **flags(hosts[2]))
        b = cluster.join(p0, "b", **flags(hosts[3]))
        everyone = {x.node_id for x in (p0, p1, a, b)}
        public = {p0.node_id, p1.node_id}

        # 1. reachability: the public ones can be dialled, the NATed ones cannot
        stage(lambda: reach(a)["verdict"] == "behind NAT" and reach(b)["verdict"] == "behind NAT"
              and reach(p0)["verdict"] == "public" and reach(p1)["verdict"] == "public",
              "every verdict")
        assert reach(a)["observed"] == lab.nats[0].ip  # seen from its NAT's address
        assert reach(b)["observed"] == lab.nats[1].ip

        # 2. relays: each NATed node holds reservations with both public members and
        #    advertises them first
        stage(lambda: set(reach(a)["relays"]) == public and set(reach(b)["relays"]) == public,
              "reservations with both public members")
        a_addresses = a.get("/v1/status")["node"]["addresses"]
        assert a_addresses[0].startswith("relay://") and a_addresses[0][8:] in public

        # 3. the NATed nodes reach each other: first through a relay, then directly
        stage(lambda: all(everyone <= alive_ids(x) for x in (p0, p1, a, b)),
              "every member alive everywhere")
        stage(lambda: reach(a)["paths"].get(b.node_id) == "direct after punch"
              and reach(b)["paths"].get(a.node_id) == "direct after punch",
              "a direct path after a punch")
        assert reach(a)["state"] == reach(b)["state"] == "direct after punch"
        relayed = [e for x, other in ((a, b), (b, a)) for e in events(x, "peer.connected")
                   if e["peer"] == other.node_id and e["address"].startswith("relay://")]
        punched = [e for x, other in ((a, b), (b, a)) for e in events(x, "nat.punched")
                   if e["peer"] == other.node_id]
        assert relayed, "the first connection between the NATed nodes went through a relay"
        assert len(punched) >= 2 and min(e["at"] for e in relayed) <= min(
            e["at"] for e in punched)
        for relay in (p0, p1):  # the relays carried the relayed connection's bytes
            assert reach(relay)["relay_service"]["reservations"] == 2
        carried = sum(reach(r)["relay_service"]["relayed_bytes"] for r in (p0, p1))
        assert carried > 0

        # 4. storage across it: written on A, read on B
        data = os.urandom(3 * 1024 * 1024 + 11)
        src, back = tmp_path / "src.bin", tmp_path / "back.bin"
        src.write_bytes(data)
        a.cli("bucket", "create", "natdocs")
        a.cli("cp", str(src), "s3://natdocs/obj.bin")
        b.cli("cp", "s3://natdocs/obj.bin", str(back))
        assert back.read_bytes() == data
        assert reach(b)["paths"].get(a.node_id) == "direct after punch"

        # ... and a workload: a replica on every node, reached through A's ingress; the
        #     replica on B answers across both NATs
        a.cli("run", "echo", "--command", ECHO, "--replicas", "4", "--publish", "echo")
        stage(lambda: len([e for e in endpoints(a) if e["healthy"]]) == 4,
              "4 healthy echo replicas in A's view")
        on_b = {f"echo-{e['replica']}" for e in endpoints(a) if e["node"] == b.node_id}
        assert len(on_b) == 1
        a.cli("expose", "echo:echo", "--port", str(EXPOSED), "--bind", "mesh")
        seen: set[str] = set()

        def reached_b() -> bool:
            payload = os.urandom(20_000)
            name, echoed = exchange(hosts[2].ip, EXPOSED, payload)
            assert echoed == payload
            seen.add(name)
            return bool(on_b & seen)

        stage(reached_b, "A's ingress reached the replica on B")

        # 5. a relay dies: the other public member carries the reservations alone
        first = reach(a)["relays"][0]
        dead, survivor = (p0, p1) if first == p0.node_id else (p1, p0)
        dead.kill()
        stage(lambda: reach(a)["relays"] == [survivor.node_id]
              and reach(b)["relays"] == [survivor.node_id],
              "the surviving public member relays alone")
        stage(lambda: a.get("/v1/status")["node"]["addresses"][0]
              == f"relay://{survivor.node_id}", "A advertises the surviving relay")
        back.unlink()
        b.cli("cp", "s3://natdocs/obj.bin", str(back))
        assert back.read_bytes() == data
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_replicas(agent)
        lab.close()
    assert leftovers(lab.lab_id) == {"netns": [], "links": [], "routes": []}
