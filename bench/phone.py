"""`python -m bench phone`: what a phone-class node costs (issue 20).

A 3-node mesh on 127.0.0.1: two agents of the default profile and one ``--profile phone``
agent started the way a phone runs it: **not root** (uid/gid 65534 through ``setpriv``),
no podman (the phone profile offers the process runtime only), inside a cgroup of
**256 MiB** of memory and **25 % of one CPU** (this machine has cgroup v1: the
``memory`` and ``cpu`` hierarchies, ``memory.limit_in_bytes`` and
``cpu.cfs_quota_us = 25000`` per 100000; on cgroup v2 ``memory.max`` and ``cpu.max``).
Once all three list each other alive and ``--settle`` seconds passed, the phone agent is
left alone for ``--seconds`` and measured from ``/proc`` (``--baseline`` measures a
default-profile agent the same way, for comparison):

* ``idle_rss_mb``: ``VmRSS`` at the end of the idle window, MiB;
* ``idle_cpu_pct``: user + system time of all its threads over the window, % of one core;
* ``wakeups_per_s``: voluntary context switches of all its threads
  (``/proc/PID/task/*/status``) over the window, per second: each is the process going
  to sleep until something wakes it, i.e. how often it wakes the CPU;
  ``preempted_per_s``: the non-voluntary ones (the scheduler took the CPU while it ran:
  other load, or the box's CFS quota), which wake nothing and grow with the machine's
  load; ``switches_per_s``: both (what ``wakeups_per_s`` counted until 2026-12-07);
* ``threads``: its threads at the end;
* ``put_64mib_peak_rss_mb``: ``VmHWM`` (peak RSS) after a 64 MiB object is written through
  its S3 API (``meshcloud cp`` against the phone agent), MiB;
* ``tun_visible`` (false: the phone's ``/dev`` is private, without ``net/tun``),
  ``vnet_planes_offered`` and ``vnet_plane`` (the plane a V-Net the phone joins gets:
  ``userspace``);
* ``reachability``: the phone's own verdict. Like a phone on mobile data behind a carrier
  NAT, nobody can dial it (an iptables rule drops TCP SYNs to its address; ``--dialable``
  lifts it): it holds reservations with relays among the members (``relayed``);
* ``relay_mb_s``: 64 MiB streamed to the phone agent's benchmark sink through its first
  relay by a member identity in this process, end-to-end encrypted, until the phone
  confirms the count (``relay_path``: ``relayed``).

Needs root (to make the cgroups and drop to uid 65534).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _waketrace as waketrace
from bench._phone_relay import InboundDrop, relay_stream_mb_s
from sim.agents import Agent, LocalCluster, meshcloud_cmd, wait_until
from sim.phonebox import no_tun_prefix

TICKS = os.sysconf("SC_CLK_TCK")
CGROUP_V1 = Path("/sys/fs/cgroup")
MEMORY_LIMIT = 256 << 20
CPU_QUOTA_US, CPU_PERIOD_US = 25_000, 100_000
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
PHONE_HOST = "127.0.0.73"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="idle seconds measured")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds after convergence before measuring")
    parser.add_argument("--baseline", action="store_true",
                        help="also measure a default-profile agent (no cgroup) likewise")
    parser.add_argument("--dialable", action="store_true",
                        help="let members dial the phone (no relay; relay_mb_s stays null)")
    parser.add_argument("--trace", action="store_true",
                        help="name the tasks that wake the idle phone agent (bench._waketrace)")


# --- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def switches(pid: int) -> dict[int, tuple[int, int]]:
    """Voluntary and non-voluntary context switches of each live thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        counts = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        out[int(task.name)] = (int(counts["voluntary_ctxt_switches"]),
                               int(counts["nonvoluntary_ctxt_switches"]))
    return out


def switched(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
             ) -> tuple[int, int]:
    """Switches between two readings, over the threads alive at the end (a thread that
    ended meanwhile takes its count with it: a slight undercount)."""
    voluntary = nonvoluntary = 0
    for tid, (v, n) in after.items():
        v0, n0 = before.get(tid, (0, 0))
        voluntary, nonvoluntary = voluntary + v - v0, nonvoluntary + n - n0
    return voluntary, nonvoluntary


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def measure_idle(pid: int, seconds: float) -> dict[str, float]:
    cpu0, sw0, t0 = cpu_seconds(pid), switches(pid), time.monotonic()
    time.sleep(seconds)
    cpu1, sw1, t1 = cpu_seconds(pid), switches(pid), time.monotonic()
    window = t1 - t0
    voluntary, nonvoluntary = switched(sw0, sw1)
    return {"idle_rss_mb": round(status_kib(pid, "VmRSS") / 1024, 1),
            "idle_cpu_pct": round(100 * (cpu1 - cpu0) / window, 2),
            "wakeups_per_s": round(voluntary / window, 2),
            "preempted_per_s": round(nonvoluntary / window, 2),
            "switches_per_s": round((voluntary + nonvoluntary) / window, 2),
            "threads": threads(pid)}


