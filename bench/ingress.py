"""`python -m bench ingress`: the HTTP ingress and the forward path under a load generator
that is not ours (``wrk``), beside ``nginx`` serving the same file, in one run.

* **static**: a 4 KiB file answered by the ingress of a node (a real ``Node`` in this
  process, its ingress on 127.0.0.1) through a host lookup, as a site is served
  (``static_rps``), and the same file from ``nginx`` (one worker; ``nginx_static_rps``);
* **proxy**: a small hypercorn app (this venv's hypercorn) as a workload replica on one of
  two agents (127.0.0.51, .52, the process runtime), hit through the *other* agent's
  ingress (one cross-node ``/meshcloud/forward/1`` hop; ``proxy_rps``) and directly on its
  port (``direct_rps``);
  ``proxy_added_p50_ms`` is the difference of the two medians with one connection;
* **forward stream**: 1 GiB (``--quick``: 64 MiB) sent through a cross-node forward of an
  exposed port to a digest replica, which must answer the byte count and SHA-256 of what
  it read (``forward_stream_mb_s``).

Throughput runs use ``wrk -t2 -c32``; the latency runs ``wrk -t1 -c1``. During the
proxied throughput run, each agent's CPU per request (``/proc``, less its idle rate over
the 2 s before): ``ingress_cpu_us``, ``replica_agent_cpu_us``.

``--only path``: the ingress's HTTP path alone, in this process (``serve_http`` with one
route to a hypercorn replica on this machine by TCP, sequential GETs on one kept-alive
connection): ``path_calls`` (Python calls) and ``path_task_steps`` per request, which do
not move with the machine's load, and ``path_cpu_us``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sim.agents import LocalCluster, wait_until
from tests.workload_python import WORKLOAD_PYTHON, inline_script_line

ADDRESSES = ["127.0.0.51", "127.0.0.52"]
SERVER = Path(__file__).resolve().parents[1] / "tests/apps/ingress/echo_server.py"
CHUNK = 1 << 20
FILE = bytes((i * 7 + 13) % 251 for i in range(4096))
HYPERCORN_APP = """
import asyncio, os
from hypercorn.asyncio import serve
from hypercorn.config import Config
BODY = b"hello from " + os.environ.get("MESHCLOUD_NAME", "?").encode() + b"\\n"
HEAD = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEAD})
    await send({"type": "http.response.body", "body": BODY})
