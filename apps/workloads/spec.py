"""WorkloadSpec: what the user asks to run, parsed from CLI flags, JSON or a TOML file.

A spec describes a workload of kind ``service`` (a long-running container or process
replicated on distinct nodes). It is plain data; :func:`spec_problems` is pure and names
*every* problem at once, so a refused spec is reported in one go and nothing is written
to the cluster state (the mesh-wide checks — image present somewhere, constraints
satisfiable — are in :mod:`apps.workloads.admission`).

Accepted forms (the same keys everywhere; sizes as ``"256m"``, ``"1GiB"`` or bytes)::

    name = "web"
    image = "localhost/meshcloud/web:1"      # podman; or command = [...] for a process
    command = ["/bin/meshcloud-web"]         # optional with an image (replaces its CMD)
    args = []
    replicas = 2
    singleton = false                        # true: at most one copy, under a lease
    cpu = 0.5                                # cores
    memory = "128m"
    env = { GREETING = "hello" }
    ports = ["8080:8080"]                    # [IP:]HOST:CONTAINER[/udp], or tables
    volumes = ["data:/data"]                 # NAME:PATH[:ro], or tables
    stop_timeout = 10
    publish = ["http"]                       # named endpoints for the ingress: NAME,
                                             # NAME=CONTAINER_PORT or a port number
    domains = ["shop.home"]                  # HTTP ingress: Host names routed to the
                                             # first published endpoint

    [health]                                 # kind = http | tcp | command
    kind = "http"
    port = 8080
    path = "/"

    [constraints]
    runtime = "podman"                       # default: podman with an image, else process
    arch = ["x86_64", "aarch64"]
    labels = { room = "attic" }
    min_ram = "1g"
    min_cpus = 2
    avoid_battery = true
    avoid_metered = false                    # default true with heavy
    heavy = false                            # databases, Spark, builds: never on a
                                             # battery or metered node (avoid_* = false
                                             # to allow one)

The spec travels in the ``workloads`` table as :meth:`WorkloadSpec.to_dict` (canonical,
CBOR-friendly), and each replica becomes a :class:`~apps.runtimes.spec.ContainerSpec`
(:meth:`WorkloadSpec.container_spec`).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from apps.runtimes.spec import (
    ContainerSpec,
    HealthCheck,
    HealthKind,
    PortMapping,
    VolumeMount,
)
from apps.runtimes.spec import (
    spec_problems as container_problems,
)
from apps.workloads.errors import SpecError
from meshcloud.placement import Constraints

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
"""Workload names: a DNS label of at most 40 characters, so ``NAME-INDEX`` is a valid
replica (container) name and a host name."""

KINDS = ("service",)
"""Kinds this module runs; functions, sites, databases and spark come later."""
RUNTIMES = ("podman", "process")
MAX_REPLICAS = 64
"""Each replica needs its own node; 64 is more machines than a home mesh has."""
MAX_SPEC_BYTES = 64 * 1024
"""The whole spec as stored (the table's rows must stay small: every node holds them)."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20,
               "mib": 1 << 20, "mb": 1000**2, "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3,
               "t": 1 << 40, "tib": 1 << 40, "tb": 1000**4}

TOP_KEYS = ("name", "kind", "image", "command", "args", "replicas", "singleton", "cpu",
            "memory", "env", "ports", "volumes", "health", "constraints", "stop_timeout",
            "publish", "domains", "route_timeout")
ROOT_KEYS = ("run_as_root", "privileged")
"""Keys a user might try for root; refused with a pointer to the policy."""
CONSTRAINT_KEYS = ("runtime", "arch", "labels", "min_ram", "min_cpus", "avoid_battery",
                   "avoid_metered", "heavy")
ENDPOINT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
"""Endpoint names (``web:http``, ``db:5432``): a short DNS label."""
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
                       r"(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")
