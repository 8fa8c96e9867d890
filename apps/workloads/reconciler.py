"""The reconciler driver: feeds :class:`~apps.workloads.core.ReconcilerCore` and does what
it says, on every node.

One pass reads the ``workloads`` and ``replicas`` tables, builds the placement view,
computes the assignment (:func:`apps.workloads.planner.plan`), lists what the runtimes
run, and hands all of it to the core. Its outputs are performed at once (claim writes,
events) or as background tasks keyed by replica name (starts and stops, so a slow stop
never delays another replica's start); the core skips names with a task in flight.

A pass runs when something changes — a row of ``workloads``, ``replicas``, ``nodes``
or ``offers`` (local or from a peer), a member event (``member.*``, ``peer.*``), a lease
won or lost, an operation finished — and otherwise every ``resync_interval`` (crashed
replicas are noticed by the runtimes' ``list``; every ``idle_resync_interval`` while the
mesh has no workload and this node runs no replica) or at the core's next deadline. A guard
task checks running singletons' leases four times a second, independently of passes.

Failover path after a node dies: membership drops it from the view → every node's pass
recomputes the assignment → the node that inherits an index claims it (fencing + 1) and
starts the replica, typically within one pass of the membership event.

Running singletons' lease ends go to the node's watchdog process
(:mod:`apps.workloads.watchdog`), which stops them if this agent dies or freezes; a
restarted agent resumes those leases (:meth:`Reconciler.restored_leases`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from apps.runtimes.base import ReplicaStatus, Runtime, WorkloadRuntimeError
from apps.workloads.config import ReconcilerConfig
from apps.workloads.core import ReconcilerCore, WorkloadEntry
from apps.workloads.leasing import LeaseService
from apps.workloads.messages import NodeOffer
from apps.workloads.offers import OFFERS, all_offers
from apps.workloads.outputs import (
    DeleteClaim,
    Output,
    Report,
    StartReplica,
    StopReplica,
    WriteClaim,
)
from apps.workloads.planner import PlanItem, ReplicaKey, plan
from apps.workloads.spec import replica_name, spec_from_stored
from apps.workloads.tables import REPLICAS, WORKLOADS, ReplicaClaim
from apps.workloads.view import plan_item
from apps.workloads.watchdog import Watched, ensure_watchdog, read_watched, write_watched
from meshcloud.errors import MeshError
from meshcloud.placement import NodeInfo
from meshcloud.state.driver import TableWatch
from meshcloud.state.tables import NODES

log = logging.getLogger(__name__)

WATCHED_TABLES = (WORKLOADS.name, REPLICAS.name, NODES.name, OFFERS.name, "images")
POLICY_TABLE = "workload_policy"
"""Watched too when the reconciler checks the root policy (:mod:`apps.workloads.policy`)."""
GUARD_INTERVAL = 0.25
"""Seconds between checks of running singletons' leases by the guard task."""
WATCHDOG_CHECK = 2.0
"""Seconds between checks that the singleton watchdog process runs (while one is needed)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one pass saw and decided (for ``status``, tests and the UI)."""

    view: list[NodeInfo]
    workloads: dict[str, WorkloadEntry]
    assignment: dict[str, dict[int, bytes]]
    claims: dict[ReplicaKey, ReplicaClaim]
    observed: list[ReplicaStatus]


def read_workloads(state: Any, *, on_bad: Callable[[str, Exception], None] | None = None
                   ) -> dict[str, WorkloadEntry]:
    """The ``service`` rows of ``workloads`` as core entries (unreadable rows skipped)."""
    out: dict[str, WorkloadEntry] = {}
    for key, record in state.scan(WORKLOADS.name):
        if record is None or record.kind != "service":
            continue
        try:
            spec = spec_from_stored(record.spec)
        except MeshError as exc:
            if on_bad is not None:
                on_bad(str(key[0]), exc)
            continue
        out[spec.name] = WorkloadEntry(spec, max(0, record.replicas), record.generation)
    return out


def with_policy(workloads: dict[str, WorkloadEntry], root: set[str]
                ) -> dict[str, WorkloadEntry]:
    """Mark the workloads the verified policy lets run as root (their replicas' spec hash
    changes with it, so a grant or a revocation restarts them under the new user)."""
    return {name: replace(entry, spec=replace(entry.spec, run_as_root=True))
            if name in root else entry for name, entry in workloads.items()}


