"""`python -m bench spark [--quick] [--mb N]`: Spark on the mesh against Spark on one machine.

Three real agents on loopback addresses, ``spark up --workers 3`` (512 MiB, one core
each); CSV objects (``key,amount,text``) in a bucket; one job, submitted with ``meshcloud
spark submit``, that times three phases over the bucket through the ``meshcloud`` data
source: a plain read (``count``: the bucket read throughput), a word count of the text
column and a group-by (sum and count of amount per key). The same job then runs with
``local[2]`` on the same files on local disk (Spark's own text and CSV readers). The
figures: ``mesh_s`` and ``local_s`` (word count + group-by), their ratio, and
``read_mb_s``. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ADDRESSES = [f"127.0.0.{91 + i}" for i in range(3)]
OBJECT_MB = 32
WORDS = [f"w{i:04d}" for i in range(2000)]

JOB = r'''
import json, sys, time
from pyspark.sql import SparkSession, functions as F

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
where, local = args["--input"], args.get("--local") == "1"
builder = SparkSession.builder.appName("bench")
if local:
    builder = builder.master("local[2]").config("spark.driver.memory", "1g")
spark = builder.getOrCreate()
spark.sparkContext.setLogLevel("WARN")
schema = "key string, amount string, text string"

def text():
    if local:
        return spark.read.text(where)
    return spark.read.format("meshcloud").load(where)

def table():
    if local:
        return spark.read.schema(schema).csv(where)
    return spark.read.format("meshcloud").option("format", "csv").option("header", "false") \
        .schema(schema).load(where)

t0 = time.monotonic()
rows = text().count()
t1 = time.monotonic()
words = text().select(F.explode(F.split(F.col("value"), "[ ,]")).alias("w")) \
    .where(F.col("w") != "").groupBy("w").count()
distinct = words.count()
t2 = time.monotonic()
groups = table().groupBy("key").agg(F.sum(F.col("amount").cast("long")).alias("s"),
                                    F.count("*").alias("n")).collect()
t3 = time.monotonic()
print("BENCH " + json.dumps({"read_s": t1 - t0, "wordcount_s": t2 - t1,
                             "groupby_s": t3 - t2, "rows": rows, "distinct": distinct,
                             "groups": len(groups)}), flush=True)
spark.stop()
'''


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mb", type=int, default=512, help="data size in MB (default 512)")


def make_data(directory: Path, total_mb: int, seed: int = 7) -> list[Path]:
    rng = random.Random(seed)
    size = min(OBJECT_MB, total_mb) << 20
    files = []
    for i in range(max(1, total_mb // OBJECT_MB)):
        path = directory / f"part{i:03d}.csv"
        with open(path, "w") as f:
            written = 0
            while written < size:
                line = (f"k{rng.randrange(100)},{rng.randrange(1000)},"
                        f"{' '.join(rng.choices(WORDS, k=12))}\n")
                f.write(line)
                written += len(line)
        files.append(path)
    return files


def parse_bench(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith("BENCH "):
            figures: dict[str, Any] = json.loads(line[6:])
            return figures
    raise RuntimeError("the job printed no figures:\n" + text[-3000:])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sim.agents import LocalCluster, wait_until

    total_mb = 32 if args.quick else args.mb
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        files = make_data(data, total_mb)
        size = sum(f.stat().st_size for f in files)
        job = root / "bench_job.py"
        job.write_text(JOB)
        print(f"data: {len(files)} objects, {size / 1e6:.0f} MB", flush=True)
        cluster = LocalCluster(root / "mesh", extra_args=["--profile", "local"])
        try:
            cluster.init_first(listen=f"{ADDRESSES[0]}:0")
            for address in ADDRESSES[1:]:
                cluster.join(through=cluster.agents[0], listen=f"{address}:0")
            a = cluster.agents[0]
            wait_until(lambda: sum(n["capable"] for n in a.get("/v1/spark")["nodes"]) == 3,
                       180, interval=0.5, message="3 capable nodes")
            a.cli("spark", "up", "--workers", "3", "--worker-memory", "512m")
            wait_until(lambda: len([w for w in (a.get("/v1/spark").get("master_view") or {})
                                    .get("workers", []) if w["state"] == "ALIVE"]) == 3,
                       300, interval=1, message="3 workers")
            a.cli("bucket", "create", "benchdata")
            t = time.monotonic()
            for f in files:
                a.cli("cp", str(f), f"s3://benchdata/in/{f.name}", timeout=600)
            upload_s = time.monotonic() - t
            print(f"upload: {upload_s:.1f} s ({size / 1e6 / upload_s:.1f} MB/s)", flush=True)
            t = time.monotonic()
            out = a.cli("spark", "submit", str(job), "--input", "s3://benchdata/in/",
                        timeout=7200)
            mesh_wall = time.monotonic() - t
            mesh = parse_bench(out.stdout)
            print(f"mesh: {mesh} (submit wall {mesh_wall:.1f} s)", flush=True)
            a.cli("spark", "down")
        finally:
            cluster.close()
            for agent in cluster.agents:
                _kill_workloads(agent)
        env = dict(os.environ)
        env.pop("PYSPARK_SUBMIT_ARGS", None)
        t = time.monotonic()
        local_run = subprocess.run([sys.executable, str(job), "--input", str(data),
                                    "--local", "1"], capture_output=True, text=True,
                                   env=env, timeout=7200)
        local_wall = time.monotonic() - t
        local = parse_bench(local_run.stdout + local_run.stderr)
        print(f"local[2]: {local} (wall {local_wall:.1f} s)", flush=True)
    mesh_s = mesh["wordcount_s"] + mesh["groupby_s"]
    local_s = local["wordcount_s"] + local["groupby_s"]
    assert mesh["rows"] == local["rows"] and mesh["groups"] == local["groups"], (mesh, local)
    return {"bench": "spark", "mb": round(size / 1e6), "objects": len(files),
            "mesh_s": round(mesh_s, 2), "local_s": round(local_s, 2),
            "ratio": round(mesh_s / local_s, 2), "read_mb_s": round(size / 1e6 /
                                                                    mesh["read_s"], 1),
            "local_read_mb_s": round(size / 1e6 / local["read_s"], 1),
            "upload_mb_s": round(size / 1e6 / upload_s, 1),
            "mesh_submit_wall_s": round(mesh_wall, 1), "local_wall_s": round(local_wall, 1),
            "load_avg": os.getloadavg()[0]}


def _kill_workloads(agent: Any) -> None:
    import signal

    from apps.runtimes.homes import default_homes

    roots = (str(default_homes(agent.data_dir)), str(agent.data_dir))
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(b"HOME=") and e[5:].decode(errors="replace").startswith(roots)
               for e in env):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass
