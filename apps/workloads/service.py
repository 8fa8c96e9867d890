"""The workload service of a node: runtimes, reconciler, leases, logs, and the operations
the API and CLI call (run, deploy, scale, stop, remove, ps, logs, drain).

Built by the node (``meshcloud/services.py``) after its transport and state exist; its
``run`` starts, in order: the runtimes this machine has (podman where available, the
process runtime everywhere; ``MESHCLOUD_RUNTIMES=process`` narrows it; podman itself
starts when first needed, :mod:`apps.workloads.ondemand`), the stream
protocols (``/meshcloud/logs/1``, ``/meshcloud/replicas/1``, ``/meshcloud/lease/1``),
this node's offer (runtimes and images, in the ``offers`` table), then the reconciler.
Stopping the agent leaves replicas running; the next agent adopts them.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from apps.leases import LEASE_DURATION, RENEW_EVERY
from apps.runtimes.base import Runtime, WorkloadRuntimeError
from apps.runtimes.config import PodmanConfig, ProcessConfig
from apps.workloads.catalogue import IMAGES, fetch_archive, mesh_images
from apps.workloads.config import ReconcilerConfig
from apps.workloads.errors import WorkloadError
from apps.workloads.leasing import LeaseService
from apps.workloads.logs import LogServer
from apps.workloads.messages import (
    INVENTORY_PROTOCOL,
    LOGS_PROTOCOL,
    InventoryItem,
    InventoryReply,
    InventoryRequest,
    NodeOffer,
)
from apps.workloads.offers import OFFERS, all_offers
from apps.workloads.ondemand import OnDemandRuntime, graph_root, has_containers
from apps.workloads.operations import WorkloadOperations
from apps.workloads.policy import POLICY
from apps.workloads.policy_ops import RootPolicyOps, policy_routes
from apps.workloads.reconciler import Reconciler
from apps.workloads.spec import replica_name
from apps.workloads.tables import WORKLOAD_TABLES
from apps.workloads.view import build_view, capacities_from_members
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError
from meshcloud.kit.service import ServiceBase
from meshcloud.placement import NodeInfo
from meshcloud.state.schema import TableSchema
from meshcloud.state.tables import NODES
from meshcloud.transport.base import Stream

if TYPE_CHECKING:
    from apps.runtimes.network import ReplicaNetwork
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)

OFFER_REFRESH = 30.0
"""Seconds between checks of this node's images and runtimes (re-published on change)."""
INVENTORY_TIMEOUT = 3.0
SYNC_ON_JOIN_INTERVAL = 5.0
"""At most one join-time anti-entropy session per peer this often (a flapping peer)."""
LOCAL_LEASE = 6.0
LOCAL_RENEW = 1.0
"""Lease timing of the ``local`` profile (tests, one-machine demos): failover of a
singleton in ~6 s instead of ~10 s; a holder survives two lost renewals."""
RUNTIMES_ENV = "MESHCLOUD_RUNTIMES"
"""Comma-separated runtimes this node may use (default: every one available)."""


def machine_ram_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def release_idle_store(runtime: Runtime) -> None:
    """After a podman runtime stops: if no container has its root file system mounted,
    undo containers/storage's bind mount of the store onto itself, so the data dir can be
    deleted like any directory. With containers running, everything stays as it is."""
    service = getattr(runtime, "service", None)
    graph_root = getattr(service, "graph_root", None)
    if graph_root is None or not Path(graph_root).exists():
        return
    from apps.runtimes.podman_service import release_store, store_mounts

    base = (Path(graph_root) / "overlay").resolve()
    if all(point == base for point in store_mounts(Path(graph_root))):
        release_store(Path(graph_root))


