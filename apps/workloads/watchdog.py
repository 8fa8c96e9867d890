"""The singleton watchdog: stops a singleton whose agent can no longer stop it.

A singleton's safety rests on its holder stopping it before its lease runs out. An agent
that is killed (``kill -9``, OOM killer) or frozen (SIGSTOP, a laptop lid closing on a
busy process) renews nothing and stops nothing, while its container or process runs on —
and after the lease expires at the granters another node starts the singleton.

So the agent hands each running singleton's deadline to a small separate process, one per
node, started in its own session (a signal to the agent's process group does not reach
it): the agent rewrites ``DATA_DIR/workloads/leases.json`` whenever a lease is renewed,
with, per replica, the ``CLOCK_MONOTONIC`` instant by which it must be stopped (its lease
end minus :data:`WATCHDOG_MARGIN`, after the agent's own stop, so a live agent always acts
first). Every :data:`POLL_INTERVAL` the watchdog stops what is overdue — podman through
the node's own store (``podman stop --time 1``), a process replica by signalling its
recorded process group (only if its pid still has the recorded start time) — and drops
the entry. It exits once nothing is left to watch (the agent starts it again when it runs
a singleton) or when the file is gone.

Run by the workload service (:func:`ensure_watchdog`); by hand:
``python -m apps.workloads.watchdog --data-dir DATA_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshcloud import priority

log = logging.getLogger("meshcloud.watchdog")

POLL_INTERVAL = 0.2
"""Seconds between checks (a singleton's stop budget is 2 s)."""
WATCHDOG_MARGIN = 1.0
"""Seconds before the holder's lease end at which the watchdog stops a singleton: the
agent's own stop comes at 2 s; this is the backstop, still 1 s before the end."""
STOP_GRACE = 1
"""Seconds of SIGTERM before SIGKILL, as the agent's own singleton stop."""


def leases_path(data_dir: Path) -> Path:
    return Path(data_dir) / "workloads" / "leases.json"


@dataclass(frozen=True, slots=True)
class Watched:
    """One running singleton replica as the watchdog sees it (monotonic seconds)."""

    runtime: str
    workload: str
    term: int
    lease_end: float
    """When the holder's lease ends (CLOCK_MONOTONIC): a restarted agent resumes it."""

    @property
    def deadline(self) -> float:
        return self.lease_end - WATCHDOG_MARGIN


def write_watched(data_dir: Path, agent_pid: int, watched: dict[str, Watched]) -> None:
    """Replace the watch list (replica name → entry). Atomic."""
    path = leases_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"agent_pid": agent_pid,
            "replicas": {name: {**asdict(w), "deadline": round(w.deadline, 3)}
                         for name, w in sorted(watched.items())}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def read_watched(data_dir: Path) -> dict[str, Watched]:
    body = _read(leases_path(data_dir)) or {}
    out = {}
    for name, entry in (body.get("replicas") or {}).items():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out[str(name)] = Watched(runtime=str(entry["runtime"]),
                                     workload=str(entry["workload"]),
                                     term=int(entry["term"]),
                                     lease_end=float(entry["lease_end"]))
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def stop_replica(data_dir: Path, name: str, runtime: str) -> None:
    if runtime == "podman":
        from apps.runtimes.config import PodmanConfig
        from apps.runtimes.podman_service import PodmanService

        service = PodmanService(PodmanConfig(data_dir=data_dir, node_id="watchdog"))
        priority.run([*service.cli_args(), "stop", "--time", str(STOP_GRACE),
                        f"meshcloud-{name}"], env=service.env(), capture_output=True,
                       timeout=30, check=False)
    elif runtime == "process":
        from apps.runtimes import pidfile
        from apps.runtimes.process_state import ReplicaRecord

        rdir = Path(data_dir) / "runtimes" / "process" / name
        with contextlib.suppress(Exception):
            record = ReplicaRecord.load(rdir)
            if record.pid > 0 and pidfile.is_alive(record.ident):
                os.killpg(record.pid, signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE
                while time.monotonic() < deadline and pidfile.is_alive(record.ident):
                    time.sleep(0.05)
                if pidfile.is_alive(record.ident):
                    os.killpg(record.pid, signal.SIGKILL)
    log.warning("stopped singleton %s: its agent did not renew the lease", name)


def watch(data_dir: Path) -> int:
    path = leases_path(data_dir)
    stopped: set[str] = set()
    while True:
        body = _read(path)
        if body is None:
            return 0  # the agent removed the file: nothing to watch
        replicas = body.get("replicas") or {}
        now = time.monotonic()
        for name, entry in replicas.items():
            if name in stopped or float(entry.get("deadline", 0)) > now:
                continue
            stop_replica(data_dir, name, str(entry.get("runtime", "")))
            stopped.add(name)
        stopped &= set(replicas)  # a renewed entry (new agent, new lease) is watched again
        stopped = {n for n in stopped if float(replicas[n].get("deadline", 0)) <= now}
        if all(n in stopped for n in replicas):
            return 0  # nothing left to watch: a live agent starts a new one when needed
        time.sleep(POLL_INTERVAL)


_children: list[subprocess.Popen[bytes]] = []


def ensure_watchdog(data_dir: Path) -> int | None:
    """Start the node's watchdog unless one runs (``workloads/watchdog.pid``); its pid."""
    from apps.runtimes import pidfile

    _children[:] = [c for c in _children if c.poll() is None]  # reap ended ones

    pid_path = Path(data_dir) / "workloads" / "watchdog.pid"
    with contextlib.suppress(OSError, ValueError):
        pid_text, ticks_text = pid_path.read_text().split()
        ident = pidfile.ProcessIdentity(int(pid_text), int(ticks_text) or None)
        if pidfile.is_alive(ident):
            return ident.pid
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    logf = os.open(Path(data_dir) / "workloads" / "watchdog.log",
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        proc = priority.popen(
            [sys.executable, "-m", "apps.workloads.watchdog", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    finally:
        os.close(logf)
    _children.append(proc)
    pid_path.write_text(f"{proc.pid} {pidfile.start_ticks(proc.pid) or 0}")
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.workloads.watchdog",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return watch(Path(args.data_dir))


if __name__ == "__main__":
    sys.exit(main())
