"""Host user ids for workloads: each workload gets its own range of 65,536 uids.

Replicas do not run as root (unless the mesh policy, signed by the admin, allows it for
that workload: :mod:`apps.workloads.policy`). Each workload gets a *slot*: host uids
``[base, base + 65536)`` with ``base = UID_BASE + slot * SLOT_SIZE``, in a reserved region
``[2^30, 2^31)`` far above the system's users (``UID_MAX`` 60000) and the default
``/etc/subuid`` region of rootless users (100000 .. 600100000):

* the **process runtime** runs the workload as uid = gid = ``base`` (no supplementary
  groups): it owns its own directory and nothing else, cannot signal other workloads'
  processes, and RLIMIT_NPROC (counted per user) now caps it alone;
* **podman** maps container uids/gids ``0..65535`` onto ``base..base+65535`` (a user
  namespace): root inside is ``base`` outside, and the workload's volumes are owned by it.

Why one uid per workload rather than ``nobody``: with a shared ``nobody`` every workload
could read, write and kill every other's files and processes, and its process-count limit
would be shared by all of them.

The slot is the hash of the workload name, moved to the next free slot if another
workload on this node already holds it, and remembered in ``<data_dir>/runtimes/uids.json``
(volumes keep their owner across restarts). Pure apart from that one small file, written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

UID_BASE = 1 << 30
SLOT_SIZE = 1 << 16
SLOTS = ((1 << 31) - UID_BASE) // SLOT_SIZE
"""16,384 slots: uids stay below 2^31 (tools that read uids as signed 32-bit)."""


def preferred_slot(workload: str) -> int:
    return int.from_bytes(hashlib.sha256(workload.encode()).digest()[:8], "big") % SLOTS


def slot_base(slot: int) -> int:
    return UID_BASE + slot * SLOT_SIZE


def is_workload_uid(uid: int) -> bool:
    return UID_BASE <= uid < UID_BASE + SLOTS * SLOT_SIZE


def can_switch_user() -> bool:
    """Only a root agent can run replicas as other users (a phone's agent cannot)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


class UidAllocator:
    """The slots of this node's workloads, kept in ``<data_dir>/runtimes/uids.json``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "runtimes" / "uids.json"

    def _load(self) -> dict[str, int]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): slots are chosen afresh", self.path, exc)
            return {}
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, int)
                and not isinstance(v, bool) and 0 <= v < SLOTS}

    def _save(self, slots: dict[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(slots, sort_keys=True))
        os.replace(tmp, self.path)

    def base_for(self, workload: str) -> int:
        """The first uid of ``workload``'s range (allocated and recorded on first use)."""
        slots = self._load()
        if workload in slots:
            return slot_base(slots[workload])
        taken = set(slots.values())
        if len(taken) >= SLOTS:
            raise OSError("every workload uid slot on this node is taken")
        slot = preferred_slot(workload)
        while slot in taken:
            slot = (slot + 1) % SLOTS
        slots[workload] = slot
        self._save(slots)
        return slot_base(slot)
