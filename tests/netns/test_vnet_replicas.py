"""Replicas attached to a V-Net, with real agents in network namespaces
(``sim/vnetlab.py``) and the process runtime.

Three hosts: host 0 may run workload ``api`` (label role=api), hosts 1 and 2 workload
``web`` (label tier=web); both run with ``meshcloud run … --vnet blue``, one replica
each, over the WireGuard plane and over the Python plane (forced). What is shown:

* each replica runs in a network namespace of its own, as its workload's unprivileged
  user, with its own V-Net address (told in ``MESHCLOUD_VNET_BLUE``) on a veth named
  like the V-Net (``mc-blue``); ``api``'s published port on its node reaches it there
  (forwarded), and its health probes on that port pass;
* the two replicas, on different hosts, talk by address and by name (``0.web.vnet`` and
  ``web.blue.vnet``, asked of the V-Net resolver on their node's address);
* the host that does not run ``web`` is attached to another V-Net (red) only: it cannot
  reach either replica, even through its red tunnel;
* ``web``'s host dies (agent killed, link down): the replica is re-placed on the other
  host, with its address again, under the same names, and ``api`` reaches it;
* an agent that stops leaves its host's links, routes and rules as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

from apps.runtimes.cleanup import clean_workloads
from sim.agents import wait_until
from sim.vnetlab import VNetLab, ns, snapshot
from tests.workload_python import inline_script_line

pytestmark = [pytest.mark.netns, pytest.mark.real, pytest.mark.slow]

PORT = 5300
SERVER = """
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(os.environ.get("PORT", "PORT")))); s.listen(8)
while True:
    c, peer = s.accept()
    c.sendall(" ".join([os.environ.get("MESHCLOUD_NAME", ""),
                        os.environ.get("MESHCLOUD_VNET_BLUE", ""), peer[0],
                        str(os.getuid())]).encode())
    c.close()
""".replace("PORT", str(PORT))

CLIENT = """
import socket, sys
import dns.message, dns.query
target = sys.argv[1]
if not target[0].isdigit() or target.endswith(".vnet"):
    r = dns.query.udp(dns.message.make_query(target, "A"), sys.argv[2], timeout=2)
    target = sorted(a.address for rr in r.answer for a in rr)[0]
c = socket.create_connection((target, int(sys.argv[3])), timeout=3)
print(c.recv(200).decode())
"""

LOCAL = """
import socket, sys
print(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3).recv(200).decode())
"""

RESOLVE = """
import sys, dns.message, dns.query
r = dns.query.udp(dns.message.make_query(sys.argv[1], "A"), sys.argv[2], timeout=2)
print(" ".join(a.address for rr in r.answer for a in rr))
"""


def in_netns(pid: int, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the network namespace of process ``pid`` (the test's files)."""
    return subprocess.run(["nsenter", "-t", str(pid), "-n", *cmd], capture_output=True,
                          text=True, timeout=timeout)


def call(pid: int, target: str, resolver: str) -> str:
    """From inside a replica's network: connect to ``target`` (an address or a name
    asked of ``resolver``) and return what the replica there says."""
    out = in_netns(pid, sys.executable, "-c", CLIENT, target, resolver, str(PORT))
    return out.stdout.strip() if out.returncode == 0 else f"failed: {out.stderr[-300:]}"


def replica_pid(agent, name: str) -> int:
    """The pid of a process replica (its row is written just before it starts)."""
    state = agent.data_dir / "runtimes" / "process" / name / "state.json"
    wait_until(state.exists, 30, interval=0.2, message=f"{name} started")
    return int(json.loads(state.read_text())["pid"])


def members(agent, vnet: str) -> dict[str, dict]:
    return {m["member"]: m for m in agent.get(f"/v1/vnets/{vnet}")["members"]}


