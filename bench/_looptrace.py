"""What an agent's event-loop thread waits for: ``python -m bench._looptrace ROOT [SECONDS]``.

Finds the ``meshcloud`` processes whose command line names a data directory under ROOT
and, for SECONDS (60), samples each one's event-loop thread (its main thread) every
~2 ms from a ``SCHED_FIFO`` thread (when permitted: root), so that the sampler is not
itself late on a loaded machine. A *blocked episode* is a run of consecutive samples in
which the loop thread sleeps in a futex (``wchan`` ``futex_*``: the GIL's condition
variable, or another lock), not in ``epoll_wait``; for each episode of ``--min-ms`` (20)
or more it snapshots every thread of the process (``/proc/PID/task/*/schedstat``: CPU
time, run-queue wait) at the episode's first and last sample and names the thread that
waited longest in the run queue meanwhile: when it is a worker thread that ran little,
the loop was waiting for the GIL held by a thread the kernel had preempted.

Prints one JSON line per episode, then a summary (JSON, last line).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PERIOD = 0.002


def agent_pids(root: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [c.decode(errors="replace") for c in cmd]
        if "meshcloud" in text and "up" in text and any(t.startswith(root) for t in text):
            pids.append(int(entry.name))
    return sorted(pids)


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def thread_state(pid: int, tid: int, policy: bool = False) -> tuple[str, str]:
    stat = read(f"/proc/{pid}/task/{tid}/stat")
    state = stat[stat.rfind(")") + 2:][:1] if stat else "?"
    if policy and stat:  # field 41: 0 ordinary, 2 SCHED_RR
        state += "/rr" if stat[stat.rfind(")") + 2:].split()[38] == "2" else ""
    return state, read(f"/proc/{pid}/task/{tid}/wchan")


def futex_kind(pid: int) -> str:
    """What the loop thread sleeps in: a futex wait with a timeout is CPython's GIL
    (``take_gil`` waits the switch interval at a time); without one, a lock (LMDB's
    writer mutex, a ``threading`` lock)."""
    fields = read(f"/proc/{pid}/task/{pid}/syscall").split()
    if not fields or fields[0] != "202":  # futex on x86-64
        return f"syscall {fields[0] if fields else '?'}"
    return (f"futex@{fields[1]} {'timed' if int(fields[4], 16) else 'untimed'} "
            f"in {mapping_of(pid, int(fields[1], 16))}")


def mapping_of(pid: int, address: int) -> str:
    """The file mapped at ``address`` (LMDB's ``lock.mdb`` holds its mutexes), else
    the kind of memory (heap, anonymous)."""
    for line in read(f"/proc/{pid}/maps").splitlines():
        span, _perms, _offset, _dev, _inode, *name = line.split()
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            return os.path.basename(name[0]) if name else "anonymous"
    return "?"


def threads(pid: int) -> dict[int, tuple[str, int, int, str]]:
    """tid -> (comm, ns on CPU, ns waiting in the run queue, state and policy)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        sched = read(f"/proc/{pid}/task/{t}/schedstat").split()
        if len(sched) < 2:
            continue
        state, _ = thread_state(pid, int(t), policy=True)
        out[int(t)] = (read(f"/proc/{pid}/task/{t}/comm").strip(), int(sched[0]),
                       int(sched[1]), state)
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    root, seconds = args[0], float(args[1]) if len(args) > 1 else 60.0
    min_ms = float(opts.get("min-ms", 20))
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(3))
    except OSError as exc:
        print(f"sampler stays ordinary: {exc}", file=sys.stderr)
    pids = agent_pids(root)
    if not pids:
        raise SystemExit(f"no meshcloud agent under {root}")
    open_ep: dict[int, tuple[float, dict[int, tuple[str, int, int, str]], str]] = {}
    states: dict[str, int] = {}
    episodes: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for pid in pids:
            state, wchan = thread_state(pid, pid)
            key = state if state != "S" else f"S:{wchan}"
            states[key] = states.get(key, 0) + 1
            blocked = state in ("S", "D") and "epoll" not in wchan and wchan != "0"
            if blocked and pid not in open_ep:
                open_ep[pid] = (time.monotonic(), threads(pid), f"{wchan} {futex_kind(pid)}")
            elif not blocked and pid in open_ep:
                t0, before, wch = open_ep.pop(pid)
                ms = (time.monotonic() - t0) * 1000
                if ms >= min_ms:
                    episodes.append(summarise(pid, ms, wch, before, threads(pid)))
                    print(json.dumps(episodes[-1]), flush=True)
        time.sleep(PERIOD)
    ms_list = sorted(e["ms"] for e in episodes)
    gil = [e for e in episodes if e["longest_waiter"] and e["longest_waiter"]["runq_ms"]
           >= 0.5 * e["ms"]]
    print(json.dumps({"agents": len(pids), "seconds": seconds, "loop_samples": states,
                      "episodes": len(episodes), "episode_ms_max": ms_list[-1:] or None,
                      "episodes_over_100ms": sum(m >= 100 for m in ms_list),
                      "with_a_preempted_thread_over_half": len(gil)}))


def summarise(pid: int, ms: float, wchan: str, before: dict[int, tuple[str, int, int, str]],
              after: dict[int, tuple[str, int, int, str]]) -> dict[str, Any]:
    rows = []
    for tid, (comm, cpu, runq, state) in after.items():
        if tid == pid or tid not in before:
            continue
        rows.append({"tid": tid, "comm": comm, "cpu_ms": round((cpu - before[tid][1]) / 1e6, 1),
                     "runq_ms": round((runq - before[tid][2]) / 1e6, 1),
                     "state": f"{before[tid][3]}>{state}"})
    rows.sort(key=lambda r: -r["runq_ms"])
    loop = (after.get(pid), before.get(pid))
    loop_cpu = round((loop[0][1] - loop[1][1]) / 1e6, 1) if loop[0] and loop[1] else None
    busy = [r for r in rows if r["cpu_ms"] or r["runq_ms"]]
    return {"pid": pid, "ms": round(ms, 1), "wchan": wchan, "loop_cpu_ms": loop_cpu,
            "longest_waiter": rows[0] if rows else None, "active_threads": busy[:4]}


if __name__ == "__main__":
    main()
