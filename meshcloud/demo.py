"""`meshcloud demo`: a local mesh of real agents on 127.0.0.1, ready to click through.

The first node creates the mesh; each further node joins with an invite through the node
before it (so joining through any member is exercised). Agents are ordinary `meshcloud up`
processes with their own data dirs under one directory; running the demo again reuses
them. Ctrl-C (or SIGTERM) stops every agent it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from meshcloud.datadir import DataDir
from meshcloud.errors import MeshError

READY_TIMEOUT = 30.0


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


def _start(data_dir: Path) -> subprocess.Popen[bytes]:
    log = open(data_dir / "logs" / "console.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "meshcloud", "--data-dir", str(data_dir), "up"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _wait_ready(data_dir: Path, process: subprocess.Popen[bytes]) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT
    d = DataDir(data_dir)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (data_dir / "logs" / "console.log").read_text()[-2000:]
            raise MeshError(f"agent {data_dir.name} exited during start-up:\n{tail}")
        info = d.runtime_info()
        if info and info.get("pid") == process.pid and info.get("api"):
            return info
        time.sleep(0.1)
    raise MeshError(f"agent {data_dir.name} did not start within {READY_TIMEOUT:.0f} s")


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


def run_demo(directory: str | None, *, nodes: int, base_port: int) -> int:
    root = Path(directory or os.environ.get("MESHCLOUD_DEMO_DIR", "~/.meshcloud-demo"))
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root / f"node{i + 1}" for i in range(nodes)]
    ports = [(base_port + i, base_port + 100 + i, base_port + 200 + i) for i in range(nodes)]
    fresh = not (dirs[0] / "node.key").exists()
    if fresh:
        for peer, api, s3 in ports:
            for port in (peer, api, s3):
                if not _free(port):
                    raise MeshError(f"port {port} is in use; pass --base-port to use others")
    processes: list[subprocess.Popen[bytes]] = []

    def stop_all(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        infos = []
        for index, data_dir in enumerate(dirs):
            peer, api, s3 = ports[index]
            flags = ["--listen", f"127.0.0.1:{peer}", "--api", f"127.0.0.1:{api}",
                     "--s3", f"127.0.0.1:{s3}", "--label", f"demo=node{index + 1}"]
            if not (data_dir / "node.key").exists():
                if index == 0:
                    print(f"creating mesh 'demo' in {data_dir}", flush=True)
                    _cli(data_dir, "init", "--name", "demo", *flags)
                else:
                    sponsor_address = f"127.0.0.1:{ports[index - 1][0]}"
                    token = _cli(dirs[0], "invite", "--ttl", "10m", "--bootstrap",
                                 sponsor_address).stdout.strip().splitlines()[-1]
                    print(f"node{index + 1} joins through node{index}", flush=True)
                    _cli(data_dir, "join", token, *flags)
            process = _start(data_dir)
            processes.append(process)
            infos.append(_wait_ready(data_dir, process))
        print("\nmeshcloud demo is up:", flush=True)
        for index, (data_dir, info) in enumerate(zip(dirs, infos, strict=True)):
            print(f"  node{index + 1}  {info['node_id'][:12]}  peers {info['listen'][0]}  "
                  f"API {info['api']}", flush=True)
            print(f"         web UI: {_login_url(data_dir, info['api'])}", flush=True)
        print(f"\nCLI: {sys.executable} -m meshcloud --data-dir {dirs[0]} status", flush=True)
        print("Ctrl-C stops the demo (data stays in "
              f"{root}; delete it to start afresh).", flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        dead = [dirs[i].name for i, p in enumerate(processes) if p.poll() is not None]
        print(f"agent(s) {', '.join(dead)} stopped; stopping the demo", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the demo agents…", flush=True)
        return 0
    finally:
        stop_all()