def _first(exc: BaseException) -> str:
    """The message of the first leaf of an exception (group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


class WorkloadService(WorkloadOperations, ServiceBase):
    name = "workloads"
    events = ("workload.deployed", "workload.removed", "workload.runtimes_ready",
              "replica.starting", "replica.started", "replica.start_failed",
              "replica.stopping", "replica.stopped", "replica.failed", "replica.fenced",
              "replica.unhealthy", "node.drain", "node.undrain")

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.state = node.state
        for schema in self.tables():
            node.state.open_table(schema)
        self.policy = RootPolicyOps(node.state, node.mesh.mesh_id, node.mesh.root_public,
                                    node.root_key, node.clock.wall_ms, node.datadir.path)
        self.config = {"local": ReconcilerConfig.local,
                       "phone": ReconcilerConfig.phone}.get(node.config.profile,
                                                            ReconcilerConfig)()
        self.runtimes: dict[str, Runtime] = {}
        local = node.config.profile == "local"
        self.leases = LeaseService(node.node_id, node.transport, self.known_nodes,
                                   on_change=self.poke,
                                   duration=LOCAL_LEASE if local else LEASE_DURATION,
                                   renew_every=LOCAL_RENEW if local else RENEW_EVERY)
        self.reconciler = Reconciler(
            node.node_id, node.state, self.runtimes, self.view, config=self.config,
            leases=self.leases, emit=node.events.emit, wall_ms=node.clock.wall_ms,
            watchdog_dir=node.datadir.path, root_allowed=self.policy.allowed)
        self.images: tuple[str, ...] = ()
        self.network: ReplicaNetwork | None = None
        """Gives process replicas of V-Net-attached workloads a network of their own
        (set by the node's composition before the runtimes start)."""
        self.started = trio.Event()
        self._synced: dict[bytes, float] = {}

    # --- views ------------------------------------------------------------------------------

    def known_nodes(self) -> list[bytes]:
        return sorted(all_offers(self.state))

    def draining(self) -> set[bytes]:
        return {key[0] for key, record in self.state.scan(NODES.name)
                if record is not None and record.drain}

    def view(self) -> list[NodeInfo]:
        alive = set(self.node.alive_peer_ids()) | {self.node.node_id}
        capacities = capacities_from_members(self.node.members_view())
        return build_view(alive, all_offers(self.state), capacities, self.draining())

    def poke(self) -> None:
        self.reconciler.poke()

    # --- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve the protocols at once; bring runtimes up in the background (podman's API
        service takes a moment, and a machine without it still runs the node), then
        publish this node's offer and start the reconciler (only then: before the
        runtimes answer it cannot tell what already runs here)."""
        async with trio.open_nursery() as nursery:
            transport = self.node.transport
            transport.serve(LOGS_PROTOCOL, LogServer(self.runtimes).handle)
            transport.serve(INVENTORY_PROTOCOL, self._serve_inventory)
            for workload, (term, end) in self.reconciler.restored_leases().items():
                self.leases.restore(workload, term, end)
            await nursery.start(self.leases.run)
            nursery.start_soon(self._watch_members)
            nursery.start_soon(self._bring_up, nursery)
            task_status.started()

    async def _bring_up(self, nursery: trio.Nursery) -> None:
        if self.network is not None:  # a V-Net attachment is part of the replicas' spec
            self.reconciler.core.networks = self.network.networks
            self.reconciler.watch_also = self.network.network_tables
        await self._start_runtimes(nursery)
        await self.publish_offer()
        await nursery.start(self.reconciler.run)
        nursery.start_soon(self._refresh_offer)
        self.started.set()
        self.node.events.emit("workload.runtimes_ready", runtimes=sorted(self.runtimes))

    def allowed_runtimes(self) -> list[str]:
        text = os.environ.get(RUNTIMES_ENV, "")
        wanted = [r.strip() for r in text.split(",") if r.strip()]
        if wanted:
            return wanted
        # a phone has no containers (no root, no cgroups): never even look for podman
        return ["process"] if self.node.config.profile == "phone" else ["podman", "process"]

    async def _start_runtimes(self, nursery: trio.Nursery) -> None:
        data_dir = self.node.datadir.path
        node_hex = self.node.node_id.hex()
        candidates: list[Runtime] = []
        for kind in self.allowed_runtimes():
            if kind == "podman":
                from apps.runtimes.podman import PodmanRuntime

                candidates.append(PodmanRuntime(PodmanConfig(data_dir=data_dir,
                                                             node_id=node_hex),
                                                network=self.network))
            elif kind == "process":
                from apps.runtimes.process import ProcessRuntime

                config = ProcessConfig(data_dir=data_dir, node_id=node_hex)
                if self.node.config.profile == "phone":
                    config = config.phone()
                candidates.append(ProcessRuntime(config, network=self.network))
        for runtime in candidates:
            if not await runtime.available():
                log.info("%s runtime not available on this machine", runtime.kind)
                continue
            root = graph_root(runtime)
            if root is not None and not has_containers(root):
                # nothing to adopt: start podman when something needs it (ondemand.py)
                self.runtimes[runtime.kind] = OnDemandRuntime(
                    runtime, partial(self._start_runtime, nursery, runtime, strict=True),
                    fetch=self.fetch_image)
                continue
            if await self._start_runtime(nursery, runtime):
                self.runtimes[runtime.kind] = runtime if root is None else OnDemandRuntime(
                    runtime, partial(self._start_runtime, nursery, runtime, strict=True),
                    fetch=self.fetch_image, started=True)
        self.reconciler.runtimes = self.runtimes

    async def _start_runtime(self, nursery: trio.Nursery, runtime: Runtime, *,
                             strict: bool = False) -> bool:
        """Start ``runtime`` under supervision; False (or, ``strict``, a runtime error)
        if it cannot start."""
        try:
            await nursery.start(self._supervise_runtime, runtime)
        except (Exception, BaseExceptionGroup) as exc:
            if isinstance(exc, BaseExceptionGroup) and exc.subgroup(
                    lambda e: not isinstance(e, Exception)) is not None:
                raise  # a cancellation or KeyboardInterrupt: not ours to swallow
            log.warning("%s runtime did not start: %s", runtime.kind, _first(exc))
            if strict:
                raise WorkloadRuntimeError(
                    "runtime_unavailable",
                    f"{runtime.kind} runtime did not start: {_first(exc)}") from None
            return False
        log.info("%s runtime started", runtime.kind)
        return True

    async def _supervise_runtime(self, runtime: Runtime, *,
                                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                                 ) -> None:
        """Run a runtime; if it fails later, drop it (and its offer) instead of the node."""
        started = False

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            await runtime.run(task_status=task_status)

        try:
            async with trio.open_nursery() as inner:
                await inner.start(run)
                started = True
                task_status.started()
        except (Exception, BaseExceptionGroup) as exc:
            if not started or (isinstance(exc, BaseExceptionGroup) and exc.subgroup(
                    lambda e: not isinstance(e, Exception)) is not None):
                raise
            log.error("%s runtime stopped: %s", runtime.kind, _first(exc))
            self.runtimes.pop(runtime.kind, None)
            await self.publish_offer()
        finally:
            release_idle_store(runtime)

    async def _watch_members(self) -> None:
        """Membership changes start a pass; a node that (re)appears gets one anti-entropy
        session at once, so offers, workloads and claims written while it was away (or
        before it existed) reach it in a round trip instead of the next sync period."""
        events = self.node.events.subscribe()
        async with trio.open_nursery() as nursery:
            async for event in events:
                kind = str(event.get("kind", ""))
                if not kind.startswith(("member.", "peer.")):
                    continue
                self.poke()
                if kind in ("peer.connected", "member.joined"):
                    try:
                        peer = bytes.fromhex(str(event.get("peer", "")))
                    except ValueError:
                        continue
                    nursery.start_soon(self._sync_with, peer)

    async def _sync_with(self, peer: bytes) -> None:
        now = trio.current_time()
        if now - self._synced.get(peer, -SYNC_ON_JOIN_INTERVAL) < SYNC_ON_JOIN_INTERVAL:
            return
        self._synced[peer] = now
        try:
            await self.state.sync_with(peer)
        except MeshError as exc:
            log.debug("sync with new peer %s failed: %s", peer.hex()[:12], exc)
        self.poke()

    async def _refresh_offer(self) -> None:
        while True:
            await trio.sleep(OFFER_REFRESH)
            await self.publish_offer()

    async def publish_offer(self) -> NodeOffer:
        images: tuple[str, ...] = ()
        podman = self.runtimes.get("podman")
        if podman is not None:
            try:
                images = tuple(await podman.list_images())  # type: ignore[attr-defined]
            except WorkloadRuntimeError as exc:
                log.warning("cannot list images: %s", exc.message)
                images = self.images
        self.images = images
        config = self.node.config
        offer = NodeOffer(runtimes=tuple(sorted(self.runtimes)), images=images,
                          arch=platform.machine(), cpus=float(os.cpu_count() or 1),
                          ram_mb=machine_ram_mb(), labels=tuple(sorted(config.labels.items())),
                          metered=config.metered, updated_ms=self.node.clock.wall_ms())
        current = self.state.get(OFFERS.name, self.node.node_id)
        if current is None or replace(current, updated_ms=0) != replace(offer, updated_ms=0):
            self.state.put(OFFERS.name, self.node.node_id, offer)
        return offer

    async def fetch_image(self, reference: str) -> Path | None:
        """The archive of a pushed image, copied from the blobstore to a file (None if the
        mesh has no such image)."""
        image = mesh_images(self.state).get(reference)
        if image is None:
            return None
        storage = next((s for s in getattr(self.node, "services", [])
                        if getattr(s, "name", "") == "storage"), None)
        objects = getattr(storage, "objects", None)
        if objects is None:
            from apps.runtimes.base import ErrorCode

            raise WorkloadRuntimeError(ErrorCode.IMAGE_NOT_FOUND,
                                       f"image {reference} is in the mesh but this node's "
                                       "storage service is not running")
        pull = self.node.datadir.path / "runtimes" / "pull"
        await trio.Path(pull).mkdir(parents=True, exist_ok=True)
        log.info("loading image %s from the mesh (%d bytes)", reference, image.size)
        return await fetch_archive(objects, image, pull / f"{image.sha256}.tar")

    def register_image(self, references: list[str], key: str, size: int, sha256: str
                       ) -> list[str]:
        from apps.workloads.messages import MeshImage

        record = MeshImage(key=key, size=size, sha256=sha256,
                           pushed_ms=self.node.clock.wall_ms())
        for ref in references:
            self.state.put(IMAGES.name, ref, record)
        self.poke()
        return references

    def unregister_image(self, reference: str) -> dict[str, Any]:
        images = mesh_images(self.state)
        image = images.get(reference)
        if image is None:
            raise WorkloadError(f"no image {reference!r} was pushed to the mesh "
                                "(`meshcloud images ls`)", code="not_found")
        self.state.delete(IMAGES.name, reference)
        shared = any(i.key == image.key for r, i in images.items() if r != reference)
        return {"image": reference, "key": image.key, "archive_shared": shared}

    async def build_demo_images(self) -> list[dict[str, Any]]:
        from apps.images import build_demo_images

        podman = self.runtimes.get("podman")
        if podman is None:
            raise WorkloadError("this node has no podman runtime", code="runtime_unavailable")
        if isinstance(podman, OnDemandRuntime):
            await podman.ensure_started()
            podman = podman.inner
        results = await build_demo_images(podman)
        await self.publish_offer()
        return [{"image": r.reference, "built": r.built, "seconds": round(r.seconds, 3)}
                for r in results]

    # --- inventory --------------------------------------------------------------------------

    async def inventory(self, workload: str = "") -> list[InventoryItem]:
        items = []
        for status in (await self.reconciler.observe()) or []:
            if not status.workload or status.name != replica_name(status.workload,
                                                                   status.replica):
                continue
            if workload and status.workload != workload:
                continue
            items.append(InventoryItem(
                name=status.name, workload=status.workload, replica=status.replica,
                state=status.state.value, runtime=status.runtime,
                fencing=status.fencing_token, restarts=status.restarts))
        return items

    async def _serve_inventory(self, stream: Stream) -> None:
        try:
            with trio.fail_after(INVENTORY_TIMEOUT * 2):
                request = decode_message(await stream.receive(), InventoryRequest,
                                         max_size=1024)
                reply = InventoryReply(items=tuple(await self.inventory(request.workload)),
                                       draining=self.node.node_id in self.draining())
                await stream.send(encode_message(reply))
                await stream.close()
        except (MeshError, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError,
                trio.ClosedResourceError):
            return

    async def inventory_of(self, node_id: bytes) -> list[InventoryItem] | None:
        """What ``node_id``'s runtimes run (None if it cannot be asked now)."""
        if node_id == self.node.node_id:
            return await self.inventory()
        from meshcloud.transport.base import request

        try:
            with trio.fail_after(INVENTORY_TIMEOUT):
                reply = await request(self.node.transport, node_id, INVENTORY_PROTOCOL,
                                      InventoryRequest(), InventoryReply)
        except (MeshError, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError,
                trio.ClosedResourceError):
            return None
        return list(reply.items)

    # --- node hooks -------------------------------------------------------------------------

    def tables(self) -> tuple[TableSchema[Any], ...]:
        return (*WORKLOAD_TABLES, OFFERS, IMAGES, POLICY)

    def api_routes(self) -> list[Any]:
        from apps.workloads.api import routes

        return [*routes(self), *policy_routes(self.policy)]

    def ui_routes(self, ui: Any) -> list[Any]:
        from apps.workloads.ui import routes

        return routes(ui)

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("workloads", "Workloads", "/ui/workloads", True)]

    def status(self) -> dict[str, Any]:
        snapshot = self.reconciler.last
        mine = [] if snapshot is None else [
            s.name for s in snapshot.observed if s.alive]
        return {"runtimes": sorted(self.runtimes), "images": list(self.images),
                "running_here": mine, "passes": self.reconciler.passes,
                "leases": sorted(self.leases.leases())}
