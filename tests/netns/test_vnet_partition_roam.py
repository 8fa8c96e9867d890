"""V-Nets with real agents under a partition and a roaming host (network namespaces).

* Allocation under a partition: a /30 V-Net (two addresses); hosts 1 and 2 attach on one
  side of a partition, host 0 on the other, so host 0's claim collides with one of theirs.
  After the heal every node names the same two owners, the loser is not routed (the
  range is full), and once a winner detaches the loser gets the freed address.
* A workload attached to a V-Net: the nodes running its two replicas join it, and
  ``sleeper.apps.vnet`` / ``0.sleeper.vnet`` resolve to them.
* Roaming: host 2's underlay address changes under an open TCP connection carried by the
  V-Net; the connection goes on within 10 s (WireGuard follows the authenticated peer).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from sim.agents import wait_until
from sim.vnetlab import VNetLab, ns

pytestmark = [pytest.mark.netns, pytest.mark.real, pytest.mark.slow]

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5300)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); f = c.makefile("rwb", buffering=0)
for line in f:
    f.write(line)
"""

ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5300), timeout=30); f = c.makefile("rwb", 0)
for line in sys.stdin:
    f.write(line.encode()); print(f.readline().decode().strip(), flush=True)
"""


DIG = """
import sys, dns.message, dns.query
q = dns.message.make_query(sys.argv[2], "A")
r = dns.query.udp(q, sys.argv[1], timeout=2)
print(" ".join(a.address for rr in r.answer for a in rr) if r.rcode() == 0 else "")
"""


def dig(host, server, name):
    out = ns(host, sys.executable, "-c", DIG, server, name, check=False)
    if out.returncode != 0:
        raise OSError(out.stderr.strip()[-200:])
    return out.stdout.split()


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the V-Net acceptance tests need root (network namespaces)")
    with VNetLab(tmp_path, 3, listen_any=frozenset({2}),
                 env={"MESHCLOUD_RUNTIMES": "process"}) as built:
        yield built


def routed(agent, vnet):
    return {m["address"]: m["node"] for m in agent.get(f"/v1/vnets/{vnet}")["members"]
            if m["routed"]}


def test_partition_allocation_and_roaming(lab):
    h, a = lab.hosts, lab.agents
    a[0].cli("vnet", "create", "tiny", "--cidr", "10.44.0.0/30")
    a[0].cli("vnet", "create", "roam", "--cidr", "10.45.0.0/24")
    wait_until(lambda: all(len(x.get("/v1/vnets")["vnets"]) == 2 for x in a), 20,
               message="both V-Nets everywhere")

    # --- allocation during a partition --------------------------------------------------
    lab.lab.partition([[h[0]], [h[1], h[2]]])
    a[1].cli("vnet", "attach", "tiny", "--host")
    wait_until(lambda: len(a[2].get("/v1/vnets/tiny")["members"]) == 1, 20,
               message="host 1's claim seen by host 2")
    a[2].cli("vnet", "attach", "tiny", "--host")
    a[0].cli("vnet", "attach", "tiny", "--host")  # sees a free range: collides
    lab.lab.heal()
    wait_until(lambda: all(len(x.get("/v1/vnets/tiny")["members"]) == 3 for x in a), 40,
               interval=0.3, message="all three claims everywhere")
    wait_until(lambda: len({tuple(sorted(routed(x, "tiny").items())) for x in a}) == 1, 20,
               interval=0.3, message="every node names the same owners")
    owners = routed(a[0], "tiny")
    assert sorted(owners) == ["10.44.0.1", "10.44.0.2"]  # two addresses, two owners
    loser = next(x for x in a if x.node_id not in owners.values())
    winner = next(x for x in a if x.node_id in owners.values() and x is not a[0])
    winner.cli("vnet", "detach", "tiny", "--host")
    wait_until(lambda: loser.node_id in routed(a[0], "tiny").values() and len(
        routed(a[0], "tiny")) == 2, 20, interval=0.3, message="the loser re-allocated")
    final = routed(a[0], "tiny")
    assert len(set(final)) == 2 and winner.node_id not in final.values()

    # --- a workload attached: the nodes running its replicas join, names resolve ------
    a[0].cli("vnet", "create", "apps", "--cidr", "10.46.0.0/24")
    a[0].cli("run", "sleeper", "--command", "sleep 3600", "--replicas", "2")
    a[0].cli("vnet", "attach", "apps", "sleeper")

    def replica_hosts() -> dict[str, str]:
        """node id → its address in "apps", for the nodes running a replica."""
        members = a[0].get("/v1/vnets/apps")["members"]
        nodes = {m["node"] for m in members if m["kind"] == "replica"}
        return {m["node"]: m["address"] for m in members
                if m["kind"] == "host" and m["node"] in nodes and m["routed"]}

    def replica_addresses() -> list[str]:
        """The replicas' own addresses in "apps" (they restart into it when attached)."""
        members = a[0].get("/v1/vnets/apps")["members"]
        return sorted(m["address"] for m in members
                      if m["kind"] == "replica" and m.get("address"))

    wait_until(lambda: len(replica_hosts()) == 2 and len(replica_addresses()) == 2, 40,
               interval=0.3, message="both replicas and their nodes in the V-Net")
    hosts = replica_hosts()
    index = next(i for i, x in enumerate(a) if x.node_id in hosts)
    own = hosts[a[index].node_id]
    wait_until(lambda: sorted(dig(h[index], own, "sleeper.apps.vnet")) == replica_addresses(),
               20, interval=0.3, message="WORKLOAD.NET.vnet resolves to every replica")
    one = dig(h[index], own, "0.sleeper.vnet")
    assert len(one) == 1 and one[0] in replica_addresses()
    other = next(addr for node, addr in hosts.items() if node != a[index].node_id)
    wait_until(lambda: lab.ping(h[index], other), 30, interval=0.3,
               message="the replicas' nodes reach each other")
    a[0].cli("vnet", "rm", "apps")

    # --- roaming: host 2's underlay address changes under a TCP connection --------------
    addresses = {}
    for index in (0, 2):
        text = a[index].cli("vnet", "attach", "roam", "--host").stdout
        addresses[index] = text.split(" is ")[1].split()[0]
    wait_until(lambda: lab.tunnels_up("roam", [a[0], a[2]]), 40, interval=0.3,
               message="roam tunnel up")
    server = subprocess.Popen([*h[0].exec_prefix(), "python3", "-c", ECHO_SERVER,
                               addresses[0]], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    client = subprocess.Popen([*h[2].exec_prefix(), "python3", "-c", ECHO_CLIENT,
                               addresses[0]], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in client.stdout],
                     daemon=True).start()
    try:
        client.stdin.write("before\n")
        client.stdin.flush()
        assert lines.get(timeout=20) == "before"
        old = h[2].ip
        new = old.rsplit(".", 1)[0] + ".77"
        ns(h[2], "ip", "addr", "del", f"{old}/24", "dev", h[2].veth_ns)
        ns(h[2], "ip", "addr", "add", f"{new}/24", "dev", h[2].veth_ns)
        start = time.monotonic()
        client.stdin.write("after\n")
        client.stdin.flush()
        try:
            got = lines.get(timeout=10)
        except queue.Empty:
            for i in (0, 2):
                print(i, subprocess.run(["nsenter", "-t", str(a[i].pid), "-m", "-n", "wg",
                                         "show"], capture_output=True, text=True).stdout)
            print((a[2].data_dir / "vnet" / "mc-roam.log").read_text()[-2000:])
            raise
        assert got == "after"
        took = time.monotonic() - start
        print(f"the V-Net connection went on {took:.3f} s after the address change")
        assert took <= 10

        def endpoint_moved() -> bool:
            member = next(m for m in a[0].get("/v1/vnets/roam")["members"]
                          if m["node"] == a[2].node_id)
            return (member.get("tunnel") or {}).get("endpoint", "").startswith(new + ":")

        wait_until(endpoint_moved, 10, message="host 0's tunnel follows host 2")
    finally:
        for proc in (client, server):
            proc.kill()
            proc.wait()
