"""How podman's view of a container becomes a :class:`ReplicaStatus` (pure translation).

podman reports a container twice over: ``inspect`` (one container, RFC 3339 times with
nanoseconds, OOM flag, error text) and ``list`` (all containers, unix-second times). Both
become a :class:`ContainerView`, and one function maps a view plus what the runtime alone
knows (a stop was requested, a raised fencing token, the health verdict) to a status:

- ``created``/``configured``/``initialized`` -> CREATING;
- ``running``/``paused``/``stopping`` -> RUNNING, or UNHEALTHY on a failed health check;
- ``exited``/``stopped``/``removing`` -> EXITED (code 0 or stop requested) or FAILED
  (non-zero code, OOM kill, or a podman error such as a missing binary);
- anything else -> UNKNOWN, with podman's word for it in ``message``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apps.runtimes.base import (
    ContainerSpec,
    HealthState,
    ReplicaState,
    ReplicaStatus,
    WorkloadRuntimeError,
    describe_exit,
    ended_state,
    spec_from_dict,
)

KIND = "podman"
NAME_PREFIX = "meshcloud-"
"""Container name = prefix + replica name."""
LABEL = "meshcloud."
"""Prefix of the ownership labels the runtime writes."""
ALIVE = frozenset({"running", "paused", "stopping"})
CREATING = frozenset({"created", "configured", "initialized"})
ENDED = frozenset({"exited", "stopped", "removing"})


@dataclass(frozen=True, slots=True)
class ContainerView:
    name: str
    id: str
    labels: dict[str, str]
    status: str
    exit_code: int | None
    started: float | None
    finished: float | None
    oom: bool = False
    error: str = ""
    image: str | None = None


def view_from_inspect(info: dict[str, Any]) -> ContainerView:
    labels = dict(info["Config"].get("Labels") or {})
    st = info["State"]
    return ContainerView(
        name=labels.get(LABEL + "name") or info["Name"].removeprefix(NAME_PREFIX),
        id=info["Id"], labels=labels, status=st.get("Status", ""),
        exit_code=st.get("ExitCode"), started=parse_time(st.get("StartedAt")),
        finished=parse_time(st.get("FinishedAt")), oom=bool(st.get("OOMKilled")),
        error=st.get("Error") or "",
        image=info.get("ImageName") or info["Config"].get("Image"))


def view_from_list(entry: dict[str, Any]) -> ContainerView:
    labels = dict(entry.get("Labels") or {})
    return ContainerView(
        name=labels.get(LABEL + "name") or entry["Names"][0].removeprefix(NAME_PREFIX),
        id=entry["Id"], labels=labels, status=entry.get("State", ""),
        exit_code=entry.get("ExitCode"), started=unix_time(entry.get("StartedAt")),
        finished=unix_time(entry.get("ExitedAt")), image=entry.get("Image"))


def replica_status(view: ContainerView, *, stop_requested: bool, fence: int,
                   health: tuple[HealthState, str] | None) -> ReplicaStatus:
    """``health`` is the runtime's verdict, or None when it has no checker for the name."""
    spec = spec_of(view.labels)
    state_h, detail = health if health is not None else (HealthState.NONE, "")
    if health is None and spec is not None and spec.health is not None and is_alive(
            view.status):
        state_h = HealthState.STARTING
    message = ""
    exit_code = None
    if view.status in CREATING:
        state = ReplicaState.CREATING
    elif is_alive(view.status):
        state = ReplicaState.UNHEALTHY if state_h is HealthState.UNHEALTHY else \
            ReplicaState.RUNNING
    elif view.status in ENDED:
        exit_code = view.exit_code
        state = ended_state(exit_code, stop_requested=stop_requested)
        message = describe_exit(exit_code)
        if view.oom:
            state, message = ReplicaState.FAILED, "killed: out of memory"
        if view.error:
            state, message = ReplicaState.FAILED, view.error
    else:
        state, message = ReplicaState.UNKNOWN, f"podman state {view.status!r}"
    labels = view.labels
    return ReplicaStatus(
        name=view.name, runtime=KIND, state=state, id=view.id, exit_code=exit_code,
        started_at=view.started, finished_at=view.finished if view.status in ENDED else None,
        restarts=_int(labels.get(LABEL + "restarts")), health=state_h, health_detail=detail,
        workload=labels.get(LABEL + "workload", ""), replica=_int(labels.get(LABEL + "replica")),
        fencing_token=fence, spec_hash=labels.get(LABEL + "spec_hash", ""), image=view.image,
        message=message)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def is_alive(status: str) -> bool:
    return status in ALIVE


def spec_of(labels: dict[str, str]) -> ContainerSpec | None:
    raw = labels.get(LABEL + "spec")
    if raw is None:
        return None
    try:
        return spec_from_dict(json.loads(raw))
    except (ValueError, WorkloadRuntimeError):
        return None


def parse_time(value: str | None) -> float | None:
    """podman's RFC 3339 times (nanoseconds, 'Z' or an offset); year 1 means never."""
    if not value or value.startswith("0001-"):
        return None
    head, _, rest = value.partition(".")
    frac, tz = "", "Z"
    if rest:
        i = next((k for k, ch in enumerate(rest) if not ch.isdigit()), len(rest))
        frac, tz = rest[:i][:6], rest[i:] or "Z"
    elif value.endswith("Z"):
        head = value[:-1]
    text = head + (f".{frac}" if frac else "") + ("+00:00" if tz == "Z" else tz)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def unix_time(value: int | float | None) -> float | None:
    return float(value) if value and value > 0 else None
