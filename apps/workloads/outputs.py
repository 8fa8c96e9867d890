"""What the reconciler core asks its driver to do (``ReconcilerCore.step`` returns these).

Starts and stops run as background tasks keyed by replica name (the core is told which
names are busy and leaves them alone); claim writes and deletes are immediate state
writes; reports become events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apps.runtimes.spec import ContainerSpec
from apps.workloads.planner import ReplicaKey
from apps.workloads.tables import ReplicaClaim


@dataclass(frozen=True, slots=True)
class StartReplica:
    """``runtime.start(spec)``: create it, or adopt it if it runs with this spec."""

    key: ReplicaKey
    spec: ContainerSpec
    runtime: str


@dataclass(frozen=True, slots=True)
class StopReplica:
    """``runtime.stop(name, timeout)``, then ``runtime.remove(name)`` if ``remove``."""

    key: ReplicaKey
    name: str
    runtime: str
    timeout: float | None
    remove: bool
    reason: str


@dataclass(frozen=True, slots=True)
class WriteClaim:
    key: ReplicaKey
    claim: ReplicaClaim


@dataclass(frozen=True, slots=True)
class DeleteClaim:
    """Delete the claim of ``key`` if it still names ``node`` (never another's claim)."""

    key: ReplicaKey
    node: bytes


@dataclass(frozen=True, slots=True)
class Report:
    """Something worth an event (``replica.started``, ``replica.failed``...)."""

    kind: str
    facts: dict[str, Any] = field(default_factory=dict)


Output = StartReplica | StopReplica | WriteClaim | DeleteClaim | Report