# --- the phone's box --------------------------------------------------------------------------


class Box:
    """A memory + CPU cgroup (v1 or v2) that a command prefix puts a process into."""

    def __init__(self, name: str) -> None:
        self.v2 = (CGROUP_V1 / "cgroup.controllers").exists()
        if self.v2:
            self.dirs = [CGROUP_V1 / name]
        else:
            self.dirs = [CGROUP_V1 / "memory" / name, CGROUP_V1 / "cpu" / name]
        for d in self.dirs:
            d.mkdir(exist_ok=True)
        if self.v2:
            (self.dirs[0] / "memory.max").write_text(str(MEMORY_LIMIT))
            (self.dirs[0] / "cpu.max").write_text(f"{CPU_QUOTA_US} {CPU_PERIOD_US}")
        else:
            (self.dirs[0] / "memory.limit_in_bytes").write_text(str(MEMORY_LIMIT))
            (self.dirs[1] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.dirs[1] / "cpu.cfs_quota_us").write_text(str(CPU_QUOTA_US))

    def describe(self) -> str:
        version = "v2" if self.v2 else "v1"
        return (f"cgroup {version}: {MEMORY_LIMIT >> 20} MiB, "
                f"{100 * CPU_QUOTA_US // CPU_PERIOD_US} % of one CPU")

    def prefix(self, home: Path, pythonpath: str, *, trace: Path | None = None) -> list[str]:
        """In a mount namespace whose ``/dev`` has no ``net/tun`` (:mod:`sim.phonebox`),
        join the cgroups, drop to uid/gid 65534 and exec the system's Python on the rest
        of the command (the pid stays). The interpreter that runs this bench may live
        where uid 65534 cannot read (a pyenv under /root): the command's first word is
        replaced by ``/usr/bin/python3``, with the checkout and the venv's site-packages
        on ``PYTHONPATH``."""
        joins = "; ".join(f"echo $$ > {d}/cgroup.procs" for d in self.dirs)
        traced = f"MESHCLOUD_WAKE_TRACE={trace} " if trace else ""
        drop = (f"setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups env HOME={home} "
                f"PYTHONPATH={pythonpath} {traced}{SYSTEM_PYTHON}"
                + (" -m bench._waketrace" if trace else ""))
        return no_tun_prefix(f'{joins}; shift; exec {drop} "$@"')

    def oom_kills(self) -> int:
        path = self.dirs[0] / ("memory.events" if self.v2 else "memory.oom_control")
        for line in path.read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self) -> None:
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError:
                pass


# --- the run ----------------------------------------------------------------------------------


