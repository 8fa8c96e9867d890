"""ReconcilerCore: one node's decisions — start, stop, restart, claim — as plain data.

Each pass the driver hands the core what it knows — the workloads, the assignment
computed by :mod:`apps.workloads.planner`, the claims in the ``replicas`` table, what the
runtimes report, the singleton leases this node holds, which replica names have an
operation in flight — and the core returns outputs (:mod:`apps.workloads.outputs`).
It keeps only its own bookkeeping (failure counts, back-off deadlines, hand-off timers).

Rules, per replica key (workload, index):

* **Assigned here, running with the wanted spec**: keep it; raise its fencing token if
  the claim's is higher; report ``running`` (``starting`` until its health check passes).
* **Assigned here, running another spec** (a new generation): stop it; the next pass
  starts the new one without counting a failure. The V-Nets a workload is attached to
  are part of its replicas' spec (:data:`NETWORKS_ENV`, from ``networks``): attaching or
  detaching a running workload restarts its replicas into (out of) their V-Nets, one
  at a time in index order (each waits until those before it run in the new V-Nets:
  ``networks`` in their claims), and their claims say so ("restarting to join V-Net
  blue", "waiting for replica 0 before restarting to join V-Net blue").
* **Assigned here, not running**: start it, unless it is backing off after failures
  (``backoff_base × 2^(n−1)``, at most ``backoff_max``; reset after ``backoff_reset`` of
  running). A replica that ended without being asked to — crash, OOM, exit 0, or
  ``unhealthy`` (then stopped by us) — is one failure.
* **Singletons** start only while this node holds the workload's lease with at least
  ``singleton_stop_budget + singleton_start_margin`` left, with the lease term as fencing
  token, and are stopped (SIGKILL after ``singleton_stop_timeout``) once less than
  ``singleton_stop_budget`` remains. Their claim is written only under a lease.
* **Running here but assigned elsewhere** (moved, node draining): make before break —
  keep it until the new owner's claim says ``running``, or ``handoff_timeout``.
  Singletons stop at once (their lease decides, not the claim).
* **Workload removed or scaled below the index**: stop and remove at once.
* Claims naming this node for replicas it neither runs nor should run are deleted.
* **Boot**: until the node sees a peer (or ``startup_grace`` passed) it starts nothing:
  alone, it would believe itself the holder of every workload. What runs is kept.

Fencing tokens: a node taking over a replica claims it with the previous token + 1 (a
singleton uses its lease term), so the newest owner always has the highest token and a
runtime refuses a start with a lower one.

Sans-IO: ``now`` is monotonic seconds, ``wall_ms`` the wall clock for ``updated_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from apps.leases import HeldLease
from apps.workloads.config import ReconcilerConfig, backoff_delay
from apps.workloads.outputs import (
    DeleteClaim,
    Output,
    Report,
    StartReplica,
    StopReplica,
    WriteClaim,
)
from apps.workloads.planner import ReplicaKey, assigned_to
from apps.workloads.spec import WorkloadSpec, replica_name
from apps.workloads.tables import ReplicaClaim

if TYPE_CHECKING:
    from apps.runtimes.base import ReplicaStatus
    from apps.runtimes.spec import ContainerSpec

ALIVE_STATES = ("creating", "running", "unhealthy")
NETWORKS_ENV = "MESHCLOUD_VNETS"
"""A replica's environment names the V-Nets its workload is attached to (comma
separated): so they are part of what the replica is (its spec hash)."""


class ClaimState:
    """The ``state`` strings written to claims (``meshcloud ps`` shows them)."""

    STARTING = "starting"
    """Being started, or started and not healthy yet."""
    RUNNING = "running"
    STOPPING = "stopping"
    """Being stopped to restart with a new spec."""
    FAILED = "failed"
    """Ended or could not start; waits out its back-off (``message`` says why)."""


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    """A row of ``workloads`` as the core needs it."""

    spec: WorkloadSpec
    replicas: int
    """Wanted now (0 when stopped)."""
    generation: int = 0


@dataclass
class _Track:
    failures: int = 0
    next_start: float = 0.0
    running_since: float | None = None
    seen_end: str | None = None
    """Runtime id of the ended replica already counted (count each ending once)."""
    planned_stop: str | None = None
    """Runtime id we stopped on purpose (its ending is no failure)."""
    adopt_sent: int = -1
    handoff_since: float | None = None
    message: str = ""
    networks: tuple[str, ...] | None = None
    """The V-Nets the running replica was started in (None: not known here)."""


class ReconcilerCore:
    def __init__(self, node_id: bytes, config: ReconcilerConfig | None = None) -> None:
        self.node_id = node_id
        self.config = config or ReconcilerConfig()
        self.endpoint_port: Callable[[str, int, str], int] | None = None
        """The node's host port for a replica's published endpoint (the ingress sets it;
        it must answer the same for the same replica, or the replica restarts)."""
        self.networks: Callable[[str], Sequence[str]] | None = None
        """The V-Nets a workload's replicas join (the V-Net service sets it): part of
        their spec, so that an attach or detach restarts them (:func:`with_networks`)."""
        self.wanted_leases: set[str] = set()
        """Singletons this node should hold a lease for (the lease driver follows it)."""
        self._tracks: dict[ReplicaKey, _Track] = {}
        self._deadline: float | None = None

    # --- inputs -----------------------------------------------------------------------------

    def step(self, now: float, wall_ms: int, *, workloads: Mapping[str, WorkloadEntry],
             assignment: Mapping[str, Mapping[int, bytes]],
             claims: Mapping[ReplicaKey, ReplicaClaim], observed: Sequence[ReplicaStatus],
             leases: Mapping[str, HeldLease] | None = None,
             busy: Collection[str] = (), hold_new: bool = False) -> list[Output]:
        """One pass: compare what should run here with what runs; see the module doc.
        ``hold_new``: start nothing (a node that just booted and sees no peer yet would
        otherwise believe itself the holder of every workload)."""
        leases = leases or {}
        out: list[Output] = []
        deadlines: list[float] = []
        by_key: dict[ReplicaKey, ReplicaStatus] = {}
        for status in observed:
            if not status.workload or status.name != replica_name(status.workload,
                                                                   status.replica):
                continue  # not made by the reconciler
            key = (status.workload, status.replica)
            if key not in by_key or _alive(status):
                by_key[key] = status
        mine = {key for key in assigned_to(assignment, self.node_id) if key[0] in workloads}
        self.wanted_leases = {w for w, _ in mine if workloads[w].spec.singleton}
        ctx = _Pass(now, wall_ms, claims, leases, busy, out, deadlines, hold_new)
        for key in sorted(mine):
            self._assigned(ctx, key, workloads[key[0]], by_key.get(key))
        for key in sorted(set(by_key) - mine):
            self._not_assigned(ctx, key, workloads.get(key[0]), by_key[key], assignment)
        for key, claim in sorted(claims.items()):
            if claim.node == self.node_id and key not in mine and key not in by_key \
                    and replica_name(*key) not in busy:
                out.append(DeleteClaim(key, self.node_id))
        for key in list(self._tracks):
            if key not in mine and key not in by_key:
                del self._tracks[key]
        self._deadline = min(deadlines, default=None)
        return out

    def on_start_failed(self, key: ReplicaKey, code: str, message: str, now: float) -> None:
        """The runtime refused or failed a start: one failure, then back off (the longest
        back-off for a missing image: it will not appear by retrying)."""
        track = self._tracks.setdefault(key, _Track())
        track.failures += 1
        delay = backoff_delay(track.failures, self.config.backoff_base, self.config.backoff_max)
        if code in ("image_not_found", "invalid_spec"):
            delay = self.config.backoff_max
        track.next_start = now + delay
        track.message = f"{code}: {message}"[:500]

    def on_stopped_elsewhere(self, key: ReplicaKey, runtime_id: str) -> None:
        """The driver stopped ``key`` on its own (the singleton guard): not a failure."""
        self._tracks.setdefault(key, _Track()).planned_stop = runtime_id

    def next_deadline(self) -> float | None:
        """When a pass is due even if nothing changes (back-off, hand-off, lease end)."""
        return self._deadline

    def failures(self, key: ReplicaKey) -> int:
        track = self._tracks.get(key)
        return track.failures if track else 0

    # --- rules ------------------------------------------------------------------------------

    def _assigned(self, ctx: _Pass, key: ReplicaKey, entry: WorkloadEntry,
                  status: ReplicaStatus | None) -> None:
        workload, index = key
        spec = entry.spec
        name = replica_name(workload, index)
        if name in ctx.busy:
            return
        cfg = self.config
        track = self._tracks.setdefault(key, _Track())
        claim = ctx.claims.get(key)
        lease = ctx.leases.get(workload) if spec.singleton else None
        lease_left = lease.valid_until - ctx.now if lease is not None else -math.inf
        if spec.singleton:
            fencing = lease.term if lease is not None else 0
        else:
            base = claim.fencing if claim is not None else 0
            fencing = base if claim is not None and claim.node == self.node_id else base + 1
            if status is not None:
                fencing = max(fencing, status.fencing_token)
        plain = spec.container_spec(index, fencing, self.endpoint_port)
        nets = tuple(sorted(set(self.networks(workload)))) if self.networks else ()
        wanted = with_networks(plain, nets)
        runtime = spec.runtime

        if status is not None and _alive(status):
            if status.spec_hash != wanted.spec_hash() or status.runtime != runtime:
                ours = claim is not None and claim.node == self.node_id
                before = _ran_with(status.spec_hash, plain, (
                    track.networks, claim.networks if claim is not None and ours else None,
                    ())) if status.runtime == runtime else None
                ahead = _turn(ctx.claims, workload, index, entry.replicas, nets) \
                    if before is not None and _state(status) == "running" else None
                if ahead is not None:  # only its V-Nets changed: one replica at a time
                    ctx.claim(self, key, claim, fencing, claim.state if claim is not None
                              and ours else ClaimState.RUNNING, status.restarts,
                              entry.generation, restart_reason(before, nets).replace(
                                  "restarting", "waiting for replica "
                                  f"{ahead} before restarting", 1), before or ())
                    return
                track.planned_stop = status.id
                ctx.claim(self, key, claim, fencing, ClaimState.STOPPING, status.restarts,
                          entry.generation, restart_reason(before, nets), before or ())
                ctx.out.append(StopReplica(key, name, status.runtime, None,
                                           status.runtime != runtime, "spec changed"))
                return
            if spec.singleton and lease_left < cfg.singleton_stop_budget:
                track.planned_stop = status.id
                ctx.out.append(StopReplica(key, name, status.runtime,
                                           cfg.singleton_stop_timeout, False, "lease lost"))
                ctx.out.append(Report("replica.fenced", {"workload": workload,
                                                         "replica": index}))
                return
            if _state(status) == "unhealthy":
                track.planned_stop = status.id
                self._fail(track, ctx.now, f"unhealthy: {status.health_detail}")
                ctx.claim(self, key, claim, fencing, ClaimState.FAILED, status.restarts,
                          entry.generation, track.message, nets)
                ctx.out.append(StopReplica(key, name, status.runtime, None, False,
                                           "unhealthy"))
                ctx.out.append(Report("replica.unhealthy", {
                    "workload": workload, "replica": index, "detail": status.health_detail}))
                return
            track.networks = nets
            if track.running_since is None:
                track.running_since = ctx.now
            if ctx.now - track.running_since >= cfg.backoff_reset:
                track.failures = 0
                track.message = ""
            if status.fencing_token < fencing and track.adopt_sent != fencing:
                track.adopt_sent = fencing  # start() of a running replica raises its token
                ctx.out.append(StartReplica(key, wanted, runtime))
            healthy = _health(status) != "starting" and _state(status) == "running"
            ctx.claim(self, key, claim, fencing,
                      ClaimState.RUNNING if healthy else ClaimState.STARTING,
                      status.restarts, entry.generation, "", nets)
            if spec.singleton:
                ctx.deadlines.append(ctx.now + lease_left - cfg.singleton_stop_budget)
            return

        track.running_since = None
        restarts = status.restarts if status is not None else 0
        if status is not None and status.id != track.seen_end:
            track.seen_end = status.id
            if track.planned_stop != status.id:
                why = status.message or _exit_text(status)
                self._fail(track, ctx.now, why)
                ctx.out.append(Report("replica.failed", {
                    "workload": workload, "replica": index, "why": why,
                    "failures": track.failures}))
        if spec.singleton and lease_left < cfg.singleton_stop_budget + cfg.singleton_start_margin:
            return  # no lease (yet): the holder's claim, if any, stays as it is
        if ctx.now < track.next_start:
            ctx.deadlines.append(track.next_start)
            if claim is not None and claim.node == self.node_id:
                ctx.claim(self, key, claim, fencing, ClaimState.FAILED, restarts,
                          entry.generation, track.message, nets)
            return
        if ctx.hold_new:
            return
        ctx.claim(self, key, claim, fencing, ClaimState.STARTING, restarts, entry.generation,
                  track.message, nets)
        track.networks = nets
        ctx.out.append(StartReplica(key, wanted, runtime))
        ctx.out.append(Report("replica.starting", {
            "workload": workload, "replica": index, "fencing": fencing,
            "took_over_from": claim.node.hex() if claim is not None
            and claim.node != self.node_id else None}))

    def _not_assigned(self, ctx: _Pass, key: ReplicaKey, entry: WorkloadEntry | None,
                      status: ReplicaStatus, assignment: Mapping[str, Mapping[int, bytes]]
                      ) -> None:
        workload, index = key
        name = replica_name(workload, index)
        if name in ctx.busy:
            return
        track = self._tracks.setdefault(key, _Track())
        claim = ctx.claims.get(key)
        if not _alive(status):
            ctx.out.append(StopReplica(key, name, status.runtime, 0, True, "cleanup"))
            if claim is not None and claim.node == self.node_id:
                ctx.out.append(DeleteClaim(key, self.node_id))
            return
        if entry is None or index >= entry.replicas:
            reason = "workload removed" if entry is None else "scaled down"
        elif entry.spec.singleton:
            reason = "singleton placed elsewhere"
        else:
            new_owner = assignment.get(workload, {}).get(index)
            taken = (claim is not None and claim.node != self.node_id
                     and claim.state == ClaimState.RUNNING)
            if track.handoff_since is None:
                track.handoff_since = ctx.now
            waited = ctx.now - track.handoff_since
            if taken:
                reason = f"moved to {claim.node.hex()[:12]}" if claim else "moved"
            elif new_owner is not None and waited < self.config.handoff_timeout:
                ctx.deadlines.append(track.handoff_since + self.config.handoff_timeout)
                return  # keep serving until the new owner runs it
            else:
                reason = "no longer assigned here"
        timeout = self.config.singleton_stop_timeout if (
            entry is not None and entry.spec.singleton) else None
        track.planned_stop = status.id
        ctx.out.append(StopReplica(key, name, status.runtime, timeout, True, reason))
        ctx.out.append(Report("replica.stopping", {"workload": workload, "replica": index,
                                                   "reason": reason}))

    def _fail(self, track: _Track, now: float, why: str) -> None:
        track.failures += 1
        track.next_start = now + backoff_delay(track.failures, self.config.backoff_base,
                                               self.config.backoff_max)
        track.message = why[:500]


@dataclass
class _Pass:
    now: float
    wall_ms: int
    claims: Mapping[ReplicaKey, ReplicaClaim]
    leases: Mapping[str, HeldLease]
    busy: Collection[str]
    out: list[Output]
    deadlines: list[float]
    hold_new: bool = False

    def claim(self, core: ReconcilerCore, key: ReplicaKey, current: ReplicaClaim | None,
              fencing: int, state: str, restarts: int, generation: int, message: str,
              networks: tuple[str, ...] = ()) -> None:
        """Write this node's claim of ``key`` if it says something new."""
        if current is not None and current.node == core.node_id and (
                current.fencing, current.state, current.restarts, current.generation,
                current.message, current.networks) == (
                    fencing, state, restarts, generation, message, networks):
            return
        claim = ReplicaClaim(node=core.node_id, fencing=fencing, state=state,
                             restarts=restarts, updated_ms=self.wall_ms,
                             generation=generation, message=message, networks=networks)
        self.out.append(WriteClaim(key, claim))


