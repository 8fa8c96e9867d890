"""`python -m bench vnet_rtt`: where a V-Net ping's round trip goes, stage by stage.

The lab of ``python -m bench vnet`` (two namespaces, a real agent in each, one V-Net over
the WireGuard plane). Host A pings host B's V-Net address while ``tcpdump -i any`` runs in
each namespace; the kernel's capture timestamps (one clock for both namespaces) split
every round trip into seven stages::

    a_encrypt   A's TUN hands the echo request to wireguard-go -> its UDP leaves A
    wire_out    the UDP leaves A -> it reaches B (veth, bridge, veth)
    b_decrypt   the UDP reaches B -> wireguard-go writes the request into B's TUN
    b_kernel    the request in B's TUN -> B's kernel answers into its TUN
    b_encrypt   the reply in B's TUN -> its UDP leaves B
    wire_back   that UDP leaves B -> it reaches A
    a_decrypt   the UDP reaches A -> the reply comes out of A's TUN

and the same ping to B's underlay address gives the bare path's round trip
(``underlay``). Medians in microseconds; ``ping_ms`` is ping's own average (it adds the
socket hops to and from the ping process). ``--wg-nice N`` renices both wireguard-go
processes first, ``--wg-cpus LIST`` pins them; ``--agent-env`` as in ``bench vnet``.
Needs root, tcpdump, ping.
"""

from __future__ import annotations

import argparse
import bisect
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.vnet import rtt, vnet_lab, wg_processes
from sim.netns import Host

STAGES = ("a_encrypt", "wire_out", "b_decrypt", "b_kernel", "b_encrypt", "wire_back",
          "a_decrypt")
LINE = re.compile(r"^(?P<ts>\d+\.\d+)\s+(?P<dev>\S+)\s+(?P<dir>In|Out)\s+IP6?\s+(?P<rest>.*)$")
ICMP = re.compile(r"ICMP echo (?P<kind>request|reply), id \d+, seq (?P<seq>\d+)")
UDP = re.compile(r"UDP, length (?P<length>\d+)")


@dataclass(frozen=True)
class Event:
    """One captured packet: when, on which side of a host (``tun`` or ``wire``), which
    way, and what (``request``/``reply`` with a ping sequence, or ``udp``)."""
    t: float
    side: str
    way: str
    kind: str
    seq: int = -1


def parse(lines: Iterable[str], tun: str) -> list[Event]:
    """``tcpdump -i any -n -tt`` lines of one host: ICMP echoes on the ``tun`` device and
    WireGuard data datagrams (neither keepalives, 32 bytes, nor handshakes, 148/92) on
    any other device; sorted by time."""
    events: list[Event] = []
    for line in lines:
        match = LINE.match(line.strip())
        if match is None:
            continue
        t, dev, way, rest = float(match["ts"]), match["dev"], match["dir"], match["rest"]
        icmp = ICMP.search(rest)
        if dev == tun:
            if icmp is not None:
                events.append(Event(t, "tun", way, icmp["kind"], int(icmp["seq"])))
            continue
        udp = UDP.search(rest)
        if udp is not None and int(udp["length"]) not in (32, 92, 148):
            events.append(Event(t, "wire", way, "udp"))
    return sorted(events, key=lambda e: e.t)


def _first_after(events: list[Event], t: float, side: str, way: str, kind: str,
                 seq: int = -1) -> float | None:
    for e in events[bisect.bisect_left(events, t, key=lambda e: e.t):]:
        if e.side == side and e.way == way and e.kind == kind and (seq < 0 or e.seq == seq):
            return e.t
    return None


def round_trips(a: list[Event], b: list[Event]) -> list[dict[str, float]]:
    """The seven stages (seconds) of each ping seen whole in both captures (``a``: the
    pinging host's events, ``b``: the answering host's)."""
    trips: list[dict[str, float]] = []
    for start in (e for e in a if e.side == "tun" and e.way == "Out" and e.kind == "request"):
        t0 = start.t
        t1 = _first_after(a, t0, "wire", "Out", "udp")
        t2 = None if t1 is None else _first_after(b, t1, "wire", "In", "udp")
        t3 = None if t2 is None else _first_after(b, t2, "tun", "In", "request", start.seq)
        t4 = None if t3 is None else _first_after(b, t3, "tun", "Out", "reply", start.seq)
        t5 = None if t4 is None else _first_after(b, t4, "wire", "Out", "udp")
        t6 = None if t5 is None else _first_after(a, t5, "wire", "In", "udp")
        t7 = None if t6 is None else _first_after(a, t6, "tun", "In", "reply", start.seq)
        if t1 is None or t2 is None or t3 is None or t4 is None or t5 is None \
                or t6 is None or t7 is None:
            continue
        times = (t0, t1, t2, t3, t4, t5, t6, t7)
        trip = {stage: times[i + 1] - times[i] for i, stage in enumerate(STAGES)}
        trip["total"] = t7 - t0
        trips.append(trip)
    return trips


