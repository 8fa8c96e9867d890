"""The V-Net service of a node (built in :mod:`meshcloud.agent.compose`).

A loop, woken by changes to the V-Net tables and at least every :data:`PASS_EVERY`
seconds while this node has a V-Net, a plane or a replica on one (only by the changes
otherwise: an idle node, a phone, is not woken for nothing), runs one pass: the core's
:func:`~vnet.core.reconcile` orders for this node's member rows are written, then
:func:`~vnet.core.plane_configs` (with the membership view's addresses, so a roaming
peer is followed) is applied to one data plane per V-Net this node is in; planes of
V-Nets it left are closed; the network namespaces of the replicas running here are
wired to match the rows (:mod:`vnet.replicas`). Stopping the service closes every plane
and replica namespace (interfaces, routes, firewall rules).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any

import trio

from meshcloud.errors import MeshError, NotFoundError
from meshcloud.kit.service import ServiceBase
from vnet import core
from vnet.firewall import Firewall
from vnet.ipam import VNetError, check_name, overlaps, parse_cidr
from vnet.keys import load_or_create
from vnet.names import resolve_name
from vnet.plane import DataPlane, PlaneConfig, PlaneError
from vnet.planes import PLANES, Served, choose, offered
from vnet.records import HOST, AttachRecord, VNetRecord
from vnet.tables import (
    ATTACHMENTS,
    MEMBERS,
    VNET_TABLES,
    VNETS,
    all_attachments,
    all_members,
    all_vnets,
    host_member,
)

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

PASS_EVERY = 1.0
"""Seconds between passes when nothing changes (membership addresses are polled)."""
PLANE_ENV = "MESHCLOUD_VNET_PLANE"
"""Forces this node's plane (``wireguard``, ``python``, ``userspace``)."""
SOCKS_ENV = "MESHCLOUD_VNET_SOCKS"
"""``HOST:PORT`` of the userspace mode's SOCKS5 listener (default 127.0.0.1, any port;
``vnet show`` gives it)."""
RUNNING_STATES = {"claimed", "starting", "running"}
HEARD_GRACE = 12.0
"""Seconds a peer gossip holds dead keeps its tunnel while the tunnel still brings its
packets (keepalives every 5 s): a host that roams stays reachable while the mesh
catches up with its new address. A peer that left, or is no longer listed (revoked,
reaped), loses its tunnels at once."""


