"""`python -m bench ingress`: one TCP connection carried across the mesh by the ingress.

Two real agents on their own loopback addresses (127.0.0.51, .52), the process runtime, a
replica of a digest server (it reads to EOF, then answers the byte count and SHA-256).
The replica runs on one agent; the client connects to the *other* agent's exposed port,
so every byte crosses ``/meshcloud/forward/1`` (TCP → Noise stream → TCP). 1 GiB by
default (``--quick``: 64 MiB); the answer must match the bytes sent, or the bench fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from sim.agents import LocalCluster, wait_until

ADDRESSES = ["127.0.0.51", "127.0.0.52"]
SERVER = Path(__file__).resolve().parents[1] / "tests/apps/ingress/echo_server.py"
CHUNK = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=int, default=1024, help="MiB to send (default 1024)")


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


def run(args: argparse.Namespace) -> dict[str, float]:
    mib = 64 if args.quick else args.mib
    total = mib << 20
    with tempfile.TemporaryDirectory(prefix="mc-bench-ingress-") as tmp:
        cluster = LocalCluster(Path(tmp), extra_args=["--profile", "local"],
                               env={"MESHCLOUD_RUNTIMES": "process"})
        try:
            cluster.init_first(listen=f"{ADDRESSES[0]}:0")
            cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[1]}:0")
            a, b = cluster.agents
            a.cli("run", "sink", "--command", f"{sys.executable} {SERVER} digest",
                  "--publish", "data")

            def row() -> dict | None:
                rows = [e for e in a.get("/v1/ingress")["endpoints"]
                        if e["workload"] == "sink" and e["healthy"]]
                return rows[0] if rows else None

            wait_until(lambda: row() is not None, 60, message="sink replica healthy")
            holder = row()["node"]  # type: ignore[index]
            client_side = b if a.node_id == holder else a
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            a.cli("expose", "sink:data", "--port", str(port), "--bind", "mesh")
            host = client_side.address.rsplit(":", 1)[0]
            wait_until(lambda: send_and_digest(host, port, 1)[1], 30,
                       message="exposed port forwards")
            print(f"sending {mib} MiB through {client_side.name} to the replica on the other "
                  "node", flush=True)
            seconds, exact, name = send_and_digest(host, port, total)
        finally:
            cluster.close()
            for agent in cluster.agents:
                for path in agent.data_dir.glob("runtimes/process/*/state.json"):
                    _kill(path)
    if not exact:
        raise SystemExit(f"the {mib} MiB stream did NOT arrive byte-exact at {name}")
    rate = total / seconds / 1e6
    print(f"{mib} MiB byte-exact at {name} in {seconds:.2f} s: {rate:.1f} MB/s")
    return {"forward_stream_mb_s": round(rate, 1), "forward_stream_mib": mib,
            "forward_stream_s": round(seconds, 2), "byte_exact": 1.0}


def _kill(state_file: Path) -> None:
    import signal

    from apps.runtimes.process_state import ReplicaRecord

    try:
        os.killpg(ReplicaRecord.load(state_file.parent).pid, signal.SIGKILL)
    except Exception:  # best effort cleanup of our own replicas
        pass
