"""ContainerSpec: one replica to run, and the checks that refuse a bad one early.

A spec is plain data, independent of the workload record it came from and of the runtime
that will run it. :func:`spec_problems` is pure: it names *every* problem at once, and
runtimes call it (through :meth:`ContainerSpec.validate`) before they touch anything, so
a refused spec never leaves half a container behind. Specs serialise to canonical JSON
(:meth:`ContainerSpec.to_json`), stored with each replica so an agent restarted later can
adopt it; :meth:`ContainerSpec.spec_hash` says whether two specs describe the same replica
(the fencing token is left out: a new owner may adopt a replica it did not start).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from apps.runtimes.errors import ErrorCode, WorkloadRuntimeError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
"""Replica and volume names: DNS-label-ish, safe as a file name and a container name."""

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")

MAX_MEMORY = 1 << 50
"""1 PiB: anything above is a unit mistake, not a machine."""
MIN_MEMORY = 4 << 20
"""4 MiB: below this neither runc nor a shell starts; refuse instead of failing later."""
MAX_CPU = 1024.0
"""Cores; a spec asking for more is a unit mistake (millicores passed as cores)."""
MAX_ENV_BYTES = 256 * 1024
"""Total environment size; execve fails near 2 MiB and labels must carry the spec."""
MAX_ARGS = 4096
RESERVED_LABEL_PREFIX = "meshcloud."
"""Labels the runtime writes itself (ownership); a spec may not set them."""


class HealthKind(enum.Enum):
    COMMAND = "command"
    """Run ``command`` (inside the container for podman, on the host for processes); exit 0 = ok."""
    TCP = "tcp"
    """Open a TCP connection to ``port`` (a container port of the spec)."""
    HTTP = "http"
    """``GET path`` on ``port``; any 2xx or 3xx status is ok."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapping:
    """Publish ``container_port`` on ``host_ip:host_port``.

    The process runtime has no separate network namespace: the program must listen on
    ``host_port`` itself; it receives it as ``PORT`` (first mapping) and ``PORT_<container_port>``.
    """

    container_port: int
    host_port: int
    host_ip: str = "127.0.0.1"
    protocol: str = "tcp"


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeMount:
    """Named volume ``name`` (a directory under the node's data dir) mounted at ``path``."""

    name: str
    path: str
    read_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """A probe run every ``interval`` seconds; ``retries`` failures in a row = unhealthy.

    Failures during the first ``start_period`` seconds do not count (slow starters), but a
    success then already makes the replica healthy. Each probe is abandoned after ``timeout``.
    """

    kind: HealthKind
    command: tuple[str, ...] = ()
    port: int | None = None
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    retries: int = 3
    start_period: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSpec:
    """One replica to run: everything a runtime needs, nothing about placement.

    ``image`` is a local image reference for podman; the process runtime runs ``command +
    args`` on the host and needs ``image`` to be None. ``command`` replaces the image's
    entrypoint/cmd when given; ``args`` follow it. ``cpu`` is in cores (fractional), ``memory``
    in bytes (podman: cgroup limit; process: RLIMIT_AS, which counts virtual memory, so give
    programs headroom), ``pids`` caps processes (podman: pids cgroup; process: RLIMIT_NPROC,
    not enforced for root), ``cpu_time`` caps CPU seconds (RLIMIT_CPU, both runtimes).
    ``workload``/``replica``/``fencing_token`` are recorded as ownership labels; the
    fencing token of a running replica can only be matched or raised by a new ``start``.
    """

    name: str
    image: str | None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    cpu: float | None = None
    memory: int | None = None
    pids: int | None = None
    cpu_time: int | None = None
    nofile: int | None = None
    volumes: tuple[VolumeMount, ...] = ()
    working_dir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    health: HealthCheck | None = None
    stop_timeout: float = 10.0
    workload: str = ""
    replica: int = 0
    fencing_token: int = 0
    run_as_root: bool = False
    """Run as host root (no uid switch, no user namespace). Set only by the node that
    starts the replica, from the mesh's signed policy (:mod:`apps.workloads.policy`);
    a user's spec cannot ask for it."""

    def validate(self, *, needs_image: bool) -> None:
        """Raise one :class:`WorkloadRuntimeError` (``invalid_spec``) naming every problem."""
        problems = spec_problems(self, needs_image=needs_image)
        if problems:
            raise WorkloadRuntimeError(
                ErrorCode.INVALID_SPEC,
                f"spec {self.name!r} refused: " + "; ".join(problems))

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): stored in labels / state files for adoption."""
        return json.dumps(spec_to_dict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ContainerSpec:
        return spec_from_dict(json.loads(text))

    def spec_hash(self) -> str:
        """Hash of what the replica *is* (fencing token and restarts excluded)."""
        d = spec_to_dict(self)
        d.pop("fencing_token")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def spec_to_dict(spec: ContainerSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["env"] = dict(spec.env)
    d["labels"] = dict(spec.labels)
    if spec.health is not None:
        d["health"]["kind"] = spec.health.kind.value
    if not spec.run_as_root:
        del d["run_as_root"]  # absent when false: specs stored before it hash the same
    return d


def spec_from_dict(d: Mapping[str, Any]) -> ContainerSpec:
    try:
        health = d.get("health")
        return ContainerSpec(
            name=d["name"], image=d.get("image"),
            command=tuple(d.get("command", ())), args=tuple(d.get("args", ())),
            env=dict(d.get("env", {})),
            ports=tuple(PortMapping(**p) for p in d.get("ports", ())),
            cpu=d.get("cpu"), memory=d.get("memory"), pids=d.get("pids"),
            cpu_time=d.get("cpu_time"), nofile=d.get("nofile"),
            volumes=tuple(VolumeMount(**v) for v in d.get("volumes", ())),
            working_dir=d.get("working_dir"), labels=dict(d.get("labels", {})),
            health=None if health is None else HealthCheck(
                **{**health, "kind": HealthKind(health["kind"]),
                   "command": tuple(health.get("command", ()))}),
            stop_timeout=d.get("stop_timeout", 10.0), workload=d.get("workload", ""),
            replica=d.get("replica", 0), fencing_token=d.get("fencing_token", 0),
            run_as_root=d.get("run_as_root", False) is True)
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkloadRuntimeError(ErrorCode.BACKEND, f"stored spec unreadable: {exc}") from exc


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN


def spec_problems(spec: ContainerSpec, *, needs_image: bool) -> list[str]:
    """Every reason ``spec`` cannot run (empty list = fine). Pure: touches nothing."""
    p: list[str] = []
    if not isinstance(spec.name, str) or not NAME_RE.match(spec.name):
        p.append(f"name {spec.name!r} must match {NAME_RE.pattern}")
    if needs_image:
        if not spec.image or not isinstance(spec.image, str) or any(
                c.isspace() for c in spec.image):
            p.append("image is required (a local image reference)")
    elif spec.image is not None:
        p.append("this runtime runs host commands: image must be None")
    if not needs_image and not spec.command:
        p.append("command is required (no image supplies one)")
    argv = (*spec.command, *spec.args)
    if len(argv) > MAX_ARGS or not all(isinstance(a, str) and "\0" not in a for a in argv):
        p.append("command/args must be at most 4096 strings without NUL bytes")
    env_bytes = 0
    for k, v in spec.env.items():
        if not isinstance(k, str) or not ENV_KEY_RE.match(k):
            p.append(f"env name {k!r} is not a valid variable name")
        if not isinstance(v, str) or "\0" in v:
            p.append(f"env {k!r} must be a string without NUL bytes")
        else:
            env_bytes += len(k) + len(v) + 2
    if env_bytes > MAX_ENV_BYTES:
        p.append(f"environment is {env_bytes} bytes (max {MAX_ENV_BYTES})")
    seen_host: set[tuple[str, int, str]] = set()
    seen_ctr: set[tuple[int, str]] = set()
    for m in spec.ports:
        for label, port in (("container_port", m.container_port), ("host_port", m.host_port)):
            if not _is_int(port) or not 1 <= port <= 65535:
                p.append(f"{label} {port!r} must be an integer in 1..65535")
        if m.protocol not in ("tcp", "udp"):
            p.append(f"port protocol {m.protocol!r} must be tcp or udp")
        try:
            ipaddress.ip_address(m.host_ip)
        except (ValueError, TypeError):
            p.append(f"host_ip {m.host_ip!r} is not an IP address")
        key = (m.host_ip, m.host_port, m.protocol)
        if key in seen_host:
            p.append(f"host port {m.host_ip}:{m.host_port}/{m.protocol} published twice")
        seen_host.add(key)
        if (m.container_port, m.protocol) in seen_ctr:
            p.append(f"container port {m.container_port}/{m.protocol} mapped twice")
        seen_ctr.add((m.container_port, m.protocol))
    if spec.cpu is not None and (not _is_num(spec.cpu) or not 0.01 <= spec.cpu <= MAX_CPU):
        p.append(f"cpu {spec.cpu!r} must be between 0.01 and {MAX_CPU:g} cores")
    if spec.memory is not None and (
            not _is_int(spec.memory) or not MIN_MEMORY <= spec.memory <= MAX_MEMORY):
        p.append(f"memory {spec.memory!r} must be bytes between {MIN_MEMORY} and {MAX_MEMORY}")
    for label, val, lo in (("pids", spec.pids, 1), ("cpu_time", spec.cpu_time, 1),
                           ("nofile", spec.nofile, 16)):
        if val is not None and (not _is_int(val) or not lo <= val <= 1 << 31):
            p.append(f"{label} {val!r} must be an integer >= {lo}")
    seen_vol: set[str] = set()
    for v in spec.volumes:
        if not isinstance(v.name, str) or not NAME_RE.match(v.name):
            p.append(f"volume name {v.name!r} must match {NAME_RE.pattern}")
        if not _clean_abs_path(v.path):
            p.append(f"volume path {v.path!r} must be absolute, without '..'")
        if v.path in seen_vol:
            p.append(f"volume path {v.path!r} mounted twice")
        seen_vol.add(v.path)
    if spec.working_dir is not None and not _clean_abs_path(spec.working_dir):
        p.append(f"working_dir {spec.working_dir!r} must be absolute, without '..'")
    for k, v in spec.labels.items():
        if not isinstance(k, str) or not LABEL_KEY_RE.match(k) or not isinstance(v, str):
            p.append(f"label {k!r} must be a short key with a string value")
        elif k.startswith(RESERVED_LABEL_PREFIX):
            p.append(f"label {k!r}: the {RESERVED_LABEL_PREFIX}* labels are the runtime's")
    if spec.health is not None:
        p.extend(_health_problems(spec))
    if not _is_num(spec.stop_timeout) or not 0 <= spec.stop_timeout <= 3600:
        p.append(f"stop_timeout {spec.stop_timeout!r} must be 0..3600 seconds")
    if not isinstance(spec.workload, str) or len(spec.workload) > 128:
        p.append("workload must be a string of at most 128 characters")
    if not _is_int(spec.replica) or spec.replica < 0:
        p.append(f"replica {spec.replica!r} must be an integer >= 0")
    if not _is_int(spec.fencing_token) or spec.fencing_token < 0:
        p.append(f"fencing_token {spec.fencing_token!r} must be an integer >= 0")
    if not isinstance(spec.run_as_root, bool):
        p.append("run_as_root is true or false")
    return p


def _health_problems(spec: ContainerSpec) -> list[str]:
    h = spec.health
    assert h is not None
    p: list[str] = []
    if h.kind is HealthKind.COMMAND:
        if not h.command or not all(isinstance(a, str) for a in h.command):
            p.append("health check of kind command needs a command")
    elif h.port is None or h.port not in {m.container_port for m in spec.ports}:
        p.append(f"health check port {h.port!r} must be one of the spec's container ports")
    if h.kind is HealthKind.HTTP and (not isinstance(h.path, str) or not h.path.startswith("/")
                                      or any(c.isspace() for c in h.path)):
        p.append(f"health check path {h.path!r} must start with '/' and have no spaces")
    for label, val, lo in (("interval", h.interval, 0.05), ("timeout", h.timeout, 0.01),
                           ("start_period", h.start_period, 0.0)):
        if not _is_num(val) or not lo <= val <= 86400:
            p.append(f"health check {label} {val!r} must be {lo}..86400 seconds")
    if not _is_int(h.retries) or not 1 <= h.retries <= 1000:
        p.append(f"health check retries {h.retries!r} must be 1..1000")
    return p


def _clean_abs_path(path: object) -> bool:
    return (isinstance(path, str) and path.startswith("/") and "\0" not in path
            and ".." not in path.split("/"))


def injected_env(spec: ContainerSpec, node_id: str) -> dict[str, str]:
    """Variables every replica gets, before the spec's own (which may override them)."""
    env = {
        "MESHCLOUD_NODE": node_id,
        "MESHCLOUD_WORKLOAD": spec.workload or spec.name,
        "MESHCLOUD_REPLICA": str(spec.replica),
        "MESHCLOUD_NAME": spec.name,
    }
    return env