class VNetService(ServiceBase):
    name = "vnet"
    events = ("vnet.created", "vnet.removed", "vnet.attached", "vnet.plane_error")

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        for schema in VNET_TABLES:
            node.state.open_table(schema)
        self.workdir = node.datadir.path / "vnet"
        self._private: bytes | None = None
        self.public_key = b""
        self.firewall = Firewall()
        self.planes: dict[str, DataPlane] = {}
        self.applied: dict[str, PlaneConfig] = {}
        self.errors: dict[str, str] = {}
        self.wake = trio.Event()
        self.passes = 0
        self.busy = True
        """Whether the last pass found a V-Net, member row or plane (then passes recur)."""
        self.underlay: frozenset[str] = frozenset()
        self.resolvers: dict[str, tuple[str, trio.CancelScope]] = {}
        """V-Net → (the address its resolver listens on, the scope to stop it)."""
        self.dns_port = int(os.environ.get("MESHCLOUD_VNET_DNS_PORT", "53"))
        self._nursery: trio.Nursery | None = None
        self.heard: dict[bytes, tuple[int, float]] = {}
        """Peer node → (bytes received from it over all tunnels, when that last grew)."""
        from vnet.userspace.stream import VnetTcpServer

        self.tcp = VnetTcpServer(node.transport)
        """``/meshcloud/vnet-tcp/1`` for every V-Net of this node: userspace-mode nodes
        reach the members hosted here (and a userspace plane here its own address)."""
        from vnet.replicas import ReplicaNets

        self.replicas = ReplicaNets(node.node_id, self.view, self._write_rows,
                                    node.datadir.path / "runtimes" / "process",
                                    attachments=lambda: core.View(
                                        vnets=all_vnets(node.state), members={},
                                        attachments=all_attachments(node.state)))
        self.replica_network = self.replicas
        """The runtimes' hook (:class:`apps.runtimes.network.ReplicaNetwork`): replicas
        of attached workloads run in namespaces of their own."""

    def tables(self) -> tuple[Any, ...]:
        return VNET_TABLES

    # --- keys and views ---------------------------------------------------------------

    def _keys(self) -> bytes:
        if self._private is None:
            self._private, self.public_key = load_or_create(self.workdir / "tunnel.key")
        return self._private

    def view(self) -> core.View:
        state = self.node.state
        running: dict[str, set[int]] = {}
        try:
            for key, claim in state.scan("replicas"):
                if claim is not None and len(key) == 2 and \
                        getattr(claim, "node", None) == self.node.node_id and \
                        getattr(claim, "state", "") in RUNNING_STATES:
                    running.setdefault(key[0], set()).add(key[1])
        except Exception:  # the workloads' table is not open on this node
            running = {}
        return core.View(vnets=all_vnets(state), members=all_members(state),
                         attachments=all_attachments(state),
                         running={k: frozenset(v) for k, v in running.items()})

    def _note_traffic(self) -> None:
        now = time.monotonic()
        keys: dict[bytes, bytes] = {r.public_key: r.node
                                    for r in all_members(self.node.state).values()}
        totals: dict[bytes, int] = {}
        for plane in self.planes.values():
            for peer in plane.stats():
                node = keys.get(peer.public_key)
                if node is not None:
                    totals[node] = totals.get(node, 0) + peer.rx_bytes
        for node, total in totals.items():
            seen = self.heard.get(node)
            if seen is None or total > seen[0]:
                self.heard[node] = (total, now)

    def _membership(self) -> tuple[dict[bytes, list[str]], frozenset[bytes]]:
        """Each member's mesh addresses, and the nodes to keep tunnels to: those gossip
        holds alive or suspect, and those it holds dead whose tunnels brought packets in
        the last :data:`HEARD_GRACE` seconds."""
        addresses: dict[bytes, list[str]] = {}
        alive: set[bytes] = set()
        now = time.monotonic()
        for member in self.node.members_view():
            try:
                node = bytes.fromhex(member["id"])
            except (KeyError, ValueError):
                continue
            addresses[node] = list(member.get("addresses") or [])
            state = member.get("state")
            heard = self.heard.get(node)
            if state in ("alive", "suspect") or (
                    state == "dead" and heard is not None and now - heard[1] < HEARD_GRACE):
                alive.add(node)
        return addresses, frozenset(alive)

    # --- the loop ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        root = os.geteuid() == 0
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = self.replicas.nursery = nursery
                for table in (VNETS.name, MEMBERS.name, ATTACHMENTS.name):
                    nursery.start_soon(self._follow, table)
                task_status.started()  # the node's start never waits on iptables
                self._keys()
                if root:
                    try:  # what a kill -9'd run of this agent left in its chains
                        await self.firewall.reset()
                    except PlaneError as exc:
                        log.warning("V-Net firewall chains: %s", exc)
                while True:
                    try:
                        await self.one_pass()
                    except Exception:  # a pass is retried on the next tick
                        log.exception("V-Net pass failed")
                    with trio.move_on_after(PASS_EVERY if self.busy else math.inf):
                        await self.wake.wait()
                    self.wake = trio.Event()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(20):
                await self.replicas.close()
                await self.close_all()
                if root and self.firewall.used:
                    try:
                        await self.firewall.reset()
                    except PlaneError as exc:
                        log.warning("V-Net firewall cleanup: %s", exc)

    async def _follow(self, table: str) -> None:
        async for _ in self.node.state.subscribe(table):
            self.wake.set()

    async def close_all(self) -> None:
        for vnet in list(self.planes):
            await self._close(vnet)

    async def _close(self, vnet: str) -> None:
        self._stop_resolver(vnet)
        plane = self.planes.pop(vnet, None)
        self.applied.pop(vnet, None)
        self.errors.pop(vnet, None)
        if plane is not None:
            try:
                await plane.close()
            except PlaneError as exc:
                log.warning("closing V-Net %s: %s", vnet, exc)

    async def one_pass(self) -> None:
        private = self._keys()
        self.passes += 1
        view = self.view()
        self.busy = bool(view.vnets or view.members or self.planes
                         or self.replicas.entries)
        if not self.busy:
            return  # nothing to do (the common case on a mesh without V-Nets)
        view = self._write_rows(self.replicas.netted(view), view)
        self._note_traffic()
        addresses, alive = self._membership()
        me = host_member(self.node.node_id)
        listen = {v: r.port for (v, m), r in view.members.items() if m == me and r.port}
        configs = core.plane_configs(view, self.node.node_id, private, addresses,
                                     alive=alive, listen_ports=listen)
        for vnet in list(self.planes):
            if vnet not in configs:
                await self._close(vnet)
                self.node.events.emit("vnet.removed", vnet=vnet)
        for vnet, config in configs.items():
            row = view.members.get((vnet, me))
            await self._apply(vnet, config, row.plane if row is not None else "")
        await self.replicas.sync()
        await self.replicas.forward({v: c.interface for v, c in configs.items()
                                     if v in self.applied})
        if self.planes:
            await self._check_underlay()

    def _write_rows(self, netted: frozenset[core.MemberKey],
                    view: core.View | None = None) -> core.View:
        """Write the control core's orders for this node's member rows (synchronously);
        the view after them."""
        self._keys()
        view = view or self.view()
        # the row publishes the plane's UDP port (peers send tunnel packets there); a
        # userspace plane has none (its peers reach it over the mesh transport)
        ports = {vnet: 0 if plane.name == "userspace" else _udp_port(plane)
                 for vnet, plane in self.planes.items()
                 if plane.name == "userspace" or _udp_port(plane)}
        orders = core.reconcile(view, self.node.node_id, self.public_key, ports,
                                self.node.clock.wall_ms(), netted)
        if not orders:
            return view
        for order in orders:
            key = (order.vnet, order.member)
            if isinstance(order, core.Put):
                self.node.state.put(MEMBERS.name, key, order.record)
            else:
                self.node.state.delete(MEMBERS.name, key)
        return self.view()

    async def _check_underlay(self) -> None:
        """When this host's own addresses change (it roamed), tell the planes at once."""
        try:
            out = await trio.run_process(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                                         capture_stdout=True, capture_stderr=True,
                                         check=False)
        except FileNotFoundError:
            return
        now = frozenset(line.split()[3] for line in out.stdout.decode().splitlines()
                        if len(line.split()) > 3 and " mc-" not in line)
        changed, self.underlay = bool(self.underlay) and now != self.underlay, now
        if changed:
            log.info("this host's addresses changed: rebinding the V-Net tunnels")
            for plane in list(self.planes.values()):
                rebind = getattr(plane, "rebind", None)
                if rebind is not None:
                    try:
                        await rebind()
                    except PlaneError as exc:
                        log.warning("rebinding a V-Net plane: %s", exc)

    async def _apply(self, vnet: str, config: PlaneConfig, wanted: str) -> None:
        plane = self.planes.get(vnet)
        try:
            if plane is None:
                plane = self.planes[vnet] = self.open_plane(wanted, vnet)
            if self.applied.get(vnet) != config:
                await plane.apply(config)
                self.applied[vnet] = config
                self.errors.pop(vnet, None)
            refresh = getattr(plane, "refresh", None)
            if refresh is not None:
                await refresh()
            await self._ensure_resolver(vnet, str(config.address.ip))
        except (PlaneError, MeshError) as exc:
            if self.errors.get(vnet) != str(exc):
                log.warning("V-Net %s: %s", vnet, exc)
                self.node.events.emit("vnet.plane_error", vnet=vnet, error=str(exc))
            self.errors[vnet] = str(exc)
            self.applied.pop(vnet, None)

    def _stop_resolver(self, vnet: str) -> None:
        running = self.resolvers.pop(vnet, None)
        if running is not None:
            running[1].cancel()

    async def _ensure_resolver(self, vnet: str, address: str) -> None:
        """The V-Net's names answered on this node's address in it (port 53)."""
        running = self.resolvers.get(vnet)
        if running is not None and running[0] == address and not running[1].cancel_called:
            return
        self._stop_resolver(vnet)
        if self._nursery is None or getattr(self.planes.get(vnet), "name", "") \
                not in ("wireguard", "python"):
            return  # the userspace mode has no address to listen on
        from vnet import dns as vdns

        scope = trio.CancelScope()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
            with scope:
                try:
                    await vdns.serve(address, vnet, lambda: all_members(self.node.state),
                                     port=self.dns_port, task_status=task_status)
                except OSError as exc:
                    log.warning("V-Net %s resolver on %s: %s", vnet, address, exc)
                    scope.cancel()
                    task_status.started()

        self.resolvers[vnet] = (address, scope)
        await self._nursery.start(serve)

    def open_plane(self, wanted: str, vnet: str) -> DataPlane:
        """The data plane for ``vnet``: ``wanted`` (``--plane``), else
        $MESHCLOUD_VNET_PLANE, else the best this host has (:func:`vnet.planes.choose`)."""
        from vnet import wireguard

        if self._nursery is None:
            raise PlaneError("the V-Net service is not running")
        root = os.geteuid() == 0
        host = host_planes()
        kind = choose(wanted or os.environ.get(PLANE_ENV, ""),
                      wireguard_missing=None if "wireguard" in host["offered"]
                      else wireguard.available() or "no /dev/net/tun and no kernel WireGuard",
                      tun=host["tun"], root=root)
        if kind == "wireguard":
            reason = wireguard.available()
            if reason is not None:
                raise PlaneError(reason)
            return Served(wireguard.WireGuardPlane(self.workdir, self.firewall), self.tcp)
        if kind == "python":
            from vnet.pyplane.driver import PyPlane

            return Served(PyPlane(self._nursery), self.tcp, self.firewall if root else None)
        from vnet.userspace.plane import UserspacePlane

        host, _, port = os.environ.get(SOCKS_ENV, "127.0.0.1:0").rpartition(":")
        if not port.isdigit():
            raise PlaneError(f"${SOCKS_ENV}: expected HOST:PORT")

        def resolve(name: str) -> str | None:
            found = resolve_name(name, vnet, all_members(self.node.state))
            return str(found[0]) if found else None

        return UserspacePlane(self.tcp, self._nursery, socks_host=host or "127.0.0.1",
                              socks_port=int(port), resolve=resolve)

    # --- operations (API) -------------------------------------------------------------

    async def host_routes(self) -> list[ipaddress.IPv4Network]:
        """This host's IPv4 routes, except the default one and the V-Nets' own."""
        try:
            out = await trio.run_process(["ip", "-4", "-o", "route", "show", "table", "all"],
                                         capture_stdout=True, capture_stderr=True,
                                         check=False)
        except FileNotFoundError:
            return []
        routes: list[ipaddress.IPv4Network] = []
        for line in out.stdout.decode(errors="replace").splitlines():
            words = line.split()
            if not words or " dev mc-" in line:
                continue
            dest = words[1] if words[0] in ("local", "broadcast", "unicast") else words[0]
            if dest == "default" or words[0] in ("local", "broadcast"):
                continue
            try:
                routes.append(ipaddress.IPv4Network(dest, strict=False))
            except ValueError:
                continue
        return routes

    async def create(self, name: Any, cidr: Any) -> dict[str, Any]:
        name = check_name(name)
        network = parse_cidr(cidr)
        vnets = all_vnets(self.node.state)
        if name in vnets:
            raise MeshError(f"V-Net {name!r} exists ({vnets[name].cidr})", code="conflict")
        others = {n: core.network_of(r) for n, r in vnets.items()}
        for other_name, other in others.items():
            if other is not None and network.overlaps(other):
                raise VNetError(f"{network} overlaps V-Net {other_name!r} ({other})")
        clash = overlaps(network, await self.host_routes())
        if clash is not None:
            raise VNetError(f"{network} overlaps this host's route to {clash}; "
                            "pick another range")
        record = VNetRecord(cidr=str(network), created_ms=self.node.clock.wall_ms())
        self.node.state.put(VNETS.name, name, record)
        self.node.events.emit("vnet.created", vnet=name, cidr=str(network))
        self.wake.set()
        return {"name": name, "cidr": str(network), "created_ms": record.created_ms}

    def _require(self, name: str) -> VNetRecord:
        record = all_vnets(self.node.state).get(name)
        if record is None:
            raise NotFoundError(f"no V-Net {name!r} (`meshcloud vnet ls`)")
        return record

    async def remove(self, name: str) -> dict[str, Any]:
        self._require(name)
        state = self.node.state
        for (vnet, member) in all_members(state):
            if vnet == name:
                state.delete(MEMBERS.name, (vnet, member))
        for (vnet, workload) in all_attachments(state):
            if vnet == name:
                state.delete(ATTACHMENTS.name, (vnet, workload))
        state.delete(VNETS.name, name)
        self.node.events.emit("vnet.removed", vnet=name)
        self.wake.set()
        return {"removed": name}

    async def attach(self, name: str, *, host: bool, workload: str | None,
                     plane: str = "", ahead: bool = False) -> dict[str, Any]:
        """Attach this node (``host``) or a workload's replicas; ``ahead``: a workload
        about to be created (``meshcloud run … --vnet NAME``), so that its first
        replicas start in their own namespaces."""
        self._require(name)
        if plane and plane not in PLANES:
            raise VNetError(f"unknown plane {plane!r} (one of {', '.join(PLANES)})")
        if host == bool(workload):
            raise VNetError("attach either --host or a WORKLOAD")
        if workload:
            if ahead and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", workload):
                raise VNetError(f"bad workload name {workload[:70]!r}")
            if not ahead and self.node.state.get("workloads", workload) is None:
                raise NotFoundError(f"no workload {workload!r}")
            self.node.state.put(ATTACHMENTS.name, (name, workload),
                                AttachRecord(created_ms=self.node.clock.wall_ms()))
            self.wake.set()
            return {"vnet": name, "workload": workload}
        self._keys()
        put = core.new_host_member(self.view(), name, self.node.node_id,
                                   self.node.clock.wall_ms(), public_key=self.public_key,
                                   plane=plane)
        self.node.state.put(MEMBERS.name, (put.vnet, put.member), put.record)
        self.node.events.emit("vnet.attached", vnet=name, member=put.member)
        self.wake.set()
        return {"vnet": name, "member": put.member,
                "address": str(ipaddress.IPv4Address(put.record.address))}

    async def detach(self, name: str, *, host: bool, workload: str | None) -> dict[str, Any]:
        self._require(name)
        if workload:
            self.node.state.delete(ATTACHMENTS.name, (name, workload))
        else:
            self.node.state.delete(MEMBERS.name, (name, host_member(self.node.node_id)))
        self.wake.set()
        return {"vnet": name, "detached": workload or "host"}

    # --- read side --------------------------------------------------------------------

    def overview(self) -> list[dict[str, Any]]:
        members = all_members(self.node.state)
        out = []
        for name, record in sorted(all_vnets(self.node.state).items()):
            mine = [m for (v, m), r in members.items() if v == name]
            out.append({"name": name, "cidr": record.cidr, "created_ms": record.created_ms,
                        "members": len(mine), "local": self._local(name)})
        return out

    def _local(self, name: str) -> dict[str, Any] | None:
        plane = self.planes.get(name)
        config = self.applied.get(name)
        if plane is None:
            return None
        return {"plane": plane.name,
                "interface": config.interface if config and plane.name != "userspace"
                else None,
                "address": str(config.address) if config else None,
                "port": _udp_port(plane) if plane.name != "userspace" else None,
                "socks": _udp_port(plane) if plane.name == "userspace" else None,
                "error": self.errors.get(name)}

    def show(self, name: str) -> dict[str, Any]:
        record = self._require(name)
        view = self.view()
        held = core.owners(view.members, name)
        addresses, alive = self._membership()
        now = time.time()
        stats = {}
        plane = self.planes.get(name)
        if plane is not None:
            stats = {s.public_key: s for s in plane.stats()}
        members = []
        for (vnet, member), row in sorted(view.members.items()):
            if vnet != name:
                continue
            address = str(ipaddress.IPv4Address(row.address)) if row.address else None
            entry: dict[str, Any] = {
                "member": member, "kind": row.kind, "node": row.node.hex(),
                "address": address, "port": row.port,
                "routed": row.kind != HOST or held.get(row.address) == member,
                "alive": row.node == self.node.node_id or row.node in alive,
                "endpoint": core.endpoint_host(addresses.get(row.node, [])),
                "this_node": row.node == self.node.node_id}
            tunnel = stats.get(row.public_key) if row.kind == HOST else None
            if tunnel is not None:
                entry["tunnel"] = {
                    "rx_bytes": tunnel.rx_bytes, "tx_bytes": tunnel.tx_bytes,
                    "endpoint": f"{tunnel.endpoint[0]}:{tunnel.endpoint[1]}"
                    if tunnel.endpoint else None,
                    "handshake_age_s": round(now - tunnel.last_handshake, 1)
                    if tunnel.last_handshake else None}
            members.append(entry)
        return {"name": name, "cidr": record.cidr, "created_ms": record.created_ms,
                "members": members, "local": self._local(name),
                "workloads": sorted(w for (v, w) in all_attachments(self.node.state)
                                    if v == name)}

    async def refused(self, name: str) -> int:
        return await self.firewall.counters(name) if os.geteuid() == 0 else 0

    def status(self) -> dict[str, Any]:
        return {"vnets": len(all_vnets(self.node.state)), "planes": {
            v: p.name for v, p in self.planes.items()}, "errors": dict(self.errors),
            "host": host_planes()}

    def api_routes(self) -> list[Any]:
        from vnet.api import routes

        return routes(self)

    def ui_routes(self, ui: Any) -> list[Any]:
        from vnet.ui import routes

        return routes(ui, self)

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("vnets", "V-Nets", "/ui/vnets", True)]


def host_planes() -> dict[str, Any]:
    """What this host offers V-Nets: whether it sees a usable ``/dev/net/tun``, and the
    planes it can run, best first (:func:`vnet.planes.offered`); a phone offers only the
    userspace mode."""
    from vnet import wireguard

    tun = os.access("/dev/net/tun", os.R_OK | os.W_OK)
    planes = offered(wireguard_missing=wireguard.available(), tun=tun,
                     root=os.geteuid() == 0,
                     kernel_wireguard=os.path.exists("/sys/module/wireguard"))
    return {"tun": tun, "offered": planes}


def _udp_port(plane: DataPlane) -> int:
    """The port a plane listens on (the SOCKS5 port for the userspace mode), 0 while it
    does not run (a config that failed to apply)."""
    try:
        return plane.listen_port()
    except PlaneError:
        return 0
