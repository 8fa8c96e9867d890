"""The Spark master's recovery state against a real agent's S3 API (issue 19), without
Java: the helper the master's workload runs (``meshcloud_spark_recovery``, laid out as in
the Spark dist directory, run by the system's Python with nothing else on its path)
pushes the state files a master writes, follows removals and changes, and a later
``pull`` gives the next master exactly those files; a key for that bucket only, and a
wrong one refused at once with the directory unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.agents import wait_until

pytestmark = [pytest.mark.real]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def dist(tmp: Path) -> Path:
    d = tmp / "dist"
    d.mkdir()
    shutil.copyfile(ROOT / "apps/spark/source.py", d / "pyspark_meshcloud.py")
    shutil.copyfile(ROOT / "apps/spark/recovery.py", d / "meshcloud_spark_recovery.py")
    return d


def helper(d: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "meshcloud_spark_recovery", *args], cwd=d,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(d), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def keys(agent, prefix: str) -> dict[str, int]:
    listing = agent.get(f"/v1/storage/objects/spark-recovery?prefix={prefix}")["objects"]
    return {o["key"]: o["size"] for o in listing}


def test_the_state_goes_to_the_bucket_and_back(cluster_factory, tmp_path):
    agent = cluster_factory(1).agents[0]
    agent.cli("bucket", "create", "spark-recovery")
    created = agent.cli("s3", "key", "create", "spark-recovery", "--bucket", "spark-recovery",
                        "--allow", "read,write").stdout
    key = created.split("access key id:")[1].split()[0]
    secret = created.split("secret access key:")[1].split()[0]
    env = {"MESHCLOUD_S3_URL": agent.info["s3"], "MESHCLOUD_RECOVERY_KEY": key,
           "MESHCLOUD_RECOVERY_SECRET": secret, "MESHCLOUD_RECOVERY_BUCKET": "spark-recovery",
           "MESHCLOUD_RECOVERY_PREFIX": "c1/"}
    d = dist(tmp_path)
    state = tmp_path / "master1"
    first = helper(d, env, "pull", str(state))
    assert first.wait(60) == 0, first.stderr.read()
    assert sorted(p.name for p in state.iterdir()) == [".pulled"]  # a new cluster: empty

    # the master runs: its files reach the bucket, and follow it
    master = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    push = helper(d, env, "push", str(state), "--watch", str(master.pid))
    try:
        (state / "app_app-20261207080000-0000").write_bytes(b"\xac\xed" + b"a" * 300)
        (state / "worker_worker-1-127.0.0.71-4001").write_bytes(b"\xac\xed" + b"w" * 200)
        (state / "spark.tmp").write_text("not state")
        wait_until(lambda: keys(agent, "c1/") == {
            "c1/app_app-20261207080000-0000": 302, "c1/worker_worker-1-127.0.0.71-4001": 202},
            60, interval=0.2, message="the state files in the bucket")
        (state / "worker_worker-1-127.0.0.71-4001").unlink()
        (state / "driver_driver-1").write_bytes(b"\xac\xed" + b"d" * 50)
        wait_until(lambda: keys(agent, "c1/") == {
            "c1/app_app-20261207080000-0000": 302, "c1/driver_driver-1": 52},
            60, interval=0.2, message="a removal and a new file followed")
    finally:
        master.stdin.close()  # type: ignore[union-attr]
        master.wait(30)
    assert push.wait(60) == 0, push.stderr.read()  # ends with the master

    # the next master, on another machine with a stale directory, reads exactly that
    state2 = tmp_path / "master2"
    state2.mkdir()
    (state2 / "app_stale").write_bytes(b"old")
    second = helper(d, env, "pull", str(state2))
    assert second.wait(60) == 0, second.stderr.read()
    assert "2 state file(s) read" in second.stderr.read()
    assert sorted(p.name for p in state2.iterdir()) == [
        ".pulled", "app_app-20261207080000-0000", "driver_driver-1"]
    assert (state2 / "app_app-20261207080000-0000").read_bytes() == b"\xac\xed" + b"a" * 300

    # a wrong secret: one clear error at once, the directory as it was
    bad = helper(d, env | {"MESHCLOUD_RECOVERY_SECRET": "wrong"}, "pull", str(state2))
    assert bad.wait(30) == 1
    assert "SignatureDoesNotMatch" in bad.stderr.read()
    assert sorted(p.name for p in state2.iterdir()) == [
        ".pulled", "app_app-20261207080000-0000", "driver_driver-1"]
