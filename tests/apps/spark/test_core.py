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


# --- the UIs through the ingress (the master's reverse proxy) --------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

APP = "app-20261207104616-0000"
WORKER = "worker-20261207104522-127.0.0.92-36583"


def test_master_workers_and_drivers_all_run_behind_the_reverse_proxy():
    master = core.master_spec(PLAN, java="/usr/bin/java", spark_home="/d/pyspark",
                              hosts=HOSTS, default_host="127.0.0.1")
    workers = core.worker_spec(PLAN, java="/usr/bin/java", spark_home="/d/pyspark",
                               python="/usr/bin/python3", pythonpath="/d", hosts=HOSTS,
                               default_host="127.0.0.1", s3_urls={})
    for spec in (master, workers):
        script = spec["command"][2]
        assert "-Dspark.ui.reverseProxy=true -Dspark.ui.reverseProxyUrl=/ " in script
    words = shlex.split(core.submit_args("spark://h:1", {}, workers=1,
                                         executor_memory=512 << 20, driver_host="h",
                                         ui_port=40123))
    assert {"spark.ui.reverseProxy=true", "spark.ui.reverseProxyUrl=/",
            "spark.ui.port=40123"} <= set(words)
    # the user may pick the driver UI's port, not switch the proxy off
    mine = shlex.split(core.submit_args("spark://h:1", {"spark.ui.port": "4050"}, workers=1,
                                        executor_memory=512 << 20, driver_host="h",
                                        ui_port=40123))
    assert "spark.ui.port=4050" in mine and "spark.ui.port=40123" not in mine
    for key in core.UI_CONF:
        with pytest.raises(SparkError, match="set by the mesh"):
            core.parse_conf([f"{key}=false"])


def test_proxy_urls_of_applications_and_workers():
    base = core.ui_base("127.0.0.71", 17078)
    assert base == "http://127.0.0.71:17078/"
    assert core.ui_base("fd00::1", 17078) == "http://[fd00::1]:17078/"
    assert core.proxy_url(base, APP) == f"http://127.0.0.71:17078/proxy/{APP}/"
    assert core.proxy_url(base, WORKER) == f"http://127.0.0.71:17078/proxy/{WORKER}/"
    for bad in ("", "app-1", "../x", f"{APP}/../../admin", "worker-x", None, 3, f"{APP}?a",
                f"{APP}\n", "app-2026120710461\u0660-0000"):
        assert core.proxy_url(base, bad) == ""
    assert core.proxy_url("", APP) == ""


def test_the_masters_view_gets_links_for_workers_and_running_apps_only():
    dead = WORKER.replace("-36583", "-1")
    view = {"url": "spark://x:1",
            "workers": [{"id": WORKER, "state": "ALIVE"}, "junk", {"id": dead, "state": "DEAD"}],
            "activeapps": [{"id": APP, "name": "wc"}, {"id": "nope"}],
            "completedapps": [{"id": "app-20261207040000-0000"}]}
    out = core.view_links(view, "http://n:2/")
    assert out["workers"][0]["ui_url"] == f"http://n:2/proxy/{WORKER}/"
    assert out["workers"][1] == "junk" and out["workers"][2]["ui_url"] == ""
    assert [a["ui_url"] for a in out["activeapps"]] == [f"http://n:2/proxy/{APP}/", ""]
    assert "ui_url" not in out["completedapps"][0]
    assert "ui_url" not in view["workers"][0]  # the input is left alone
    assert core.view_links({}, "http://n:2/") == {}


def test_app_id_from_the_drivers_ui():
    assert core.app_id_of(f'[{{"id": "{APP}", "name": "wc"}}]'.encode()) == APP
    for bad in (b"", b"<html>", b"[]", b'{"id": "x"}', b'[{"id": "local-1"}]', b"\xff",
                b'[{"id": 5}]', b"[1]"):
        assert core.app_id_of(bad) == ""


@given(st.binary(max_size=200))
def test_app_id_of_never_raises_and_only_returns_ids(data):
    found = core.app_id_of(data)
    assert found == "" or core.APP_ID_RE.match(found)


@given(st.text(max_size=60) | st.from_regex(core.WORKER_ID_RE, fullmatch=True)
       | st.from_regex(core.APP_ID_RE, fullmatch=True))
def test_proxy_url_is_empty_or_one_path_segment_under_proxy(ident):
    url = core.proxy_url("http://n:2/", ident)
    if url:
        rest = url.removeprefix("http://n:2/proxy/")
        assert rest.endswith("/") and rest[:-1] == ident
        assert not set(ident) & set("/?#%\\ \"'<>") and ident.isascii()
