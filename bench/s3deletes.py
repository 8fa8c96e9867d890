"""`python -m bench s3deletes`: single-key S3 requests on a 3-agent loopback mesh.

What a cleanup tool does to empty a bucket without multi-object delete: PUT ``--keys``
small objects, HEAD each, then DELETE each, one request at a time through boto3. Prints
milliseconds per request of each kind and the projected seconds for 1,000 deletes.
A DELETE is one quorum write of a tombstone on the bucket's three index holders, so it
costs what a small (inline) PUT costs; a HEAD is a quorum read (no disk write).

Then the same keys again, removed by DeleteObjects (up to 1,000 keys per request).

The JSON figures: ``put_ms``, ``head_ms``, ``delete_ms``, ``deletes_1000_s``,
``delete_objects_per_key_ms``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.blobstore import s3_client
from sim.agents import LocalCluster, wait_until


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=int, default=300, help="objects put, then deleted")


def run(args: argparse.Namespace) -> dict[str, Any]:
    keys = 50 if args.quick else args.keys
    with tempfile.TemporaryDirectory(prefix="mc-bench-s3del-") as tmp, \
            LocalCluster.create(Path(tmp), 3) as cluster:
        agent = cluster.agents[0]
        wait_until(lambda: sum(p["connected"] for p in agent.get("/v1/peers")) >= 2, 30,
                   message="mesh connected")
        key = agent.post("/v1/storage/keys", {"name": "bench", "buckets": {"*": "read,write"}})
        agent.post("/v1/storage/buckets", {"name": "deletes"})
        s3 = s3_client(agent.info["s3"], key["access_key"], key["secret"])
        s3.put_object(Bucket="deletes", Key="warm", Body=b"x")
        s3.delete_object(Bucket="deletes", Key="warm")
        timings = {}
        for name, call in (
            ("put", lambda i: s3.put_object(Bucket="deletes", Key=f"k/{i:05d}", Body=b"x" * 100)),
            ("head", lambda i: s3.head_object(Bucket="deletes", Key=f"k/{i:05d}")),
            ("delete", lambda i: s3.delete_object(Bucket="deletes", Key=f"k/{i:05d}")),
        ):
            start = time.perf_counter()
            for i in range(keys):
                call(i)
            timings[name] = (time.perf_counter() - start) / keys * 1000
            print(f"{name:7s} {timings[name]:7.1f} ms per request ({keys} requests)", flush=True)
        assert "Contents" not in s3.list_objects_v2(Bucket="deletes")
        for i in range(keys):
            s3.put_object(Bucket="deletes", Key=f"k/{i:05d}", Body=b"x" * 100)
        start = time.perf_counter()
        for first in range(0, keys, 1000):
            s3.delete_objects(Bucket="deletes", Delete={"Objects": [
                {"Key": f"k/{i:05d}"} for i in range(first, min(keys, first + 1000))]})
        timings["delete_objects_per_key"] = (time.perf_counter() - start) / keys * 1000
        print(f"DeleteObjects {timings['delete_objects_per_key']:7.2f} ms per key", flush=True)
        assert "Contents" not in s3.list_objects_v2(Bucket="deletes")
    figures = {f"{name}_ms": round(ms, 1) for name, ms in timings.items()}
    figures["deletes_1000_s"] = round(timings["delete"], 1)
    print(f"1,000 deletes one by one: ~{figures['deletes_1000_s']} s")
    return figures
