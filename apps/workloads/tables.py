"""The workload service's replicated tables: what should run, and who runs each replica.

=============  ====================================  ==========================  ========
table          key (partition | sort)                value                       entry
=============  ====================================  ==========================  ========
workloads      name                                  WorkloadRecord              LWW
replicas       workload name | replica index         ReplicaClaim                LWW
=============  ====================================  ==========================  ========

Both are full copy on every node and opened by the service. Their record tags
(``RECORDS + 1`` and ``+ 2`` of :mod:`meshcloud.state.tables`) predate the move here and
stay as they are: stored rows carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshcloud.codec.messages import message
from meshcloud.state.schema import TableSchema, record_codec
from meshcloud.state.tables import RECORDS


@message(RECORDS + 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadRecord:
    kind: str
    """service, function, site, database, spark."""
    spec: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    constraints: dict[str, Any] = field(default_factory=dict)
    generation: int = 0
    """Bumped by every spec change: reconcilers restart replicas running an older one."""


class ReplicaState:
    CLAIMED = "claimed"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FAILED = "failed"


@message(RECORDS + 2, version=3)
@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaClaim:
    node: bytes
    fencing: int
    """Fencing token: grows with every new claim of this replica; a runtime refuses
    orders carrying a smaller one (two nodes with different views cannot both win)."""
    state: str = ReplicaState.CLAIMED
    restarts: int = 0
    updated_ms: int = 0
    generation: int = 0
    message: str = ""
    """Why it is not running, in words (version 2): a start error, the last exit."""
    networks: tuple[str, ...] = ()
    """The V-Nets it runs (or starts) in (version 3): a replica restarting to join or
    leave one waits until the replicas before it run in the new ones."""


_wl_enc, _wl_dec = record_codec(WorkloadRecord)
WORKLOADS: TableSchema[WorkloadRecord] = TableSchema(
    "workloads", partition=(str,), encode=_wl_enc, decode=_wl_dec)

_claim_enc, _claim_dec = record_codec(ReplicaClaim)
REPLICAS: TableSchema[ReplicaClaim] = TableSchema(
    "replicas", partition=(str,), sort=(int,), encode=_claim_enc, decode=_claim_dec)

WORKLOAD_TABLES: tuple[TableSchema[Any], ...] = (WORKLOADS, REPLICAS)
