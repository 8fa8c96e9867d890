"""`python -m bench functions`: an echo function on two real agents.

* ``warm_p50_ms`` / ``warm_p99_ms``: ``POST /fn/echo`` through the ingress of the node that
  holds the function's warm instances (one keep-alive client, one call at a time);
* ``remote_warm_p50_ms``: the same through the other node (forwarded over the mesh);
* ``cold_ms``: the first call after the instances scaled to zero (median of 20; the
  function's idle period is 100 ms, the scale-down pass runs every second);
* ``throughput_per_s``: 8 client processes with keep-alive connections against the
  holding node's ingress for a few seconds;
* ``bare_rps``: the same handler as a plain hypercorn app on the same machine, measured by
  the same 8 clients (the overhead ratio is ``throughput_per_s / bare_rps``).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim.agents import LocalCluster, wait_until

ADDRESSES = ["127.0.0.71", "127.0.0.72"]
CLIENTS = 8
HANDLER = "def handle(event, context):\n    return {'echo': event}\n"
BARE_APP = '''
import json
from main import handle

class Ctx:
    request_id = "bare"
    deadline = 0.0
    logger = None

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    out = json.dumps(handle(json.loads(body) if body else None, Ctx())).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Host": "bench.home"})
        response = self.conn.getresponse()
        return response.status, response.read()


def latencies(host: str, port: int, n: int) -> list[float]:
    client = Client(host, port)
    out = []
    for i in range(n):
        start = time.perf_counter()
        status, body = client.post("/fn/echo", b'{"i": %d}' % i)
        out.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise SystemExit(f"invoke failed: {status} {body!r}")
    return out


def _hammer(host: str, port: int, path: str, seconds: float, queue: object) -> None:
    client = Client(host, port)
    done = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        status, _ = client.post(path, b'{"x": 1}')
        if status == 200:
            done += 1
    queue.put(done)  # type: ignore[attr-defined]


def throughput(host: str, port: int, path: str, seconds: float) -> float:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(host, port, path, seconds, queue))
             for _ in range(CLIENTS)]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bare_rps(src: Path, seconds: float) -> float:
    (src / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}",
                             "bare_app:app"], cwd=src, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return Client("127.0.0.1", port).post("/", b"{}")[0] == 200
            except OSError:
                return False

        wait_until(up, 30, interval=0.1, message="bare hypercorn app up")
        return throughput("127.0.0.1", port, "/", seconds)
    finally:
        proc.terminate()
        proc.wait(10)


def run(args: argparse.Namespace) -> dict[str, float]:
    n = 200 if args.quick else 1000
    seconds = 3.0 if args.quick else 5.0
    http_port = free_port()
    with tempfile.TemporaryDirectory(prefix="mc-bench-fn-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "main.py").write_text(HANDLER)
        cluster = LocalCluster(Path(tmp) / "mesh", extra_args=["--profile", "local"],
                               env={"MESHCLOUD_RUNTIMES": "process",
                                    "MESHCLOUD_HTTP": f"mesh:{http_port}"})
        try:
            cluster.init_first(listen=f"{ADDRESSES[0]}:0")
            cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[1]}:0")
            a, b = cluster.agents
            wait_until(lambda: all(len([m for m in x.get("/v1/status")["members"]
                                        if m.get("state") == "alive"]) >= 2
                                   for x in (a, b)), 60, message="two members alive")
            a.cli("fn", "deploy", "--public", "echo", str(src), "--concurrency", str(CLIENTS))
            a.cli("fn", "deploy", "--public", "cold", str(src), "--idle", "100ms")
            wait_until(lambda: len(b.get("/v1/functions")["functions"]) == 2, 30,
                       message="functions replicated")
            hosts = {x.node_id: x.address.rsplit(":", 1)[0] for x in (a, b)}
            first = Client(hosts[a.node_id], http_port)
            wait_until(lambda: first.post("/fn/echo", b"{}")[0] == 200, 30,
                       message="first invoke")
            holder = next(x for x in (a, b) if "echo@1" in x.get("/v1/status")
                          ["functions"]["pools"])
            other = b if holder is a else a
            local_host, remote_host = hosts[holder.node_id], hosts[other.node_id]
            latencies(local_host, http_port, 50)
            warm = latencies(local_host, http_port, n)
            latencies(remote_host, http_port, 50)
            remote = latencies(remote_host, http_port, n)
            print(f"warm (local ingress):  p50 {pct(warm, .5):.2f} ms  "
                  f"p99 {pct(warm, .99):.2f} ms  ({n} calls)")
            print(f"warm (remote ingress): p50 {pct(remote, .5):.2f} ms  "
                  f"p99 {pct(remote, .99):.2f} ms")
            # cold starts: wait for the scale-down pass to leave no instance, then call
            cold_client = Client(local_host, http_port)
            cold_client.post("/fn/cold", b"{}")
            cold_holder = next(x for x in (a, b) if "cold@1" in x.get("/v1/status")
                               ["functions"]["pools"])
            cold_client = Client(hosts[cold_holder.node_id], http_port)
            colds = []
            for _ in range(20):
                wait_until(lambda: cold_holder.get("/v1/status")["functions"]["pools"]
                           ["cold@1"]["instances"] == 0, 30, interval=0.05,
                           message="scaled to zero")
                start = time.perf_counter()
                status, body = cold_client.post("/fn/cold", b'{"c": 1}')
                colds.append((time.perf_counter() - start) * 1000)
                if status != 200:
                    raise SystemExit(f"cold invoke failed: {status} {body!r}")
            pools = cold_holder.get("/v1/status")["functions"]["pools"]
            print(f"cold start: median {statistics.median(colds):.1f} ms  "
                  f"max {max(colds):.1f} ms  ({pools['cold@1']['cold_starts']} cold starts)")
            rps = throughput(local_host, http_port, "/fn/echo", seconds)
            print(f"throughput: {rps:.0f}/s with {CLIENTS} clients")
        finally:
            cluster.close()
        bare = bare_rps(src, seconds)
        print(f"bare hypercorn app: {bare:.0f}/s  (ratio {rps / bare:.2f})")
        load = os.getloadavg()[0]
        print(f"load average {load:.1f} on {os.cpu_count()} cores")
    return {"warm_p50_ms": round(pct(warm, .5), 3), "warm_p99_ms": round(pct(warm, .99), 3),
            "remote_warm_p50_ms": round(pct(remote, .5), 3),
            "cold_ms": round(statistics.median(colds), 2),
            "throughput_per_s": round(rps, 1), "bare_rps": round(bare, 1),
            "ratio": round(rps / bare, 3), "load_avg": round(load, 1)}
