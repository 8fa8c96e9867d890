"""Runtime timings: what a failover costs once a node is declared dead.

``python -m bench runtimes [--rounds N]`` prints, for a fresh podman store and for the
process runtime: API service start, demo image build (and the no-op rebuild check),
container start to first HTTP response, stop, and the cost of one status/list call through
the API service versus the podman CLI (the reason the runtime keeps a service). Figures
only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from apps.images import DEMO_WEB_IMAGE, build_demo_images
from apps.runtimes.base import ContainerSpec, PortMapping, running
from apps.runtimes.config import PodmanConfig, ProcessConfig
from apps.runtimes.podman import PodmanRuntime, container_name
from apps.runtimes.podman_service import release_store
from apps.runtimes.process import ProcessRuntime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first_http(port: int, deadline: float = 20.0) -> None:
    def get() -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()

    with trio.fail_after(deadline):
        while True:
            try:
                await trio.to_thread.run_sync(get)
                return
            except OSError:
                await trio.sleep(0.005)


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    begun = time.perf_counter()
    await fn()
    return time.perf_counter() - begun


FIGURES: dict[str, float] = {}


def show(name: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"{name:<44} median {statistics.median(ms):8.1f} ms   "
          f"min {min(ms):8.1f}   max {max(ms):8.1f}   (n={len(ms)})")
    key = name.split(" (")[0].replace(":", "").replace("()", "").replace(" ", "_").lower()
    FIGURES[key + "_ms"] = round(statistics.median(ms), 2)


async def bench_podman(rounds: int, data_dir: Path) -> None:
    rt = PodmanRuntime(PodmanConfig(data_dir=data_dir, node_id="bench"))
    begun = time.perf_counter()
    async with running(rt):
        show("podman: service start to first ping", [time.perf_counter() - begun])
        built = await build_demo_images(rt)
        show("podman: build 2 demo images (fresh store)", [sum(r.seconds for r in built)])
        again = await build_demo_images(rt)
        show("podman: rebuild check (already built)", [sum(r.seconds for r in again)])
        starts, https, stops, api_status, api_list = [], [], [], [], []
        for i in range(rounds):
            port = free_port()
            spec = ContainerSpec(name=f"web-{i}", image=DEMO_WEB_IMAGE, memory=64 << 20,
                                 ports=(PortMapping(container_port=8080, host_port=port),))
            t0 = time.perf_counter()
            await rt.start(spec)
            starts.append(time.perf_counter() - t0)
            await first_http(port)
            https.append(time.perf_counter() - t0)
            api_status.append(await timed(lambda n=spec.name: rt.status(n)))
            api_list.append(await timed(rt.list))
            stops.append(await timed(lambda n=spec.name: rt.stop(n)))
        show("podman: start() call", starts)
        show("podman: start() to first HTTP response", https)
        show("podman: stop() (SIGTERM, --init)", stops)
        show("podman: status() via API", api_status)
        show("podman: list() via API", api_list)
        cli_inspect, cli_ps = [], []
        for _ in range(rounds):
            base, env = rt.service.cli_args(), rt.service.env()
            t0 = time.perf_counter()
            subprocess.run([*base, "inspect", container_name("web-0")], env=env, check=True,
                           capture_output=True)
            cli_inspect.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([*base, "ps", "-a", "--format", "json"], env=env, check=True,
                           capture_output=True)
            cli_ps.append(time.perf_counter() - t0)
        show("podman CLI: inspect (for comparison)", cli_inspect)
        show("podman CLI: ps -a (for comparison)", cli_ps)
        for st in await rt.list():
            await rt.remove(st.name)
    release_store(rt.service.graph_root)
    shutil.rmtree(rt.service.run_root, ignore_errors=True)


async def bench_process(rounds: int, data_dir: Path) -> None:
    rt = ProcessRuntime(ProcessConfig(data_dir=data_dir, node_id="bench"))
    async with running(rt):
        https, stops = [], []
        for i in range(rounds):
            port = free_port()
            spec = ContainerSpec(name=f"web-{i}", image=None,
                                 command=(sys.executable, "-m", "http.server", "--bind",
                                          "127.0.0.1", str(port)),
                                 ports=(PortMapping(container_port=8000, host_port=port),))
            t0 = time.perf_counter()
            await rt.start(spec)
            await first_http(port)
            https.append(time.perf_counter() - t0)
            stops.append(await timed(lambda n=spec.name: rt.stop(n)))
            await rt.remove(spec.name)
        show("process: start() to first HTTP (python http.server)", https)
        show("process: stop()", stops)


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        await bench_podman(rounds, Path(tmp) / "podman-node")
        await bench_process(rounds, Path(tmp) / "process-node")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5)


def run(args: argparse.Namespace) -> dict[str, float]:
    """`python -m bench runtimes`: timings of the podman and process runtimes."""
    trio.run(main, 2 if args.quick else args.rounds)
    return dict(FIGURES)