def put_through(agent: Agent, size: int, tmp: Path) -> float:
    """Write a ``size``-byte object through ``agent``; seconds it took."""
    src = tmp / "object.bin"
    with open(src, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(os.urandom(1 << 20))
    os.chmod(src, 0o644)
    start = time.monotonic()
    # the command line runs outside the box (root may read the phone's token): only the
    # agent's own memory is measured
    meshcloud_cmd(agent.data_dir, "bucket", "create", "phone", check=False)
    meshcloud_cmd(agent.data_dir, "cp", str(src), "s3://phone/object.bin", timeout=600)
    return time.monotonic() - start


def vnet_check(admin: Agent, phone: Agent) -> dict[str, Any]:
    """What the phone sees of TUN, what it offers V-Nets, and the plane a V-Net it joins
    gets (the userspace mode: no root, no TUN)."""
    host = phone.get("/v1/status")["vnet"]["host"]
    admin.cli("vnet", "create", "phonenet", "--cidr", "10.79.0.0/24")
    phone.cli("vnet", "attach", "phonenet", "--host")
    wait_until(lambda: phone.get("/v1/status")["vnet"]["planes"].get("phonenet"), 60,
               interval=0.5, message="the phone's V-Net plane")
    return {"tun_visible": os.path.exists(f"/proc/{phone.pid}/root/dev/net/tun"),
            "vnet_planes_offered": host["offered"],
            "vnet_plane": phone.get("/v1/status")["vnet"]["planes"]["phonenet"]}


def relay_check(cluster: LocalCluster, admin: Agent, phone: Agent, root: Path,
                total: int) -> dict[str, Any]:
    """``total`` bytes streamed to the phone through its first relay, from a member
    identity in this process (:mod:`bench._phone_relay`)."""
    relays = phone.get("/v1/status")["reachability"]["relays"]
    relay = next(x for x in cluster.agents if x.node_id == relays[0])
    client = Agent("client", root / "client", listen="127.0.0.74:0")
    client.cli("join", cluster.invite(admin), *client.node_flags())
    mb_s, relayed = relay_stream_mb_s(client.data_dir, relay.node_id, relay.address,
                                      phone.node_id, total)
    print(f"relay: {total >> 20} MiB to the phone through {relay.name}: {mb_s:.1f} MB/s",
          flush=True)
    return {"relay_mb_s": round(mb_s, 1), "relay_path": "relayed" if relayed else "direct",
            "relay_mib": total >> 20}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise SystemExit("bench phone needs root (cgroups, and setpriv to uid 65534)")
    seconds = 10.0 if args.quick else args.seconds
    settle = 5.0 if args.quick else args.settle
    box = Box(f"meshcloud-phone-{os.getpid()}")
    root = Path(tempfile.mkdtemp(prefix="bench-phone-"))
    os.chmod(root, 0o755)
    phone_home = root / "phone"
    phone_home.mkdir()
    os.chown(phone_home, NOBODY, NOBODY)
    trace = phone_home / "wakes.json" if args.trace else None
    cluster = LocalCluster(root / "mesh")
    figures: dict[str, Any] = {"relay_mb_s": None}
    inbound = None if args.dialable else InboundDrop(PHONE_HOST)
    try:
        a = cluster.init_first(listen="127.0.0.71:0")
        cluster.join(through=a, listen="127.0.0.72:0")
        checkout = str(Path(__file__).resolve().parent.parent)
        site = next(p for p in sys.path if p.endswith("site-packages"))
        phone = Agent("phone", phone_home / "data", listen=f"{PHONE_HOST}:0",
                      extra_args=["--profile", "phone"],
                      prefix=box.prefix(phone_home, f"{checkout}:{site}", trace=trace))
        phone.cli("join", cluster.invite(a), *phone.node_flags())
        cluster.agents.append(phone)
        phone.start()
        print(f"phone agent pid {phone.pid}: uid {NOBODY}, {box.describe()}", flush=True)
        wait_until(lambda: all(sum(m["state"] == "alive" for m in x.get("/v1/members")) == 3
                               for x in cluster.agents), 120, interval=0.5,
                   message="three members alive everywhere")
        if inbound is not None:
            wait_until(lambda: phone.get("/v1/status")["reachability"]["relays"], 120,
                       interval=0.5, message="the undialable phone holds a relay")
        status = phone.get("/v1/status")
        figures["reachability"] = status["reachability"]["state"]
        figures["connections"] = status["transport"]["connections"]
        figures["paths"] = sorted(status["reachability"]["paths"].values())
        time.sleep(settle)
        print(f"idle for {seconds:.0f} s ...", flush=True)
        before = waketrace.read(str(trace)) if trace else None
        figures.update(measure_idle(phone.pid, seconds))
        if trace and before:
            sources = waketrace.difference(before, waketrace.read(str(trace)))
            print(json.dumps(sources, indent=1), flush=True)
            figures["wake_sources"] = sources
        if args.baseline:
            base = measure_idle(a.pid, seconds)
            figures.update({f"default_{k}": v for k, v in base.items()})
        took = put_through(phone, 64 << 20, root)
        figures["put_64mib_s"] = round(took, 2)
        figures["put_64mib_peak_rss_mb"] = round(status_kib(phone.pid, "VmHWM") / 1024, 1)
        figures["oom_kills"] = box.oom_kills()
        figures.update(vnet_check(a, phone))
        if inbound is not None:
            figures.update(relay_check(cluster, a, phone, root, 16 << 20 if args.quick
                                       else 64 << 20))
        figures["phone_uid"] = os.stat(f"/proc/{phone.pid}").st_uid
        podman = subprocess.run(["pgrep", "-u", str(NOBODY), "-x", "podman"],
                                capture_output=True, check=False)
        figures["podman_running"] = podman.returncode == 0
    finally:
        cluster.close()
        box.remove()
        if inbound is not None:
            inbound.close()
    print(f"phone: idle RSS {figures.get('idle_rss_mb')} MiB, CPU "
          f"{figures.get('idle_cpu_pct')} %, {figures.get('wakeups_per_s')} wake-ups/s, "
          f"{figures.get('threads')} threads; 64 MiB put peak RSS "
          f"{figures.get('put_64mib_peak_rss_mb')} MiB", flush=True)
    return figures