ROUTE_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@-]+)*/?$")
"""The path prefix of a domain (``shop.home/api``): plain segments, no dot segments."""
HEALTH_KEYS = ("kind", "command", "port", "path", "interval", "timeout", "retries",
               "start_period")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConstraints:
    """Where replicas may run (hard) and where they would rather not (soft)."""

    runtime: str | None = None
    """None: chosen from the spec (podman for an image, process for a command)."""
    arch: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    min_ram: int = 0
    """Bytes of RAM the node must have in total."""
    min_cpus: float = 0.0
    avoid_battery: bool = True
    avoid_metered: bool = False
    heavy: bool = False
    """Heavy work: the ``avoid_*`` preferences become hard filters."""

    def to_dict(self) -> dict[str, Any]:
        out = {"runtime": self.runtime, "arch": list(self.arch),
               "labels": dict(self.labels), "min_ram": self.min_ram,
               "min_cpus": self.min_cpus, "avoid_battery": self.avoid_battery,
               "avoid_metered": self.avoid_metered}
        if self.heavy:  # absent when false: specs stored before the flag stay the same
            out["heavy"] = True
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSpec:
    """A service workload: ``replicas`` copies of one container, on distinct nodes."""

    name: str
    kind: str = "service"
    image: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    replicas: int = 1
    singleton: bool = False
    cpu: float | None = None
    memory: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortMapping, ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    health: HealthCheck | None = None
    stop_timeout: float = 10.0
    constraints: WorkloadConstraints = field(default_factory=WorkloadConstraints)
    publish: tuple[tuple[str, int], ...] = ()
    """Named endpoints ``(name, container port)`` (0: the process listens on ``$PORT``).
    Each replica's node picks an ephemeral host port per endpoint (the ingress forwards to
    it), so replicas never collide on a host port."""
    domains: tuple[str, ...] = ()
    """Host names (``shop.home`` or ``shop.home/api``, a path prefix) the HTTP ingress
    routes to the first published endpoint."""
    route_timeout: float = 0.0
    """Seconds a replica may take to start answering an HTTP request (0: 60 s)."""
    run_as_root: bool = False
    """Never read from what a user gives nor stored (not a key of :meth:`to_dict`): the
    reconciler of the node starting a replica sets it when the mesh's signed policy
    allows root for this workload (:mod:`apps.workloads.policy`)."""

    @property
    def runtime(self) -> str:
        """The runtime replicas need: the constraint, else podman for an image."""
        if self.constraints.runtime:
            return self.constraints.runtime
        return "podman" if self.image else "process"

    def validate(self) -> None:
        problems = spec_problems(self)
        if problems:
            raise SpecError(self.name if isinstance(self.name, str) else "", problems)

    def container_spec(self, index: int, fencing: int,
                       endpoint_port: Callable[[str, int, str], int] | None = None
                       ) -> ContainerSpec:
        """Replica ``index`` as the runtime runs it (``fencing`` in its labels).

        ``endpoint_port(workload, index, endpoint)`` is the node's host port for each
        published endpoint; those mappings come first, so ``$PORT`` is the first one."""
        ports = self.ports
        if endpoint_port is not None and self.publish:
            chosen = []
            for endpoint, container_port in self.publish:
                host_port = endpoint_port(self.name, index, endpoint)
                chosen.append(PortMapping(container_port=container_port or host_port,
                                          host_port=host_port))
            ports = tuple(chosen) + self.ports
        return ContainerSpec(
            name=replica_name(self.name, index), image=self.image, command=self.command,
            args=self.args, env=dict(self.env), ports=ports, cpu=self.cpu,
            memory=self.memory, volumes=self.volumes, health=self.health,
            stop_timeout=self.stop_timeout, workload=self.name, replica=index,
            fencing_token=fencing, run_as_root=self.run_as_root)

    def placement_constraints(self) -> Constraints:
        c = self.constraints
        return Constraints(runtime=self.runtime, arch=frozenset(c.arch), labels=c.labels,
                           min_ram_mb=-(-c.min_ram // (1 << 20)), min_cpus=c.min_cpus,
                           avoid_battery=c.avoid_battery, avoid_metered=c.avoid_metered,
                           heavy=c.heavy)

    def runtime_hash(self) -> str:
        """What replicas *are* (placement fields and replica count excluded): a change
        bumps the workload's generation and restarts its replicas."""
        return self.container_spec(0, 0, lambda *_: 0).spec_hash()

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form (JSON and CBOR friendly), as stored in ``workloads``."""
        extra: dict[str, Any] = {}
        if self.publish:
            extra["publish"] = [endpoint_text(n, p) for n, p in self.publish]
        if self.domains:
            extra["domains"] = list(self.domains)
        if self.route_timeout:
            extra["route_timeout"] = self.route_timeout
        return extra | {
            "name": self.name, "kind": self.kind, "image": self.image,
            "command": list(self.command), "args": list(self.args),
            "replicas": self.replicas, "singleton": self.singleton, "cpu": self.cpu,
            "memory": self.memory, "env": dict(self.env),
            "ports": [{"host_ip": p.host_ip, "host_port": p.host_port,
                       "container_port": p.container_port, "protocol": p.protocol}
                      for p in self.ports],
            "volumes": [{"name": v.name, "path": v.path, "read_only": v.read_only}
                        for v in self.volumes],
            "health": None if self.health is None else _health_dict(self.health),
            "stop_timeout": self.stop_timeout,
            "constraints": self.constraints.to_dict(),
        }

    def with_replicas(self, replicas: int) -> WorkloadSpec:
        return replace(self, replicas=replicas)


def endpoint_text(name: str, container_port: int) -> str:
    return name if not container_port or name == str(container_port) else \
        f"{name}={container_port}"


def parse_endpoint(text: str) -> tuple[str, int]:
    """``http`` → (http, 0); ``5432`` → (5432, 5432); ``http=8080`` → (http, 8080)."""
    name, sep, port_text = text.partition("=")
    port = 0
    if sep:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"publish {text!r}: container port must be 1-65535")
        port = int(port_text)
    elif name.isdigit():
        port = int(name)
        if not 1 <= port <= 65535:
            raise ValueError(f"publish {text!r}: port must be 1-65535")
    if not ENDPOINT_RE.match(name):
        raise ValueError(f"publish {text!r}: endpoint name must be 1-32 lowercase letters, "
                         "digits or '-'")
    return name, port


def replica_name(workload: str, index: int) -> str:
    return f"{workload}-{index}"


def _health_dict(h: HealthCheck) -> dict[str, Any]:
    return {"kind": h.kind.value, "command": list(h.command), "port": h.port, "path": h.path,
            "interval": h.interval, "timeout": h.timeout, "retries": h.retries,
            "start_period": h.start_period}


# --- problems ------------------------------------------------------------------------------


def spec_problems(spec: WorkloadSpec) -> list[str]:
    """Every reason ``spec`` cannot be accepted (empty = fine). Pure."""
    p: list[str] = []
    name_ok = isinstance(spec.name, str) and bool(NAME_RE.match(spec.name))
    if not name_ok:
        p.append(f"name {spec.name!r} must be 1-40 lowercase letters, digits or '-', "
                 "starting and ending with a letter or digit")
    if spec.kind not in KINDS:
        p.append(f"kind {spec.kind!r} is not supported (supported: {', '.join(KINDS)})")
    if not _is_int(spec.replicas) or not 1 <= spec.replicas <= MAX_REPLICAS:
        p.append(f"replicas {spec.replicas!r} must be an integer from 1 to {MAX_REPLICAS}")
    if spec.singleton and spec.replicas != 1:
        p.append("a singleton has exactly one replica (replicas = 1)")
    c = spec.constraints
    runtime = c.runtime
    if runtime is not None and runtime not in RUNTIMES:
        p.append(f"constraint runtime {runtime!r} must be one of {', '.join(RUNTIMES)}")
        runtime = None
    if spec.image is None and not spec.command:
        p.append("give an image (run by podman) or a command (run as a host process)")
    if runtime == "process" and spec.image is not None:
        p.append("the process runtime runs host commands: drop the image or use podman")
    if runtime == "podman" and spec.image is None:
        p.append("the podman runtime needs an image")
    for arch in c.arch:
        if not isinstance(arch, str) or not arch or len(arch) > 32:
            p.append(f"constraint arch {arch!r} must be a short name like x86_64")
    for key, value in c.labels:
        if not isinstance(key, str) or not key or not isinstance(value, str):
            p.append(f"constraint label {key!r} must be a non-empty key with a string value")
    if not _is_int(c.min_ram) or c.min_ram < 0:
        p.append(f"constraint min_ram {c.min_ram!r} must be bytes >= 0")
    if not _is_num(c.min_cpus) or not 0 <= c.min_cpus <= 1024:
        p.append(f"constraint min_cpus {c.min_cpus!r} must be between 0 and 1024")
    if not all(isinstance(x, bool) for x in (c.avoid_battery, c.avoid_metered, c.heavy)):
        p.append("constraints avoid_battery, avoid_metered and heavy are true or false")
    if not isinstance(spec.singleton, bool):
        p.append("singleton is true or false")
    names = [n for n, _ in spec.publish]
    if len(set(names)) != len(names):
        p.append("publish names each endpoint once")
    if spec.image is not None and any(port == 0 for _, port in spec.publish):
        p.append("a container's endpoint needs its port (publish NAME=PORT or PORT)")
    for domain in spec.domains:
        host, _, prefix = domain.partition("/") if isinstance(domain, str) else ("", "", "")
        if not DOMAIN_RE.match(host):
            p.append(f"domain {domain!r} is not a lowercase host name")
        elif prefix and (not ROUTE_PREFIX_RE.match("/" + prefix)
                         or any(s in (".", "..") for s in prefix.split("/"))):
            p.append(f"domain {domain!r}: the path prefix must be plain /segments")
    if not 0 <= spec.route_timeout <= 3600:
        p.append("route_timeout must be 0 to 3600 seconds")
    if spec.domains and not spec.publish:
        p.append("a domain routes to a published endpoint: add publish")
    # everything a runtime would check, on replica 0 (names checked above)
    probe = replace(spec, name="x" if not name_ok else spec.name)
    try:
        container = probe.container_spec(0, 0)
    except (TypeError, ValueError) as exc:
        p.append(f"spec unusable: {exc}")
    else:
        needs_image = (runtime or ("podman" if spec.image else "process")) == "podman"
        for problem in container_problems(container, needs_image=needs_image):
            if problem.startswith(("image is required", "this runtime runs host commands",
                                   "command is required", "name ")):
                continue  # said above, in workload terms
            p.append(problem)
    return p


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# --- parsing -------------------------------------------------------------------------------


def parse_size(value: Any, what: str) -> int:
    """Bytes from ``"256m"``, ``"1.5GiB"``, ``"100MB"`` or an integer; ValueError if not."""
    if _is_int(value):
        if value < 0:
            raise ValueError(f"{what} {value} is negative")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"{what} {value!r} is negative")
        match = _SIZE.match(text)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"{what} {value!r} is not a size like 256m, 1GiB or a number of bytes")


def parse_port(text: str) -> PortMapping:
    """``[IP:]HOST:CONTAINER[/tcp|udp]`` or ``PORT`` (same on both sides). The host IP
    defaults to 127.0.0.1: publishing to the network is a choice (``0.0.0.0:80:8080``)."""
    body, _, protocol = text.partition("/")
    parts = body.rsplit(":", 2)
    host_ip = "127.0.0.1"
    if len(parts) == 3:
        host_ip = parts[0].strip("[]")
        parts = parts[1:]
    try:
        host_port = int(parts[0])
        container_port = int(parts[-1])
    except ValueError:
        raise ValueError(f"port {text!r} is not [IP:]HOST:CONTAINER[/udp]") from None
    return PortMapping(container_port=container_port, host_port=host_port, host_ip=host_ip,
                       protocol=protocol or "tcp")


def parse_volume(text: str) -> VolumeMount:
    """``NAME:/path[:ro]``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"volume {text!r} is not NAME:/PATH[:ro]")
    return VolumeMount(name=parts[0], path=parts[1], read_only=len(parts) == 3 and
                       parts[2] == "ro")


def parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"env {text!r} is not KEY=VALUE")
    return key, value


class _Reader:
    """Reads typed fields out of a mapping, collecting one problem per bad field."""

    def __init__(self, data: Mapping[str, Any], where: str, known: tuple[str, ...],
                 problems: list[str]) -> None:
        self.data = data
        self.where = where
        self.problems = problems
        for key in data:
            if key not in known:
                import difflib  # here: only a spec with an unknown key needs it

                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problems.append(f"unknown {where}key {key!r}{hint}")

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
        if float in kinds_t and _is_int(value):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds_t:
            ok = False
        else:
            ok = isinstance(value, kinds_t)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds_t)
            self.problems.append(f"{self.where}{key} must be {names}, "
                                 f"not {type(value).__name__}")
            return default
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, (list, tuple, str), ())
        if isinstance(value, str):
            return (value,)
        if not all(isinstance(v, str) for v in value):
            self.problems.append(f"{self.where}{key} must be a list of strings")
            return ()
        return tuple(value)

    def size(self, key: str) -> int | None:
        if key not in self.data or self.data[key] is None:
            return None
        try:
            return parse_size(self.data[key], f"{self.where}{key}")
        except ValueError as exc:
            self.problems.append(str(exc))
            return None

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.get(key, dict, {})
        return dict(value)


