"""A private network of network namespaces for real-process runs (needs root).

:class:`NetnsLab` makes one Linux bridge and, per host, a network namespace joined to it
by a veth pair, on a private /24 (``10.213.X.0/24``, X from the process id so two labs do
not collide). The bridge itself has ``.1``, so this process can reach every host.

Faults are applied for real, inside each namespace so the machine's own firewall is never
touched: iptables DROP rules (partitions, one-way cuts, random loss with the ``statistic``
match), the link set down, and ``tc tbf`` bandwidth caps.

Every name carries the lab's prefix; :meth:`NetnsLab.close` removes what it made, and
:func:`clean_leftovers` removes anything with the meshcloud prefix left by a killed run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field

from meshcloud.errors import MeshError

PREFIX = "mcs"
"""Every namespace, bridge and veth made here starts with this (and the lab id)."""


class NetnsError(MeshError):
    code = "netns_error"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetnsError("real-process runs in network namespaces need root "
                         "(run as root, or use the simulated mode without --real)")
    for tool in ("ip", "iptables", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise NetnsError(f"`{tool}` is missing: apt-get install -y iproute2 iptables")


@dataclass
class Host:
    index: int
    netns: str
    veth_host: str
    veth_ns: str
    ip: str
    link_up: bool = True
    rules: list[list[str]] = field(default_factory=list)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def iptables(self, *rule: str) -> None:
        _run(*self.exec_prefix(), "iptables", "-w", "-A", *rule)
        self.rules.append(list(rule))

    def clear_rules(self) -> None:
        for rule in reversed(self.rules):
            _run(*self.exec_prefix(), "iptables", "-w", "-D", *rule, check=False)
        self.rules.clear()


class NetnsLab:
    def __init__(self, hosts: int, *, lab_id: int | None = None) -> None:
        require_root()
        self.lab_id = lab_id if lab_id is not None else os.getpid() % 200 + 20
        self.name = f"{PREFIX}{self.lab_id}"
        self.bridge = f"{self.name}br"
        self.subnet = f"10.213.{self.lab_id}"
        self.hosts: list[Host] = []
        self._made_bridge = False
        try:
            self._make_bridge()
            for _ in range(hosts):
                self.add_host()
        except BaseException:
            self.close()
            raise

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.1"

    def _make_bridge(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _run("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def add_host(self) -> Host:
        index = len(self.hosts)
        host = Host(index=index, netns=f"{self.name}n{index}", veth_host=f"{self.name}h{index}",
                    veth_ns=f"{self.name}v{index}", ip=f"{self.subnet}.{10 + index}")
        self.hosts.append(host)
        _run("ip", "netns", "add", host.netns)
        _run("ip", "link", "add", host.veth_host, "type", "veth", "peer", "name", host.veth_ns)
        _run("ip", "link", "set", host.veth_ns, "netns", host.netns)
        _run("ip", "link", "set", host.veth_host, "master", self.bridge)
        _run("ip", "link", "set", host.veth_host, "up")
        ns = host.exec_prefix()
        _run(*ns, "ip", "addr", "add", f"{host.ip}/24", "dev", host.veth_ns)
        _run(*ns, "ip", "link", "set", host.veth_ns, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        return host

    # --- faults ---------------------------------------------------------------------------

    def partition(self, groups: list[list[Host]]) -> None:
        """Hosts reach only hosts of their own group (and this process, via the bridge)."""
        self.heal()
        for group in groups:
            others = [h for g in groups if g is not group for h in g]
            for host in group:
                for other in others:
                    host.iptables("INPUT", "-s", other.ip, "-j", "DROP")
                    host.iptables("OUTPUT", "-d", other.ip, "-j", "DROP")

    def cut_one_way(self, senders: list[Host], receivers: list[Host]) -> None:
        """Packets from ``senders`` to ``receivers`` are dropped; the other way flows."""
        for receiver in receivers:
            for sender in senders:
                receiver.iptables("INPUT", "-s", sender.ip, "-j", "DROP")

    def loss(self, hosts: list[Host], probability: float) -> None:
        for host in hosts:
            # traffic from this process (observing through the bridge) is never dropped
            host.iptables("INPUT", "-s", self.bridge_ip, "-j", "ACCEPT")
            host.iptables("INPUT", "-s", f"{self.subnet}.0/24", "-m", "statistic", "--mode",
                          "random", "--probability", f"{probability:.4f}", "-j", "DROP")

    def heal(self) -> None:
        for host in self.hosts:
            host.clear_rules()

    def link(self, host: Host, up: bool) -> None:
        _run(*host.exec_prefix(), "ip", "link", "set", host.veth_ns, "up" if up else "down")
        host.link_up = up

    def bandwidth(self, host: Host, rate: str | None) -> None:
        """Cap ``host``'s outgoing rate (e.g. ``"10mbit"``); None removes the cap."""
        ns = host.exec_prefix()
        _run(*ns, "tc", "qdisc", "del", "dev", host.veth_ns, "root", check=False)
        if rate:
            _run(*ns, "tc", "qdisc", "add", "dev", host.veth_ns, "root", "tbf", "rate", rate,
                 "burst", "64kb", "latency", "400ms")

    # --- cleanup --------------------------------------------------------------------------

    def close(self) -> None:
        for host in self.hosts:
            _run("ip", "netns", "del", host.netns, check=False)
            _run("ip", "link", "del", host.veth_host, check=False)
        if self._made_bridge:
            _run("ip", "link", "del", self.bridge, check=False)
        self.hosts.clear()

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers() -> dict[str, list[str]]:
    """Namespaces and links with the lab prefix that still exist."""
    namespaces = [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines()
                  if line.startswith(PREFIX)]
    links = []
    for line in _run("ip", "-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            links.append(name)
    return {"netns": namespaces, "links": links}


def clean_leftovers() -> dict[str, list[str]]:
    """Remove every namespace and link a killed run left behind; returns what it removed."""
    found = leftovers()
    for namespace in found["netns"]:
        pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        _run("ip", "netns", "del", namespace, check=False)
    for link in found["links"]:
        _run("ip", "link", "del", link, check=False)
    return found