def read_claims(state: Any) -> dict[ReplicaKey, ReplicaClaim]:
    return {(key[0], key[1]): claim for key, claim in state.scan(REPLICAS.name)
            if claim is not None and isinstance(key[0], str) and isinstance(key[1], int)}


def compute_assignment(view: list[NodeInfo], workloads: Mapping[str, WorkloadEntry],
                       claims: Mapping[ReplicaKey, ReplicaClaim],
                       offers: Mapping[bytes, NodeOffer], load_factor: float | None
                       ) -> dict[str, dict[int, bytes]]:
    items: list[PlanItem] = []
    for name, entry in workloads.items():
        claim = claims.get((name, 0))
        items.append(plan_item(name, entry.spec, entry.replicas, offers,
                               claim.node if claim is not None else None))
    by_workload: dict[str, dict[int, bytes]] = {}
    for (workload, index), claim in claims.items():
        by_workload.setdefault(workload, {})[index] = claim.node
    return plan(view, items, by_workload, load_factor=load_factor)


class Reconciler:
    """One node's reconciler; start with ``await nursery.start(reconciler.run)``."""

    def __init__(self, node_id: bytes, state: Any, runtimes: Mapping[str, Runtime],
                 view: Callable[[], list[NodeInfo]], *, config: ReconcilerConfig | None = None,
                 leases: LeaseService | None = None,
                 emit: Callable[..., Any] | None = None,
                 wall_ms: Callable[[], int] | None = None,
                 watchdog_dir: Path | None = None,
                 root_allowed: Callable[[], set[str]] | None = None) -> None:
        self.node_id = node_id
        self.state = state
        self.runtimes = dict(runtimes)
        self.view = view
        self.config = config or ReconcilerConfig()
        self.core = ReconcilerCore(node_id, self.config)
        self.leases = leases
        self.emit = emit or (lambda kind, **facts: None)
        self.wall_ms = wall_ms or (lambda: int(trio.current_time() * 1000))
        self.busy: set[str] = set()
        self.passes = 0
        self.last: Snapshot | None = None
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._bad_rows: set[str] = set()
        self.pass_done = trio.Event()
        """Set after every pass (then replaced): tests wait on it."""
        self.started_at: float | None = None
        self.watchdog_dir = watchdog_dir
        """Data dir whose singleton watchdog gets deadlines (None: no watchdog)."""
        self._watched: dict[str, Watched] = (
            read_watched(watchdog_dir) if watchdog_dir is not None else {})
        self._watchdog_checked = -1e9
        self.root_allowed = root_allowed
        self.watch_also: tuple[str, ...] = ()
        """More tables whose changes call for a pass (a replica network's: an attach or
        detach changes the replicas' spec); set before :meth:`run`."""
        """Workloads the mesh's signed policy lets run as root (None: none may)."""

    def poke(self) -> None:
        """Something changed: run a pass soon."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            tables = (*WATCHED_TABLES, *((POLICY_TABLE,) if self.root_allowed is not None
                                          else ()), *self.watch_also)
            nursery.start_soon(self._watch, self.state.watch(*tables))
            nursery.start_soon(self._guard)
            task_status.started()
            try:
                while True:
                    self._wake = trio.Event()
                    await self.run_pass()
                    deadline = trio.current_time() + self.resync_interval()
                    core_deadline = self.core.next_deadline()
                    if core_deadline is not None:
                        deadline = min(deadline, core_deadline)
                    with trio.move_on_at(deadline):
                        await self._wake.wait()
            finally:
                self._nursery = None

    def resync_interval(self) -> float:
        """Seconds until the next pass if nothing pokes: ``resync_interval``, or the longer
        ``idle_resync_interval`` after a pass that saw no workload and no replica here."""
        last = self.last
        if last is not None and not last.workloads and not last.observed and not self.busy:
            return max(self.config.resync_interval, self.config.idle_resync_interval)
        return self.config.resync_interval

    async def _watch(self, watch: TableWatch) -> None:
        """Poke a pass at every change of a watched table, for as long as the reconciler
        runs (a watch never overflows, whatever a burst of rows)."""
        while True:
            await watch.wait()
            watch.clear()
            self.poke()

    # --- one pass -------------------------------------------------------------------------

    async def observe(self) -> list[ReplicaStatus] | None:
        """Every replica the runtimes run; None if one could not say (skip the pass)."""
        observed: list[ReplicaStatus] = []
        for kind, runtime in self.runtimes.items():
            try:
                observed.extend(await runtime.list())
            except WorkloadRuntimeError as exc:
                log.warning("%s runtime cannot list replicas: %s", kind, exc.message)
                return None
        return observed

    async def run_pass(self) -> list[Output]:
        observed = await self.observe()
        if observed is None:
            return []
        workloads = with_policy(read_workloads(self.state, on_bad=self._on_bad_row),
                                self.root_allowed() if self.root_allowed else set())
        claims = read_claims(self.state)
        view = self.view()
        offers = all_offers(self.state)
        assignment = compute_assignment(view, workloads, claims, offers,
                                        self.config.load_factor)
        leases = self.leases.leases() if self.leases is not None else {}
        now = trio.current_time()
        booting = self.started_at is not None and \
            now - self.started_at < self.config.startup_grace
        alone = not any(n.node_id != self.node_id for n in view)
        outputs = self.core.step(now, self.wall_ms(), workloads=workloads,
                                 assignment=assignment, claims=claims, observed=observed,
                                 leases=leases, busy=set(self.busy),
                                 hold_new=booting and alone)
        if self.leases is not None:
            for workload in self.core.wanted_leases:
                claim = claims.get((workload, 0))
                if claim is not None:
                    self.leases.observe_term(workload, claim.fencing)
            self.leases.want(self.core.wanted_leases)
        self.last = Snapshot(view, workloads, assignment, claims, observed)
        self.perform(outputs)
        self.passes += 1
        self.pass_done.set()
        self.pass_done = trio.Event()
        return outputs

    def _on_bad_row(self, name: str, exc: Exception) -> None:
        if name not in self._bad_rows:
            self._bad_rows.add(name)
            log.warning("workload %s has an unreadable spec: %s", name, exc)

    def perform(self, outputs: list[Output]) -> None:
        for output in outputs:
            match output:
                case WriteClaim():
                    self.state.put(REPLICAS.name, output.key, output.claim)
                case DeleteClaim():
                    current = self.state.get(REPLICAS.name, output.key)
                    if current is not None and current.node == output.node:
                        self.state.delete(REPLICAS.name, output.key)
                case Report():
                    self._report(output)
                case StartReplica() | StopReplica():
                    name = (output.spec.name if isinstance(output, StartReplica)
                            else output.name)
                    if name in self.busy or self._nursery is None:
                        continue
                    self.busy.add(name)
                    self._nursery.start_soon(self._operate, name, output)

    def _report(self, report: Report) -> None:
        self.emit(report.kind, **report.facts)
        facts = report.facts
        subject = f"{facts.get('workload')}-{facts.get('replica')}"
        if report.kind == "replica.starting" and facts.get("took_over_from"):
            self._log_event("replica.failover",
                            f"{subject} taken over from {facts['took_over_from'][:12]} by "
                            f"{self.node_id.hex()[:12]} (fencing {facts.get('fencing')})",
                            subject)
        elif report.kind == "replica.failed":
            self._log_event("replica.failed", f"{subject} on {self.node_id.hex()[:12]}: "
                            f"{facts.get('why')}", subject, level="warning")

    def _log_event(self, kind: str, message: str, subject: str, level: str = "info") -> None:
        log_event = getattr(self.state, "log_event", None)
        if log_event is not None:
            try:
                log_event(kind, message[:1000], subject=subject, level=level)
            except MeshError as exc:
                log.debug("event not recorded: %s", exc)

    async def _operate(self, name: str, op: StartReplica | StopReplica) -> None:
        try:
            runtime = self.runtimes.get(op.runtime)
            if isinstance(op, StartReplica):
                if runtime is None:
                    self.core.on_start_failed(op.key, "runtime_unavailable",
                                              f"no {op.runtime} runtime on this node",
                                              trio.current_time())
                    return
                try:
                    handle = await runtime.start(op.spec)
                except RuntimeError as exc:
                    if "closed to new arrivals" not in str(exc):
                        raise
                    return  # the node is stopping and the runtime with it; the next adopts
                except WorkloadRuntimeError as exc:
                    self.core.on_start_failed(op.key, exc.code, exc.message,
                                              trio.current_time())
                    self.emit("replica.start_failed", workload=op.key[0], replica=op.key[1],
                              code=exc.code, why=exc.message)
                    log.warning("start of %s failed: %s", name, exc.message)
                else:
                    if not handle.adopted:
                        self.emit("replica.started", workload=op.key[0], replica=op.key[1],
                                  fencing=op.spec.fencing_token)
            elif runtime is not None:
                try:
                    await runtime.stop(name, op.timeout)
                    if op.remove:
                        await runtime.remove(name)
                except WorkloadRuntimeError as exc:
                    log.warning("stop of %s failed: %s", name, exc.message)
                else:
                    self.emit("replica.stopped", workload=op.key[0], replica=op.key[1],
                              reason=op.reason)
        finally:
            self.busy.discard(name)
            self.poke()

    # --- singleton guard ------------------------------------------------------------------

    def restored_leases(self) -> dict[str, tuple[int, float]]:
        """Leases the previous agent held for singletons it ran: workload → (term, end in
        trio time), from the watchdog's file."""
        mono, now = time.monotonic(), trio.current_time()
        return {w.workload: (w.term, now + (w.lease_end - mono))
                for w in self._watched.values() if w.lease_end > mono}

    def _update_watchdog(self, snapshot: Snapshot, leases: Mapping[str, Any],
                         now: float) -> None:
        """Hand the running singletons' lease ends to the node's watchdog process."""
        assert self.watchdog_dir is not None
        mono = time.monotonic()
        watched: dict[str, Watched] = {}
        for status in snapshot.observed:
            entry = snapshot.workloads.get(status.workload)
            if entry is None or not entry.spec.singleton or not status.alive:
                continue
            lease = leases.get(status.workload)
            if lease is not None:
                watched[status.name] = Watched(status.runtime, status.workload, lease.term,
                                               round(mono + lease.valid_until - now, 3))
            elif status.name in self._watched:
                watched[status.name] = self._watched[status.name]
        if watched != self._watched:
            write_watched(self.watchdog_dir, os.getpid(), watched)
            self._watched = watched
        if watched and mono - self._watchdog_checked > WATCHDOG_CHECK:
            self._watchdog_checked = mono
            ensure_watchdog(self.watchdog_dir)

    async def _guard(self) -> None:
        """Stop running singletons whose lease is about to run out, whatever passes do."""
        budget = self.config.singleton_stop_budget
        while True:
            await trio.sleep(self.config.guard_interval)
            snapshot = self.last
            if snapshot is None or self.leases is None:
                continue
            leases = self.leases.leases()
            now = trio.current_time()
            if self.watchdog_dir is not None:
                self._update_watchdog(snapshot, leases, now)
            if not self._watched and not any(
                    (e := snapshot.workloads.get(s.workload)) is not None and e.spec.singleton
                    for s in snapshot.observed):
                await self.pass_done.wait()  # no singleton here: nothing to guard till a pass
                continue
            for status in snapshot.observed:
                entry = snapshot.workloads.get(status.workload)
                if entry is None or not entry.spec.singleton or status.name in self.busy:
                    continue
                if status.name != replica_name(status.workload, status.replica):
                    continue
                lease = leases.get(status.workload)
                if lease is not None and lease.valid_until - now >= budget:
                    continue
                runtime = self.runtimes.get(status.runtime)
                if runtime is None:
                    continue
                try:
                    current = await runtime.status(status.name)
                except WorkloadRuntimeError:
                    continue
                if current.alive and current.name not in self.busy:
                    key = (status.workload, status.replica)
                    self.core.on_stopped_elsewhere(key, current.id)
                    self.perform([StopReplica(key, status.name,
                                              status.runtime,
                                              self.config.singleton_stop_timeout, False,
                                              "lease running out")])
