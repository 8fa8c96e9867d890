"""`meshcloud demo`: a local mesh of real agents on 127.0.0.1, ready to click through.

The first node creates the mesh; each further node joins with an invite through the node
before it (so joining through any member is exercised). Agents are ordinary `meshcloud up`
processes with their own data dirs under one directory; running the demo again reuses
them.

The demo shows that a node can be unplugged: when an agent dies (``kill -9``, a crash) the
others keep serving and the demo says which node went; Enter (or ``--restart-dead``, or
``meshcloud demo`` again from another terminal) starts it again. Nodes whose agent already
runs (another demo's) are left alone. Ctrl-C (or SIGTERM) stops every agent this demo
started, and then their workloads: containers (with their conmon and overlay mounts),
process replicas and the podman run dirs under /run/meshcloud.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from meshcloud.agent.daemon import agent_running
from meshcloud.datadir import DataDir
from meshcloud.errors import MeshError

READY_TIMEOUT = 30.0
POLL_S = 0.5
STOP_TIMEOUT = 15.0


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "meshcloud", "--data-dir", str(data_dir),
                             *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise MeshError(f"`meshcloud {' '.join(args[:1])}` failed for {data_dir.name}: "
                        f"{result.stderr.strip()}")
    return result


@dataclass
class DemoNode:
    name: str
    data_dir: Path
    peer: int
    api: int
    s3: int
    ingress: int = 0
    process: subprocess.Popen[bytes] | None = None
    """The agent this demo started (None when another process runs it)."""
    info: dict[str, Any] = field(default_factory=dict)
    reported_dead: bool = False

    @property
    def datadir(self) -> DataDir:
        return DataDir(self.data_dir)

    def flags(self) -> list[str]:
        return ["--listen", f"127.0.0.1:{self.peer}", "--api", f"127.0.0.1:{self.api}",
                "--s3", f"127.0.0.1:{self.s3}", "--label", f"demo={self.name}",
                *(["--ingress", f"127.0.0.1:{self.ingress}"] if self.ingress else [])]

    def alive(self) -> bool:
        if self.process is not None and self.process.poll() is None:
            return True
        return agent_running(self.datadir)

    def start(self) -> None:
        self.data_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "logs" / "console.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "meshcloud", "--data-dir", str(self.data_dir), "up"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MESHCLOUD_HTTP": f"127.0.0.1:{self.ingress}"}
                if self.ingress else None,
            )
        self.info = self._wait_ready()
        self.reported_dead = False

    def _wait_ready(self) -> dict[str, Any]:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.data_dir / "logs" / "console.log").read_text()[-2000:]
                raise MeshError(f"agent {self.name} exited during start-up:\n{tail}")
            info = self.datadir.runtime_info()
            if info and info.get("pid") == self.process.pid and info.get("api"):
                return info
            time.sleep(0.1)
        raise MeshError(f"agent {self.name} did not start within {READY_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _login_url(data_dir: Path, api: str) -> str:
    token = DataDir(data_dir).api_token()
    request = urllib.request.Request(api + "/v1/ui/ticket", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            ticket = json.loads(response.read())["ticket"]
    except OSError:
        return api
    return f"{api}/ui/login?ticket={ticket}"


def cli_command() -> str:
    """How to type `meshcloud` here: the script beside this Python, else `python -m`."""
    script = Path(sys.executable).parent / "meshcloud"
    return str(script) if script.exists() else f"{sys.executable} -m meshcloud"


def demo_nodes(root: Path, nodes: int, base_port: int) -> list[DemoNode]:
    """The demo's nodes: ``nodeN`` listens on base+N-1 (peers), +100 (API), +200 (S3),
    +300 (HTTP ingress)."""
    return [DemoNode(f"node{i + 1}", root / f"node{i + 1}", base_port + i,
                     base_port + 100 + i, base_port + 200 + i, base_port + 300 + i)
            for i in range(nodes)]


def summary_lines(nodes: list[DemoNode], cli: str) -> list[str]:
    """What the demo prints once up: per node its addresses, then how to use it."""
    lines = ["", "meshcloud demo is up:"]
    for node in nodes:
        info = node.info
        lines.append(f"  {node.name}  {str(info.get('node_id', '?'))[:12]}  "
                     f"peers 127.0.0.1:{node.peer}  API {info.get('api', '-')}  "
                     f"S3 http://127.0.0.1:{node.s3}  ingress http://127.0.0.1:{node.ingress}")
    first = nodes[0].data_dir
    lines += [
        "",
        f"CLI:    {cli} --data-dir {first} status",
        f"S3 key: {cli} --data-dir {first} bucket create demo && "
        f"{cli} --data-dir {first} s3 key create me --bucket demo",
        f"        then e.g. AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... aws "
        f"--endpoint-url http://127.0.0.1:{nodes[0].s3} s3 ls s3://demo",
    ]
    return lines


def dead_message(node: DemoNode, others_alive: int) -> str:
    code = node.process.returncode if node.process is not None else None
    how = f" (killed by {signal.Signals(-code).name})" if code is not None and code < 0 and \
        -code in signal.valid_signals() else (f" (exit {code})" if code is not None else "")
    return (f"{node.name} ({str(node.info.get('node_id', '?'))[:12]}) stopped{how}; "
            f"the {others_alive} other node(s) keep serving. Press Enter to restart it "
            f"(or run `meshcloud demo` again); Ctrl-C stops the demo.")


class _Keys:
    """Lines typed on stdin, without blocking; stops listening at end of input."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        try:
            if stream is not None:
                stream.fileno()
        except (OSError, ValueError):
            self.stream = None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; True when a line was typed."""
        if self.stream is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self.stream], [], [], timeout)
        if not ready:
            return False
        if not self.stream.readline():
            self.stream = None
            return False
        return True


def run_demo(directory: str | None, *, nodes: int, base_port: int,
             restart_dead: bool = False, stdin: TextIO | None = None) -> int:
    root = Path(directory or os.environ.get("MESHCLOUD_DEMO_DIR", "~/.meshcloud-demo"))
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    demo = demo_nodes(root, nodes, base_port)
    if not (demo[0].data_dir / "node.key").exists():
        for node in demo:
            for port in (node.peer, node.api, node.s3, node.ingress):
                if not _free(port):
                    raise MeshError(f"port {port} is in use; pass --base-port to use others")

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (as a shell does
    # for a command sent to the background), where Python would not raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for index, node in enumerate(demo):
            if not (node.data_dir / "node.key").exists():
                if index == 0:
                    print(f"creating mesh 'demo' in {node.data_dir}", flush=True)
                    _cli(node.data_dir, "init", "--name", "demo", *node.flags())
                else:
                    sponsor = f"127.0.0.1:{demo[index - 1].peer}"
                    token = _cli(demo[0].data_dir, "invite", "--ttl", "10m", "--bootstrap",
                                 sponsor).stdout.strip().splitlines()[-1]
                    print(f"{node.name} joins through {demo[index - 1].name}", flush=True)
                    _cli(node.data_dir, "join", token, *node.flags())
            if agent_running(node.datadir):
                node.info = node.datadir.runtime_info() or {}
                print(f"{node.name} is already running (pid {node.info.get('pid', '?')}); "
                      "leaving it as it is", flush=True)
                continue
            node.start()
        for line in summary_lines(demo, cli_command()):
            print(line, flush=True)
        for node in demo:
            if node.info.get("api"):
                print(f"  {node.name} web UI: {_login_url(node.data_dir, node.info['api'])}",
                      flush=True)
        print(f"\nKill an agent (kill -9 PID) to see the others keep serving. Ctrl-C stops "
              f"the demo (data stays in {root}; delete it to start afresh).", flush=True)
        return _supervise(demo, restart_dead=restart_dead, keys=_Keys(stdin))
    except KeyboardInterrupt:
        print("\nstopping the demo agents…", flush=True)
        return 0
    finally:
        _stop(demo)


def _supervise(demo: list[DemoNode], *, restart_dead: bool, keys: _Keys) -> int:
    while True:
        typed = keys.wait(POLL_S)
        dead = [node for node in demo if not node.alive()]
        for node in dead:
            if not node.reported_dead:
                node.reported_dead = True
                print(dead_message(node, len(demo) - len(dead)), flush=True)
        for node in demo:
            if node.reported_dead and node not in dead:
                node.reported_dead = False
                print(f"{node.name} is running again", flush=True)
        if dead and (restart_dead or typed):
            for node in dead:
                print(f"restarting {node.name}…", flush=True)
                node.start()
                print(f"{node.name} is back: pid {node.info['pid']}, "
                      f"API {node.info['api']}", flush=True)


def _stop(demo: list[DemoNode]) -> None:
    for node in demo:
        node.stop()
    for node in demo:
        node.wait_stopped()
    for node in demo:
        if node.process is not None and not agent_running(node.datadir):
            clean_workloads(node.data_dir)


def clean_workloads(data_dir: Path) -> list[str]:
    """Stop what a stopped agent's replicas left running (see
    :func:`meshcloud.agent.compose.clean_workloads`). Returns what it did."""
    from meshcloud.agent.compose import clean_workloads as clean

    return clean(data_dir)
