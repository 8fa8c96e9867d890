"""Issue 12 §1: a real agent raises its event-loop thread, and nothing else.

One agent (root, the process runtime) runs a process workload; the kernel's own view
(``/proc/PID/task/TID/stat``, field 19: the nice value, field 41: the scheduling policy)
must show the loop thread (the main thread: trio runs there) raised — the base minus the
boost (``fair``), or SCHED_RR at the base nice (``rr``) — every other thread of the agent
ordinary at the base (or, with ``rr``, in the middle of a bulk item's Python, real-time
one step below the loop), and every process the agent started (the workload's replica, the
workloads watchdog), every thread of them, ordinary at the base. Then the same agent
started with ``MESHCLOUD_LOOP_PRIORITY=0`` leaves its loop at the base.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from meshcloud.bulk import BULK_NICENESS
from meshcloud.priority import ENV_VAR, LOOP_BOOST, SCHED_ENV_VAR
from sim.agents import Agent, LocalCluster, wait_until
from tests.workload_python import WORKLOAD_PYTHON

pytestmark = [pytest.mark.real, pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="per-thread priorities are Linux's; raising one needs root here")]

SLEEPER = f"{WORKLOAD_PYTHON} -c 'import time; time.sleep(3600)'"


def stat_fields(path: Path) -> list[str]:
    """The fields after the command name (which may hold spaces): [0] is field 3."""
    return path.read_text().rsplit(")", 1)[1].split()


SCHED_OTHER, SCHED_RR = 0, 2


def task_nices(pid: int) -> dict[int, tuple[int, int]]:
    """Per thread: (scheduling policy, nice value)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = stat_fields(task / "stat")
            out[int(task.name)] = (int(fields[38]), int(fields[16]))  # fields 41 and 19
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
    return out


def descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(stat_fields(entry / "stat")[1])  # field 4
            except (OSError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def replica_pids(agent: Agent) -> set[int]:
    from apps.runtimes.process_state import ReplicaRecord

    pids = set()
    for path in agent.data_dir.glob("runtimes/process/*/state.json"):
        try:
            record = ReplicaRecord.load(path.parent)
        except Exception:  # being written
            continue
        if record.pid and Path(f"/proc/{record.pid}").exists():
            pids.add(record.pid)
    return pids


@pytest.mark.parametrize("scheduler", ["fair", "rr"])
def test_only_the_event_loop_thread_runs_raised(tmp_path, scheduler):
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the agent inherits this thread's nice
    ordinary = (SCHED_OTHER, base)
    raised = (SCHED_OTHER, max(-20, base - LOOP_BOOST)) if scheduler == "fair" else \
        (SCHED_RR, base)
    cluster = LocalCluster(tmp_path, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process",
                                SCHED_ENV_VAR: scheduler})
    replicas: set[int] = set()
    try:
        agent = cluster.init_first()
        agent.cli("run", "sleeper", "--command", SLEEPER)
        wait_until(lambda: replica_pids(agent), 90, interval=0.2,
                   message="the workload's replica runs")
        replicas = replica_pids(agent)

        threads = task_nices(agent.pid)
        assert threads[agent.pid] == raised, threads  # trio's loop: the main thread
        others = {tid: nice for tid, nice in threads.items() if tid != agent.pid}
        assert others, "the agent runs worker threads by now (state flushes, the workload)"
        # at the base; a worker thread in the middle of a bulk item runs below it (fair),
        # or its Python real-time one step below the loop (rr: not a priority inversion
        # through the GIL)
        bulk = (SCHED_OTHER, min(19, base + BULK_NICENESS)) if scheduler == "fair" else \
            (SCHED_RR, base)
        assert set(others.values()) <= {ordinary, bulk}, others
        assert ordinary in others.values()
        children = descendants(agent.pid) | replicas
        assert replicas <= children and len(children) >= 2  # the replica and the watchdog
        for child in children:
            nices = task_nices(child) if Path(f"/proc/{child}").exists() else {}
            assert set(nices.values()) <= {ordinary}, (child, nices)
        loop = agent.get("/v1/status")["loop"]
        assert (loop["scheduler"], loop["nice"], loop["base_nice"], loop["raised"]) == \
            (scheduler, raised[1], base, True)
        log = (agent.data_dir / "logs" / "agent.log").read_text()
        assert log.count("event loop priority: event loop ") == 1

        agent.env[ENV_VAR] = "0"
        agent.stop()
        agent.start()
        assert task_nices(agent.pid)[agent.pid] == ordinary
        loop = agent.get("/v1/status")["loop"]
        assert (loop["scheduler"], loop["nice"], loop["raised"]) == ("fair", base, False)
        assert "not raised: loop_priority is 0" in loop["priority_note"]
    finally:
        cluster.close()
        for pid in replicas:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
