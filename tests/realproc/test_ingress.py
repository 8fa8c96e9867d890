"""Issue 15 acceptance (first slice): the ingress with real agents and real TCP.

Three agents on their own loopback addresses (127.0.0.41 … .43), the process runtime, a
tiny Python echo server as the workload (listening on ``$PORT``, the ephemeral port its
node chose). ``meshcloud expose … --bind mesh`` makes each agent listen on its own address,
so "through the third node" is a real choice of node.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from apps.ingress.ports import ephemeral_port
from sim.agents import Agent, LocalCluster, wait_until
from tests.workload_python import inline_script_line

ADDRESSES = [f"127.0.0.{41 + i}" for i in range(3)]
ECHO_SCRIPT = Path(__file__).parents[1] / "apps/ingress/echo_server.py"
ECHO = inline_script_line(ECHO_SCRIPT)
HTTP_PORT = ephemeral_port()
"""Each agent's HTTP ingress, on its own loopback address."""
DETECTION_BOUND = 6.0
"""Membership detection of a killed node (gossip: ≤ 6 s; the transport alone: at once)."""

pytestmark = [pytest.mark.real, pytest.mark.slow]


def exchange(host: str, port: int, payload: bytes, timeout: float = 10) -> tuple[str, bytes]:
    """Connect, send, half-close, read to EOF: (replica name, echoed bytes)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
    name, _, rest = b"".join(chunks).partition(b"\n")
    return name.decode(), rest


def endpoints(agent: Agent, workload: str) -> list[dict]:
    return [e for e in agent.get("/v1/ingress")["endpoints"] if e["workload"] == workload]


def healthy(agent: Agent, workload: str, count: int) -> bool:
    rows = [e for e in endpoints(agent, workload) if e["healthy"] and e["node_alive"]]
    return len(rows) == count


def kill_replicas(agent: Agent) -> None:
    """The process replicas outlive a killed agent: end their groups."""
    from apps.runtimes.process_state import ReplicaRecord

    for path in agent.data_dir.glob("runtimes/process/*/state.json"):
        try:
            record = ReplicaRecord.load(path.parent)
            os.killpg(record.pid, signal.SIGKILL)
        except Exception:  # best effort
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingress")
    cluster = LocalCluster(root, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process",
                                "MESHCLOUD_HTTP": f"mesh:{HTTP_PORT}"})
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.start_all(cluster.join_many([{"listen": f"{ADDRESSES[i]}:0"}
                                             for i in range(1, 3)]))
        yield cluster
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_replicas(agent)


def test_expose_through_the_third_node_two_on_one_node_and_kill(cluster):
    a = cluster.agents[0]
    a.cli("run", "echo", "--command", ECHO, "--replicas", "2", "--publish", "echo")
    wait_until(lambda: all(healthy(x, "echo", 2) for x in cluster.agents), 60,
               message="2 healthy echo replicas known everywhere")
    holders = {e["node"] for e in endpoints(a, "echo")}
    assert len(holders) == 2
    third = next(x for x in cluster.agents if x.node_id not in holders)
    port = ephemeral_port()
    out = a.cli("expose", "echo:echo", "--port", str(port), "--bind", "mesh").stdout
    assert f"mesh:{port} to echo:echo" in out
    host = third.address.rsplit(":", 1)[0]
    wait_until(lambda: exchange(host, port, b"ping")[1] == b"ping", 30,
               message="the third node forwards")
    names = set()
    for i in range(20):
        payload = os.urandom(1000 + i * 5000)
        name, echoed = exchange(host, port, payload)
        assert echoed == payload
        names.add(name)
    assert names == {"echo-0", "echo-1"}  # power of two choices spreads them

    # a second workload with three replicas: some node runs a replica of both, each on
    # its own ephemeral port
    wait_until(lambda: sum(m["state"] == "alive" for m in a.get("/v1/members")) == 3 and
               len(a.get("/v1/images")["mesh"]) == 3, 60,
               message="all three nodes alive in a's view, and their offers known to a")
    a.cli("run", "echo2", "--command", ECHO, "--replicas", "3", "--publish", "echo")
    wait_until(lambda: healthy(a, "echo2", 3), 60, message="3 healthy echo2 replicas")
    rows = endpoints(a, "echo") + endpoints(a, "echo2")
    by_node: dict[str, list[dict]] = {}
    for row in rows:
        by_node.setdefault(row["node"], []).append(row)
    shared = [r for r in by_node.values() if len(r) == 2]
    assert shared and all(r[0]["port"] != r[1]["port"] for r in shared)
    port2 = ephemeral_port()
    a.cli("expose", "echo2:echo", "--port", str(port2), "--bind", "mesh")
    wait_until(lambda: exchange(host, port2, b"x")[1] == b"x", 30,
               message="echo2 exposed")
    for _ in range(5):  # both workloads answer, side by side
        assert exchange(host, port, b"one")[1] == b"one"
        assert exchange(host, port2, b"two")[1] == b"two"

    # the HTTP ingress of the third node, by Host header
    a.cli("run", "site", "--command", inline_script_line(ECHO_SCRIPT, "http"), "--publish", "http",
          "--domain", "site.home")
    wait_until(lambda: healthy(a, "site", 1), 60, message="site healthy")

    def get(site: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host, HTTP_PORT, timeout=10)
        try:
            conn.request("GET", "/hello", headers={"Host": site})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    wait_until(lambda: get("site.home")[0] == 200, 30, message="site through HTTP")
    status, body = get("site.home")
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/hello" and seen["headers"]["x-forwarded-host"] == "site.home"
    assert get("other.home")[0] == 404

    # kill -9 one echo holder's agent: after detection new connections keep working
    victim = next(x for x in cluster.agents if x.node_id in holders)
    victim.kill()

    def five_in_a_row() -> bool:
        return all(exchange(host, port, b"still")[1] == b"still" for _ in range(5))

    took = wait_until(five_in_a_row, DETECTION_BOUND + 10, interval=0.2,
                      message="connections after the kill")
    print(f"ingress working again {took:.2f} s after kill -9")
    for _ in range(20):
        assert exchange(host, port, b"after")[1] == b"after"
    # the exposure answers on the survivors only; the victim's own port is gone with it
    with pytest.raises(OSError):
        exchange(victim.address.rsplit(":", 1)[0], port, b"x", timeout=2)