def summary(trips: list[dict[str, float]]) -> dict[str, float]:
    """Median microseconds of every stage and of the total."""
    if not trips:
        return {}
    medians = {f"{key}_us": round(statistics.median(t[key] for t in trips) * 1e6, 1)
               for key in (*STAGES, "total")}
    return {**medians, "total_mean_us": round(statistics.fmean(t["total"] for t in trips)
                                              * 1e6, 1)}


class Capture:
    """``tcpdump -i any`` in one namespace, into a file, until :meth:`stop`."""

    def __init__(self, host: Host, path: Path, expr: str) -> None:
        self.path = path
        self.out = open(path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*host.exec_prefix(), "tcpdump", "-i", "any", "-n", "-tt", "-l",
             "--immediate-mode", expr], stdout=self.out, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        deadline = time.monotonic() + 15
        for line in self.process.stderr:  # "listening on any, ..." once it captures
            if "listening on" in line or time.monotonic() > deadline:
                break

    def stop(self) -> list[str]:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.out.close()
        return self.path.read_text().splitlines()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="between pings, s")
    parser.add_argument("--agent-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--wg-nice", type=int, default=None,
                        help="renice both wireguard-go processes to this first")
    parser.add_argument("--wg-cpus", default=None, metavar="LIST",
                        help="pin every thread of both wireguard-go processes to these "
                             "CPUs first (taskset's list, e.g. 0)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    pings = 20 if args.quick else args.pings
    root = Path(tempfile.mkdtemp(prefix="bench-vnet-rtt-"))
    env = dict(item.split("=", 1) for item in args.agent_env)
    figures: dict[str, Any] = {"agent_env": env} if env else {}
    try:
        with vnet_lab(root, env) as (lab, addresses):
            ha, hb = lab.hosts
            if args.wg_nice is not None:
                for host in (ha, hb):
                    for pid in wg_processes(host):
                        subprocess.run(["renice", "-n", str(args.wg_nice), "-p", str(pid)],
                                       check=True, capture_output=True)
                figures["wg_nice"] = args.wg_nice
            if args.wg_cpus is not None:
                for host in (ha, hb):
                    for pid in wg_processes(host):
                        subprocess.run(["taskset", "-a", "-c", "-p", args.wg_cpus, str(pid)],
                                       check=True, capture_output=True)
                figures["wg_cpus"] = args.wg_cpus
            rtt(ha, addresses[1], 3)
            expr = f"icmp or (udp and not port 53 and host {hb.ip})"
            caps = [Capture(h, root / f"{h.netns}.txt", expr) for h in (ha, hb)]
            try:
                figures["ping_ms"] = rtt(ha, addresses[1], pings, interval=args.interval)
                figures["underlay_ping_ms"] = rtt(ha, hb.ip, pings, interval=args.interval)
            finally:
                lines = [c.stop() for c in caps]
            a_events, b_events = (parse(x, "mc-bench") for x in lines)
            trips = round_trips(a_events, b_events)
            figures["trips"] = len(trips)
            figures.update(summary(trips))
            figures["underlay_us"] = underlay_us(lines[0], hb.ip)
    finally:  # the agents' data dirs and logs
        shutil.rmtree(root, ignore_errors=True)
    for key, value in figures.items():
        print(f"{key:20} {value}")
    return figures


def underlay_us(lines: list[str], peer: str) -> float | None:
    """Median echo request -> reply to ``peer`` on the pinging host's wire device."""
    sent: dict[int, float] = {}
    rtts: list[float] = []
    for line in lines:
        match = LINE.match(line.strip())
        if match is None or match["dev"] == "mc-bench" or peer not in match["rest"]:
            continue
        icmp = ICMP.search(match["rest"])
        if icmp is None:
            continue
        seq = int(icmp["seq"])
        if icmp["kind"] == "request":
            sent[seq] = float(match["ts"])
        elif seq in sent:
            rtts.append(float(match["ts"]) - sent.pop(seq))
    return round(statistics.median(rtts) * 1e6, 1) if rtts else None
