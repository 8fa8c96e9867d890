"""Issue 19: Apache Spark on the mesh, with real agents, real Java and real Spark.

Five agents on their own loopback addresses (127.0.0.71 … .75); the last has no Java
(``MESHCLOUD_JAVA`` points nowhere), so it offers no Spark. ``spark up --workers 3`` puts
three workers on three distinct capable nodes; a word count over objects of a bucket,
submitted through the CLI, writes counts to a bucket that equal a plain Python count; bad
input gets clear errors and leaves nothing behind; ``kill -9`` of a worker's node mid-job
and of the master's node: the jobs still complete (an application running when the
master's node dies re-registers with the next master, which read the recovery state from
its bucket); ``spark down`` leaves nothing running. While an application runs, its UI
and a worker's UI are served through the ingress of a node that runs neither the master
nor the driver (the master's reverse proxy), with working links and redirects.
"""

from __future__ import annotations

import csv
import http.client
import io
import os
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from apps.runtimes.homes import default_homes
from sim.agents import Agent, AgentError, LocalCluster, wait_until

ADDRESSES = [f"127.0.0.{71 + i}" for i in range(5)]
NO_JAVA = 4

pytestmark = [pytest.mark.real, pytest.mark.slow]

WORDCOUNT = '''
import sys
from pyspark.sql import SparkSession, functions as F

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
spark = SparkSession.builder.appName("wordcount").getOrCreate()
split = spark.conf.get("spark.meshcloud.split", "67108864")
lines = spark.read.format("meshcloud").option("split", split).load(args["--input"])
words = lines.select(F.explode(F.split(F.col("value"), " ")).alias("word")) \\
    .where(F.col("word") != "")
counts = words.groupBy("word").count().repartition(3).cache()
counts.write.format("meshcloud").option("format", "csv").mode("append") \\
    .save(args["--output"])
print("wordcount done", counts.count())
spark.stop()
'''

GATED = WORDCOUNT.replace('''lines = spark.read''', '''
import time
import pyspark_meshcloud as mc
print("executors ready", spark.sparkContext.parallelize(range(60), 6).count(), flush=True)
gate = mc.S3.from_env()
while not gate.list("books", "gate/"):
    time.sleep(0.5)
print("gate open", flush=True)
lines = spark.read''').replace('appName("wordcount")', 'appName("gated")')
"""The word count, held after its executors started until ``books/gate/`` has an object:
an application that is running when the test kills the master's node."""

PARQUET_HELD = '''
import sys
import time
import pyspark_meshcloud as mc
from pyspark.sql import SparkSession, functions as F

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
spark = SparkSession.builder.appName("held-ui").getOrCreate()
df = spark.range(0, 3000, numPartitions=3).select(
    F.col("id"), (F.col("id") * 0.5).alias("half"), F.col("id").cast("string").alias("s"),
    (F.col("id") % 3 == 0).alias("third"))
df.write.format("meshcloud").option("format", "parquet").mode("append").save(args["--output"])
back = spark.read.format("meshcloud").option("format", "parquet").load(args["--output"])
assert back.schema.simpleString() == df.schema.simpleString(), back.schema.simpleString()
assert sorted(back.collect()) == sorted(df.collect())
print("parquet round trip", back.count(), back.rdd.getNumPartitions(), flush=True)
print("executors ready", flush=True)
gate = mc.S3.from_env()
while not gate.list("books", "uigate/"):
    time.sleep(0.5)
spark.stop()
'''
"""A Parquet round trip through a bucket, then the application runs on until
``books/uigate/`` has an object (one driver and its executors serve both the Parquet test
and the UI test: a Spark application's start is the costly part of each)."""

WORDS = ["mesh", "spark", "node", "bucket", "shard", "lease", "worker", "master", "trio"]