def with_networks(spec: ContainerSpec, networks: Sequence[str]) -> ContainerSpec:
    """``spec`` with :data:`NETWORKS_ENV` naming ``networks`` (unchanged when none)."""
    if not networks:
        return spec
    return replace(spec, env={**spec.env, NETWORKS_ENV: ",".join(sorted(networks))})


def _ran_with(spec_hash: str, plain: ContainerSpec,
              candidates: Sequence[tuple[str, ...] | None]) -> tuple[str, ...] | None:
    """The V-Nets a running replica was started in, when its spec is ``plain`` with one
    of ``candidates`` (then only its V-Nets changed); None otherwise."""
    for networks in candidates:
        if networks is not None and with_networks(plain, networks).spec_hash() == spec_hash:
            return networks
    return None


def _turn(claims: Mapping[ReplicaKey, ReplicaClaim], workload: str, index: int,
          replicas: int, networks: tuple[str, ...]) -> int | None:
    """The replica a replica joining or leaving V-Nets waits for (None: its turn): the
    first one before it that is starting, stopping, or running outside ``networks``. A
    rolling restart: each new replica is live before the next goes (a failed one is not
    waited for: it restarts into the new V-Nets anyway)."""
    for j in range(min(index, replicas)):
        claim = claims.get((workload, j))
        if claim is None or claim.state == ClaimState.FAILED:
            continue
        if claim.state != ClaimState.RUNNING or claim.networks != networks:
            return j
    return None


def restart_reason(before: tuple[str, ...] | None, after: tuple[str, ...]) -> str:
    """What a replica's claim says while it restarts with a new spec: which V-Nets it
    joins or leaves, when that is what changed (``before`` None: not known)."""
    if before is None or tuple(before) == tuple(after):
        return "restarting with a new spec"
    parts = []
    joins = [n for n in after if n not in before]
    leaves = [n for n in before if n not in after]
    if joins:
        parts.append("join V-Net " + ", ".join(joins))
    if leaves:
        parts.append("leave V-Net " + ", ".join(leaves))
    return "restarting to " + " and ".join(parts)


def _state(status: Any) -> str:
    state = status.state
    return str(getattr(state, "value", state))


def _health(status: Any) -> str:
    health = status.health
    return str(getattr(health, "value", health))


def _alive(status: Any) -> bool:
    return _state(status) in ALIVE_STATES


def _exit_text(status: Any) -> str:
    code = status.exit_code
    if code is None:
        return f"ended ({_state(status)})"
    return f"exited with code {code}"
