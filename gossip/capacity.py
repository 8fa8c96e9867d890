"""Capacity: what a node offers, carried in its signed Alive and gossiped to every member.

Placement reads it to honour constraints ("needs podman", "arm64 only", "4 GiB free",
"not on battery", "not on a metered link"). It is small on purpose and **size-capped**:
every Alive carries it, and an Alive must fit a datagram with room for piggybacked news
(memberlist caps its node metadata at 512 bytes for the same reason). The field limits
below bound the encoded size under :data:`MAX_CAPACITY_BYTES`; the codec refuses a
capacity that breaks them.

A node re-announces its capacity (a new Alive with a higher incarnation) only when it
changes *significantly*, and each announcement costs a broadcast that every member
retransmits, so the mesh-wide rate of announcements sets every node's share of it:

* a change of what the node *is* (:func:`static_change`: cores, RAM size, arch,
  runtimes, labels, power source, metered link, low battery) is announced within
  ``capacity_interval``: placement constraints depend on it;
* a change of a *reading* (:func:`dynamic_change`: load, free RAM, free disk, battery)
  only past coarse steps and at most once per ``capacity_refresh_interval``, stretched
  with N past ``push_pull_scale_threshold`` nodes, so the mesh as a whole announces
  readings at a bounded rate whatever its size (readings are for display and coarse
  choices; a busy machine's load moves all the time, and re-announcing it every 10 s
  cost each node kilobytes per second at N = 30).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

MAX_CAPACITY_BYTES = 1024
"""Upper bound of an encoded Capacity, implied by the field limits below (tested)."""

MAX_RUNTIMES = 8
MAX_NAME_LENGTH = 32
"""Runtime names and the arch string: ``podman``, ``process``, ``x86_64``, ``aarch64``."""

MAX_LABELS = 16
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 255
MAX_LABEL_TOTAL = 512
"""Sum of every label key and value length: labels are for placement, not for storage."""

BIG = 1 << 62
"""Upper bound for byte counts and core counts (a sanity limit, not a real one)."""


MAX_MACHINE = 16
"""A machine fingerprint: 16 hex digits of a hash of ``/etc/machine-id``."""


@message(TagBlock.GOSSIP + 20, version=3)
@dataclass(frozen=True, slots=True, kw_only=True)
class Capacity:
    """A node's resources. Unknown values are 0 (counts), -1 (battery) or None (on_ac)."""

    cpu_cores: int = 0
    load: float = 0.0
    """One-minute load average divided by nothing: compare it with ``cpu_cores``."""
    ram_total: int = 0
    ram_free: int = 0
    """Bytes available to new work (``MemAvailable``), not just unused pages."""
    disk_free: int = 0
    """Bytes free for the data directory's file system."""
    battery: int = -1
    """Percent charge, or -1 when the machine has no battery (or it cannot be read)."""
    on_ac: bool | None = None
    """True on mains power, False on battery, None when unknown (a desktop with no sysfs)."""
    metered: bool = False
    """True when the node's network costs money per byte (a phone on mobile data)."""
    arch: str = ""
    runtimes: tuple[str, ...] = ()
    """Workload runtimes this node can run: ``podman``, ``process``."""
    labels: tuple[tuple[str, str], ...] = ()
    """User labels as sorted (key, value) pairs, e.g. ``(("zone", "attic"),)``."""
    machine: str = ""
    """Which machine the node runs on (nodes sharing one count its RAM and disk once)."""
    low_power: bool = False
    """The node's battery is below its threshold (``battery_threshold``, default 30 %) and
    it is not charging: it takes no new work and hands its replicas off, like a drain.
    The node decides (the threshold is its own setting); every other node obeys."""

    def __post_init__(self) -> None:
        for name in ("cpu_cores", "ram_total", "ram_free", "disk_free"):
            value = getattr(self, name)
            if not 0 <= value <= BIG:
                raise ValueError(f"{name} out of range")
        if not -1 <= self.battery <= 100:
            raise ValueError("battery is a percentage or -1")
        if not 0.0 <= self.load <= 1e6:  # also refuses NaN
            raise ValueError("load out of range")
        if len(self.arch) > MAX_NAME_LENGTH:
            raise ValueError("arch name too long")
        if len(self.machine) > MAX_MACHINE:
            raise ValueError("machine fingerprint too long")
        if len(self.runtimes) > MAX_RUNTIMES or any(
            not r or len(r) > MAX_NAME_LENGTH for r in self.runtimes
        ):
            raise ValueError("too many runtimes, or a runtime name too long")
        if len(self.labels) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels")
        total = 0
        keys = set()
        for key, value in self.labels:
            if not key or len(key) > MAX_LABEL_KEY or len(value) > MAX_LABEL_VALUE:
                raise ValueError("label key or value too long (or an empty key)")
            keys.add(key)
            total += len(key) + len(value)
        if len(keys) != len(self.labels):
            raise ValueError("duplicate label key")
        if total > MAX_LABEL_TOTAL:
            raise ValueError(f"labels exceed {MAX_LABEL_TOTAL} characters in all")

    @classmethod
    def build(cls, *, labels: dict[str, str] | None = None, **fields: Any) -> Capacity:
        """A Capacity from keyword fields, with ``labels`` given as a dict."""
        pairs = tuple(sorted((labels or {}).items()))
        return cls(labels=pairs, **fields)

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


LOAD_STEP = 1.0
"""Load average change worth announcing: a whole core's worth of work, or half of the
machine's cores if that is more (an 8-core machine's load moving by 2 is noise)."""

LOAD_STEP_PER_CORE = 0.5

RAM_STEP = 0.10
"""Fraction of total RAM by which free RAM must move before it is re-announced."""

DISK_STEP = 0.05
DISK_STEP_MIN = 1 << 30
"""Free disk must move by 5 % of its last value and at least 1 GiB."""

BATTERY_STEP = 10
"""Battery percentage points worth announcing."""


def static_change(old: Capacity, new: Capacity) -> bool:
    """Did a fact placement depends on change (cores, RAM size, arch, runtimes, labels,
    metered link, power source, machine)? Always worth announcing soon."""
    return (
        old.cpu_cores != new.cpu_cores
        or old.ram_total != new.ram_total
        or old.arch != new.arch
        or old.runtimes != new.runtimes
        or old.labels != new.labels
        or old.metered != new.metered
        or old.on_ac != new.on_ac
        or old.machine != new.machine
        or old.low_power != new.low_power
    )


def significant_change(old: Capacity, new: Capacity) -> bool:
    """Is ``new`` different enough from the announced ``old`` to gossip it at all?"""
    return static_change(old, new) or dynamic_change(old, new)


def dynamic_change(old: Capacity, new: Capacity) -> bool:
    """Did a reading move past its coarse step since the announced ``old``?

    The steps are measured from the *announced* value, not the previous reading, so a
    reading that wanders around one value is never announced (hysteresis)."""
    load_step = max(LOAD_STEP, LOAD_STEP_PER_CORE * new.cpu_cores)
    if abs(old.load - new.load) >= load_step:
        return True
    if new.ram_total and abs(old.ram_free - new.ram_free) >= RAM_STEP * new.ram_total:
        return True
    disk_step = max(DISK_STEP * old.disk_free, DISK_STEP_MIN)
    if abs(old.disk_free - new.disk_free) >= disk_step:
        return True
    if (old.battery < 0) != (new.battery < 0):
        return True
    return abs(old.battery - new.battery) >= BATTERY_STEP
