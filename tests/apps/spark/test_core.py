"""The Spark service's pure decisions: refusing clusters and jobs, the two workloads'
specs (accepted by the workload spec parser), the per-node shell, submit arguments."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from apps.spark import core
from apps.spark.core import ClusterPlan, SparkError
from apps.workloads.spec import parse_spec

PLAN = ClusterPlan(workers=3, worker_memory=512 << 20, worker_cores=1, rpc_port=17077,
                   ui_port=17078)
HOSTS = {"aa" * 16: "127.0.0.71", "bb" * 16: "127.0.0.72"}


def test_check_up_refuses_before_anything_is_written():
    core.check_up(3, 512 << 20, 1, capable=3)
    with pytest.raises(SparkError, match=r"4 worker\(s\) need .* 3 have them") as exc:
        core.check_up(4, 512 << 20, 1, capable=3)
    assert exc.value.code == "no_capable_node"
    for workers, memory, cores in ((0, 512 << 20, 1), (True, 512 << 20, 1),
                                   (2, 256 << 20, 1), (2, 512 << 20, 0)):
        with pytest.raises(SparkError):
            core.check_up(workers, memory, cores, capable=10)


def test_free_ports_skip_taken_ones():
    assert core.free_ports({17077, 17079}) == [17078, 17080]
    with pytest.raises(SparkError):
        core.free_ports(range(17000, 18000))


def test_specs_are_valid_workloads_with_the_capability_constraint():
    master = parse_spec(core.master_spec(PLAN, java="/usr/bin/java", spark_home="/d/pyspark",
                                         hosts=HOSTS, default_host="127.0.0.1"))
    assert master.singleton and master.replicas == 1
    assert dict(master.publish) == {"rpc": core.RPC_LABEL, "ui": core.UI_LABEL}
    workers = parse_spec(core.worker_spec(
        PLAN, java="/usr/bin/java", spark_home="/d/pyspark", python="/usr/bin/python3",
        pythonpath="/d", hosts=HOSTS, default_host="127.0.0.1",
        s3_urls={"aa" * 16: "http://127.0.0.71:9000"}))
    assert workers.replicas == 3 and not workers.singleton
    for spec in (master, workers):
        c = spec.placement_constraints()
        assert c.runtime == "process" and ("spark", "yes") in c.labels and c.avoid_battery
    assert workers.constraints.min_ram == (512 + 256) << 20
    assert "spark://$H:17077" in workers.command[2]


@pytest.mark.parametrize("node,host", [("aa" * 16, "127.0.0.71"), ("bb" * 16, "127.0.0.72"),
                                       ("cc" * 16, "127.0.0.9")])
def test_the_shell_picks_its_own_node_host(node, host):
    script = core.host_case(HOSTS, "127.0.0.9") + core.s3_case(
        {"aa" * 16: "http://x:1"}) + 'echo "$H $MESHCLOUD_S3_URL"'
    out = subprocess.run(["/bin/sh", "-c", script], env={"MESHCLOUD_NODE": node},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == host
    assert out[1:] == (["http://x:1"] if node == "aa" * 16 else [])


def test_the_shell_never_runs_a_planted_host():
    script = core.host_case({"aa" * 16: "$(touch /tmp/x); evil", "zz;rm": "1.2.3.4"}, "d")
    assert "zz;rm" not in script
    out = subprocess.run(["/bin/sh", "-c", script + 'printf %s "$H"'],
                         env={"MESHCLOUD_NODE": "aa" * 16}, capture_output=True, text=True)
    assert out.stdout == "$(touch /tmp/x); evil"


def test_conf_and_job_checks():
    assert core.parse_conf(["spark.sql.shuffle.partitions=4"]) == {
        "spark.sql.shuffle.partitions": "4"}
    for bad in ("nokey", "x.y=1", "spark.master=local", "spark.a=\n"):
        with pytest.raises(SparkError):
            core.parse_conf([bad])
    core.check_job("wc.py", 10, ["--input", "b/p"])
    for name, size in (("wc.txt", 10), ("../wc.py", 10), ("wc.py", 0),
                       ("wc.py", core.MAX_JOB_BYTES + 1)):
        with pytest.raises(SparkError):
            core.check_job(name, size, [])
    assert core.parse_s3_arg("s3://b/p", "input") == ("b", "p")
    with pytest.raises(SparkError, match="--input"):
        core.parse_s3_arg("http://x", "input")


def test_submit_args_put_the_mesh_master_first_and_keep_the_users_conf():
    text = core.submit_args("spark://127.0.0.71:17077", {"spark.executor.memory": "300m"},
                            workers=3, executor_memory=448 << 20, driver_host="127.0.0.71")
    words = shlex.split(text)
    assert words[:2] == ["--master", "spark://127.0.0.71:17077"]
    assert words[-1] == "pyspark-shell"
    assert "spark.executor.memory=300m" in words and "spark.cores.max=3" in words
    assert core.executor_memory(768 << 20) == 768 << 20
    assert core.executor_memory(256 << 20) == 512 << 20