def corpus(n_objects: int, lines: int, seed: int) -> dict[str, str]:
    import random

    rng = random.Random(seed)
    return {f"part{i:02d}.txt": "\n".join(" ".join(rng.choice(WORDS) for _ in range(
        rng.randint(1, 12))) for _ in range(lines)) + "\n" for i in range(n_objects)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark")
    cluster = LocalCluster(root, extra_args=["--profile", "local"])
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        no_java = {"env": {"MESHCLOUD_JAVA": "/nonexistent/java"}}
        cluster.start_all(cluster.join_many([{"listen": f"{ADDRESSES[i]}:0",
                                              **(no_java if i == NO_JAVA else {})}
                                             for i in range(1, 5)]))
        yield cluster
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_workload_processes(agent)
            shutil.rmtree(default_homes(agent.data_dir), ignore_errors=True)


def workload_pids(agent: Agent) -> list[int]:
    """Processes whose HOME is under this agent's replica homes or data dir (the Spark
    daemons, executors and drivers it started)."""
    roots = (str(default_homes(agent.data_dir)), str(agent.data_dir))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"HOME=") and item[5:].decode(errors="replace").startswith(
                    roots):
                found.append(int(entry))
                break
    return found


def kill_workload_processes(agent: Agent) -> None:
    for pid in workload_pids(agent):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def spark(agent: Agent) -> dict:
    return agent.get("/v1/spark")


def alive_workers(agent: Agent) -> list[dict]:
    view = spark(agent).get("master_view") or {}
    return [w for w in view.get("workers", []) if w.get("state") == "ALIVE"]


