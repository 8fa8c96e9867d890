"""Cleaning up after a stopped agent: the replicas it left running.

Containers (and their conmon), process replicas, the podman store's overlay mounts and
its run dir. Used by ``meshcloud demo`` when it stops its agents, and by tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from apps.runtimes import pidfile
from apps.runtimes.config import PodmanConfig
from apps.runtimes.podman_service import PodmanService, release_store
from apps.runtimes.process_state import ReplicaRecord
from meshcloud import priority

STOP_TIMEOUT = 15.0
"""Seconds to wait for a store's processes to end before killing them."""


def clean_workloads(data_dir: Path) -> list[str]:
    """Stop what a stopped agent's replicas left running: containers (and their conmon),
    process replicas, the store's overlay mounts and the podman run dir. Returns what it did.
    """
    done: list[str] = []
    done += _clean_processes(data_dir)
    done += _clean_podman(data_dir)
    return done


def _clean_processes(data_dir: Path) -> list[str]:
    done = []
    for state in sorted((data_dir / "runtimes" / "process").glob("*/state.json")):
        try:
            ident = ReplicaRecord.load(state.parent).ident
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not pidfile.is_alive(ident):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(ident.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(ident.pid, signal.SIGKILL)
        done.append(f"process replica {state.parent.name}")
    return done


def _clean_podman(data_dir: Path) -> list[str]:
    store = data_dir / "runtimes" / "podman"
    if not (store / "root").exists():
        return []
    service = PodmanService(PodmanConfig(data_dir=data_dir, node_id="demo"))
    done = []
    base = [*service.cli_args()]
    env = service.env()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        names = priority.run([*base, "ps", "-a", "--format", "{{.Names}}"], env=env,
                               capture_output=True, text=True, timeout=60).stdout.split()
        if names:
            priority.run([*base, "rm", "-f", "-t", "2", *names], env=env,
                           capture_output=True, timeout=120)
            done += [f"container {name}" for name in names]
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((service.dir / "service.pid").read_text().split()[0])
        if b"podman" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)
            done.append(f"podman service {pid}")
    # conmon runs `podman container cleanup` when a container ends, which recreates the run
    # dir: wait for every process of this store (they name its run dir) to finish first
    deadline = time.monotonic() + STOP_TIMEOUT
    roots = (service.run_root, service.graph_root)
    while store_processes(*roots) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in store_processes(*roots):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        done.append(f"process {pid}")
    release_store(service.graph_root)
    if service.run_root.exists():
        import shutil

        shutil.rmtree(service.run_root, ignore_errors=True)
        done.append(f"run dir {service.run_root}")
    return done


def store_processes(*roots: Path) -> list[int]:
    """Processes whose command line names one of ``roots`` (podman, conmon, clean-ups)."""
    needles = [str(root).encode() for root in roots]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if any(needle in cmdline for needle in needles):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
