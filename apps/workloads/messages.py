"""Wire messages and stored records of the workload layer (tags ``APPS + 10..``).

``APPS + 1..3`` are the lease messages (:mod:`apps.leases`). Tags only grow.

* :class:`NodeOffer` (stored in the ``offers`` table): what a node can run — runtimes,
  local images, arch, size, labels. Nodes publish their own; admission checks an image
  exists somewhere, placement keeps replicas on nodes that hold their image.
* ``/meshcloud/logs/1``: :class:`LogsRequest` → :class:`LogLines`\\* → :class:`LogsEnd`.
* ``/meshcloud/replicas/1``: :class:`InventoryRequest` → :class:`InventoryReply` (what a
  node's runtimes really run: drain waits on it).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

LOGS_PROTOCOL = "/meshcloud/logs/1"
INVENTORY_PROTOCOL = "/meshcloud/replicas/1"
LEASE_PROTOCOL = "/meshcloud/lease/1"

MAX_LOG_BATCH = 256
"""Lines per :class:`LogLines` message (a message stays well under a stream window)."""
MAX_LOG_LINE = 16 * 1024
"""Characters per line on the wire; longer lines are cut (the runtime caps at 64 KiB)."""


@message(TagBlock.APPS + 10)
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeOffer:
    runtimes: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    """Image references in this node's podman store (``repo:tag``)."""
    arch: str = ""
    cpus: float = 0.0
    ram_mb: int = 0
    labels: tuple[tuple[str, str], ...] = ()
    metered: bool = False
    updated_ms: int = 0


@message(TagBlock.APPS + 11)
@dataclass(frozen=True, slots=True, kw_only=True)
class LogsRequest:
    workload: str
    replica: int
    follow: bool = False
    tail: int | None = None


@message(TagBlock.APPS + 12)
@dataclass(frozen=True, slots=True, kw_only=True)
class LogLines:
    lines: tuple[str, ...]


@message(TagBlock.APPS + 13)
@dataclass(frozen=True, slots=True, kw_only=True)
class LogsEnd:
    code: str = ""
    """Empty when the log ended normally; an error code otherwise."""
    message: str = ""


@message(TagBlock.APPS + 14)
@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryRequest:
    workload: str = ""
    """Only this workload's replicas (all when empty)."""


@message(TagBlock.APPS + 15)
@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryItem:
    name: str
    workload: str
    replica: int
    state: str
    runtime: str
    fencing: int = 0
    restarts: int = 0


@message(TagBlock.APPS + 16)
@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryReply:
    items: tuple[InventoryItem, ...]
    draining: bool = False


@message(TagBlock.APPS + 17)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeshImage:
    """An image pushed to the mesh (``images`` table, key: its reference): a ``podman save``
    archive stored as object ``key`` of the mesh's image bucket."""

    key: str
    size: int
    sha256: str
    pushed_ms: int = 0