config = Config()
config.bind = ["127.0.0.1:" + os.environ["PORT"]]
asyncio.run(serve(app, config))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=int, default=1024, help="MiB to stream (default 1024)")
    parser.add_argument("--profile", default="local", choices=["local", "lan"],
                        help="the agents' timing profile (default local)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="seconds of each wrk throughput run (default 8)")
    parser.add_argument("--only", default="", choices=["", "proxy", "path"],
                        help="proxy: only the proxy figures (no static, no stream); path: "
                             "only the HTTP path's work per request (in this process)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests of the path measure (default 2000)")


def hypercorn_path() -> str:
    """The site-packages of this Python's hypercorn (the bench's venv, readable by the
    replica's user): the replica runs the system Python with the same hypercorn."""
    import hypercorn

    return str(Path(hypercorn.__file__).resolve().parents[1])


# --- wrk ----------------------------------------------------------------------------------------


def wrk(url: str, seconds: float, *, connections: int = 32, threads: int = 2,
        host: str | None = None) -> dict[str, float]:
    """Requests/s and the median latency (ms) of one wrk run; errors counted."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--latency", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    median = float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*?timeout (\d+)", out)
    count = re.search(r"(\d+) requests in", out)
    return {"rps": rps, "p50_ms": median, "non_2xx": float(bad.group(1)) if bad else 0.0,
            "timeouts": float(errors.group(1)) if errors else 0.0,
            "requests": float(count.group(1)) if count else 0.0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(pids: list[int], run: Any, idle_seconds: float = 2.0
                    ) -> tuple[dict[str, float], list[float]]:
    """``run()`` (a wrk run) and the CPU µs per request of each of ``pids`` during it,
    less what each burns idle (measured over ``idle_seconds`` just before)."""
    start = [cpu_seconds(pid) for pid in pids]
    began = time.monotonic()
    time.sleep(idle_seconds)  # the idle rate, not a wait for something
    idle = [(cpu_seconds(pid) - s) / (time.monotonic() - began)
            for pid, s in zip(pids, start, strict=True)]
    start = [cpu_seconds(pid) for pid in pids]
    began = time.monotonic()
    result = run()
    took = time.monotonic() - began
    used = [cpu_seconds(pid) - s - rate * took
            for pid, s, rate in zip(pids, start, idle, strict=True)]
    requests = max(result["requests"], 1.0)
    return result, [round(u / requests * 1e6, 1) for u in used]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- static: a node's ingress with a host lookup, and nginx ---------------------------------------


class StaticFile:
    """The host handler the bench registers: one 4 KiB file, as a site would serve it."""

    def __init__(self, body: bytes) -> None:
        from apps.ingress.targets import HostResponse

        self.response = HostResponse
        self.body = body
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'

    async def respond(self, request: Any) -> Any:
        return self.response(200, [(b"content-type", b"application/octet-stream"),
                                   (b"content-length", str(len(self.body)).encode()),
                                   (b"etag", self.etag)], self.body)


class StaticNode:
    """A real node in a thread of this process, its ingress answering ``static.home``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.address = ""
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.token: Any = None
        self.stop_event: Any = None

    def _main(self) -> None:
        import trio

        from apps.ingress.service import IngressService
        from meshcloud.transport.memory import MemoryNetwork
        from tests.apps.workloads.mesh import LocalMesh

        async def main() -> None:
            self.token = trio.lowlevel.current_trio_token()
            self.stop_event = trio.Event()
            async with trio.open_nursery() as nursery:
                mesh = await LocalMesh.create(self.root, nursery, 1, MemoryNetwork(seed=1))
                node = mesh.members[0].running
                ingress = next(s for s in node.services if isinstance(s, IngressService))
                handler = StaticFile(FILE)
                ingress.add_host_lookup(lambda host, path: handler
                                        if host == "static.home" else None)
                while not ingress.http_address:
                    await trio.sleep(0.05)
                self.address = ingress.http_address
                self.ready.set()
                await self.stop_event.wait()
                await mesh.close()
                nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        except BaseException as exc:  # reported by start()
            self.error = exc
            self.ready.set()

    def start(self) -> str:
        os.environ["MESHCLOUD_HTTP"] = "127.0.0.1:0"
        self.thread.start()
        self.ready.wait(120)
        if self.error is not None or not self.address:
            raise SystemExit(f"the static node did not start: {self.error!r}")
        return self.address

    def stop(self) -> None:
        import trio

        if self.token is not None and self.stop_event is not None:
            trio.from_thread.run_sync(self.stop_event.set, trio_token=self.token)
        self.thread.join(30)


def start_nginx(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (root / "www").mkdir()
    (root / "www" / "file.bin").write_bytes(FILE)
    conf = root / "nginx.conf"
    conf.write_text(f"""
user root root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    process = subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"])
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close()
               is None, 20, message="nginx listening")
    return process, port


# --- the forward stream -----------------------------------------------------------------------


def send_and_digest(host: str, port: int, total: int) -> tuple[float, bool, str]:
    block = os.urandom(CHUNK)
    digest = hashlib.sha256()
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        start = time.perf_counter()
        sent = 0
        while sent < total:
            piece = block[: min(CHUNK, total - sent)]
            sock.sendall(piece)
            digest.update(piece)
            sent += len(piece)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while data := sock.recv(4096):
            reply += data
        seconds = time.perf_counter() - start
    name, _, answer = reply.decode().partition("\n")
    expected = f"{total} {digest.hexdigest()}"
    return seconds, answer.strip() == expected, name


# --- the run ----------------------------------------------------------------------------------


def _static(root: Path, seconds: float, figures: dict[str, float]) -> None:
    """nginx, then the ingress of a node with a host lookup, serving the same file."""
    (root / "nginx" / "tmp").mkdir(parents=True)
    nginx, nginx_port = start_nginx(root / "nginx")
    try:
        direct = wrk(f"http://127.0.0.1:{nginx_port}/file.bin", seconds)
    finally:
        nginx.terminate()
        nginx.wait(10)
    figures["nginx_static_rps"] = round(direct["rps"])
    print(f"nginx, 4 KiB file:            {direct['rps']:9.0f} req/s  "
          f"p50 {direct['p50_ms']:.2f} ms", flush=True)
    static_node = StaticNode(root / "static")
    address = static_node.start()
    try:
        wrk(f"http://{address}/file.bin", 1, host="static.home")  # warm up
        static = wrk(f"http://{address}/file.bin", seconds, host="static.home")
    finally:
        static_node.stop()
    figures["static_rps"] = round(static["rps"])
    figures["static_non_2xx"] = static["non_2xx"]
    print(f"ingress host lookup, 4 KiB:   {static['rps']:9.0f} req/s  "
          f"p50 {static['p50_ms']:.2f} ms  non-2xx {static['non_2xx']:.0f}", flush=True)



class OneRoute:
    """What ``serve_http`` asks of the ingress service, for the path measure: one route
    (``hello.home``) to one replica on this machine, its upstream connections kept."""

    def __init__(self, port: int) -> None:
        from collections import defaultdict

        from apps.ingress.http import HttpLimits
        from apps.ingress.httpcore import HttpRoute
        from apps.ingress.pool import UpstreamPool
        from apps.ingress.routing import Target

        self.http_limits = HttpLimits()
        self.route = HttpRoute("hello.home", "", "hello", "http")
        self.target = Target("hello", "http", 0, b"here", port)
        self.pool = UpstreamPool()
        self.open: defaultdict[Any, int] = defaultdict(int)
        self.forwarded = self.failed = self.retries = 0
        self.http_refused = self.http_timeouts = self.http_not_found = 0

    def https_redirect(self, host: str) -> None:
        return None

    def http_route(self, host: str, path: str) -> Any:
        return self.route if host == "hello.home" else None

    def host_handler(self, host: str, path: str) -> None:
        return None

    def pick_target(self, workload: str, endpoint: str, exclude: set[Any]) -> Any:
        return None if self.target.key in exclude else self.target

    async def connect(self, workload: str, endpoint: str, exclude: Any = None, *,
                      pipe: bool = False) -> Any:
        import trio

        return self.target, await trio.open_tcp_stream("127.0.0.1", self.target.port)


def _client(port: int, count: int, box: dict[str, Any]) -> None:
    """``count`` GET requests on one kept-alive connection, one at a time."""
    request = b"GET / HTTP/1.1\r\nHost: hello.home\r\nUser-Agent: bench\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        for _ in range(count):
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += sock.recv(65536)
            if not head.startswith(b"HTTP/1.1 200"):
                box["bad"] = box.get("bad", 0) + 1


def path_work(count: int) -> dict[str, float]:
    """The ingress's HTTP path alone (``serve_http`` in this process, a plain GET each,
    to a hypercorn replica on this machine by TCP, its connection kept): per request,
    the Python function calls, trio task steps and CPU µs of this process's event loop
    thread. The calls and steps do not move with the machine's load."""
    import sys

    import trio

    from apps.ingress.http import serve_http

    port = free_port()
    app = subprocess.Popen([sys.executable, "-c", HYPERCORN_APP],
                           env={**os.environ, "PORT": str(port)})
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close()
               is None, 30, message="the replica listening")
    figures: dict[str, float] = {}

    class Steps(trio.abc.Instrument):
        steps = 0

        def before_task_step(self, task: Any) -> None:
            Steps.steps += 1

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        ingress = OneRoute(port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners,
                               lambda s: serve_http(s, ingress), listeners)  # type: ignore[arg-type]
            address = listeners[0].socket.getsockname()[1]
            box: dict[str, Any] = {}
            await trio.to_thread.run_sync(_client, address, 50, box)  # warm up
            calls = [0]

            def profile(frame: Any, event: str, arg: Any) -> None:
                if event == "call" or event == "c_call":
                    calls[0] += 1

            instrument = Steps()
            trio.lowlevel.add_instrument(instrument)
            cpu = time.thread_time()
            Steps.steps = 0
            sys.setprofile(profile)
            thread = threading.Thread(target=_client, args=(address, count, box))
            thread.start()
            await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
            sys.setprofile(None)
            steps = Steps.steps
            trio.lowlevel.remove_instrument(instrument)
            profiled = time.thread_time() - cpu
            # the CPU again without the profiler (it slows every call)
            cpu = time.thread_time()
            await trio.to_thread.run_sync(_client, address, count, box)
            plain = time.thread_time() - cpu
            figures.update(path_calls=round(calls[0] / count, 1),
                           path_task_steps=round(steps / count, 2),
                           path_cpu_us=round(plain / count * 1e6, 1),
                           path_profiled_cpu_us=round(profiled / count * 1e6, 1),
                           path_bad=float(box.get("bad", 0)))
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        app.kill()
        app.wait(10)
    print(f"HTTP path, per request:       {figures['path_calls']:.0f} calls, "
          f"{figures['path_task_steps']:.2f} task steps, {figures['path_cpu_us']:.0f} µs CPU",
          flush=True)
    return figures


def run(args: argparse.Namespace) -> dict[str, float]:
    if getattr(args, "only", "") == "path":
        load = os.getloadavg()
        figures = path_work(200 if args.quick else args.requests)
        figures["load_1m"] = round(load[0], 2)
        return figures
    mib = 64 if args.quick else args.mib
    seconds = 3.0 if args.quick else args.seconds
    total = mib << 20
    figures: dict[str, float] = {}
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="mc-bench-ingress-") as tmp:
        root = Path(tmp)
        if not getattr(args, "only", ""):
            _static(root, seconds, figures)
        exact = True
        name = ""
        took = 0.0
        http_port = free_port()
        cluster = LocalCluster(root / "mesh", extra_args=["--profile", args.profile],
                               env={"MESHCLOUD_RUNTIMES": "process",
                                    "MESHCLOUD_HTTP": f"mesh:{http_port}"})
        try:
            cluster.init_first(listen=f"{ADDRESSES[0]}:0")
            cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[1]}:0")
            a, b = cluster.agents
            a.cli("run", "hello", "--command",
                  f"{WORKLOAD_PYTHON} -c {shlex.quote(HYPERCORN_APP)}",
                  "--env", f"PYTHONPATH={hypercorn_path()}",
                  "--http", "--domain", "hello.home")
            a.cli("run", "sink", "--command", inline_script_line(SERVER, "digest"),
                  "--publish", "data")

            def row(name: str) -> dict | None:
                rows = [e for e in a.get("/v1/ingress")["endpoints"]
                        if e["workload"] == name and e["healthy"] and e["node_alive"]]
                return rows[0] if rows else None

            wait_until(lambda: row("hello") is not None and row("sink") is not None, 90,
                       message="hello and sink replicas healthy")
            hello = row("hello")
            assert hello is not None
            through = b if a.node_id == hello["node"] else a
            host = through.address.rsplit(":", 1)[0]
            url = f"http://{host}:{http_port}/"
            wait_until(lambda: wrk(url, 1, connections=1, threads=1,
                                   host="hello.home")["non_2xx"] == 0, 30,
                       message="the ingress routes hello.home")
            direct_url = f"http://127.0.0.1:{hello['port']}/"
            wrk(url, 2, host="hello.home")  # warm up: upstream connections, relays
            direct = wrk(direct_url, seconds)
            replica_agent = a if a.node_id == hello["node"] else b
            proxy, (ingress_cpu, replica_cpu) = cpu_per_request(
                [through.pid, replica_agent.pid],
                lambda: wrk(url, seconds, host="hello.home"))
            direct1 = wrk(direct_url, seconds, connections=1, threads=1)
            proxy1 = wrk(url, seconds, connections=1, threads=1, host="hello.home")
            figures.update(
                direct_rps=round(direct["rps"]), proxy_rps=round(proxy["rps"]),
                proxy_ratio=round(proxy["rps"] / direct["rps"], 3),
                proxy_non_2xx=proxy["non_2xx"],
                ingress_cpu_us=ingress_cpu, replica_agent_cpu_us=replica_cpu,
                direct_p50_ms=round(direct1["p50_ms"], 3),
                proxy_p50_ms=round(proxy1["p50_ms"], 3),
                proxy_added_p50_ms=round(proxy1["p50_ms"] - direct1["p50_ms"], 3))
            print(f"hypercorn app direct:         {direct['rps']:9.0f} req/s  "
                  f"p50 (1 conn) {direct1['p50_ms']:.2f} ms", flush=True)
            print(f"through the other node:       {proxy['rps']:9.0f} req/s  "
                  f"p50 (1 conn) {proxy1['p50_ms']:.2f} ms  non-2xx {proxy['non_2xx']:.0f}",
                  flush=True)
            print(f"CPU per proxied request:      ingress agent {ingress_cpu:.0f} µs, "
                  f"replica's agent {replica_cpu:.0f} µs", flush=True)

            if not getattr(args, "only", ""):
                sink = row("sink")
                assert sink is not None
                client_side = b if a.node_id == sink["node"] else a
                port = free_port()
                a.cli("expose", "sink:data", "--port", str(port), "--bind", "mesh")
                shost = client_side.address.rsplit(":", 1)[0]
                wait_until(lambda: send_and_digest(shost, port, 1)[1], 30,
                           message="exposed port forwards")
                print(f"sending {mib} MiB through {client_side.name} to the replica on the "
                      "other node", flush=True)
                took, exact, name = send_and_digest(shost, port, total)
        finally:
            cluster.close()
            for agent in cluster.agents:
                for path in agent.data_dir.glob("runtimes/process/*/state.json"):
                    _kill(path)
    figures["load_1m"] = round(load[0], 2)
    if getattr(args, "only", ""):
        return figures
    if not exact:
        raise SystemExit(f"the {mib} MiB stream did NOT arrive byte-exact at {name}")
    rate = total / took / 1e6
    print(f"{mib} MiB byte-exact at {name} in {took:.2f} s: {rate:.1f} MB/s")
    figures.update(forward_stream_mb_s=round(rate, 1), forward_stream_mib=mib,
                   forward_stream_s=round(took, 2), byte_exact=1.0)
    return figures


def _kill(state_file: Path) -> None:
    import signal

    from apps.runtimes.process_state import ReplicaRecord

    try:
        os.killpg(ReplicaRecord.load(state_file.parent).pid, signal.SIGKILL)
    except Exception:  # best effort cleanup of our own replicas
        pass