def spec_from_dict(data: Mapping[str, Any]) -> tuple[WorkloadSpec | None, list[str]]:
    """Parse a spec; returns (spec, problems). With problems the spec may be None."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        return None, ["a workload spec is a table of keys"]
    r = _Reader({k: v for k, v in data.items() if k not in ROOT_KEYS}, "", TOP_KEYS, problems)
    if any(k in data for k in ROOT_KEYS):
        problems.append("a spec cannot ask to run as root: the mesh admin allows it per "
                        "workload with `meshcloud policy allow-root NAME`")
    name = r.get("name", str, "")
    if not name:
        problems.append("name is required")
    env_raw = r.mapping("env")
    env: dict[str, str] = {}
    for key, value in env_raw.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(f"env {key} must be a string")
            continue
        env[str(key)] = value if isinstance(value, str) else str(value)
    ports: list[PortMapping] = []
    for item in r.get("ports", (list, tuple), ()):
        try:
            ports.append(_port_item(item))
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    volumes: list[VolumeMount] = []
    for item in r.get("volumes", (list, tuple), ()):
        try:
            volumes.append(_volume_item(item))
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    publish: list[tuple[str, int]] = []
    for item in r.strings("publish"):
        try:
            publish.append(parse_endpoint(item))
        except ValueError as exc:
            problems.append(str(exc))
    health = _health_from(r.get("health", dict, None), problems)
    constraints = _constraints_from(r.get("constraints", dict, {}), problems)
    memory = r.size("memory")
    spec = WorkloadSpec(
        name=name, kind=r.get("kind", str, "service"), image=r.get("image", str, None),
        command=r.strings("command"), args=r.strings("args"),
        replicas=r.get("replicas", int, 1), singleton=r.get("singleton", bool, False),
        cpu=r.get("cpu", float, None), memory=memory, env=env, ports=tuple(ports),
        volumes=tuple(volumes), health=health,
        stop_timeout=r.get("stop_timeout", float, 10.0), constraints=constraints,
        publish=tuple(publish), domains=r.strings("domains"),
        route_timeout=r.get("route_timeout", float, 0.0))
    if spec.image == "":
        problems.append("image must not be empty")
    return spec, problems


def _port_item(item: Any) -> PortMapping:
    if isinstance(item, str):
        return parse_port(item)
    if isinstance(item, int) and not isinstance(item, bool):
        return PortMapping(container_port=item, host_port=item)
    if isinstance(item, Mapping):
        unknown = set(item) - {"host_ip", "host_port", "container_port", "protocol",
                               "host", "container"}
        if unknown:
            raise ValueError(f"unknown port key(s) {sorted(unknown)}")
        container = item.get("container_port", item.get("container"))
        host = item.get("host_port", item.get("host", container))
        return PortMapping(container_port=container, host_port=host,
                           host_ip=item.get("host_ip", "127.0.0.1"),
                           protocol=item.get("protocol", "tcp"))
    raise ValueError(f"port {item!r} is not HOST:CONTAINER or a table")


def _volume_item(item: Any) -> VolumeMount:
    if isinstance(item, str):
        return parse_volume(item)
    if isinstance(item, Mapping):
        unknown = set(item) - {"name", "path", "read_only"}
        if unknown:
            raise ValueError(f"unknown volume key(s) {sorted(unknown)}")
        return VolumeMount(name=item.get("name", ""), path=item.get("path", ""),
                           read_only=bool(item.get("read_only", False)))
    raise ValueError(f"volume {item!r} is not NAME:/PATH or a table")


def _health_from(data: Mapping[str, Any] | None, problems: list[str]) -> HealthCheck | None:
    if data is None:
        return None
    r = _Reader(data, "health.", HEALTH_KEYS, problems)
    kind_text = r.get("kind", str, "")
    try:
        kind = HealthKind(kind_text)
    except ValueError:
        problems.append(f"health.kind {kind_text!r} must be http, tcp or command")
        return None
    return HealthCheck(kind=kind, command=r.strings("command"), port=r.get("port", int, None),
                       path=r.get("path", str, "/"), interval=r.get("interval", float, 5.0),
                       timeout=r.get("timeout", float, 2.0), retries=r.get("retries", int, 3),
                       start_period=r.get("start_period", float, 0.0))


def _constraints_from(data: Mapping[str, Any], problems: list[str]) -> WorkloadConstraints:
    r = _Reader(data, "constraints.", CONSTRAINT_KEYS, problems)
    labels = r.mapping("labels")
    pairs = []
    for key, value in sorted(labels.items()):
        if not isinstance(value, str):
            problems.append(f"constraints.labels.{key} must be a string")
            continue
        pairs.append((str(key), value))
    heavy = r.get("heavy", bool, False)
    return WorkloadConstraints(heavy=heavy,
        runtime=r.get("runtime", str, None), arch=r.strings("arch"), labels=tuple(pairs),
        min_ram=r.size("min_ram") or 0, min_cpus=r.get("min_cpus", float, 0.0),
        avoid_battery=r.get("avoid_battery", bool, True),
        avoid_metered=r.get("avoid_metered", bool, heavy))


def parse_spec(data: Mapping[str, Any]) -> WorkloadSpec:
    """A valid spec from plain data, or one :class:`SpecError` naming every problem."""
    spec, problems = spec_from_dict(data)
    if spec is not None:
        problems = problems + [p for p in spec_problems(spec) if p not in problems]
    if problems or spec is None:
        name = data.get("name") if isinstance(data, Mapping) else ""
        raise SpecError(name if isinstance(name, str) else "", problems)
    return spec


def spec_from_toml(text: str, source: str = "spec") -> WorkloadSpec:
    """Parse one workload from TOML text (see the module docstring)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError("", [f"{source}: {exc}"]) from None
    return parse_spec(data)


def spec_from_stored(data: Mapping[str, Any]) -> WorkloadSpec:
    """The spec of a ``workloads`` row (written by :meth:`WorkloadSpec.to_dict`)."""
    return parse_spec(data)
