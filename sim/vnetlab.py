"""Real agents in network namespaces with V-Nets: the acceptance tests' and the
benchmark's lab (needs root).

Each "host" is a namespace of a :class:`~sim.netns.NetnsLab` running one genuine
``meshcloud up``. The agent also gets a private mount namespace with the machine's
cgroups (for podman) and its own ``/run/wireguard`` (a tmpfs), as a real machine has:
``wireguard-go`` keeps its control socket there under the interface's name, and every
host names its interface for a V-Net alike.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sim.agents import Agent, LocalCluster, wait_until
from sim.netns import Host, NetnsLab

CGROUPS = r"""
if ! grep -q ' /sys/fs/cgroup ' /proc/self/mountinfo; then
  if grep -q ' /sys/fs/cgroup [^-]*- cgroup2 ' /proc/1/mountinfo; then
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
  elif grep -q ' - cgroup ' /proc/1/mountinfo; then
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
    grep ' - cgroup ' /proc/1/mountinfo | while read -r line; do
      set -- $line
      mkdir -p "$5" && mount -t cgroup -o "$(echo "$line" | awk '{print $NF}')" cgroup "$5"
    done
  fi
fi
"""
"""The machine's cgroups, mounted again (``ip netns exec`` remounts /sys without them),
so that podman can run containers on a lab host."""
PRIVATE_RUN = (CGROUPS + 'mkdir -p /run/wireguard && mount -t tmpfs mcwg /run/wireguard '
               '&& exec "$@"')


def agent_prefix(host: Host) -> list[str]:
    return [*host.exec_prefix(), "unshare", "-m", "--propagation", "private",
            "sh", "-c", PRIVATE_RUN, "sh"]


def ns(host: Host, *cmd: str, check: bool = True, timeout: float = 30,
       input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*host.exec_prefix(), *cmd], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {host.netns}: "
                             f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def snapshot(host: Host) -> dict[str, str]:
    """The host's links and firewall rules, without counters and timestamps."""
    links = ns(host, "ip", "-br", "link").stdout
    rules = ns(host, "iptables-save").stdout
    rules = "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in rules.splitlines()
                      if not line.startswith("#"))
    routes = ns(host, "ip", "-4", "route", "show", "table", "all").stdout
    return {"links": links, "iptables": rules, "routes": routes}


class VNetLab:
    """``n`` namespaces, an agent in each, all alive to each other."""

    def __init__(self, root: Path, n: int, *, env: dict[str, str] | None = None,
                 listen_any: frozenset[int] = frozenset(),
                 labels: dict[int, list[str]] | None = None) -> None:
        """``listen_any``: hosts whose agent listens on 0.0.0.0 (its underlay address
        may change; it advertises what it has at start). ``labels``: placement labels
        (``KEY=VALUE``) of the agent of each host index."""
        self.lab = NetnsLab(n)
        self.cluster = LocalCluster(root / "agents", env=env)
        try:
            for host in self.lab.hosts:
                # the filter table exists before anything is measured against it (as on
                # any host with a firewall): the agent's rules then leave it as it was
                for chain in ("INPUT", "FORWARD", "OUTPUT"):
                    ns(host, "iptables", "-w", "-P", chain, "ACCEPT")
            for index, host in enumerate(self.lab.hosts):
                self.cluster.new_agent(
                    f"node{index + 1}",
                    listen=f"{'0.0.0.0' if index in listen_any else host.ip}:0",
                    api=f"{host.ip}:0", s3=f"{host.ip}:0", prefix=agent_prefix(host),
                    extra_args=["--profile", "local",
                                *[f"--label={x}" for x in (labels or {}).get(index, [])]])
            first = self.agents[0]
            first.cli("init", "--name", "vnetlab", *first.node_flags())
            first.start()
            tokens = [self.cluster.invite(first) for _ in self.agents[1:]]

            def join(agent: Agent, token: str) -> None:
                agent.cli("join", token, *agent.node_flags())
                agent.start()

            # the others join at once (each through the first)
            with ThreadPoolExecutor(max_workers=max(1, n - 1)) as pool:
                for future in [pool.submit(join, agent, token)
                               for agent, token in zip(self.agents[1:], tokens, strict=True)]:
                    future.result()
            self.wait_alive()
        except BaseException:
            self.close()
            raise

    @property
    def agents(self) -> list[Agent]:
        return self.cluster.agents

    @property
    def hosts(self) -> list[Host]:
        return self.lab.hosts

    def wait_alive(self, timeout: float = 60) -> None:
        ids = {a.node_id for a in self.agents if a.running}

        def alive() -> bool:
            for agent in self.agents:
                if not agent.running:
                    continue
                seen = {m["id"] for m in agent.get("/v1/members") if m["state"] == "alive"}
                if not ids <= seen:
                    return False
            return True

        wait_until(alive, timeout, interval=0.2, message="every agent sees every agent")

    def attach_all(self, vnet: str) -> list[str]:
        """Every host joins ``vnet`` (through its API; the CLI verb is the same call);
        their addresses in host order."""
        return [agent.post(f"/v1/vnets/{vnet}/attach", {"host": True})["address"]
                for agent in self.agents]

    def show(self, agent: Agent, vnet: str) -> dict[str, Any]:
        result: dict[str, Any] = agent.get(f"/v1/vnets/{vnet}")
        return result

    def tunnels_up(self, vnet: str, agents: list[Agent] | None = None) -> bool:
        """Every agent in ``agents`` has a handshaken tunnel to every other one."""
        agents = agents or self.agents
        ids = {a.node_id for a in agents}
        for agent in agents:
            info = self.show(agent, vnet)
            local = info.get("local") or {}
            if local.get("error") or not local.get("address"):
                return False
            peers = {m["node"] for m in info["members"]
                     if m.get("tunnel") and m["tunnel"]["handshake_age_s"] is not None}
            if not (ids - {agent.node_id}) <= peers:
                return False
        return True

    def ping(self, host: Host, address: str, *, count: int = 1, interface: str | None = None,
             timeout_s: int = 1) -> bool:
        cmd = ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout_s), "-i", "0.2"]
        if interface:
            cmd += ["-I", interface]
        ok = ns(host, *cmd, address, check=False, timeout=30).returncode == 0
        if not ok:  # what a failed check needs to be understood (pytest shows stdout)
            print(f"ping from host {host.index} to {address} got no answer; then:\n"
                  f"{self.explain()}", flush=True)
        return ok

    def explain(self) -> str:
        """Every host's WireGuard peers and routes, and every agent's V-Nets view."""
        out = []
        for host, agent in zip(self.hosts, self.agents, strict=False):
            out.append(f"--- host {host.index} (node {agent.node_id[:12]})")
            for cmd in (("wg", "show", "all"), ("ip", "-o", "addr"),
                        ("ip", "route")):
                done = ns(host, *cmd, check=False, timeout=10)
                out.append(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
            try:
                for vnet in agent.get("/v1/vnets")["vnets"]:
                    name = vnet["name"]
                    out.append(f"vnet {name}: {self.show(agent, name)}")
            except Exception as exc:  # a dead agent: say so and go on
                out.append(f"agent API: {exc!r}")
        return "\n".join(out)

    def close(self) -> None:
        self.cluster.close()
        self.lab.close()

    def __enter__(self) -> VNetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
