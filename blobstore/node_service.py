"""BlobService: the blobstore as one of the node's services (``meshcloud.agent.compose``).

What it runs on a node:

* the shard store (LMDB under ``<data dir>/state/blobs``) and the shard protocol
  ``/meshcloud/blob/1`` (:mod:`blobstore.service`);
* the object index tables on the node's replicated state and the index protocol
  ``/meshcloud/blob-index/1`` (:mod:`blobstore.index`);
* placement of shards by ``meshcloud.placement`` over the live members, weighted by free
  disk (:mod:`blobstore.picker`);
* the S3 API (hypercorn on trio) on the node's ``s3`` address; the bound URL goes into
  ``run/agent.json`` as ``"s3"``;
* repair, scrub and GC workers (:mod:`blobstore.maintenance`);
* a ``storage`` section in ``/v1/status``, events ``object.put``, ``repair.*``,
  ``scrub.*``, ``gc.*``, and the ``/v1/storage/...`` API routes the CLI uses
  (:mod:`blobstore.api`).

Tuning for tests and small machines comes from :class:`BlobConfig` (environment variables
``MESHCLOUD_BLOB_*``, documented there).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from blobstore.index import Index, IndexService
from blobstore.memory import MemoryReleaser, malloc_trim, tune_malloc
from blobstore.objects import ObjectStore
from blobstore.picker import PlacementPicker
from blobstore.reader import ReaderConfig
from blobstore.records import open_tables
from blobstore.s3http.app import S3App
from blobstore.service import ShardService, TransportShardClient
from blobstore.shardstore import AsyncShardStore, ShardStore
from blobstore.writer import WriterConfig
from meshcloud.kit.service import ServiceBase

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        return default


@dataclass(frozen=True)
class BlobConfig:
    repair_interval: float = 600.0
    """Seconds between full repair passes over the index partitions this node
    coordinates (a member failure or join starts one at once). MESHCLOUD_BLOB_REPAIR_INTERVAL"""

    gc_grace: float = 24 * 3600.0
    """Seconds a shard is safe from GC (in-flight puts, multipart uploads).
    MESHCLOUD_BLOB_GC_GRACE"""

    gc_interval: float = 3600.0
    """Seconds between GC scans of the local store. MESHCLOUD_BLOB_GC_INTERVAL"""

    scrub_interval: float = 30 * 24 * 3600.0
    """Seconds between scrub passes. MESHCLOUD_BLOB_SCRUB_INTERVAL"""

    scrub_rate: float = 8 * 1024 * 1024
    """Bytes per second a scrub pass reads. MESHCLOUD_BLOB_SCRUB_RATE"""

    reencode_rate: float = 16 * 1024 * 1024
    """Bytes of objects per second the repair worker re-encodes to their target layout, on
    average (objects written while too few nodes were live). MESHCLOUD_BLOB_REENCODE_RATE"""

    min_free_bytes: int = 256 << 20
    """Disk kept free under the shard store. MESHCLOUD_BLOB_MIN_FREE"""

    s3_domains: tuple[str, ...] = ()
    """Base domains for virtual-host addressing (``bucket.<domain>``), comma separated.
    MESHCLOUD_S3_DOMAINS"""

    @classmethod
    def from_env(cls) -> BlobConfig:
        d = cls()
        domains = os.environ.get("MESHCLOUD_S3_DOMAINS", "")
        return cls(
            repair_interval=_env_float("MESHCLOUD_BLOB_REPAIR_INTERVAL", d.repair_interval),
            gc_grace=_env_float("MESHCLOUD_BLOB_GC_GRACE", d.gc_grace),
            gc_interval=_env_float("MESHCLOUD_BLOB_GC_INTERVAL", d.gc_interval),
            scrub_interval=_env_float("MESHCLOUD_BLOB_SCRUB_INTERVAL", d.scrub_interval),
            scrub_rate=_env_float("MESHCLOUD_BLOB_SCRUB_RATE", d.scrub_rate),
            reencode_rate=_env_float("MESHCLOUD_BLOB_REENCODE_RATE", d.reencode_rate),
            min_free_bytes=int(_env_float("MESHCLOUD_BLOB_MIN_FREE", d.min_free_bytes)),
            s3_domains=tuple(x.strip() for x in domains.split(",") if x.strip())
            or ("localhost",),
        )


class BlobService(ServiceBase):
    """See the module docstring."""

    name = "storage"
    events = ("object.put", "object.deleted", "repair.rebuilt", "repair.reencoded", "repair.lost",
              "repair.finished", "scrub.corrupt", "scrub.repaired", "scrub.finished",
              "gc.deleted", "storage.s3_failed")

    def __init__(self, node: NodeContext, config: BlobConfig | None = None) -> None:
        self.node = node
        self.config = config or BlobConfig.from_env()
        self.path = node.datadir.state_dir / "blobs"
        open_tables(node.state)
        self.picker = PlacementPicker(self.alive, node.members_view)
        self.index_service = IndexService(node.state)
        self.index = Index(node.transport, node.state, self.index_service, self.alive,
                           suspects=self.suspected, known=self.known)
        self.shards: AsyncShardStore | None = None
        self.shard_service: ShardService | None = None
        self.client: TransportShardClient | None = None
        self.objects: ObjectStore | None = None
        self.app: S3App | None = None
        self.maintenance: Any = None
        self.memory: Any = None
        self.s3_urls: list[str] = []
        self.s3_error: str | None = None

    def alive(self) -> frozenset[bytes]:
        return frozenset(self.node.alive_peer_ids()) | {self.node.node_id}

    def suspected(self) -> frozenset[bytes]:
        """Live members gossip suspects (index reads ask them but do not wait for them)."""
        return frozenset(bytes.fromhex(row["id"]) for row in self.node.members_view()
                         if row.get("state") == "suspect")

    def known(self) -> frozenset[bytes]:
        """Members not known to have left, dead ones included."""
        return frozenset(bytes.fromhex(row["id"]) for row in self.node.members_view()
                         if row.get("state") != "left")

    def mesh_size(self) -> int:
        """Members not known to have left, this node included: the nodes an object's target
        layout counts on (a crashed member counts until gossip forgets it)."""
        members = {row.get("id") for row in self.node.members_view()
                   if row.get("state") != "left"}
        return len(members | {n.hex() for n in self.alive()})

    def _build(self) -> None:
        """Open the store and assemble the pipelines (the only disk I/O: done in run)."""
        quota = self.node.config.quota_bytes()
        limits = {"max_map_size": quota, "map_size": min(quota, 1 << 30)} if quota else {}
        store = ShardStore(self.path, min_free_bytes=self.config.min_free_bytes,
                           clock=self.node.clock, **limits)
        self.shards = AsyncShardStore(store)
        self.shard_service = ShardService(self.shards)
        self.client = TransportShardClient(self.node.transport, self.shards)
        self.objects = ObjectStore(self.node.state, self.index, self.client, self.picker,
                                   wall_ms=self.node.clock.wall_ms, writer=WriterConfig(),
                                   reader=ReaderConfig(), on_bad_shard=self._on_bad_shard,
                                   emit=self.node.events.emit)
        secret = hashlib.blake2b(self.node.mesh.mesh_id, person=b"s3-list-tokens",
                                 digest_size=32).digest()
        self.app = S3App(self.objects, wall=lambda: self.node.clock.wall_ms() / 1000,
                         token_secret=secret, base_domains=self.config.s3_domains,
                         is_revoked_node=lambda node: self.node.records.is_revoked(node, b""))
        from blobstore.maintenance import Maintenance

        self.maintenance = Maintenance(self)
        phone = self.node.config.profile == "phone"
        self.memory = MemoryReleaser(self._bytes_moved, self._release_memory,
                                     tick=15.0 if phone else 1.0)

    def _bytes_moved(self) -> int:
        moved = self.objects.bytes_moved if self.objects is not None else 0
        return moved + (self.shards.store.bytes_moved if self.shards is not None else 0)

    def _release_memory(self) -> None:
        """After large transfers (worker thread): unmap the store pages read, trim the heap."""
        if self.shards is not None:
            self.shards.store.release_pages()
        malloc_trim()

    def _on_bad_shard(self, bad: Any) -> None:
        if self.maintenance is not None:
            self.maintenance.on_bad_shard(bad)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        from blobstore.s3http.server import serve_s3
        from blobstore.service import PROTOCOL as SHARD_PROTOCOL

        tune_malloc()
        self._build()
        assert self.shard_service is not None and self.app is not None
        self.shard_service.register(self.node.transport)
        self.index_service.register(self.node.transport)
        try:
            async with trio.open_nursery() as nursery:
                self.index.nursery = nursery
                await nursery.start(self.maintenance.run)
                nursery.start_soon(self.memory.run)
                try:
                    self.s3_urls = await nursery.start(serve_s3, self.app,
                                                       self.node.config.s3)
                except OSError as exc:
                    # the node keeps storing and serving shards; only S3 is missing
                    self.s3_error = f"cannot listen on {self.node.config.s3}: {exc}"
                    log.error("storage: S3 API not started: %s", self.s3_error)
                    self.node.events.emit("storage.s3_failed", error=self.s3_error)
                log.info("storage ready", extra={"s3": ",".join(self.s3_urls),
                                                 "protocol": SHARD_PROTOCOL})
                task_status.started()
        finally:
            self.index.nursery = None
            assert self.shards is not None
            self.shards.store.close()

    # --- node hooks -----------------------------------------------------------------------

    def runtime_info(self) -> dict[str, Any]:
        return {"s3": self.s3_urls[0] if self.s3_urls else None}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"s3": self.s3_urls, "s3_error": self.s3_error}
        if self.shards is None or self.objects is None:
            return {**out, "ready": False}
        stats = self.shards.store.stats()
        out.update({
            "ready": True,
            "shards": stats.count,
            "bytes": stats.bytes,
            "map_bytes": stats.used_bytes,
            "buckets": len(self.objects.buckets()),
            "puts": self.objects.puts,
            "gets": self.objects.gets,
            "shard_puts_served": self.shard_service.puts if self.shard_service else 0,
            "shard_gets_served": self.shard_service.gets if self.shard_service else 0,
            "index_writes_served": self.index_service.writes,
            "index_read_repairs": self.index.read_repairs,
            "s3_requests": self.app.requests if self.app else 0,
            "s3_errors": self.app.errors if self.app else 0,
            "s3_payload_modes": dict(self.app.payload_modes) if self.app else {},
        })
        if self.maintenance is not None:
            out.update(self.maintenance.status())
        if self.memory is not None:
            out["memory_releases"] = self.memory.releases
            out["memory_collection_max_ms"] = round(self.memory.slowest_collection_ms, 1)
            out["memory_frozen"] = self.memory.frozen
        return out

    def api_routes(self) -> list[Any]:
        from blobstore.api import storage_routes

        return storage_routes(self)

    def ui_routes(self, ui: Any) -> list[Any]:
        from blobstore.ui import routes

        return routes(ui)

    def nav(self) -> list[tuple[str, str, str, bool]]:
        return [("storage", "Storage", "/ui/storage", True)]
