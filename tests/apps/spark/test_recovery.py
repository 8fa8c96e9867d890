"""The Spark master's recovery state in a bucket: the sync's decisions (property-tested
against a model of the directory and the bucket), the names it keeps, the master's spec
that reads the state before Java starts, and pull/push against an in-memory S3."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.spark import core
from apps.spark.core import ClusterPlan
from apps.spark.recovery import (
    MANIFEST,
    Place,
    Stat,
    Sync,
    main,
    pull,
    pull_with_retries,
    pulled,
    push_once,
    retryable,
    state_name,
)
from apps.spark.source import ObjectRef, SourceError
from apps.workloads.spec import parse_spec

NAMES = ["app_app-1", "worker_worker-2-127.0.0.1-4000", "driver_driver-3"]

op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NAMES), st.integers(1, 5)),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("tick"), st.just(""), st.integers(0, 3)),
)


@settings(max_examples=300)
@given(st.lists(op, max_size=40))
def test_the_bucket_converges_to_the_directory_and_gets_only_settled_files(ops):
    local: dict[str, Stat] = {}
    remote: dict[str, Stat] = {}
    sync = Sync()
    previous: dict[str, Stat] = {}

    def tick(fail: int) -> None:
        nonlocal previous
        uploads, deletes = sync.plan(local)
        for i, name in enumerate(uploads):
            # only a file two scans saw unchanged is sent
            assert previous.get(name) == local[name]
            if i < fail:
                continue  # the PUT failed: planned again
            remote[name] = local[name]
            sync.uploaded(name, local[name])
        for name in deletes:
            assert name not in local
            remote.pop(name, None)
            sync.deleted(name)
        previous = dict(local)

    for clock, (kind, name, arg) in enumerate(ops):
        if kind == "write":
            local[name] = Stat(arg, clock)
        elif kind == "remove":
            local.pop(name, None)
        else:
            tick(arg)
        assert set(remote) <= set(NAMES)
    tick(0)
    tick(0)
    assert remote == local


def test_a_pulled_state_is_not_sent_back():
    state = {"app_a": Stat(3, 1)}
    sync = Sync(state)
    assert sync.plan(state) == ([], [])
    assert sync.plan({}) == ([], ["app_a"])


def test_only_sparks_state_files_are_kept():
    for name in [*NAMES, "app_app-20261207074410-0000"]:
        assert state_name(name)
    for name in (".pulled", ".pull-app_x", "app_", "spark.log", "app_x/../y", "x_app_1",
                 "app_" + "a" * 300, "worker_a b"):
        assert not state_name(name)


def test_refused_keys_and_missing_buckets_are_not_retried():
    assert not retryable(SourceError("S3 GET b/: AccessDenied no"))
    assert not retryable(SourceError("S3 GET b/: NoSuchBucket"))
    assert retryable(SourceError("S3 GET b/ at http://x: [Errno 111] Connection refused"))
    assert retryable(OSError("disk"))


PLAN = ClusterPlan(workers=2, worker_memory=512 << 20, worker_cores=1, rpc_port=17077,
                   ui_port=17078)


def test_the_master_reads_its_state_before_java_starts():
    rec = core.Recovery("spark-recovery", "abc/", "MCSPARKKEY", "s3cret")
    raw = core.master_spec(PLAN, java="/usr/bin/java", spark_home="/d/pyspark",
                           hosts={"aa" * 16: "127.0.0.71"}, default_host="127.0.0.1",
                           recovery=rec, python="/usr/bin/python3", pythonpath="/d",
                           s3_urls={"aa" * 16: "http://127.0.0.71:9000"})
    spec = parse_spec(raw)
    script = spec.command[2]
    pull_at = script.index("meshcloud_spark_recovery pull")
    push_at = script.index("meshcloud_spark_recovery push")
    java_at = script.index('exec "$JAVA"')
    assert pull_at < push_at < java_at
    assert "|| exit 1" in script[pull_at:push_at]  # no state read: no master
    assert "-Dspark.deploy.recoveryMode=FILESYSTEM" in script[java_at:]
    assert '-Dspark.deploy.recoveryDirectory="$R"' in script[java_at:]
    assert spec.env["MESHCLOUD_RECOVERY_PREFIX"] == "abc/"
    assert spec.env["MESHCLOUD_RECOVERY_KEY"] == "MCSPARKKEY"
    assert spec.env["PYTHONPATH"] == "/d"
    assert "MESHCLOUD_S3_URL=http://127.0.0.71:9000" in script
    plain = core.master_spec(PLAN, java="/usr/bin/java", spark_home="/d/pyspark",
                             hosts={}, default_host="127.0.0.1")
    assert "recovery" not in plain["command"][2]


class MemS3:
    """An in-memory bucket with the calls the sync makes (a unit test's fake)."""

    def __init__(self, fail: str = "") -> None:
        self.objects: dict[str, bytes] = {}
        self.fail = fail
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.fail:
            raise SourceError(self.fail)

    def list(self, bucket: str, prefix: str) -> list[ObjectRef]:
        self._check()
        return [ObjectRef(k, len(v)) for k, v in sorted(self.objects.items())
                if k.startswith(prefix)]

    def get(self, bucket: str, key: str, start: int = 0, end: int = -1) -> bytes:
        self._check()
        return self.objects[key]

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self._check()
        self.objects[key] = body

    def request(self, method: str, bucket: str, key: str = "", **_: object) -> bytes:
        self._check()
        assert method == "DELETE"
        self.objects.pop(key, None)
        return b""


def test_push_then_pull_gives_the_next_master_the_same_files(tmp_path: Path):
    s3 = MemS3()
    place = Place(s3, "spark-recovery", "c1/")  # type: ignore[arg-type]
    a = tmp_path / "a"
    a.mkdir()
    (a / "app_app-1").write_bytes(b"\xac\xed app")
    (a / "worker_w-1").write_bytes(b"\xac\xed worker")
    (a / "notes.txt").write_text("not state")
    sync = Sync()
    assert push_once(place, a, sync) == 0 and s3.objects == {}  # seen once: not yet
    assert push_once(place, a, sync) == 0
    assert s3.objects == {"c1/app_app-1": b"\xac\xed app", "c1/worker_w-1": b"\xac\xed worker"}
    (a / "worker_w-1").unlink()
    push_once(place, a, sync)
    assert set(s3.objects) == {"c1/app_app-1"}
    s3.objects["other/app_x"] = b"another cluster's"

    b = tmp_path / "b"
    b.mkdir()
    (b / "app_stale").write_bytes(b"old")
    got = pull(place, b)
    assert set(got) == {"app_app-1"}
    assert sorted(p.name for p in b.iterdir()) == [MANIFEST, "app_app-1"]
    assert (b / "app_app-1").read_bytes() == b"\xac\xed app"
    assert pulled(b) == got
    assert Sync(pulled(b)).plan(got) == ([], [])


def test_a_refused_key_fails_at_once_and_changes_nothing(tmp_path: Path):
    s3 = MemS3(fail="S3 GET spark-recovery/: InvalidAccessKeyId")
    place = Place(s3, "spark-recovery", "c1/")  # type: ignore[arg-type]
    (tmp_path / "app_kept").write_bytes(b"x")
    slept: list[float] = []
    with pytest.raises(SourceError, match="InvalidAccessKeyId"):
        pull_with_retries(place, tmp_path, clock=lambda: 0.0, sleep=slept.append)
    assert slept == [] and s3.calls == 1
    assert [p.name for p in tmp_path.iterdir()] == ["app_kept"]


def test_an_unreachable_s3_is_retried_until_the_deadline(tmp_path: Path):
    s3 = MemS3(fail="S3 GET spark-recovery/ at http://x: Connection refused")
    place = Place(s3, "spark-recovery", "c1/")  # type: ignore[arg-type]
    now = [0.0]
    with pytest.raises(SourceError):
        pull_with_retries(place, tmp_path, deadline=10, clock=lambda: now[0],
                          sleep=lambda d: now.__setitem__(0, now[0] + d))
    assert s3.calls >= 4 and now[0] <= 10


def test_the_helper_refuses_bad_usage_and_missing_settings(tmp_path, monkeypatch, capsys):
    assert main([]) == 2
    assert main(["push", str(tmp_path), "--watch", "x"]) != 0
    for name in ("MESHCLOUD_S3_URL", "MESHCLOUD_RECOVERY_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["pull", str(tmp_path)]) == 1
    assert "not set" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
