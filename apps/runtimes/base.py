"""The Runtime protocol: what a node-local reconciler calls to run one replica of a workload.

A *runtime* turns a :class:`ContainerSpec` into a running replica on this machine and reports
what it sees as a :class:`ReplicaStatus`. Two implementations exist: containers under podman
(:mod:`apps.runtimes.podman`) and plain supervised processes for phones and nodes without
podman (:mod:`apps.runtimes.process`). The reconciler decides *what* should run (placement,
restarts, back-off, fencing); a runtime only does what it is told and reports reality.

Invariants every runtime keeps:

- **Validate first.** ``start`` checks the whole spec (:meth:`ContainerSpec.validate`) and,
  for podman, that the image exists locally, before it creates anything. A refused spec
  changes nothing on the machine.
- **Ownership by labels.** Every replica carries the node id, spec name, workload, replica
  index, fencing token and the spec itself, so ``list()`` returns exactly the replicas this
  node's meshcloud owns, and a runtime object made after an agent restart can adopt them
  (report them, stop them, follow their logs, health-check them again).
- **No restarts.** A replica that exits stays exited until the reconciler calls ``start``
  again; ``start`` on an exited name replaces it and counts one restart in
  ``ReplicaStatus.restarts`` (the counter survives agent restarts).
- **Idempotent calls.** ``start`` of a running replica with the same spec returns its
  handle; ``stop`` and ``remove`` of a missing name do nothing.
- **Background work under ``run``.** Health checks, child reaping and (podman) the API
  service live in the task started by ``await nursery.start(runtime.run)``; cancelling it
  leaves replicas running, exactly as an agent crash would.

Errors are :class:`WorkloadRuntimeError` with a stable ``code`` (see :class:`ErrorCode`).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from apps.runtimes.errors import ErrorCode, WorkloadRuntimeError
from apps.runtimes.health import HealthState
from apps.runtimes.spec import (
    ContainerSpec,
    HealthCheck,
    HealthKind,
    PortMapping,
    VolumeMount,
    injected_env,
    spec_from_dict,
    spec_problems,
)

__all__ = [
    "ContainerSpec", "ErrorCode", "HealthCheck", "HealthKind", "HealthState", "PortMapping",
    "ReplicaHandle", "ReplicaState", "ReplicaStatus", "Runtime", "VolumeMount",
    "WorkloadRuntimeError", "describe_exit", "ended_state", "injected_env", "running",
    "spec_from_dict", "spec_problems",
]


class ReplicaState(enum.Enum):
    """What a replica is doing, as the runtime sees it."""

    CREATING = "creating"
    """Created (or being created) but its process has not started yet."""
    RUNNING = "running"
    """Its main process is alive and it is not known to be unhealthy."""
    UNHEALTHY = "unhealthy"
    """Alive, but its health check failed ``retries`` times in a row."""
    EXITED = "exited"
    """Ended with exit code 0, or was stopped on request."""
    FAILED = "failed"
    """Ended on its own with a non-zero code, was killed (OOM, rlimit), or could not start."""
    UNKNOWN = "unknown"
    """Gone without a trace of how it ended (e.g. adopted process killed while no agent ran)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaHandle:
    """What ``start`` returns: enough to find the replica again (the name is the key)."""

    name: str
    runtime: str
    id: str
    """Container id (podman) or ``pid:starttime`` (process)."""
    spec_hash: str
    adopted: bool = False
    """True when ``start`` found the same spec already running and returned it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatus:
    """A snapshot of one replica. Times are wall-clock seconds since the epoch."""

    name: str
    runtime: str
    state: ReplicaState
    id: str = ""
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    restarts: int = 0
    """How many times ``start`` replaced an ended replica of this name."""
    health: HealthState = HealthState.NONE
    health_detail: str = ""
    workload: str = ""
    replica: int = 0
    fencing_token: int = 0
    spec_hash: str = ""
    image: str | None = None
    message: str = ""
    """Why it failed or is unknown, in words (e.g. "killed by SIGKILL", podman's error)."""

    @property
    def alive(self) -> bool:
        return self.state in (ReplicaState.CREATING, ReplicaState.RUNNING,
                              ReplicaState.UNHEALTHY)


def ended_state(exit_code: int | None, *, stop_requested: bool) -> ReplicaState:
    """EXITED for a clean or requested end, FAILED otherwise, UNKNOWN without a code."""
    if exit_code is None:
        return ReplicaState.EXITED if stop_requested else ReplicaState.UNKNOWN
    if exit_code == 0 or stop_requested:
        return ReplicaState.EXITED
    return ReplicaState.FAILED


def describe_exit(exit_code: int | None) -> str:
    if exit_code is None:
        return "exit code unknown"
    if exit_code > 128:
        import signal
        try:
            return f"exit code {exit_code} (killed by {signal.Signals(exit_code - 128).name})"
        except ValueError:
            pass
    return f"exit code {exit_code}"


@runtime_checkable
class Runtime(Protocol):
    """What a node-local reconciler calls. All methods are async and checkpoint."""

    kind: str
    """"podman" or "process": advertised in gossip capacity."""

    async def available(self) -> bool:
        """Whether this runtime can run replicas on this machine (callable before ``run``)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background work (health checks, reaping, services); ready once started."""
        ...

    async def ensure_image(self, image: str | None) -> None:
        """Raise ``image_not_found`` with a how-to unless ``image`` is usable locally."""
        ...

    async def start(self, spec: ContainerSpec) -> ReplicaHandle:
        """Validate, then create and start a replica (see module invariants)."""
        ...

    async def stop(self, name: str, stop_timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout`` (default: the spec's); no-op if gone."""
        ...

    async def remove(self, name: str) -> None:
        """Kill if needed and forget the replica (its logs go too; volumes stay)."""
        ...

    async def status(self, name: str) -> ReplicaStatus:
        """Raise ``replica_not_found`` for a name this node does not own."""
        ...

    async def list(self) -> list[ReplicaStatus]:
        """Every replica this node owns, alive or ended, sorted by name."""
        ...

    def logs(self, name: str, *, follow: bool = False, tail: int | None = None
             ) -> AsyncIterator[str]:
        """Output lines (no newline); with ``follow``, until the replica ends."""
        ...

    async def wait_exit(self, name: str) -> ReplicaStatus:
        """Return the status once the replica has ended (immediately if it has)."""
        ...


@asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[Runtime]:
    """``async with running(rt):`` = start ``rt.run`` in a nursery, cancel it on exit."""
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        try:
            yield runtime
        finally:
            nursery.cancel_scope.cancel()
