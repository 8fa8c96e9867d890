"""`python -m bench blobstore`: the blobstore from zfec up to S3 over real agents.

* zfec 4+2 encode and decode (4 MiB chunks), MB/s of data;
* LMDB shard writes (1 MiB shards, fsync per put as the node runs it), MB/s;
* S3 through boto3 (path style, SigV4) against a 1-node and a 6-node loopback mesh of real
  agents (``meshcloud up`` processes): 4 KiB PUT+GET ops/s (one client, sequential) and a
  64 MiB PUT and GET, MB/s (10^6 bytes/s);
* 64 KiB PUT+GET ops/s too: objects up to 4 KiB live inline in their index record (one
  quorum write, no shards), so the 4 KiB figure measures the index path and the 64 KiB
  one the shard path;
* the same workload against ``moto_server`` in the same run, printed as a
  ratio (moto keeps objects in memory: no disk, no network hops, no erasure coding).

Memory of the agent process (1-node mesh, ``/proc/<pid>/status``): ``put_64mib_peak_rss_mb``
is the highest VmRSS sampled every 10 ms during the 64 MiB PUTs, ``rss_after_mb`` the RSS
once the transfers have settled (after the last GET, the client closed, at least 7 s:
idle keep-alive connections closed; then three readings 1 s apart within 1 MB, or 30 s);
targets (issue 13): peak <= 200 MB, after <= 80 MB.

The JSON figures: ``zfec_encode_mb_s``, ``lmdb_write_mb_s``, ``put_64mib_mb_s``,
``get_64mib_mb_s``, ``ops_4k_per_s`` (the 1-node mesh), ``moto_ops_4k_per_s``, and the
6-node and moto counterparts (``mesh6_*``, ``moto_*``). ``--quick`` runs fewer operations
and one 64 MiB round. Targets (issue 7): GET >= 200 MB/s and PUT >= 100 MB/s on one node,
zfec encode >= 1 GB/s, S3 ops >= moto's.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from blobstore.benchmarks import erasure_throughput, shardstore_throughput
from sim.agents import LocalCluster, wait_until

MB = 1_000_000
MIB = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", type=int, default=400, help="4 KiB PUT+GET pairs")
    parser.add_argument("--rounds", type=int, default=3, help="64 MiB PUT/GET rounds")
    parser.add_argument("--no-mesh6", action="store_true", help="skip the 6-node mesh")


def s3_client(url: str, key: str, secret: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      signature_version="s3v4",
                                      retries={"max_attempts": 1}, read_timeout=300))


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MB (10^6 bytes); 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return 0.0


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds between start() and stop()."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


KEEP_ALIVE = 5.0
"""Seconds hypercorn keeps an idle client connection open; a connection that carried a
big body holds its buffers until it closes (the client closing its pool may not close
it at once)."""


def settled_rss_mb(pid: int, timeout: float = 30.0, quiet: int = 3,
                   at_least: float = KEEP_ALIVE + 2) -> float:
    """RSS once the transfers have settled: at least ``at_least`` seconds after the last
    one (idle connections closed) and ``quiet`` readings 1 s apart within 1 MB of each
    other (the agent gives memory back a second or two after transfers stop), or the last
    reading after ``timeout``."""
    start = time.monotonic()
    readings = [rss_mb(pid)]
    while time.monotonic() - start < timeout:
        time.sleep(1.0)
        readings.append(rss_mb(pid))
        last = readings[-quiet:]
        if time.monotonic() - start >= at_least and len(last) == quiet \
                and max(last) - min(last) < 1.0:
            break
    return readings[-1]


def workload(s3: Any, bucket: str, ops: int, rounds: int, pid: int | None = None
             ) -> dict[str, float]:
    small = os.urandom(4096)
    s3.put_object(Bucket=bucket, Key="warm", Body=small)
    start = time.perf_counter()
    for i in range(ops):
        s3.put_object(Bucket=bucket, Key=f"small/{i % 50}", Body=small)
        s3.get_object(Bucket=bucket, Key=f"small/{i % 50}")["Body"].read()
    ops_per_s = 2 * ops / (time.perf_counter() - start)
    medium = os.urandom(64 * 1024)  # above the inline limit: shards and a BlobRef
    start = time.perf_counter()
    for i in range(ops // 2):
        s3.put_object(Bucket=bucket, Key=f"medium/{i % 50}", Body=medium)
        s3.get_object(Bucket=bucket, Key=f"medium/{i % 50}")["Body"].read()
    ops_64k = 2 * (ops // 2) / (time.perf_counter() - start)
    big = os.urandom(64 * MIB)
    put, get, peak = 0.0, 0.0, 0.0
    for _ in range(rounds):
        with RssSampler(pid or 0) as sampler:
            start = time.perf_counter()
            s3.put_object(Bucket=bucket, Key="big", Body=big)
            put = max(put, len(big) / (time.perf_counter() - start) / MB)
        peak = max(peak, sampler.peak)
        start = time.perf_counter()
        body = s3.get_object(Bucket=bucket, Key="big")["Body"]
        got = 0
        while piece := body.read(8 * MIB):
            got += len(piece)
        get = max(get, got / (time.perf_counter() - start) / MB)
        assert got == len(big)
    out = {"ops_4k_per_s": round(ops_per_s, 1), "ops_64k_per_s": round(ops_64k, 1),
           "put_64mib_mb_s": round(put, 1),
           "get_64mib_mb_s": round(get, 1)}
    if pid is not None:
        del big, body
        # the client's keep-alive connection would hold the server's per-connection
        # buffers until its idle timeout: settled means the client is done
        getattr(s3, "close", lambda: None)()
        out["put_64mib_peak_rss_mb"] = round(peak, 1)
        out["rss_after_mb"] = round(settled_rss_mb(pid), 1)
    return out


def mesh_workload(nodes: int, ops: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"mc-bench-blob{nodes}-") as tmp, \
            LocalCluster.create(Path(tmp), nodes, chain=False) as cluster:
        agent = cluster.agents[0]
        if nodes > 1:
            wait_until(lambda: sum(p["connected"] for p in agent.get("/v1/peers"))
                       >= nodes - 1, 30, message="mesh connected")
        key = agent.post("/v1/storage/keys", {"name": "bench", "buckets": {"*": "read,write"}})
        agent.post("/v1/storage/buckets", {"name": "bench"})
        return workload(s3_client(agent.info["s3"], key["access_key"], key["secret"]),
                        "bench", ops, rounds, pid=agent.pid)


@contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "moto_server"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    process = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_until(up, 30, interval=0.1, message="moto_server listening")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(args.quick)
    ops = 100 if quick else args.ops
    rounds = 1 if quick else args.rounds
    out: dict[str, Any] = {}
    erasure = erasure_throughput(min_time=0.2 if quick else 0.5)
    out["zfec_encode_mb_s"] = round(erasure["zfec_encode_MBps"], 1)
    out["zfec_decode_mb_s"] = round(erasure["zfec_decode_missing_m_MBps"], 1)
    print(f"zfec 4+2 encode {out['zfec_encode_mb_s']} MB/s, decode (2 data shards lost) "
          f"{out['zfec_decode_mb_s']} MB/s")
    lmdb = shardstore_throughput(total=(32 if quick else 128) << 20)
    out["lmdb_write_mb_s"] = round(lmdb["lmdb_write_fsync_MBps"], 1)
    out["lmdb_write_nosync_mb_s"] = round(lmdb["lmdb_write_nosync_MBps"], 1)
    print(f"LMDB shard writes (1 MiB): {out['lmdb_write_mb_s']} MB/s with fsync, "
          f"{out['lmdb_write_nosync_mb_s']} MB/s without")
    one = mesh_workload(1, ops, rounds)
    out.update(one)
    print(f"1-node mesh: {one['ops_4k_per_s']} ops/s (4 KiB), {one['ops_64k_per_s']} ops/s "
          f"(64 KiB), PUT 64 MiB "
          f"{one['put_64mib_mb_s']} MB/s, GET {one['get_64mib_mb_s']} MB/s; agent RSS "
          f"peak {one['put_64mib_peak_rss_mb']} MB during the PUT, "
          f"{one['rss_after_mb']} MB after")
    if not getattr(args, "no_mesh6", False):
        six = mesh_workload(6, ops, rounds)
        out.update({f"mesh6_{k}": v for k, v in six.items() if "rss" not in k})
        print(f"6-node mesh (4+2): {six['ops_4k_per_s']} ops/s, PUT {six['put_64mib_mb_s']} "
              f"MB/s, GET {six['get_64mib_mb_s']} MB/s")
    with moto_server() as url:
        s3 = s3_client(url, "test", "test")
        s3.create_bucket(Bucket="bench")
        moto = workload(s3, "bench", ops, rounds)
    out["moto_ops_4k_per_s"] = moto["ops_4k_per_s"]
    out["moto_ops_64k_per_s"] = moto["ops_64k_per_s"]
    out["moto_put_64mib_mb_s"] = moto["put_64mib_mb_s"]
    out["moto_get_64mib_mb_s"] = moto["get_64mib_mb_s"]
    out["ops_vs_moto"] = round(out["ops_4k_per_s"] / max(moto["ops_4k_per_s"], 1e-9), 2)
    print(f"moto_server: {moto['ops_4k_per_s']} ops/s (4 KiB), {moto['ops_64k_per_s']} ops/s "
          f"(64 KiB), PUT {moto['put_64mib_mb_s']} MB/s, "
          f"GET {moto['get_64mib_mb_s']} MB/s")
    print(f"ratio 4 KiB ops, meshcloud 1-node / moto: {out['ops_vs_moto']}")
    print(f"targets: GET >= 200 MB/s ({out['get_64mib_mb_s']}), PUT >= 100 MB/s "
          f"({out['put_64mib_mb_s']}), zfec >= 1000 MB/s ({out['zfec_encode_mb_s']}), "
          f"ops >= moto ({out['ops_vs_moto']}x), peak RSS <= 200 MB "
          f"({out['put_64mib_peak_rss_mb']}), RSS after <= 80 MB ({out['rss_after_mb']})")
    return out
