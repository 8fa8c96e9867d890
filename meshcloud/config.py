"""Node configuration: one dataclass, documented defaults, loaded from ``config.toml``.

Every setting has a default that suits a home LAN, so a node needs no file at all. A
file in the data dir (``config.toml``) or a command-line flag overrides it. Unknown keys,
wrong types and impossible values are refused with one message naming the key and line.

Example ``config.toml``::

    listen = ["0.0.0.0:7946"]
    api = "127.0.0.1:7947"
    labels = { room = "attic", gpu = "no" }
    profile = "lan"          # lan | wan | local | phone
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcloud.errors import ConfigError

PROFILES = ("lan", "wan", "local", "phone")

PHONE_QUOTA = 2 << 30
"""Shard store limit of the ``phone`` profile when ``storage_quota`` is not set."""


@dataclass
class NodeConfig:
    listen: list[str] = field(default_factory=lambda: ["0.0.0.0:7946"])
    """Where peers reach this node. Peer traffic is always authenticated and encrypted, so
    listening on every interface is safe; other machines of the mesh need to reach it."""

    advertise: list[str] = field(default_factory=list)
    """Addresses to tell peers (default: the listen addresses, with 0.0.0.0 replaced by this
    machine's own addresses)."""

    api: str = "127.0.0.1:7947"
    """The local HTTP API and web UI. Loopback by default: only this machine may use it,
    and even then only with the token in the data dir."""

    s3: str = "127.0.0.1:7948"
    """The S3-compatible API of this node (SigV4 keys, see `meshcloud s3 key create`)."""

    ingress: str = "127.0.0.1:7080"
    """The HTTP ingress of this node (``HOST:PORT``; ``mesh:PORT`` for the host of its
    mesh address; ``off``). Loopback by default: ``0.0.0.0:80`` is an explicit choice."""

    ingress_tls: str = "off"
    """The HTTPS ingress (``HOST:PORT`` as ``ingress``; off by default). Certificates:
    ``DATA_DIR/ingress/certs/HOST.pem`` (chain and key), chosen by SNI, reloaded on change."""

    ingress_redirect: bool = False
    """Plain-HTTP requests for a host that has a certificate get a 308 to HTTPS."""

    labels: dict[str, str] = field(default_factory=dict)
    """Free-form labels for placement constraints (e.g. room = "attic")."""

    profile: str = "lan"
    """Timing preset of gossip and transport: lan (default), wan, local (tests), phone."""

    metered: bool = False
    """This node is on a metered network: placement avoids giving it bulk work."""

    battery_threshold: int = 30
    """Battery percentage under which this node, when not charging, takes no new work and
    hands its replicas and shards off (like ``drain``) until it charges (0: never)."""

    storage_quota: str = ""
    """Most bytes of shards this node keeps (``"2g"``; empty: the disk's free space). The
    ``phone`` profile defaults to 2 GiB."""

    log_level: str = "info"

    max_connections: int = 64
    """Peer connections kept open; beyond, idle ones are closed (least recently used
    first) and dialled again when needed. Memory and idle traffic grow with it."""

    loop_priority: int = 5
    """Nice steps the agent's event-loop thread runs above the agent's own priority, when
    the agent may raise it (root, CAP_SYS_NICE, RLIMIT_NICE); 0 turns it off. Nothing else
    of the agent (worker threads, processes) runs raised. ``MESHCLOUD_LOOP_PRIORITY``
    overrides it."""

    loop_scheduler: str = "fair"
    """``fair`` (the default): the event loop gets the ``loop_priority`` nice boost;
    ``rr``: it runs real-time (SCHED_RR 2, when permitted; else the nice boost), ahead of
    every ordinary thread of the machine, and bulk items' Python one step below it; it goes
    back to the ordinary scheduler for good if it ever runs a second of CPU without
    sleeping, and for a while if it uses more than half a core over 10 s
    (:mod:`meshcloud.rtguard`). Not the default: a real-time loop doubled the ingress's
    CPU per proxied request (docs/benchmarks.md, "loop priority, part 2").
    ``MESHCLOUD_LOOP_SCHEDULER`` overrides it."""

    def __post_init__(self) -> None:
        if not 0 <= self.loop_priority <= 20:
            raise ConfigError("loop_priority: a whole number from 0 to 20")
        if self.loop_scheduler not in ("fair", "rr"):
            raise ConfigError(f"loop_scheduler: {self.loop_scheduler!r} is not fair or rr")
        if self.max_connections < 1:
            raise ConfigError("max_connections: must be at least 1")
        if self.profile not in PROFILES:
            raise ConfigError(f"profile: {self.profile!r} is not one of {', '.join(PROFILES)}")
        for address in [*self.listen, *self.advertise, self.api, self.s3]:
            parse_host_port(address)
        for address in (self.ingress, self.ingress_tls):
            if address != "off":
                parse_host_port(address)
        if not self.listen:
            raise ConfigError("listen: at least one address is needed")
        if not 0 <= self.battery_threshold <= 100:
            raise ConfigError("battery_threshold: a percentage from 0 to 100")
        if self.storage_quota:
            parse_size(self.storage_quota)
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: {self.log_level!r} is not debug/info/warning/error")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError("labels: keys and values must be strings")

    def quota_bytes(self) -> int:
        """The shard store's limit in bytes (0: none but the disk)."""
        if self.storage_quota:
            return parse_size(self.storage_quota)
        return PHONE_QUOTA if self.profile == "phone" else 0

    def with_overrides(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"512m"``, ``"2g"``, ``"1.5GiB"`` → bytes; raises ConfigError."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    number, unit = (raw[:-1], raw[-1]) if raw[-1:].isalpha() else (raw, "")
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError(f"storage_quota: {text!r} is not a size like 512m or 2g") from None
    if not 0 < value < 1 << 60:
        raise ConfigError(f"storage_quota: {text!r} is out of range")
    return int(value)


def parse_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port); raises ConfigError."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{address!r} is not host:port")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{address!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{address!r}: port {port} is out of range")
    if not host.replace("-", "").replace(".", "").isalnum():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{address!r}: {host!r} is not a host name or address") from None
    return host, port


def _line_of(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith(key):
            return number
    return None


def load_config(path: Path) -> NodeConfig:
    """The config in ``path``, or the defaults if there is no file."""
    if not path.exists():
        return NodeConfig()
    text = path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    known = {f.name: f for f in dataclasses.fields(NodeConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}:{_line_of(text, key) or '?'}"
        if key not in known:
            close = [k for k in known if k[:3] == key[:3]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown setting {key!r}{hint}")
        default = getattr(NodeConfig(), key)
        if isinstance(default, list) and isinstance(value, str):
            value = [value]
        if type(value) is not type(default):
            raise ConfigError(
                f"{where}: {key} should be a {type(default).__name__}, "
                f"not {type(value).__name__}"
            )
        values[key] = value
    try:
        return NodeConfig(**values)
    except ConfigError as exc:
        key = str(exc).split(":")[0]
        raise ConfigError(f"{path}:{_line_of(text, key) or '?'}: {exc}") from None
