"""`python -m bench vnet`: V-Net throughput and latency between network namespaces.

Two namespaces joined by a bridge (``sim/netns.py``), a real agent in each, one V-Net
with both hosts attached (``sim/vnetlab.py``); then in the same run:

* ``wg_tcp_mb_s``: ``iperf3`` TCP from one host to the other's V-Net address, over the
  WireGuard plane (kernel WireGuard when the host has it, else ``wireguard-go``; the
  run says which: ``wg_mode``; for wireguard-go, which binary and version, ``wg_go``,
  whether it opened its TUN with segmentation offload, ``wg_offload``, and the
  ``GOMAXPROCS`` it runs with, ``wg_gomaxprocs``);
* ``underlay_tcp_mb_s``: the same ``iperf3`` to the other host's underlay address (the
  bare veth + bridge path);
* ``vnet_rtt_ms`` / ``underlay_rtt_ms``: the median of ``--pings`` ``ping`` round trips
  (one every 50 ms) over each path, and ``rtt_overhead_ms``, their difference; the means
  beside them (``…_mean_ms``, ``rtt_overhead_mean_ms``): on a busy machine a few pings
  wait milliseconds for a CPU, which moves the mean and not the median;
* ``py_tcp_mb_s`` / ``py_rtt_ms``: the Python plane, from
  ``bench._vnet_py.measure(seconds)`` (a Python plane helper in each of two namespaces of
  its own, after the agents' lab is closed).

Needs root, ``iperf3``, ``wireguard-go`` or kernel WireGuard. MB/s are 10^6 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._ping import ping_times
from sim.agents import wait_until
from sim.netns import Host
from sim.vnetlab import VNetLab, ns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    parser.add_argument("--pings", type=int, default=100)
    parser.add_argument("--agent-env", action="append", default=[], metavar="KEY=VALUE",
                        help="in the agents' environment (wireguard-go inherits it: e.g. "
                             "GOMAXPROCS=1)")
    parser.add_argument("--skip-python", action="store_true",
                        help="leave out the Python plane's figures")


@contextlib.contextmanager
def vnet_lab(root: Path, env: dict[str, str]) -> Iterator[tuple[VNetLab, list[str]]]:
    """Two hosts with an agent each, both attached to V-Net ``bench`` (interface
    ``mc-bench``) with their tunnel handshaken; yields the lab and their V-Net addresses.
    The V-Net is removed before the lab closes."""
    with VNetLab(root, 2, env=env) as lab:
        a, b = lab.agents
        a.cli("vnet", "create", "bench", "--cidr", "10.77.0.0/24")
        wait_until(lambda: b.get("/v1/vnets")["vnets"], 20, message="the V-Net on both")
        addresses = lab.attach_all("bench")
        wait_until(lambda: lab.tunnels_up("bench"), 40, interval=0.3, message="tunnel up")
        yield lab, addresses
        a.cli("vnet", "rm", "bench")


def wg_processes(host: Host) -> list[int]:
    """The pids of the wireguard-go processes in ``host``'s namespace."""
    out = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                         text=True).stdout
    pids = []
    for pid in out.split():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def wg_go_version(host: Host) -> str | None:
    """Which wireguard-go runs on ``host``: its binary's Debian package version when
    dpkg owns it (0.0.20231211 calls itself v0.0.20230223), else what ``--version``
    says, after the binary's path."""
    for pid in wg_processes(host):
        path = os.path.realpath(f"/proc/{pid}/exe")
        owner = subprocess.run(["dpkg-query", "-S", path], capture_output=True,
                               text=True).stdout.split(":")[0]
        if owner:
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", owner],
                                     capture_output=True, text=True).stdout
            return f"{path} (deb {version})"
        out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        match = re.search(r"wireguard-go (v?[\d.]+)", out)
        return f"{path} ({match.group(1) if match else '?'})"
    return None


