"""The podman runtime against real podman with runc (one store and one image per module).

Each test makes its own PodmanRuntime (its API service starts in ~0.1 s) over the module's
data dir, so the store, the demo images and the podman caches are shared; the images are
built once. Every container a test makes is removed in teardown, even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from apps.images import DEMO_BASE_IMAGE, DEMO_WEB_IMAGE, build_demo_images
from apps.runtimes.base import (
    ContainerSpec,
    ErrorCode,
    HealthCheck,
    HealthKind,
    HealthState,
    PortMapping,
    ReplicaState,
    VolumeMount,
    WorkloadRuntimeError,
    running,
)
from apps.runtimes.config import PodmanConfig
from apps.runtimes.podman import PodmanRuntime, container_name
from apps.runtimes.podman_service import (
    PodmanService,
    podman_unavailable_reason,
    release_store,
    store_mounts,
)
from tests.apps.runtimes.conftest import free_port, wait_for

NODE = "node-a"
_reason = podman_unavailable_reason()
if _reason is None and os.geteuid() != 0:
    _reason = "the podman runtime runs rootful podman (cgroupfs): run the tests as root"
pytestmark = [pytest.mark.podman,
              pytest.mark.skipif(_reason is not None, reason=f"podman unusable: {_reason}")]

TIMINGS: dict[str, float] = {}
"""Measured here and printed at the end of the module (tests never assert on time)."""


def config(data_dir: Path, **kw) -> PodmanConfig:
    return PodmanConfig(**{"data_dir": data_dir, "node_id": NODE, "supervise_interval": 0.1,
                           "poll_interval": 0.05, "log_poll_interval": 0.05, **kw})


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The podman CLI against the module's store (what an operator would type)."""
    service = PodmanService(config(data_dir))
    return subprocess.run([*service.cli_args(), *args], env=service.env(), check=check,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("podman-node")

    async def build() -> None:
        runtime = PodmanRuntime(config(path))
        begun = time.monotonic()
        async with running(runtime):
            TIMINGS["service start (first, s)"] = time.monotonic() - begun
            results = await build_demo_images(runtime)
            assert all(r.built for r in results)
            TIMINGS["demo images build (2 images, s)"] = sum(r.seconds for r in results)
            again = await build_demo_images(runtime)
            assert not any(r.built for r in again)
            TIMINGS["demo images rebuild check (s)"] = sum(r.seconds for r in again)

    trio.run(build)
    yield path
    cli(path, "rm", "--all", "--force", "--time", "0", check=False)
    service = PodmanService(config(path))
    release_store(service.graph_root)
    assert store_mounts(service.graph_root) == []
    shutil.rmtree(service.run_root, ignore_errors=True)
    for line in sorted(f"{k}: {v:.3f}" for k, v in TIMINGS.items()):
        print(f"[podman timing] {line}", file=sys.stderr)


@pytest.fixture
async def rt(data_dir: Path) -> AsyncIterator[PodmanRuntime]:
    runtime = PodmanRuntime(config(data_dir))
    begun = time.monotonic()
    async with running(runtime):
        TIMINGS["service start (s)"] = time.monotonic() - begun
        try:
            yield runtime
        finally:
            with trio.CancelScope(shield=True):
                for st in await runtime.list():
                    await runtime.remove(st.name)


async def fetch(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.read().decode()

    async def attempt() -> str | None:
        try:
            return await trio.to_thread.run_sync(get)
        except OSError:
            return None

    return await wait_for(attempt, what=f"HTTP on 127.0.0.1:{port}")


def inspect(data_dir: Path, name: str) -> dict:
    return json.loads(cli(data_dir, "inspect", container_name(name)).stdout)[0]


async def test_demo_web_serves_its_page_with_limits_logs_and_health(rt, data_dir):
    port = free_port()
    spec = ContainerSpec(
        name="web-0", image=DEMO_WEB_IMAGE, workload="web", replica=0, fencing_token=1,
        ports=(PortMapping(container_port=8080, host_port=port),),
        memory=64 << 20, pids=64, cpu=0.5,
        health=HealthCheck(kind=HealthKind.HTTP, port=8080, interval=0.1, retries=2))
    begun = time.monotonic()
    handle = await rt.start(spec)
    TIMINGS["container start call (s)"] = time.monotonic() - begun
    page = await fetch(port)
    TIMINGS["container start to first HTTP response (s)"] = time.monotonic() - begun
    assert '<b id="host">web-0</b>' in page and '<span id="replica">0</span>' in page
    assert f'<span id="node">{NODE}</span>' in page

    info = inspect(data_dir, "web-0")
    assert info["Id"] == handle.id
    assert info["HostConfig"]["Memory"] == 64 << 20
    assert info["HostConfig"]["PidsLimit"] == 64
    assert info["HostConfig"]["CpuQuota"] == 50_000 and info["HostConfig"]["CpuPeriod"] == 100_000
    assert info["HostConfig"]["Init"] is True
    assert info["Config"]["Labels"]["meshcloud.node"] == NODE
    assert info["Config"]["Labels"]["meshcloud.fence"] == "1"
    ulimits = {u["Name"]: u["Soft"] for u in info["HostConfig"]["Ulimits"]}
    assert ulimits["RLIMIT_NOFILE"] == 20000 and ulimits["RLIMIT_NPROC"] == 32768

    st = await wait_for(lambda: _health_is(rt, "web-0", HealthState.HEALTHY), what="healthy")
    assert st.state is ReplicaState.RUNNING and st.workload == "web" and st.started_at
    lines = [x async for x in rt.logs("web-0")]
    assert lines[0] == "meshcloud-web: serving web-0 on port 8080"
    assert any("response:200" in x for x in lines[1:])

    begun = time.monotonic()
    await rt.stop("web-0")
    TIMINGS["container stop (s)"] = time.monotonic() - begun
    st = await rt.status("web-0")
    assert st.state is ReplicaState.EXITED and st.exit_code == 143
    assert st.health is HealthState.NONE and not st.alive


async def _health_is(rt: PodmanRuntime, name: str, want: HealthState):
    st = await rt.status(name)
    return st if st.health is want else None


async def test_list_images_names_the_demo_images(rt):
    images = await rt.list_images()
    assert DEMO_BASE_IMAGE in images and DEMO_WEB_IMAGE in images
    assert images == sorted(images) and not any(i.startswith("<none>") for i in images)


async def test_unknown_image_is_refused_and_nothing_is_created(rt, data_dir):
    with pytest.raises(WorkloadRuntimeError) as info:
        await rt.start(ContainerSpec(name="ghost", image="localhost/meshcloud/nope:1"))
    assert info.value.code == ErrorCode.IMAGE_NOT_FOUND
    assert "image localhost/meshcloud/nope:1 not found locally" in info.value.message
    assert "meshcloud images --build-demo" in info.value.message
    assert "podman save" in info.value.message and "python -m" not in info.value.message
    names = cli(data_dir, "ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert container_name("ghost") not in names
    assert await rt.list() == []


async def test_bad_spec_is_refused_before_any_podman_call(rt):
    calls = rt.api_calls
    for bad in (ContainerSpec(name="x", image=DEMO_WEB_IMAGE, memory=-1),
                ContainerSpec(name="x", image=DEMO_WEB_IMAGE, cpu=10_000),
                ContainerSpec(name="x", image=DEMO_WEB_IMAGE,
                              ports=(PortMapping(container_port=80, host_port=0),)),
                ContainerSpec(name="x", image=None)):
        with pytest.raises(WorkloadRuntimeError) as info:
            await rt.start(bad)
        assert info.value.code == ErrorCode.INVALID_SPEC
    assert rt.api_calls == calls


async def test_list_shows_only_this_nodes_containers(rt, data_dir):
    cli(data_dir, "create", "--name", "stranger", DEMO_BASE_IMAGE, "true")
    cli(data_dir, "create", "--name", container_name("imposter"), "--label",
        "meshcloud.node=node-b", DEMO_BASE_IMAGE, "true")
    try:
        await rt.start(ContainerSpec(name="mine", image=DEMO_BASE_IMAGE,
                                     command=("sleep", "30")))
        assert [s.name for s in await rt.list()] == ["mine"]
        with pytest.raises(WorkloadRuntimeError) as info:
            await rt.status("imposter")
        assert info.value.code == ErrorCode.NOT_FOUND
        await rt.remove("imposter")  # not ours: left alone
        assert container_name("imposter") in cli(data_dir, "ps", "-a").stdout
    finally:
        cli(data_dir, "rm", "-f", "stranger", container_name("imposter"), check=False)


async def test_memory_limit_kills_a_hog_and_restarts_are_counted(rt):
    hog = ContainerSpec(name="hog", image=DEMO_BASE_IMAGE, memory=32 << 20,
                        command=("dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"))
    stray = Path.cwd() / "oom"  # conmon writes one in its working directory
    was_there = stray.exists()
    await rt.start(hog)
    st = await _ended(rt, "hog")
    assert st.state is ReplicaState.FAILED and st.exit_code == 137 and st.restarts == 0
    assert was_there or not stray.exists(), "the OOM kill left a file in our cwd"
    await rt.start(hog)
    st = await _ended(rt, "hog")
    assert st.state is ReplicaState.FAILED and st.restarts == 1


async def _ended(rt: PodmanRuntime, name: str):
    with trio.fail_after(15):
        return await rt.wait_exit(name)


async def test_pids_limit_is_enforced_and_volumes_persist(rt, data_dir):
    script = ("echo kept > /data/f; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; "
              "echo all-forked")
    await rt.start(ContainerSpec(name="forky", image=DEMO_BASE_IMAGE, pids=4,
                                 command=("sh", "-c", script),
                                 volumes=(VolumeMount(name="vol1", path="/data"),)))
    st = await _ended(rt, "forky")
    lines = [x async for x in rt.logs("forky")]
    assert any("can't fork" in x for x in lines), lines
    assert "all-forked" not in lines
    assert st.state is ReplicaState.FAILED and st.exit_code == 2
    assert (data_dir / "volumes/vol1/f").read_text() == "kept\n"


async def test_command_health_check_runs_inside_the_container(rt, data_dir):
    spec = ContainerSpec(name="sick", image=DEMO_BASE_IMAGE, command=("sleep", "60"),
                         volumes=(VolumeMount(name="flags", path="/flags"),),
                         health=HealthCheck(kind=HealthKind.COMMAND, interval=0.1, retries=2,
                                            command=("test", "-f", "/flags/ok")))
    await rt.start(spec)
    st = await wait_for(lambda: _health_is(rt, "sick", HealthState.UNHEALTHY), what="unhealthy")
    assert st.state is ReplicaState.UNHEALTHY and "exit 1" in st.health_detail
    (data_dir / "volumes/flags/ok").write_text("")
    st = await wait_for(lambda: _health_is(rt, "sick", HealthState.HEALTHY), what="recovered")
    assert st.state is ReplicaState.RUNNING


async def test_adoption_after_the_runtime_is_recreated(data_dir):
    port = free_port()
    spec = ContainerSpec(name="kept", image=DEMO_WEB_IMAGE, fencing_token=4,
                         ports=(PortMapping(container_port=8080, host_port=port),),
                         health=HealthCheck(kind=HealthKind.TCP, port=8080, interval=0.1))
    first = PodmanRuntime(config(data_dir))
    async with running(first):
        handle = await first.start(spec)
        await fetch(port)
    # agent restart: the service is gone, the container is not
    second = PodmanRuntime(config(data_dir))
    async with running(second):
        try:
            [st] = await second.list()
            assert (st.name, st.id, st.state) == ("kept", handle.id, ReplicaState.RUNNING)
            again = await second.start(spec)
            assert again.adopted and again.id == handle.id
            with pytest.raises(WorkloadRuntimeError) as info:
                await second.start(ContainerSpec(**{**_fields(spec), "fencing_token": 3}))
            assert info.value.code == ErrorCode.FENCED
            await second.start(ContainerSpec(**{**_fields(spec), "fencing_token": 8}))
            st = await wait_for(lambda: _health_is(second, "kept", HealthState.HEALTHY),
                                what="health re-armed")
            assert st.fencing_token == 8
            lines = [x async for x in second.logs("kept", tail=10)]
            assert "serving kept" in lines[0]
            await fetch(port)
        finally:
            with trio.CancelScope(shield=True):
                await second.remove("kept")


def _fields(spec: ContainerSpec) -> dict:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


async def test_follow_logs_until_the_container_exits(rt):
    await rt.start(ContainerSpec(name="talker", image=DEMO_BASE_IMAGE, command=(
        "sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.1; done; echo bye; exit 2")))
    with trio.fail_after(10):
        lines = [x async for x in rt.logs("talker", follow=True)]
    assert lines == ["tick 1", "tick 2", "tick 3", "bye"]
    st = await rt.status("talker")
    assert st.state is ReplicaState.FAILED and st.exit_code == 2


async def test_service_is_restarted_when_it_dies(rt):
    pid = int((rt.service.dir / "service.pid").read_text().split()[0])
    os.kill(pid, 9)
    await wait_for(lambda: _restarted(rt), what="service restart")
    assert await rt.image_exists(DEMO_WEB_IMAGE)


async def _restarted(rt: PodmanRuntime) -> bool:
    await trio.lowlevel.checkpoint()
    return rt.service.restarts > 0 and rt.service.ready.is_set()


def _host_ids(pid: int) -> tuple[int, str]:
    """The host uid of process ``pid`` and its user namespace's uid map."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    return uid, " ".join(Path(f"/proc/{pid}/uid_map").read_text().split())


async def _running_pid(data_dir: Path, name: str) -> int:
    async def pid() -> int:
        await trio.lowlevel.checkpoint()
        return int(inspect(data_dir, name)["State"].get("Pid") or 0)

    return await wait_for(pid, what=f"{name} running")


async def test_container_root_is_not_host_root(rt, data_dir):
    from apps.runtimes.users import SLOT_SIZE, is_workload_uid

    script = "id -u; echo x > /data/by-root; ls -ln /data; exec sleep 60"
    legacy = data_dir / "volumes" / "boxed-data"  # written by a container without userns
    legacy.mkdir(parents=True)
    (legacy / "by-999").write_text("old\n")
    os.chown(legacy / "by-999", 999, 999)
    await rt.start(ContainerSpec(name="boxed-0", image=DEMO_BASE_IMAGE, workload="boxed",
                                 command=("sh", "-c", script),
                                 volumes=(VolumeMount(name="boxed-data", path="/data"),)))
    pid = await _running_pid(data_dir, "boxed-0")
    uid, uid_map = _host_ids(pid)
    base = rt.host_base(ContainerSpec(name="boxed-0", image=DEMO_BASE_IMAGE, workload="boxed"))
    assert base is not None and is_workload_uid(base)
    assert uid == base != 0  # container root, as the host sees it
    assert uid_map == f"0 {base} {SLOT_SIZE}"
    lines = await wait_for(lambda: _log_lines(rt, "boxed-0", 2), what="output")
    assert lines[0] == "0"  # ... is root inside
    written = data_dir / "volumes" / "boxed-data" / "by-root"
    assert written.read_text() == "x\n" and written.stat().st_uid == base
    moved = legacy / "by-999"  # ids shifted into the namespace: still its uid 999's
    assert (moved.stat().st_uid, moved.stat().st_gid) == (base + 999, base + 999)


async def test_run_as_root_container_is_host_root(rt, data_dir):
    await rt.start(ContainerSpec(name="trusted-0", image=DEMO_BASE_IMAGE, workload="trusted",
                                 command=("sleep", "60"), run_as_root=True))
    uid, uid_map = _host_ids(await _running_pid(data_dir, "trusted-0"))
    assert uid == 0 and uid_map == "0 0 4294967295"


async def _log_lines(rt: PodmanRuntime, name: str, n: int) -> list[str] | None:
    lines = [x async for x in rt.logs(name)]
    return lines if len(lines) >= n else None
