"""The driver of replicas' own networks on a node (:mod:`vnet.wiring` says what to make).

:meth:`ReplicaNets.prepare` is the hook the process runtime calls before it starts a
replica (:class:`apps.runtimes.network.ReplicaNetwork`): for a workload attached to a
V-Net it makes the replica's network namespace (``ip netns add``), has the service
write the replica's row (its address: the one it had on its previous node when still
free) and wires it, so the replica starts with its address. A container has its own
namespace already: :meth:`ReplicaNets.joined` (called by the podman runtime once the
container runs) names it (``ip netns attach``) and wires it the same way. :meth:`ReplicaNets.sync`,
run on every pass of the service, keeps each namespace's veths matching the rows (an
address re-allocated after a collision, a V-Net attached or detached, the node's own
address changed) and removes the namespaces of replicas no longer running here or of
workloads no longer attached. Attaching or detaching a running workload changes its
replicas' spec (:meth:`ReplicaNets.networks`): the reconciler restarts each one, and
the new run starts in its namespace, or on the host's network once the old namespace,
veths and port forwards are gone (its address is released with its row). A
process replica's published ports are forwarded from the node into its namespace
(:mod:`vnet.portfwd`), so the ingress and the health probes reach it as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from apps.runtimes.network import ReplicaNet
from apps.runtimes.process_state import ReplicaRecord
from apps.runtimes.spec import ContainerSpec
from meshcloud.errors import MeshError
from vnet.core import MemberKey, View
from vnet.firewall import run
from vnet.ipam import VNetError
from vnet.plane import PlaneError
from vnet.portfwd import forward
from vnet.tables import ATTACHMENTS, VNETS, replica_member
from vnet.wiring import (
    Wiring,
    attached,
    netns_name,
    replica_env,
    replica_of,
    setup,
    sysctls,
    teardown,
    wirings,
)

log = logging.getLogger(__name__)

GRACE = 15.0
"""Seconds a prepared namespace is kept while the replica's claim is not (yet) seen
running here."""
NETNS_DIR = Path("/run/netns")


@dataclass
class Entry:
    workload: str
    index: int
    netns: str
    since: float
    wired: dict[str, Wiring] = field(default_factory=dict)
    ports: tuple[tuple[str, int], ...] = ()
    """A process replica's published TCP ports (host ip, host port): forwarded into its
    namespace (:mod:`vnet.portfwd`)."""
    forwards: list[trio.CancelScope] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.workload}-{self.index}"


class ReplicaNets:
    """This node's replica namespaces. ``view`` reads the tables; ``write_rows(netted)``
    runs the control core's reconcile with ``netted`` (:meth:`netted`) and writes its
    orders (synchronously: no other pass runs in between), returning the new view."""

    def __init__(self, node: bytes, view: Callable[[], View],
                 write_rows: Callable[[frozenset[MemberKey]], View],
                 process_root: Path | None = None,
                 attachments: Callable[[], View] | None = None) -> None:
        self.node = node
        self.attachments = attachments or view
        """The V-Nets and attachments only (what :meth:`networks` reads on every pass of
        the reconciler, for every replica: no scan of the replicas' claims)."""
        self.process_root = process_root
        """Where the process runtime keeps its replicas (their published ports are read
        from there for namespaces found after a restart of the agent)."""
        self.nursery: trio.Nursery | None = None
        """Where port forwards run (the service's)."""
        self.view = view
        self.write_rows = write_rows
        self.entries: dict[str, Entry] = {}
        self.lock = trio.Lock()
        self.found = False

    def netted(self, view: View) -> frozenset[MemberKey]:
        """The replica rows that get addresses of their own: those with a namespace."""
        return frozenset((vnet, replica_member(e.workload, e.index))
                         for e in self.entries.values() for vnet in attached(view, e.workload))

    # --- the runtime's hook -----------------------------------------------------------

    def networks(self, workload: str) -> tuple[str, ...]:
        """The V-Nets ``workload`` is attached to: part of its replicas' desired spec, so
        the reconciler restarts a running replica when they change (attach, detach,
        ``vnet rm``). A process keeps the sockets of the namespace it started in, so
        restarting it is the one way to move it; a container restarts the same way, so
        every replica follows one path."""
        return tuple(attached(self.attachments(), workload))

    @property
    def network_tables(self) -> tuple[str, ...]:
        """What :meth:`networks` reads: V-Nets (``vnet rm``) and attachments."""
        return (VNETS.name, ATTACHMENTS.name)

    async def prepare(self, spec: ContainerSpec) -> ReplicaNet | None:
        """See :class:`apps.runtimes.network.ReplicaNetwork`; a failure is one
        :class:`~vnet.ipam.VNetError` (the runtime refuses the start)."""
        try:
            return await self._prepare(spec)
        except PlaneError as exc:
            raise VNetError(f"{spec.name}: its V-Net namespace: {exc}") from None

    async def _prepare(self, spec: ContainerSpec) -> ReplicaNet | None:
        workload, index = spec.workload or spec.name, spec.replica
        if os.geteuid() != 0:
            return None
        if not attached(self.view(), workload):
            await self._drop(f"{workload}-{index}")  # detached: back on the host's network
            return None
        async with self.lock:
            await self._find()
            entry = self.entries.get(f"{workload}-{index}")
            if entry is None or not (NETNS_DIR / entry.netns).exists():
                entry = Entry(workload, index, netns_name(self.node, f"{workload}-{index}"),
                              time.monotonic())
                await self._make_netns(entry.netns)
                self.entries[entry.name] = entry
            entry.since = time.monotonic()
            entry.ports = tuple((m.host_ip, m.host_port) for m in spec.ports
                                if m.protocol == "tcp")
            view = self.write_rows(self.netted(self.view()))
            await self._wire(entry, view)
            await self._forward(entry)
            env = replica_env(entry.wired)
            if spec.ports:  # its own namespace: all its addresses (ports are forwarded)
                env["HOST"] = "0.0.0.0"
            return ReplicaNet(netns=str(NETNS_DIR / entry.netns), env=env)

    async def _forward(self, entry: Entry) -> None:
        """The entry's published ports, forwarded from the node into its namespace."""
        if entry.forwards or not entry.ports or self.nursery is None:
            return
        for host_ip, port in entry.ports:
            scope = trio.CancelScope()
            entry.forwards.append(scope)

            async def run(host_ip: str = host_ip, port: int = port,
                          scope: trio.CancelScope = scope,
                          task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                          ) -> None:
                with scope:
                    try:
                        await forward(str(NETNS_DIR / entry.netns), host_ip, port,
                                      task_status=task_status)
                    except OSError as exc:
                        log.warning("replica %s: port %s:%d not forwarded: %s",
                                    entry.name, host_ip, port, exc)
                        task_status.started()

            await self.nursery.start(run)

    async def joined(self, spec: ContainerSpec, pid: int) -> None:
        """A container of an attached workload started (its main process ``pid``): name
        its namespace (``ip netns attach``) and wire it; the container keeps its own
        network beside the V-Nets'. A failure is one :class:`~vnet.ipam.VNetError`."""
        try:
            await self._joined(spec, pid)
        except PlaneError as exc:
            raise VNetError(f"{spec.name}: its V-Net interfaces: {exc}") from None

    async def _joined(self, spec: ContainerSpec, pid: int) -> None:
        workload, index = spec.workload or spec.name, spec.replica
        if os.geteuid() != 0:
            return
        if not attached(self.view(), workload):
            await self._drop(f"{workload}-{index}")  # its previous run's
            return
        async with self.lock:
            await self._find()
            entry = Entry(workload, index, netns_name(self.node, f"{workload}-{index}"),
                          time.monotonic())
            old = self.entries.pop(entry.name, None)
            if old is not None:
                for w in old.wired.values():
                    await run(*teardown(w), check=False)
            # a namespace left by the container's previous run goes (its veths with it)
            await run("ip", "netns", "del", entry.netns, check=False)
            await run("ip", "netns", "attach", entry.netns, str(pid))
            self.entries[entry.name] = entry
            view = self.write_rows(self.netted(self.view()))
            await self._wire(entry, view)

    async def _make_netns(self, name: str) -> None:
        await run("ip", "netns", "del", name, check=False)  # an unbound leftover
        await run("ip", "netns", "add", name)
        await run("ip", "-n", name, "link", "set", "lo", "up")

    # --- the pass ---------------------------------------------------------------------

    async def _find(self) -> None:
        """Once: the namespaces an earlier run of this agent made (they outlive it while
        their replicas run)."""
        if self.found:
            return
        self.found = True
        try:
            names = sorted(p.name for p in NETNS_DIR.iterdir())
        except OSError:
            return
        for name in names:
            parsed = replica_of(self.node, name)
            if parsed is not None and f"{parsed[0]}-{parsed[1]}" not in self.entries:
                entry = Entry(parsed[0], parsed[1], name, time.monotonic())
                entry.ports = self._stored_ports(entry.name)
                self.entries[entry.name] = entry

    def _stored_ports(self, replica: str) -> tuple[tuple[str, int], ...]:
        """The published TCP ports of a process replica, from its runtime's state."""
        if self.process_root is None:
            return ()
        try:
            spec = ReplicaRecord.load(self.process_root / replica).spec
        except (OSError, ValueError, KeyError, TypeError, MeshError):
            return ()
        return tuple((m.host_ip, m.host_port) for m in spec.ports if m.protocol == "tcp")

    async def sync(self) -> None:
        """Make every namespace's veths match the rows; remove those of replicas that no
        longer run here. The rows are read under the lock (a ``prepare`` may have just
        written some)."""
        async with self.lock:
            await self._find()
            view = self.view()
            running = view.running
            now = time.monotonic()
            for entry in list(self.entries.values()):
                here = entry.index in running.get(entry.workload, frozenset())
                if not attached(view, entry.workload) or (
                        not here and now - entry.since > GRACE):
                    # detached (its replica restarts on the host's network) or gone
                    await self._remove(entry)
                    continue
                if here:
                    entry.since = now
                await self._wire(entry, view)
                await self._forward(entry)

    async def _wire(self, entry: Entry, view: View) -> None:
        wanted = wirings(view, self.node, entry.name, entry.workload, entry.index)
        for vnet, old in list(entry.wired.items()):
            if wanted.get(vnet) != old:
                await run(*teardown(old), check=False)
                del entry.wired[vnet]
        for vnet, w in wanted.items():
            if vnet in entry.wired:
                continue
            try:
                await run(*teardown(w), check=False)  # left by an earlier run
                for cmd in setup(entry.netns, w):
                    await run(*cmd)
                for path, value in sysctls(w):
                    Path(path).write_text(value)
            except (PlaneError, OSError) as exc:
                log.warning("V-Net %s: wiring replica %s: %s", vnet, entry.name, exc)
                continue
            entry.wired[vnet] = w
            log.info("V-Net %s: replica %s is %s", vnet, entry.name, w.address)

    async def forward(self, interfaces: dict[str, str]) -> None:
        """The tunnel interface of each V-Net with a wired replica here forwards (to the
        replicas' veths; the firewall admits nothing else)."""
        vnets = {v for e in self.entries.values() for v in e.wired}
        for vnet in sorted(vnets):
            interface = interfaces.get(vnet)
            if interface is None:
                continue
            path = Path(f"/proc/sys/net/ipv4/conf/{interface}/forwarding")
            try:
                if path.read_text().strip() != "1":
                    path.write_text("1")
            except OSError as exc:
                log.warning("V-Net %s: forwarding on %s: %s", vnet, interface, exc)

    async def _drop(self, replica: str) -> None:
        """Remove what ``replica`` had (a workload detached from its V-Nets), before its
        next run starts on the host's network (its published ports are free again)."""
        async with self.lock:
            await self._find()
            entry = self.entries.get(replica)
            if entry is not None:
                await self._remove(entry)

    async def _remove(self, entry: Entry) -> None:
        for scope in entry.forwards:
            scope.cancel()
        entry.forwards.clear()
        for w in entry.wired.values():
            await run(*teardown(w), check=False)
        entry.wired.clear()
        await run("ip", "netns", "del", entry.netns, check=False)
        self.entries.pop(entry.name, None)
        log.info("removed the network of replica %s", entry.name)

    async def close(self) -> None:
        """Remove every namespace and veth made (the agent stops; its tunnels go too)."""
        async with self.lock:
            for entry in list(self.entries.values()):
                await self._remove(entry)
