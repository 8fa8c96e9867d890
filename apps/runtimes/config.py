"""Runtime configuration: one dataclass per runtime, defaults with their reasons.

Both runtimes keep everything under ``data_dir`` (the node's data directory):

```
<data_dir>/volumes/<name>/            named volumes, shared by both runtimes
<data_dir>/runtimes/process/<name>/   process replicas: state.json, output.log*, work/
<data_dir>/runtimes/uids.json         workload uid slots (apps.runtimes.users)
<homes>/<name>/ <homes>/volumes/      a root agent's unprivileged replicas (apps.runtimes.homes)
<data_dir>/runtimes/podman/           root/ run (-> /run/meshcloud/<hash>) containers.conf ...
```

``phone()`` is the preset for Termux (process runtime only: smaller logs, slower polling).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from meshcloud.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessConfig:
    data_dir: Path
    node_id: str
    """Recorded in every replica's state; ``list()`` returns only this node's replicas."""
    log_max_bytes: int = 10 * 1024 * 1024
    """Rotate ``output.log`` past 10 MiB: a day of a chatty service, small on a phone."""
    log_keep: int = 3
    """Rotated files kept (``output.log.1`` .. ``.3``): 40 MiB per replica at most."""
    supervise_interval: float = 2.0
    """Seconds between checks for rotation and for adopted processes that ended."""
    poll_interval: float = 0.05
    """Seconds between liveness polls while stopping or waiting on an adopted process
    (our own children are awaited, not polled)."""
    log_poll_interval: float = 0.2
    """Seconds between reads while following logs."""
    default_nofile: int = 20000
    """RLIMIT_NOFILE when the spec gives none (the machine's hard limit is 20000)."""
    shell: str = "/bin/sh"
    """The POSIX shell that wraps each command to record its exit code (Termux: $PREFIX/bin/sh)."""
    homes: Path | None = None
    """Root of unprivileged replicas' directories and volumes, outside the data dir
    (which their users cannot enter); default ``/var/lib/meshcloud/homes/<hash>``
    (:mod:`apps.runtimes.homes`). Used only by a root agent."""

    def __post_init__(self) -> None:
        if self.log_max_bytes < 4096 or self.log_keep < 0:
            raise ConfigError("log_max_bytes must be >= 4096 and log_keep >= 0")
        if min(self.supervise_interval, self.poll_interval, self.log_poll_interval) <= 0:
            raise ConfigError("intervals must be positive")

    @property
    def root(self) -> Path:
        return Path(self.data_dir) / "runtimes" / "process"

    @property
    def homes_root(self) -> Path:
        from apps.runtimes.homes import default_homes

        return Path(self.homes) if self.homes is not None else default_homes(self.data_dir)

    def phone(self) -> ProcessConfig:
        """Termux: 2 MiB logs, two kept, slower supervision (battery)."""
        return replace(self, log_max_bytes=2 * 1024 * 1024, log_keep=2,
                       supervise_interval=10.0, log_poll_interval=1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodmanConfig:
    data_dir: Path
    node_id: str
    """Label ``meshcloud.node`` on every container; ``list()`` filters on it."""
    podman: str = "podman"
    runtime: str = "runc"
    """OCI runtime. crun is podman's default but runc is what this machine has."""
    nofile: int = 20000
    """``--ulimit nofile``: podman's default (1048576) exceeds the hard limit here."""
    nproc: int = 32768
    """``--ulimit nproc``: same reason; runc fails with 'operation not permitted' otherwise."""
    log_size_max: int = 10 * 1024 * 1024
    """conmon truncates a container's log past this (containers.conf ``log_size_max``)."""
    api_threads: int = 8
    """Concurrent podman API calls (podman-py is synchronous: each call holds a thread)."""
    service_start_timeout: float = 15.0
    """Seconds to wait for ``podman system service`` to answer its first ping."""
    supervise_interval: float = 1.0
    """Seconds between pings of the API service (restarted when it stops answering)."""
    poll_interval: float = 0.1
    """Seconds between state polls in ``wait_exit`` (podman's wait endpoint would pin a
    thread that cancellation cannot free)."""
    log_poll_interval: float = 0.2
    socket_path: Path | None = None
    """API socket; default ``/run/meshcloud/<hash of data dir>/podman.sock`` (see
    :mod:`apps.runtimes.podman_service` for why it is not under the data dir)."""

    def __post_init__(self) -> None:
        if self.nofile < 64 or self.nproc < 64:
            raise ConfigError("nofile and nproc must be >= 64")
        if self.api_threads < 1:
            raise ConfigError("api_threads must be >= 1")

    @property
    def root(self) -> Path:
        return Path(self.data_dir) / "runtimes" / "podman"


def volume_dir(data_dir: Path, name: str) -> Path:
    """Where named volume ``name`` lives (created on first use, mode 0755)."""
    return Path(data_dir) / "volumes" / name
