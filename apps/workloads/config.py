"""ReconcilerConfig: timings of the reconciler, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass, replace

from meshcloud.errors import ConfigError
from meshcloud.placement import DEFAULT_LOAD_FACTOR


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcilerConfig:
    resync_interval: float = 2.0
    """Seconds between passes when nothing pokes the reconciler: how soon a crashed
    replica is noticed (a podman ``list`` costs ~3 ms, a process one less)."""
    backoff_base: float = 1.0
    """First restart delay of a crashed replica; doubles with every further failure."""
    backoff_max: float = 60.0
    """Longest restart delay: a broken image retries once a minute, not in a hot loop."""
    backoff_reset: float = 60.0
    """A replica that has run this long is healthy again: its failure count resets."""
    handoff_timeout: float = 30.0
    """A replica moving to another node keeps running here until the new one reports
    running (make before break), at most this long."""
    load_factor: float | None = DEFAULT_LOAD_FACTOR
    """Bounded-load factor c of placement (None: plain rendezvous)."""
    singleton_stop_budget: float = 2.0
    """A singleton is stopped this long before its lease runs out when renewals fail:
    enough for a SIGTERM, ``singleton_stop_timeout`` and the SIGKILL after it."""
    singleton_stop_timeout: float = 1.0
    """Grace a singleton gets on such a stop (its lease, not its spec, sets the pace)."""
    singleton_start_margin: float = 1.0
    """A singleton starts only with at least budget + this much lease left."""

    idle_resync_interval: float = 30.0
    """Seconds between passes when the last pass saw no workload in the mesh and no
    replica here (nothing to notice crashing): pokes (a row, a member event) still start
    a pass at once."""

    guard_interval: float = 0.25
    """Seconds between checks of running singletons' leases by the guard task (below
    ``singleton_stop_budget``)."""

    startup_grace: float = 10.0
    """After the reconciler starts, new replicas wait until a peer is seen or this long
    passed (a node alone at boot would otherwise start every workload of the mesh)."""

    def __post_init__(self) -> None:
        if min(self.resync_interval, self.idle_resync_interval, self.backoff_base, self.backoff_max,
               self.handoff_timeout, self.singleton_stop_budget) <= 0:
            raise ConfigError("reconciler intervals must be positive")
        if self.backoff_base > self.backoff_max:
            raise ConfigError("backoff_base must not exceed backoff_max")
        if self.singleton_stop_timeout >= self.singleton_stop_budget:
            raise ConfigError("singleton_stop_timeout must be shorter than its budget")

    @classmethod
    def local(cls) -> ReconcilerConfig:
        """Tests and one-machine demos: quick passes and short back-off."""
        return replace(cls(), resync_interval=0.5, backoff_base=0.2, backoff_max=5.0,
                       handoff_timeout=10.0, startup_grace=2.0)

    @classmethod
    def phone(cls) -> ReconcilerConfig:
        """A phone: passes when something changes (pokes), else every 30 s, so the CPU
        sleeps between them; a crashed replica is noticed by its runtime's supervision."""
        return replace(cls(), resync_interval=30.0, guard_interval=1.0)


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds before restart number ``failures`` (1 = first failure): base·2^(n−1),
    at most ``cap``; no delay before any failure."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 30))
