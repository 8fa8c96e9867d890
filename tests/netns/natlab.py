"""Network namespaces with NATs, for the NAT tests (needs root).

A *public* network: a Linux bridge (``10.214.L.0/24``, the bridge itself ``.1``) with
public hosts on it (``.10``, ``.11`` …). Each *private* network is a namespace for the
host (``10.215+i.L.2``) behind its own NAT namespace, which has one leg on the bridge
(``10.214.L.20+i``) and one on the private link (``.1``), forwards, and masquerades what
leaves for the public side (iptables ``MASQUERADE``). Like a home router or a carrier NAT,
a NAT answers nothing on its public address: unsolicited SYNs are dropped (``INPUT``),
and nothing from the public side enters the private network unless it belongs to a
connection that went out first (``FORWARD`` by conntrack state).

One exception, for the test's own eyes: this process (the bridge address) may reach the
private hosts (routes via the NATs, not masqueraded back), to read their APIs. The agents
never talk to the bridge address.

Every name starts with ``mcn<L>``; :meth:`NatLab.close` removes the namespaces (and the
veths and rules inside them), the bridge and the routes.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

PREFIX = "mcn"


class NatLabError(Exception):
    pass


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NatLabError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


@dataclass
class NsHost:
    netns: str
    ip: str

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*self.prefix(), *cmd, check=check)


class NatLab:
    def __init__(self, lab_id: int | None = None) -> None:
        if os.geteuid() != 0:
            raise NatLabError("the NAT lab needs root (network namespaces, iptables)")
        self.lab_id = lab_id if lab_id is not None else os.getpid() % 200 + 20
        self.name = f"{PREFIX}{self.lab_id}"
        self.bridge = f"{self.name}b"
        self.subnet = f"10.214.{self.lab_id}"
        self.namespaces: list[str] = []
        self.routes: list[str] = []
        self.links: list[str] = []
        self.public_hosts: list[NsHost] = []
        self.private_hosts: list[NsHost] = []
        self.nats: list[NsHost] = []
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.1"

    def _netns(self, name: str) -> NsHost:
        netns = f"{self.name}{name}"
        run("ip", "netns", "add", netns)
        self.namespaces.append(netns)
        host = NsHost(netns, "")
        host.sh("ip", "link", "set", "lo", "up")
        return host

    def _on_bridge(self, host: NsHost, tag: str, ip: str) -> str:
        outside, inside = f"{self.name}{tag}h", f"{self.name}{tag}v"
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        self.links.append(outside)
        run("ip", "link", "set", inside, "netns", host.netns)
        run("ip", "link", "set", outside, "master", self.bridge)
        run("ip", "link", "set", outside, "up")
        host.sh("ip", "addr", "add", f"{ip}/24", "dev", inside)
        host.sh("ip", "link", "set", inside, "up")
        return inside

    def add_public(self) -> NsHost:
        index = len(self.public_hosts)
        host = self._netns(f"p{index}")
        host.ip = f"{self.subnet}.{10 + index}"
        self._on_bridge(host, f"p{index}", host.ip)
        self.public_hosts.append(host)
        return host

    def add_private(self) -> NsHost:
        """A host behind its own NAT; returns the host (its NAT is in :attr:`nats`)."""
        index = len(self.private_hosts)
        private = f"10.{215 + index}.{self.lab_id}"
        nat = self._netns(f"r{index}")
        nat.ip = f"{self.subnet}.{20 + index}"
        public_leg = self._on_bridge(nat, f"r{index}", nat.ip)
        host = self._netns(f"n{index}")
        host.ip = f"{private}.2"
        inner, outer = f"{self.name}n{index}i", f"{self.name}n{index}o"
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", outer, "netns", nat.netns)
        run("ip", "link", "set", inner, "netns", host.netns)
        nat.sh("ip", "addr", "add", f"{private}.1/24", "dev", outer)
        nat.sh("ip", "link", "set", outer, "up")
        host.sh("ip", "addr", "add", f"{host.ip}/24", "dev", inner)
        host.sh("ip", "link", "set", inner, "up")
        host.sh("ip", "route", "add", "default", "via", f"{private}.1")
        nat.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        ipt = ("iptables", "-w")
        nat.sh(*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", public_leg, "!", "-d",
               self.bridge_ip, "-j", "MASQUERADE")
        nat.sh(*ipt, "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP")
        nat.sh(*ipt, "-A", "FORWARD", "-i", public_leg, "-m", "conntrack", "--ctstate",
               "ESTABLISHED,RELATED", "-j", "ACCEPT")
        nat.sh(*ipt, "-A", "FORWARD", "-i", public_leg, "-s", self.bridge_ip, "-j", "ACCEPT")
        nat.sh(*ipt, "-A", "FORWARD", "-i", public_leg, "-j", "DROP")
        route = f"{private}.0/24"
        run("ip", "route", "add", route, "via", nat.ip)
        self.routes.append(route)
        self.nats.append(nat)
        self.private_hosts.append(host)
        return host

    def close(self) -> None:
        for route in self.routes:
            run("ip", "route", "del", route, check=False)
        self.routes.clear()
        for link in self.links:  # deleting one end of a veth deletes both, at once
            run("ip", "link", "del", link, check=False)
        self.links.clear()
        for netns in reversed(self.namespaces):  # deleting one removes its veths and rules
            run("ip", "netns", "del", netns, check=False)
        self.namespaces.clear()
        run("ip", "link", "del", self.bridge, check=False)


def leftovers(lab_id: int) -> dict[str, list[str]]:
    name = f"{PREFIX}{lab_id}"
    namespaces = [n.split()[0] for n in run("ip", "netns", "list").stdout.splitlines()
                  if n.startswith(name)]
    links = [line.split(":")[1].strip().split("@")[0]
             for line in run("ip", "-o", "link").stdout.splitlines()
             if line.split(":")[1].strip().startswith(name)]
    routes = [line for line in run("ip", "route").stdout.splitlines()
              if f".{lab_id}.0/24" in line and line.startswith("10.21")]
    return {"netns": namespaces, "links": links, "routes": routes}