def netns_handles() -> set[str]:
    """The names in /run/netns now."""
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def close_lab(lab, handles: set[str] | None = None) -> None:
    """Stop the agents and their replicas and close the lab; delete the names of replica
    namespaces made in an agent's mount namespace (gone with it). With ``handles`` (the
    names before the test), also the files podman mounted a container's namespace handle
    on in a killed agent's mount namespace: they stay behind in /run/netns."""
    lab.cluster.close()
    for agent in lab.agents:
        clean_workloads(agent.data_dir)
    lab.close()
    for agent in lab.agents:
        prefix = f"mc{agent.node_id[:8]}-"
        for entry in netns_handles():
            if entry.startswith(prefix):
                subprocess.run(["ip", "netns", "del", entry], capture_output=True)
    if handles is None:
        return
    for entry in netns_handles() - handles:
        path = f"/run/netns/{entry}"
        if entry.startswith("netns-") and not os.path.ismount(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@pytest.mark.parametrize("plane", ["wireguard", "python"])
def test_replicas_on_a_vnet_talk_by_address_and_name_and_move_with_failover(tmp_path, plane):
    if os.geteuid() != 0:
        pytest.fail("the V-Net replica test needs root (network namespaces)")
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    command = inline_script_line(server)
    lab = VNetLab(tmp_path, 3, env={"MESHCLOUD_RUNTIMES": "process",
                                    "MESHCLOUD_VNET_PLANE": plane},
                  labels={0: ["role=api"], 1: ["tier=web"], 2: ["tier=web"]})
    try:
        h, a = lab.hosts, lab.agents
        ids = [x.node_id for x in a]
        for host in h:  # the agent forwards per interface: the host's switch stays off
            ns(host, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        before = snapshot(h[0])
        a[0].cli("vnet", "create", "blue", "--cidr", "10.46.0.0/24")
        a[0].cli("vnet", "create", "red", "--cidr", "10.47.0.0/24")
        wait_until(lambda: all(len(x.get("/v1/vnets")["vnets"]) == 2 for x in a), 20,
                   message="both V-Nets everywhere")
        bad = a[0].cli("run", "x", "--vnet", "nope", "--command", "true", check=False)
        assert bad.returncode != 0 and "no V-Net 'nope'" in bad.stderr
        for name, label in (("api", "role=api"), ("web", "tier=web")):
            a[0].cli("run", name, "--vnet", "blue", "--runtime", "process",
                     "--require-label", label, "--command", command,
                     *(["--port", f"127.0.0.1:{PORT}:{PORT}", "--health-tcp", str(PORT),
                        "--health-interval", "2"] if name == "api" else []))

        def placed() -> dict[str, dict] | None:
            rows = members(a[0], "blue")
            mine = {m: r for m, r in rows.items() if m.startswith("wl:")}
            if len(mine) == 2 and all(r["address"] and r["routed"] for r in mine.values()):
                return mine
            return None

        wait_until(placed, 90, interval=0.5, message="both replicas with addresses")
        rows = placed()
        api, web = rows["wl:api/0"], rows["wl:web/0"]
        assert api["node"] == ids[0] and web["node"] in ids[1:]
        w = ids.index(web["node"])  # the host running web; the other one is red's
        o = 3 - w
        hosts = {m["node"]: m["address"] for m in members(a[0], "blue").values()
                 if m["kind"] == "host"}
        assert set(hosts) == {ids[0], ids[w]}  # the replicas' nodes joined blue
        assert api["address"] != hosts[ids[0]] and web["address"] != hosts[ids[w]]
        red = a[o].post("/v1/vnets/red/attach", {"host": True})["address"]
        # api's published port, on its node: forwarded into its namespace (health
        # probes and the ingress connect there)
        local = ns(h[0], "python3", "-c", LOCAL, str(PORT)).stdout.split()
        assert local[:3] == ["api-0", api["address"], "127.0.0.1"]
        assert a[0].get("/v1/vnets/blue")["local"]["plane"] == plane

        # --- each replica: own namespace, own address, unprivileged ---------------------
        api_pid, web_pid = replica_pid(a[0], "api-0"), replica_pid(a[w], "web-0")
        for pid, agent, address in ((api_pid, a[0], api["address"]),
                                    (web_pid, a[w], web["address"])):
            assert os.readlink(f"/proc/{pid}/ns/net") != \
                os.readlink(f"/proc/{agent.pid}/ns/net")
            shown = in_netns(pid, "ip", "-o", "-4", "addr", "show", "dev", "mc-blue").stdout
            assert f"inet {address}/32" in shown, shown
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
            assert f"MESHCLOUD_VNET_BLUE={address}".encode() in environ
            assert os.stat(f"/proc/{pid}").st_uid != 0

        # --- replica to replica, across hosts, by address and by name ----------------
        gw_api, gw_web = hosts[ids[0]], hosts[ids[w]]
        took = wait_until(lambda: call(api_pid, web["address"], gw_api).startswith("web-0"),
                          60, interval=0.5, message="api reaches web by address")
        print(f"api reaches web by address {took:.1f} s after both had addresses")
        said = call(api_pid, web["address"], gw_api).split()
        assert said[:3] == ["web-0", web["address"], api["address"]]  # no NAT between
        assert int(said[3]) != 0
        assert call(web_pid, api["address"], gw_web).split()[:3] == [
            "api-0", api["address"], web["address"]]
        assert call(api_pid, "0.web.vnet", gw_api).startswith(f"web-0 {web['address']}")
        assert call(web_pid, "api.blue.vnet", gw_web).startswith(f"api-0 {api['address']}")

        # --- the host on red only reaches neither, even forcing its red tunnel -------
        assert not lab.ping(h[o], web["address"], count=2)
        ns(h[o], "ip", "route", "add", "10.46.0.0/24", "dev", "mc-red")
        probe = ns(h[o], sys.executable, "-c", CLIENT, api["address"], red, str(PORT),
                   check=False)
        assert probe.returncode != 0, probe.stdout
        assert not lab.ping(h[o], api["address"], count=2)
        assert not lab.ping(h[o], web["address"], count=2)
        ns(h[o], "ip", "route", "del", "10.46.0.0/24", "dev", "mc-red")

        # --- web's host dies: web is re-placed on host o, same address, same names ----
        a[w].kill()
        lab.lab.link(h[w], False)

        def moved() -> bool:
            row = members(a[0], "blue").get("wl:web/0")
            return bool(row and row["node"] == ids[o] and row["address"] and row["routed"])

        took = wait_until(moved, 120, interval=0.5, message="web re-placed on host o")
        now = members(a[0], "blue")["wl:web/0"]
        print(f"web re-placed on the other host {took:.1f} s after its host died: "
              f"{web['address']} -> {now['address']}")
        assert now["address"] == web["address"]
        back = wait_until(lambda: call(api_pid, "0.web.vnet", gw_api).startswith(
            f"web-0 {now['address']}"), 60, interval=0.5, message="api reaches web again")
        print(f"api reaches the re-placed web by name {back:.1f} s after it moved")
        new_pid = replica_pid(a[o], "web-0")
        gw_new = {m["node"]: m["address"] for m in members(a[o], "blue").values()
                  if m["kind"] == "host"}[ids[o]]
        assert call(new_pid, "api.blue.vnet", gw_new).startswith(f"api-0 {api['address']}")
        assert call(api_pid, now["address"], gw_api).startswith("web-0")

        # api's health probes (every 2 s, on its published port) passed all along: a
        # failing one would have restarted it
        (row,) = a[0].get("/v1/replicas?workload=api")["replicas"]
        assert (row["state"], row["restarts"]) == ("running", 0), row
        assert ns(h[0], "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"

        # --- an agent that stops takes its replicas' veths, routes and rules with it --
        assert "mv" in ns(h[0], "ip", "-br", "link").stdout
        assert a[0].stop() == 0
        assert snapshot(h[0]) == before
    finally:
        close_lab(lab)


HTTP_GET = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
c.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
data = b""
while (chunk := c.recv(65536)):
    data += chunk
print(data.decode(errors="replace"))
"""


def test_a_container_on_a_vnet_talks_to_a_process_replica(tmp_path):
    """A podman container (the demo web image) attached to blue keeps podman's network
    and gets its V-Net interface beside it; a process replica on another host reaches
    it by address and by name, and it reaches the replica."""
    if os.geteuid() != 0:
        pytest.fail("the V-Net replica test needs root (network namespaces)")
    from apps.runtimes.config import PodmanConfig
    from apps.runtimes.podman import container_name
    from apps.runtimes.podman_service import PodmanService

    server = tmp_path / "server.py"
    server.write_text(SERVER)
    lab = VNetLab(tmp_path, 2, env={"MESHCLOUD_RUNTIMES": "process,podman"},
                  labels={0: ["role=api"], 1: ["tier=web"]})
    handles = netns_handles()
    try:
        a = lab.agents
        built = a[1].api_call("POST", "/v1/images/build-demo", {}, timeout=300)["built"]
        web_image = next(b["image"] for b in built if "/web:" in b["image"])
        a[0].cli("vnet", "create", "blue", "--cidr", "10.48.0.0/24")
        wait_until(lambda: len(a[1].get("/v1/vnets")["vnets"]) == 1, 20)
        a[0].cli("run", "api", "--vnet", "blue", "--runtime", "process", "--require-label",
                 "role=api", "--command", inline_script_line(server))
        a[0].cli("run", "web", "--vnet", "blue", "--image", web_image, "--require-label",
                 "tier=web")

        def placed() -> dict[str, dict] | None:
            rows = {m: r for m, r in members(a[0], "blue").items() if m.startswith("wl:")}
            ok = len(rows) == 2 and all(r["address"] and r["routed"] for r in rows.values())
            return rows if ok else None

        wait_until(placed, 180, interval=0.5, message="both replicas with addresses")
        rows = placed()
        api, web = rows["wl:api/0"], rows["wl:web/0"]
        assert (api["node"], web["node"]) == (a[0].node_id, a[1].node_id)
        gw = {m["node"]: m["address"] for m in members(a[0], "blue").values()
              if m["kind"] == "host"}
        api_pid = replica_pid(a[0], "api-0")

        service = PodmanService(PodmanConfig(data_dir=a[1].data_dir, node_id="cli"))
        service.prepare()
        pid = int(subprocess.run(
            [*service.cli_args(), "inspect", "-f", "{{.State.Pid}}", container_name("web-0")],
            env=service.env(), capture_output=True, text=True, check=True,
            timeout=60).stdout.strip())

        def inside() -> str:
            return in_netns(pid, "ip", "-o", "-4", "addr").stdout

        # the row is published as the wiring starts: the interface follows in a moment
        wait_until(lambda: f"inet {web['address']}/32" in inside(), 30, interval=0.2,
                   message="the container's V-Net interface")
        assert "mc-blue" in inside() and "eth0" in inside()  # podman's network stays

        def page(target: str) -> str:
            out = in_netns(api_pid, sys.executable, "-c", HTTP_GET, target, "8080")
            return out.stdout if out.returncode == 0 else ""

        wait_until(lambda: "web-0" in page(web["address"]), 60, interval=0.5,
                   message="the process replica reaches the container by address")
        found = in_netns(api_pid, sys.executable, "-c", RESOLVE, "0.web.vnet",
                         gw[a[0].node_id])
        assert found.stdout.split() == [web["address"]], found.stderr
        assert web["address"] in page(found.stdout.split()[0]) or "web-0" in page(
            found.stdout.split()[0])
        assert call(pid, api["address"], gw[a[1].node_id]).split()[:3] == [
            "api-0", api["address"], web["address"]]
    finally:
        close_lab(lab, handles)


def test_attach_and_detach_of_a_running_process_replica_take_effect(tmp_path):
    """``meshcloud run`` first, ``vnet attach`` later: the running replica restarts into
    a namespace of its own with its V-Net address, and another host reaches it by name;
    ``vnet detach``: it restarts on the host's network, reachable on its published port
    again, and its namespace, veth and address are gone."""
    if os.geteuid() != 0:
        pytest.fail("the V-Net replica test needs root (network namespaces)")
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    lab = VNetLab(tmp_path, 2, env={"MESHCLOUD_RUNTIMES": "process"},
                  labels={0: ["role=api"], 1: ["tier=web"]})
    try:
        h, a = lab.hosts, lab.agents
        a[0].cli("vnet", "create", "blue", "--cidr", "10.49.0.0/24")
        wait_until(lambda: len(a[1].get("/v1/vnets")["vnets"]) == 1, 20,
                   message="blue on both hosts")
        other = a[1].post("/v1/vnets/blue/attach", {"host": True})["address"]
        a[0].cli("run", "api", "--runtime", "process", "--require-label", "role=api",
                 "--port", f"127.0.0.1:{PORT}:{PORT}", "--command",
                 inline_script_line(server))

        def local() -> list[str]:
            out = ns(h[0], "python3", "-c", LOCAL, str(PORT), check=False)
            return out.stdout.split() if out.returncode == 0 else []

        wait_until(lambda: local()[:2] == ["api-0", "127.0.0.1"], 60, interval=0.3,
                   message="api on the host's network, on its published port")
        host_net = os.readlink(f"/proc/{a[0].pid}/ns/net")
        first = replica_pid(a[0], "api-0")
        assert os.readlink(f"/proc/{first}/ns/net") == host_net

        # --- attach: it restarts into blue, with an address of its own -----------------
        asked = time.monotonic()
        a[0].cli("vnet", "attach", "blue", "api")

        def joined() -> dict | None:
            row = members(a[0], "blue").get("wl:api/0")
            return row if row and row["address"] and row["routed"] else None

        wait_until(joined, 60, interval=0.3, message="api has its V-Net address")
        address = joined()["address"]
        print(f"the running replica had its V-Net address "
              f"{time.monotonic() - asked:.1f} s after `vnet attach`")
        wait_until(lambda: replica_pid(a[0], "api-0") != first, 30, interval=0.2,
                   message="api restarted")
        pid = replica_pid(a[0], "api-0")
        assert os.readlink(f"/proc/{pid}/ns/net") != host_net
        shown = in_netns(pid, "ip", "-o", "-4", "addr", "show", "dev", "mc-blue").stdout
        assert f"inet {address}/32" in shown, shown
        # from the other host, by name (its resolver is on its own V-Net address)
        def by_name() -> list[str]:
            return ns(h[1], sys.executable, "-c", CLIENT, "0.api.vnet", other, str(PORT),
                      check=False).stdout.split()

        wait_until(lambda: by_name()[:1] == ["api-0"], 60, interval=0.5,
                   message="the other host reaches api by name")
        print(f"the other host reached it by name {time.monotonic() - asked:.1f} s after "
              "`vnet attach`")
        assert by_name()[:3] == ["api-0", address, other]
        assert local()[:2] == ["api-0", address]  # its published port is forwarded
        (row,) = a[0].get("/v1/replicas?workload=api")["replicas"]
        assert row["state"] in ("running", "starting"), row
        assert any(e.startswith(f"mc{a[0].node_id[:8]}-api-0")
                   for e in os.listdir("/run/netns"))
        assert "mv" in ns(h[0], "ip", "-br", "link").stdout

        # --- detach: back on the host's network, nothing left behind --------------------
        asked = time.monotonic()
        a[0].cli("vnet", "detach", "blue", "api")
        wait_until(lambda: local()[:2] == ["api-0", "127.0.0.1"], 60, interval=0.3,
                   message="api back on the host's network")
        print(f"the replica answered on the host's network "
              f"{time.monotonic() - asked:.1f} s after `vnet detach`")
        last = replica_pid(a[0], "api-0")
        assert last != pid and os.readlink(f"/proc/{last}/ns/net") == host_net
        wait_until(lambda: "wl:api/0" not in members(a[0], "blue"), 20, interval=0.3,
                   message="its row (address) released")
        wait_until(lambda: not any(e.startswith(f"mc{a[0].node_id[:8]}-")
                                   for e in os.listdir("/run/netns")), 20, interval=0.3,
                   message="its namespace removed")
        assert "mv" not in ns(h[0], "ip", "-br", "link").stdout
        assert not ns(h[1], sys.executable, "-c", CLIENT, address, other, str(PORT),
                      check=False).stdout.strip()
    finally:
        close_lab(lab)


def test_attach_and_detach_of_a_running_container_take_effect(tmp_path):
    """A podman container started outside any V-Net: ``vnet attach`` restarts it with
    its V-Net interface beside podman's network (another host reaches it at its
    address); ``vnet detach`` restarts it without, and its namespace handle, veth and
    row are gone."""
    if os.geteuid() != 0:
        pytest.fail("the V-Net replica test needs root (network namespaces)")
    from apps.runtimes.config import PodmanConfig
    from apps.runtimes.podman import container_name
    from apps.runtimes.podman_service import PodmanService

    lab = VNetLab(tmp_path, 2, env={"MESHCLOUD_RUNTIMES": "process,podman"},
                  labels={0: ["role=api"], 1: ["tier=web"]})
    handles = netns_handles()
    try:
        h, a = lab.hosts, lab.agents
        built = a[1].api_call("POST", "/v1/images/build-demo", {}, timeout=300)["built"]
        web_image = next(b["image"] for b in built if "/web:" in b["image"])
        a[0].cli("vnet", "create", "blue", "--cidr", "10.50.0.0/24")
        wait_until(lambda: len(a[1].get("/v1/vnets")["vnets"]) == 1, 20)
        a[0].post("/v1/vnets/blue/attach", {"host": True})
        a[0].cli("run", "web", "--image", web_image, "--require-label", "tier=web")
        service = PodmanService(PodmanConfig(data_dir=a[1].data_dir, node_id="cli"))
        service.prepare()

        def pid() -> int:
            out = subprocess.run(
                [*service.cli_args(), "inspect", "-f", "{{.State.Pid}}",
                 container_name("web-0")], env=service.env(), capture_output=True,
                text=True, timeout=60)
            return int(out.stdout.strip() or 0) if out.returncode == 0 else 0

        def inside(p: int) -> str:
            return in_netns(p, "ip", "-o", "-4", "addr").stdout if p else ""

        wait_until(lambda: "eth0" in inside(pid()), 180, interval=0.5,
                   message="the container runs")
        first = pid()
        assert "mc-blue" not in inside(first)

        def page(target: str) -> str:
            out = ns(h[0], sys.executable, "-c", HTTP_GET, target, "8080", check=False)
            return out.stdout if out.returncode == 0 else ""

        asked = time.monotonic()
        a[0].cli("vnet", "attach", "blue", "web")

        def joined() -> str | None:
            row = members(a[0], "blue").get("wl:web/0")
            p = pid()
            if row and row["address"] and p and p != first and \
                    f"inet {row['address']}/32" in inside(p):
                return row["address"]
            return None

        wait_until(joined, 120, interval=0.5, message="the container in blue")
        address = joined()
        wait_until(lambda: "web-0" in page(address), 60, interval=0.5,
                   message="the other host reaches the container by its V-Net address")
        print(f"the container answered at its V-Net address "
              f"{time.monotonic() - asked:.1f} s after `vnet attach`")
        second = pid()
        assert "eth0" in inside(second)  # podman's network stays
        handle = f"mc{a[1].node_id[:8]}-web-0"
        assert handle in os.listdir("/run/netns")

        asked = time.monotonic()
        a[0].cli("vnet", "detach", "blue", "web")
        wait_until(lambda: pid() not in (0, second) and "eth0" in inside(pid())
                   and "mc-blue" not in inside(pid()), 120, interval=0.5,
                   message="the container restarted outside blue")
        print(f"the container ran outside blue {time.monotonic() - asked:.1f} s after "
              "`vnet detach`")
        wait_until(lambda: "wl:web/0" not in members(a[0], "blue"), 20, interval=0.3,
                   message="its row (address) released")
        wait_until(lambda: handle not in os.listdir("/run/netns"), 20, interval=0.3,
                   message="its namespace handle removed")
        assert "mv" not in ns(h[1], "ip", "-br", "link").stdout
        assert "web-0" not in page(address)
    finally:
        close_lab(lab, handles)
