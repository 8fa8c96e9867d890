"""The process runtime against real processes: limits, logs, health, stop, adoption."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from apps.runtimes import pidfile
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
from apps.runtimes.config import ProcessConfig
from apps.runtimes.process import ProcessRuntime
from tests.apps.runtimes.conftest import PY, free_port, home, homes_for, volume, wait_for

NODE = "node-a"


def make_runtime(data_dir: Path, **kw) -> ProcessRuntime:
    cfg = dict(data_dir=data_dir, node_id=NODE, supervise_interval=0.05, poll_interval=0.01,
               log_poll_interval=0.01, homes=homes_for(data_dir))
    return ProcessRuntime(ProcessConfig(**{**cfg, **kw}))


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    runtime = make_runtime(tmp_path)
    async with running(runtime):
        try:
            yield runtime
        finally:
            for st in await runtime.list():
                await runtime.remove(st.name)


def sh(name: str, script: str, **kw) -> ContainerSpec:
    return ContainerSpec(name=name, image=None, command=("/bin/sh", "-c", script), **kw)


async def ended(rt: ProcessRuntime, name: str):
    with trio.fail_after(10):
        return await rt.wait_exit(name)


async def logs(rt: ProcessRuntime, name: str, **kw) -> list[str]:
    return [line async for line in rt.logs(name, **kw)]


async def test_runs_command_with_env_ports_volumes_and_captures_output(rt, tmp_path):
    port = free_port()
    spec = sh("job", 'echo "A=$A PORT=$PORT P80=$PORT_80 HOST=$HOST R=$MESHCLOUD_REPLICA '
              'W=$MESHCLOUD_WORKLOAD"; echo err >&2; pwd; echo hi > /dev/null; '
              'echo saved > data/f; echo "vol=$VOLUME_STORE"',
              env={"A": "1"}, ports=(PortMapping(container_port=80, host_port=port),),
              volumes=(VolumeMount(name="store", path="/data"),), workload="batch", replica=2)
    handle = await rt.start(spec)
    assert handle.runtime == "process" and not handle.adopted
    st = await ended(rt, "job")
    assert st.state is ReplicaState.EXITED and st.exit_code == 0
    out = await logs(rt, "job")
    vol = volume(tmp_path, "store")
    assert out == [f"A=1 PORT={port} P80={port} HOST=127.0.0.1 R=2 W=batch", "err",
                   str(home(tmp_path, "job")), f"vol={vol}"]
    assert (vol / "f").read_text() == "saved\n"
    assert await logs(rt, "job", tail=1) == [f"vol={vol}"]


async def test_rlimits_are_applied(rt):
    spec = sh("limits", "cat /proc/self/limits; sleep 30", memory=512 << 20, cpu_time=60,
              nofile=200, pids=5000)
    await rt.start(spec)
    pid = int((await rt.status("limits")).id.split(":")[0])
    text = await wait_for(lambda: _read_limits(pid), what="limits")
    assert _limit(text, "Max address space") == str(512 << 20)
    assert _limit(text, "Max cpu time") == "60"
    assert _limit(text, "Max open files") == "200"
    assert _limit(text, "Max processes") == "5000"


async def _read_limits(pid: int) -> str:
    await trio.lowlevel.checkpoint()
    return Path(f"/proc/{pid}/limits").read_text()


def _limit(text: str, name: str) -> str:
    line = next(x for x in text.splitlines() if x.startswith(name))
    return line[len(name):].split()[0]


async def test_memory_limit_stops_a_hog(rt):
    hog = ContainerSpec(name="hog", image=None, command=(
        PY, "-c", "b = bytearray(600 * 1024 * 1024); print('allocated')"),
        memory=200 << 20)
    await rt.start(hog)
    st = await ended(rt, "hog")
    assert st.state is ReplicaState.FAILED and st.exit_code != 0
    out = "\n".join(await logs(rt, "hog"))
    assert "MemoryError" in out and "allocated" not in out


async def test_cpu_time_limit_kills_a_spinner(rt):
    await rt.start(sh("spin", "while :; do :; done", cpu_time=1))
    st = await ended(rt, "spin")
    assert st.state is ReplicaState.FAILED
    assert st.exit_code == 128 + 24  # SIGXCPU
    assert "SIGXCPU" in st.message


async def test_stop_escalates_to_sigkill_and_kills_the_whole_group(rt, tmp_path):
    script = "trap '' TERM; sleep 300 & echo $! > child.pid; while :; do sleep 0.05; done"
    await rt.start(sh("stubborn", script, stop_timeout=0.3))
    child_file = home(tmp_path, "stubborn") / "child.pid"
    await wait_for(lambda: _exists(child_file), what="child pid file")
    child = pidfile.identify(int(child_file.read_text()))
    assert child is not None
    begun = trio.current_time()
    await rt.stop("stubborn")
    assert trio.current_time() - begun >= 0.3
    st = await rt.status("stubborn")
    assert st.state is ReplicaState.EXITED  # stopped on request
    assert st.exit_code == 137
    await wait_for(lambda: _gone(child), within=2, what="grandchild to die")


async def test_stop_with_sigterm_records_the_command_status(rt):
    await rt.start(sh("polite", "trap 'echo bye; exit 7' TERM; echo ready; "
                      "while :; do sleep 0.05; done"))
    await wait_for(lambda: _has_output(rt, "polite"), what="the trap to be set")
    await rt.stop("polite", 5)
    st = await rt.status("polite")
    assert st.exit_code == 7 and st.state is ReplicaState.EXITED
    out = await logs(rt, "polite")  # the group got SIGTERM: sh may report its sleep
    assert out[0] == "ready" and out[-1] == "bye"


async def _has_output(rt: ProcessRuntime, name: str) -> bool:
    return bool(await logs(rt, name))


async def _exists(path: Path) -> bool:
    await trio.lowlevel.checkpoint()
    return path.exists() and path.read_text().strip() != ""


async def _gone(ident: pidfile.ProcessIdentity) -> bool:
    await trio.lowlevel.checkpoint()
    return not pidfile.is_alive(ident)


async def test_failed_exit_and_restart_counter(rt):
    await rt.start(sh("flaky", "exit 3"))
    st = await ended(rt, "flaky")
    assert (st.state, st.exit_code, st.restarts) == (ReplicaState.FAILED, 3, 0)
    assert "exit code 3" in st.message
    await rt.start(sh("flaky", "exit 0"))
    st = await ended(rt, "flaky")
    assert (st.state, st.exit_code, st.restarts) == (ReplicaState.EXITED, 0, 1)


async def test_start_is_idempotent_and_fenced(rt):
    spec = sh("svc", "sleep 30", fencing_token=5)
    first = await rt.start(spec)
    again = await rt.start(spec)
    assert again.adopted and again.id == first.id
    with pytest.raises(WorkloadRuntimeError) as info:
        await rt.start(sh("svc", "sleep 30", fencing_token=4))
    assert info.value.code == ErrorCode.FENCED
    with pytest.raises(WorkloadRuntimeError) as info:
        await rt.start(sh("svc", "sleep 31", fencing_token=5))
    assert info.value.code == ErrorCode.ALREADY_RUNNING
    await rt.start(sh("svc", "sleep 30", fencing_token=9))
    assert (await rt.status("svc")).fencing_token == 9


async def test_bad_spec_refused_before_anything_is_created(rt, tmp_path):
    before = sorted((tmp_path / "runtimes/process").iterdir())
    for bad in (ContainerSpec(name="x", image="localhost/web:1", command=("true",)),
                sh("x", "true", memory=-1), sh("Bad Name", "true")):
        with pytest.raises(WorkloadRuntimeError) as info:
            await rt.start(bad)
        assert info.value.code == ErrorCode.INVALID_SPEC
    assert sorted((tmp_path / "runtimes/process").iterdir()) == before
    with pytest.raises(WorkloadRuntimeError) as info:
        await rt.status("x")
    assert info.value.code == ErrorCode.NOT_FOUND
    await rt.stop("x")  # unknown names: no-ops
    await rt.remove("x")


async def test_http_health_check_follows_the_server(rt, tmp_path):
    port = free_port()
    spec = ContainerSpec(
        name="web", image=None, command=(PY, "-m", "http.server", "--bind", "127.0.0.1"),
        args=(str(port),), ports=(PortMapping(container_port=8000, host_port=port),),
        health=HealthCheck(kind=HealthKind.HTTP, port=8000, interval=0.05, retries=2))
    await rt.start(spec)
    st = await wait_for(lambda: _health_is(rt, "web", HealthState.HEALTHY), what="healthy")
    assert st.state is ReplicaState.RUNNING and "200" in st.health_detail


async def test_command_health_check_marks_unhealthy(rt, tmp_path):
    spec = sh("sick", "sleep 30", health=HealthCheck(
        kind=HealthKind.COMMAND, command=("/bin/sh", "-c", "test -f ok"), interval=0.05,
        retries=2))
    await rt.start(spec)
    st = await wait_for(lambda: _health_is(rt, "sick", HealthState.UNHEALTHY), what="unhealthy")
    assert st.state is ReplicaState.UNHEALTHY and "exit 1" in st.health_detail
    (home(tmp_path, "sick") / "ok").write_text("")
    st = await wait_for(lambda: _health_is(rt, "sick", HealthState.HEALTHY), what="recovery")
    assert st.state is ReplicaState.RUNNING


async def test_tcp_health_check_fails_when_nothing_listens(rt):
    port = free_port()
    spec = sh("deaf", "sleep 30", ports=(PortMapping(container_port=1, host_port=port),),
              health=HealthCheck(kind=HealthKind.TCP, port=1, interval=0.05, retries=1))
    await rt.start(spec)
    st = await wait_for(lambda: _health_is(rt, "deaf", HealthState.UNHEALTHY), what="unhealthy")
    assert f"127.0.0.1:{port}" in st.health_detail


async def _health_is(rt: ProcessRuntime, name: str, want: HealthState):
    st = await rt.status(name)
    return st if st.health is want else None


async def test_logs_follow_until_exit_and_rotation(tmp_path):
    runtime = make_runtime(tmp_path, log_max_bytes=4096, log_keep=2)
    async with running(runtime):
        await runtime.start(sh("chatty", "i=0; while [ $i -lt 40 ]; do i=$((i+1)); "
                               "printf 'line %03d %0100d\\n' $i 0; done; "
                               "while [ ! -f go ]; do sleep 0.02; done; echo done"))
        log_path = tmp_path / "runtimes/process/chatty/output.log"
        rotated = tmp_path / "runtimes/process/chatty/output.log.1"
        await wait_for(lambda: _exists(rotated), what="rotation")
        got: list[str] = []

        async def follow() -> None:
            async for line in runtime.logs("chatty", follow=True, tail=None):
                got.append(line)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                await wait_for(lambda: _at_least(got, 40), what="old lines")
                (home(tmp_path, "chatty") / "go").write_text("")
        assert got[-1] == "done"
        numbered = [int(x.split()[1]) for x in got[:-1]]
        assert numbered == list(range(1, 41))
        assert log_path.stat().st_size < 4096 + 200


async def _at_least(items: list, n: int) -> bool:
    await trio.lowlevel.checkpoint()
    return len(items) >= n


async def test_adoption_after_the_runtime_restarts(tmp_path):
    first = make_runtime(tmp_path)
    async with running(first):
        await first.start(sh("long", "trap 'exit 0' TERM; while :; do sleep 0.02; done",
                             fencing_token=3))
        await first.start(sh("short", "while [ ! -f go ]; do sleep 0.02; done; exit 4"))
        await first.start(sh("sick", "sleep 30", health=HealthCheck(
            kind=HealthKind.COMMAND, command=("false",), interval=0.05, retries=1)))
        before = {s.name: s for s in await first.list()}
    # the agent "restarted": a new runtime object over the same data dir
    (home(tmp_path, "short") / "go").write_text("")
    await wait_for(lambda: _exists(tmp_path / "runtimes/process/short/exit_code"),
                   what="short to end")
    second = make_runtime(tmp_path)
    async with running(second):
        now = {s.name: s for s in await second.list()}
        assert now["long"].state is ReplicaState.RUNNING
        assert now["long"].id == before["long"].id
        assert now["short"].state is ReplicaState.FAILED and now["short"].exit_code == 4
        handle = await second.start(sh("long", "trap 'exit 0' TERM; while :; do sleep 0.02; done",
                                       fencing_token=3))
        assert handle.adopted and handle.id == before["long"].id
        await wait_for(lambda: _health_is(second, "sick", HealthState.UNHEALTHY),
                       what="adopted replica health-checked again")
        await second.stop("long", 5)
        st = await second.status("long")
        assert st.state is ReplicaState.EXITED and st.exit_code == 0
        for name in ("long", "short", "sick"):
            await second.remove(name)
        assert await second.list() == []


async def test_a_reused_pid_is_not_adopted_nor_signalled(tmp_path):
    first = make_runtime(tmp_path)
    async with running(first):
        await first.start(sh("ghost", "exit 0"))
        await ended(first, "ghost")
    # forge the record: the pid now belongs to this test process, with another start time
    state_file = tmp_path / "runtimes/process/ghost/state.json"
    state = json.loads(state_file.read_text())
    me = pidfile.identify(os.getpid())
    assert me is not None and me.start_ticks is not None
    state.update(pid=os.getpid(), start_ticks=me.start_ticks + 1, ended=False, exit_code=None)
    state_file.write_text(json.dumps(state))
    (tmp_path / "runtimes/process/ghost/exit_code").unlink()
    second = make_runtime(tmp_path)
    async with running(second):
        st = await second.status("ghost")
        assert st.state is ReplicaState.UNKNOWN and "no agent watched" in st.message
        await second.stop("ghost", 0)  # must not signal our own process group
        await second.remove("ghost")
    assert pidfile.is_alive(me)


async def test_replicas_of_other_nodes_are_not_listed(tmp_path):
    mine = make_runtime(tmp_path)
    async with running(mine):
        await mine.start(sh("a", "exit 0"))
        await ended(mine, "a")
    other = make_runtime(tmp_path, node_id="node-b")
    async with running(other):
        assert await other.list() == []


async def test_needs_run_first(tmp_path):
    with pytest.raises(WorkloadRuntimeError) as info:
        await make_runtime(tmp_path).start(sh("a", "true"))
    assert info.value.code == ErrorCode.NOT_RUNNING