def wg_gomaxprocs(host: Host) -> str | None:
    """The ``GOMAXPROCS`` in the environment of ``host``'s wireguard-go (``"default"``
    when it has none: Go's one per CPU), None when none runs."""
    for pid in wg_processes(host):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"GOMAXPROCS="):
                return item.split(b"=", 1)[1].decode(errors="replace")
        return "default"
    return None


def iperf(client: Host, server: Host, address: str, seconds: float) -> float:
    """TCP MB/s from ``client`` to an iperf3 server on ``server``'s ``address``."""
    daemon = subprocess.Popen([*server.exec_prefix(), "iperf3", "-s", "-B", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = (f"import socket; socket.create_connection(('{address}', 5201), "
                 "timeout=1).close()")
        wait_until(lambda: ns(client, "python3", "-c", probe, check=False).returncode == 0,
                   15, message="iperf3 server up")
        out = ns(client, "iperf3", "-c", address, "-t", str(seconds), "-J",
                 timeout=seconds + 60)
        report = json.loads(out.stdout)
        bps = report["end"]["sum_received"]["bits_per_second"]
        return round(float(bps) / 8 / 1e6, 1)
    finally:
        daemon.kill()
        daemon.wait()


def rtt(host: Host, address: str, count: int,
        interval: float = 0.05) -> tuple[float, float] | None:
    """(median, mean) of ``count`` pings of ``address`` from ``host``, in ms; ``None``
    when no reply came back."""
    out = ns(host, "ping", "-n", "-c", str(count), "-i", str(interval), address,
             check=False, timeout=count * interval + 30).stdout
    times = ping_times(out)
    if not times:
        return None
    return round(statistics.median(times), 3), round(statistics.fmean(times), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = 2.0 if args.quick else args.seconds
    pings = 10 if args.quick else args.pings
    root = Path(tempfile.mkdtemp(prefix="bench-vnet-"))
    figures: dict[str, Any] = {}
    env = dict(item.split("=", 1) for item in args.agent_env)
    if env:
        figures["agent_env"] = env
    try:
        with vnet_lab(root, env) as (lab, addresses):
            a = lab.agents[0]
            ha, hb = lab.hosts
            mode = subprocess.run(["nsenter", "-t", str(a.pid), "-m", "-n", "ip", "-d", "link",
                                   "show", "mc-bench"], capture_output=True, text=True).stdout
            figures["wg_mode"] = "kernel" if "wireguard" in mode else "wireguard-go"
            if figures["wg_mode"] == "wireguard-go":
                figures["wg_go"] = wg_go_version(ha)
                # a wireguard-go with TUN segmentation offload opens its TUN with vnet_hdr
                figures["wg_offload"] = "vnet_hdr on" in mode
                figures["wg_gomaxprocs"] = wg_gomaxprocs(ha)
            rtt(ha, addresses[1], 3)  # warm the path
            for key, address in (("vnet", addresses[1]), ("underlay", hb.ip)):
                median_mean = rtt(ha, address, pings)
                figures[f"{key}_rtt_ms"], figures[f"{key}_rtt_mean_ms"] = (
                    median_mean or (None, None))
            figures["wg_tcp_mb_s"] = iperf(ha, hb, addresses[1], seconds)
            figures["underlay_tcp_mb_s"] = iperf(ha, hb, hb.ip, seconds)
    finally:  # the agents' data dirs and logs
        shutil.rmtree(root, ignore_errors=True)
    try:
        py = None if args.skip_python else importlib.import_module("bench._vnet_py")
    except ImportError:
        py = None
    if py is None:
        figures["py_tcp_mb_s"] = None
    else:  # its own two namespaces, once the agents' lab is gone
        figures.update(py.measure(seconds))
    for suffix in ("", "_mean"):
        vnet, underlay = figures[f"vnet_rtt{suffix}_ms"], figures[f"underlay_rtt{suffix}_ms"]
        if vnet is not None and underlay is not None:
            figures[f"rtt_overhead{suffix}_ms"] = round(vnet - underlay, 3)
    for key, value in figures.items():
        print(f"{key:20} {value}")
    return figures