def each(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run independent CLI calls at once (each is a process of its own); their results."""
    with ThreadPoolExecutor(len(calls) or 1) as pool:
        return list(pool.map(lambda call: call(), calls))


def put_objects(agent: Agent, tmp: Path, bucket: str, prefix: str,
                objects: dict[str, str]) -> None:
    for name, text in objects.items():
        (tmp / name).write_text(text)
    each([lambda name=name: agent.cli("cp", str(tmp / name), f"s3://{bucket}/{prefix}{name}")
          for name in objects])


def read_counts(agent: Agent, tmp: Path, bucket: str, prefix: str) -> Counter:
    listing = agent.get(f"/v1/storage/objects/{bucket}?prefix={prefix}")["objects"]
    keys = [o["key"] for o in listing if o["key"].endswith(".csv")]
    assert keys, listing
    total: Counter = Counter()
    dests = {key: tmp / key.replace("/", "_") for key in keys}
    each([lambda key=key: agent.cli("cp", f"s3://{bucket}/{key}", str(dests[key]))
          for key in keys])
    for dest in dests.values():
        for word, count in csv.reader(io.StringIO(dest.read_text())):
            assert word not in total, f"{word} counted twice"
            total[word] = int(count)
    return total


def expected(objects: dict[str, str]) -> Counter:
    return Counter(w for text in objects.values() for w in text.split())


def test_up_wordcount_bad_input(cluster, tmp_path):
    a = cluster.agents[0]
    wait_until(lambda: sum(n["capable"] for n in spark(a)["nodes"]) == 4
               and len(spark(a)["nodes"]) == 5, 120, interval=0.5,
               message="4 capable nodes and one without Java")
    nojava = next(n for n in spark(a)["nodes"] if not n["capable"])
    assert "java" in nojava["reason"]
    assert nojava["node"] == cluster.agents[NO_JAVA].node_id

    # more workers than nodes with Java: one clear error, nothing written
    bad = a.cli("spark", "up", "--workers", "5", "--worker-memory", "512m", check=False)
    assert bad.returncode != 0 and "5 worker(s) need" in bad.stderr + bad.stdout
    assert spark(a)["cluster"] is None
    assert not [w for w in a.get("/v1/workloads")["workloads"]
                if w["name"].startswith("spark")]

    out = a.cli("spark", "up", "--workers", "3", "--worker-memory", "512m").stdout
    assert "3 worker(s)" in out
    # data in a bucket while the master and the workers start (objects of several splits
    # each: a split boundary falls inside a line)
    each([lambda: a.cli("bucket", "create", "books"),
          lambda: a.cli("bucket", "create", "counts")])
    objects = corpus(3, 120, seed=1)
    put_objects(a, tmp_path, "books", "in/", objects)
    wait_until(lambda: len(alive_workers(a)) == 3, 300, interval=0.5,
               message="3 workers registered with the master")
    reps = spark(a)["cluster"]["worker_replicas"]
    nodes = {r["node"] for r in reps if r.get("node")}
    assert len(nodes) == 3, reps
    assert cluster.agents[NO_JAVA].node_id not in nodes

    # the job through the CLI of another node
    job = tmp_path / "wordcount.py"
    job.write_text(WORDCOUNT)
    b = cluster.agents[1]
    run = b.cli("spark", "submit", str(job), "--input", "s3://books/in/", "--output",
                "s3://counts/run1", "--conf", "spark.meshcloud.split=2000", timeout=600,
                check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "wordcount done" in run.stdout
    assert read_counts(a, tmp_path, "counts", "run1/") == expected(objects)

    jobs = a.get("/v1/spark/jobs")["jobs"]
    assert jobs[0]["state"] == "succeeded" and jobs[0]["log_key"]
    logs = a.cli("spark", "logs", jobs[0]["id"]).stdout
    assert "wordcount done" in logs
    listing = a.get("/v1/storage/objects/spark-logs")["objects"]
    assert f"{jobs[0]['id']}.log" in [o["key"] for o in listing]

    # bad input: a missing job file, a missing bucket; nothing started
    missing = b.cli("spark", "submit", str(tmp_path / "nope.py"), check=False)
    assert missing.returncode != 0 and "not found" in missing.stderr
    nobucket = b.cli("spark", "submit", str(job), "--input", "s3://nosuch/x", "--output",
                     "s3://counts/x", check=False)
    assert nobucket.returncode != 0 and "no bucket 'nosuch'" in nobucket.stderr
    assert len(a.get("/v1/spark/jobs")["jobs"]) == 1


def check_parquet(agent: Agent, tmp: Path, prefix: str) -> None:
    """The Parquet objects a job wrote under ``tables/PREFIX``: one a task, 3000 rows."""
    import pyarrow.parquet as pq

    listing = agent.get(f"/v1/storage/objects/tables?prefix={prefix}")["objects"]
    parts = sorted(o["key"] for o in listing if o["key"].endswith(".parquet"))
    assert len(parts) == 3 and f"{prefix}_SUCCESS" in {o["key"] for o in listing}
    dests = {key: tmp / key.replace("/", "_") for key in parts}
    each([lambda key=key: agent.cli("cp", f"s3://tables/{key}", str(dests[key]))
          for key in parts])
    rows = 0
    for dest in dests.values():  # real Parquet objects, one a task
        table = pq.read_table(dest)
        assert table.column_names == ["id", "half", "s", "third"]
        rows += table.num_rows
    assert rows == 3000


def http_get(host: str, port: int, path: str) -> tuple[int, dict[str, str], str]:
    """One GET, redirects not followed: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", errors="replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_parquet_round_trip_and_the_uis_through_another_nodes_ingress(cluster, tmp_path):
    """One application: a Parquet round trip through a bucket, then, while it runs on,
    its UI and a worker's through the ingress of a node that runs neither the master nor
    the driver."""
    a = cluster.agents[0]
    c = spark(a)["cluster"]
    # the driver on a node without the master; the browser at the node without Java,
    # which runs neither the master nor the driver nor a worker
    driver = next(x for i, x in enumerate(cluster.agents)
                  if i != NO_JAVA and x.node_id != c["master_node"])
    edge = cluster.agents[NO_JAVA]
    host, port = ADDRESSES[NO_JAVA], c["ui_port"]
    driver.cli("bucket", "create", "tables")
    job = tmp_path / "held.py"
    job.write_text(PARQUET_HELD)
    job_id = driver.cli("spark", "submit", str(job), "--output", "s3://tables/numbers",
                        "--detach").stdout.split()[-1]
    try:
        try:
            wait_until(lambda: edge.get(f"/v1/spark/jobs/{job_id}")["ui_url"], 300,
                       interval=0.5, message="the application's UI URL")
        except AgentError as exc:  # say why: the job, the master's view, the driver's log
            raise AssertionError(
                f"{exc}\njob {edge.get(f'/v1/spark/jobs/{job_id}')}\nmaster "
                f"{spark(edge).get('master_view')}\nlog " + driver.get(
                    f"/v1/spark/jobs/{job_id}/log")["data"][-3000:]) from None
        row = edge.get(f"/v1/spark/jobs/{job_id}")
        app = row["app_id"]
        assert row["state"] == "running" and re.fullmatch(r"app-\d{14}-\d{4,}", app), row
        base = f"http://{host}:{port}/proxy/{app}/"
        assert row["ui_url"] == base
        wait_until(lambda: "executors ready" in driver.get(
            f"/v1/spark/jobs/{job_id}/log")["data"], 300, interval=0.5,
            message="the held job's executors")
        log = driver.get(f"/v1/spark/jobs/{job_id}/log")["data"]
        assert "parquet round trip 3000 3" in log, log[-3000:]  # 3 objects, 3 partitions

        # the application's jobs page, through the edge node's ingress and the master
        status, _, page = http_get(host, port, f"/proxy/{app}/jobs/")
        assert status == 200, page[-2000:]
        assert "<title>held-ui - Spark Jobs" in page
        links = set(re.findall(r'href="(/proxy/[^"#]*)"', page))
        assert f"/proxy/{app}/stages/" in links and f"/proxy/{app}/executors/" in links
        status, _, stages = http_get(host, port, f"/proxy/{app}/stages/")
        assert status == 200 and "held-ui" in stages
        css = next(x for x in links if x.endswith(".css"))
        assert http_get(host, port, css)[0] == 200
        # the application's root redirects to its jobs page at the edge, not the driver
        status, headers, _ = http_get(host, port, f"/proxy/{app}/")
        assert status in (301, 302, 307) and headers["location"] == base + "jobs/", headers

        # the master's page links to the application and the workers through the proxy
        status, _, front = http_get(host, port, "/")
        assert status == 200 and f'href="/proxy/{app}"' in front
        view = edge.get("/v1/spark")["master_view"]
        assert [x["ui_url"] for x in view["activeapps"] if x["id"] == app] == [base]
        worker = next(w for w in view["workers"] if w["state"] == "ALIVE")
        assert worker["ui_url"] == f"http://{host}:{port}/proxy/{worker['id']}/"
        assert f'href="/proxy/{worker["id"]}"' in front
        status, _, wpage = http_get(host, port, f"/proxy/{worker['id']}/")
        assert status == 200, wpage[-2000:]
        assert f"Spark Worker at {worker['host']}:{worker['port']}" in wpage

        # the CLI of the edge node prints the URLs of the master, the app and the workers
        out = edge.cli("spark", "status").stdout
        assert f"UI http://{host}:{port}/" in out and f"UI {base}" in out
        assert f"UI {worker['ui_url']}" in out
        assert f"UI {base}" in edge.cli("spark", "jobs").stdout
    finally:
        gate = tmp_path / "go"
        gate.write_text("go")
        a.cli("cp", str(gate), "s3://books/uigate/go")
    done = wait_job(driver, job_id, 300)
    assert done["state"] == "succeeded", driver.cli("spark", "logs", job_id).stdout[-3000:]
    assert done["app_id"] == app and done["ui_url"] == ""
    check_parquet(driver, tmp_path, "numbers/")


def kill_node(agent: Agent) -> None:
    """A machine's death: its agent and every process it started, with SIGKILL."""
    agent.kill()
    kill_workload_processes(agent)


def by_node(cluster: LocalCluster, node_hex: str) -> Agent:
    return next(x for x in cluster.agents if x.node_id == node_hex)


def wait_job(agent: Agent, job_id: str, timeout: float) -> dict:
    wait_until(lambda: agent.get(f"/v1/spark/jobs/{job_id}")["state"] in (
        "succeeded", "failed"), timeout, interval=1, message=f"job {job_id} ended")
    return agent.get(f"/v1/spark/jobs/{job_id}")


@pytest.mark.skipif(not os.environ.get("MESHCLOUD_SLOW"),
                    reason="node-loss scenario of several minutes: set MESHCLOUD_SLOW=1")
def test_kill_a_workers_node_mid_job(cluster, tmp_path):
    a = cluster.agents[0]
    c = spark(a)["cluster"]
    master = c["master_node"]
    victims = [r["node"] for r in c["worker_replicas"]
               if r["node"] not in (master, a.node_id)]
    assert victims, c
    victim = by_node(cluster, victims[0])
    objects = corpus(8, 2000, seed=2)
    put_objects(a, tmp_path, "books", "big/", objects)
    job = tmp_path / "wordcount.py"
    job.write_text(WORDCOUNT)
    job_id = a.cli("spark", "submit", str(job), "--input", "s3://books/big/", "--output",
                   "s3://counts/run2", "--conf", "spark.meshcloud.split=20000",
                   "--detach").stdout.split()[-1]
    # mid-job: once the executors took tasks
    wait_until(lambda: "Stage" in a.get(f"/v1/spark/jobs/{job_id}/log")["data"], 300,
               interval=0.5, message="the job's first stage")
    kill_node(victim)
    done = wait_job(a, job_id, 600)
    assert done["state"] == "succeeded", a.cli("spark", "logs", job_id).stdout[-3000:]
    assert read_counts(a, tmp_path, "counts", "run2/") == expected(objects)


@pytest.mark.skipif(not os.environ.get("MESHCLOUD_SLOW"),
                    reason="node-loss scenario of several minutes: set MESHCLOUD_SLOW=1")
def test_kill_the_masters_node(cluster, tmp_path):
    alive = [x for x in cluster.agents if x.running]
    c = spark(alive[0])["cluster"]
    old = c["master_node"]
    victim = by_node(cluster, old)
    survivor = next(x for x in alive if x is not victim
                    and cluster.agents.index(x) != NO_JAVA)
    workers_before = {w["host"] for w in alive_workers(survivor)} - {
        ADDRESSES[cluster.agents.index(victim)]}
    assert workers_before

    # an application running when the master goes: its driver on a surviving node
    objects = corpus(4, 300, seed=4)
    put_objects(survivor, tmp_path, "books", "held/", objects)
    gated = tmp_path / "gated.py"
    gated.write_text(GATED)
    held = survivor.cli("spark", "submit", str(gated), "--input", "s3://books/held/",
                        "--output", "s3://counts/run4", "--detach").stdout.split()[-1]
    wait_until(lambda: "executors ready" in survivor.get(
        f"/v1/spark/jobs/{held}/log")["data"], 300, interval=0.5,
        message="the held job's executors")
    app = next(a["id"] for a in spark(survivor)["master_view"]["activeapps"]
               if a["name"] == "gated")
    bucket, _, prefix = c["recovery"].partition("/")
    assert bucket == "spark-recovery" and prefix
    wait_until(lambda: f"{prefix}app_{app}" in {o["key"] for o in survivor.get(
        f"/v1/storage/objects/{bucket}?prefix={prefix}")["objects"]}, 30, interval=0.2,
        message="the application in the master's recovery state")

    kill_node(victim)
    t0 = time.monotonic()
    wait_until(lambda: spark(survivor)["cluster"]["master_node"] not in (None, old), 120,
               interval=0.5, message="a new master")
    moved = time.monotonic() - t0
    wait_until(lambda: {w["host"] for w in alive_workers(survivor)} >= workers_before, 180,
               interval=1, message="the surviving workers re-registered")
    # the new master read the state: it knows the running application
    wait_until(lambda: app in {a["id"] for a in (spark(survivor)["master_view"] or {}).get(
        "activeapps", [])}, 120, interval=1, message="the application re-registered")
    print(f"master moved in {moved:.1f} s; workers and the running application "
          f"re-registered after {time.monotonic() - t0:.1f} s")
    gate = tmp_path / "go"
    gate.write_text("go")
    survivor.cli("cp", str(gate), "s3://books/gate/go")
    done = wait_job(survivor, held, 600)
    assert done["state"] == "succeeded", survivor.cli("spark", "logs", held).stdout[-3000:]
    assert done["app_id"] in ("", app)
    assert read_counts(survivor, tmp_path, "counts", "run4/") == expected(objects)

    # and a job submitted afterwards
    objects = corpus(3, 200, seed=3)
    put_objects(survivor, tmp_path, "books", "after/", objects)
    job = tmp_path / "wordcount.py"
    job.write_text(WORDCOUNT)
    run = survivor.cli("spark", "submit", str(job), "--input", "s3://books/after/",
                       "--output", "s3://counts/run3", timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert read_counts(survivor, tmp_path, "counts", "run3/") == expected(objects)


def test_down_leaves_nothing_running(cluster):
    alive = [x for x in cluster.agents if x.running]
    x = alive[0]
    bucket, _, prefix = spark(x)["cluster"]["recovery"].partition("/")
    assert any(o["key"].startswith(prefix + "worker_") for o in x.get(
        f"/v1/storage/objects/{bucket}?prefix={prefix}")["objects"])
    x.cli("spark", "down")
    assert spark(x)["cluster"] is None
    # the master's state goes with the cluster
    assert x.get(f"/v1/storage/objects/{bucket}?prefix={prefix}")["objects"] == []
    wait_until(lambda: not any(workload_pids(y) for y in alive), 120, interval=1,
               message="no Spark process left")
    again = x.cli("spark", "down", check=False)
    assert again.returncode != 0 and "no Spark cluster" in again.stderr
