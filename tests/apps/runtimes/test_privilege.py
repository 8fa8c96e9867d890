"""Least privilege of process replicas, with real processes under a root agent.

A replica runs as its workload's own uid (not root, not the agent), in a 0700 home of
its own; it cannot write another workload's home, the agent's data dir, nor the agent's
files about it; it can write its home, its volumes and /tmp. ``run_as_root`` (set only
from the mesh's signed policy) runs it as root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from apps.runtimes.base import ContainerSpec, ReplicaState, VolumeMount, running
from apps.runtimes.users import (
    SLOT_SIZE,
    SLOTS,
    UidAllocator,
    is_workload_uid,
    preferred_slot,
    slot_base,
)
from tests.apps.runtimes.conftest import PY, home, volume
from tests.apps.runtimes.test_process import make_runtime

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="only a root agent switches replicas' users")

PROBE = """
id -u; id -g; id -G
try() { if ( : > "$1" ) 2>/dev/null; then echo "$2=yes"; else echo "$2=no"; fi; }
try "$HOME/mine" home
try "$VOLUME_STORE/v" volume
try "/tmp/meshcloud-probe-$$" tmp; rm -f "/tmp/meshcloud-probe-$$"
try "$OTHER/intrusion" other_home
try "$DATA/intrusion" data_dir
try "$DATA/runtimes/process/$MESHCLOUD_NAME/state.json" own_state
try "$DATA/runtimes/uids.json" uids
ls "$DATA" >/dev/null 2>&1 && echo list_data=yes || echo list_data=no
"""


def probe(name: str, data: Path, other: Path, **kw) -> ContainerSpec:
    return ContainerSpec(name=name, image=None, command=("/bin/sh", "-c", PROBE),
                         env={"OTHER": str(other), "DATA": str(data)},
                         volumes=(VolumeMount(name="store", path="/store"),), **kw)


async def output(rt, name: str) -> dict[str, str]:
    with trio.fail_after(10):
        st = await rt.wait_exit(name)
    assert st.state is ReplicaState.EXITED, st.message
    lines = [line async for line in rt.logs(name)][-11:]  # this run's (the log appends)
    facts = dict(line.split("=", 1) for line in lines[3:])
    facts.update(uid=lines[0], gid=lines[1], groups=lines[2])
    return facts


async def test_a_replica_runs_as_its_own_user_fenced_in_by_permissions(tmp_path):
    rt = make_runtime(tmp_path)
    async with running(rt):
        await rt.start(ContainerSpec(name="other-0", image=None, workload="other",
                                     command=("/bin/sh", "-c", "echo ok > mine")))
        with trio.fail_after(10):
            await rt.wait_exit("other-0")
        other = home(tmp_path, "other-0")
        await rt.start(probe("web-0", tmp_path, other, workload="web"))
        got = await output(rt, "web-0")
        uid = int(got["uid"])
        assert uid != 0 and is_workload_uid(uid)
        assert got["gid"] == got["uid"] and got["groups"] == got["uid"]  # no extra groups
        assert got["home"] == got["volume"] == got["tmp"] == "yes"
        assert got["other_home"] == got["data_dir"] == got["own_state"] == "no"
        assert got["uids"] == got["list_data"] == "no"
        # what the permissions look like from outside
        mine = home(tmp_path, "web-0")
        assert (mine.stat().st_uid, stat.S_IMODE(mine.stat().st_mode)) == (uid, 0o700)
        assert (mine / "mine").stat().st_uid == uid
        assert volume(tmp_path, "store").stat().st_uid == uid
        assert other.stat().st_uid not in (0, uid) and not (other / "intrusion").exists()
        assert (other / "mine").read_text() == "ok\n"
        assert not (tmp_path / "intrusion").exists()
        # the same workload keeps its uid across restarts (its files stay its own)
        await rt.start(probe("web-0", tmp_path, other, workload="web"))
        assert int((await output(rt, "web-0"))["uid"]) == uid
        for name in ("web-0", "other-0"):
            await rt.remove(name)
        assert not mine.exists()


async def test_run_as_root_runs_as_root(tmp_path):
    rt = make_runtime(tmp_path)
    where = os.getcwd()
    async with running(rt):
        await rt.start(probe("admin-0", tmp_path, tmp_path, workload="admin",
                             run_as_root=True))
        got = await output(rt, "admin-0")
        assert got["uid"] == "0" and got["data_dir"] == "yes"
        # the replica's directory is set up from the agent, which stays where it was
        # (it once moved into the replica's home and was left in a deleted directory)
        assert os.getcwd() == where
        await rt.remove("admin-0")


async def test_pids_limit_counts_the_workloads_own_processes(tmp_path):
    rt = make_runtime(tmp_path)
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo all started"
    async with running(rt):
        await rt.start(ContainerSpec(name="forky-0", image=None, workload="forky", pids=4,
                                     command=("/bin/sh", "-c", script)))
        with trio.fail_after(10):
            st = await rt.wait_exit("forky-0")
        text = "\n".join([line async for line in rt.logs("forky-0")])
        assert st.state is ReplicaState.FAILED  # the shell gave up: "Cannot fork"
        assert "fork" in text.lower() and "all started" not in text
        await rt.remove("forky-0")


async def test_health_command_runs_as_the_replica_user(tmp_path):
    from apps.runtimes.base import HealthCheck, HealthKind, HealthState
    from tests.apps.runtimes.conftest import wait_for

    rt = make_runtime(tmp_path)
    check = HealthCheck(kind=HealthKind.COMMAND, interval=0.05, retries=1,
                        command=("/bin/sh", "-c", 'test "$(id -u)" != 0 && test -w .'))
    async with running(rt):
        await rt.start(ContainerSpec(name="hc-0", image=None, workload="hc", health=check,
                                     command=("/bin/sh", "-c", "exec sleep 30")))

        async def healthy():
            st = await rt.status("hc-0")
            return st if st.health is HealthState.HEALTHY else None

        await wait_for(healthy, what="a probe run as the replica's user")
        await rt.remove("hc-0")


def test_python_is_usable_by_workload_users():
    assert Path(PY).exists()


def test_slots_are_stable_distinct_and_remembered(tmp_path):
    users = UidAllocator(tmp_path)
    a, b = users.base_for("alpha"), users.base_for("beta")
    assert a != b and is_workload_uid(a) and is_workload_uid(b + SLOT_SIZE - 1)
    assert UidAllocator(tmp_path).base_for("alpha") == a  # remembered on disk
    # a workload whose preferred slot is taken moves to the next free one
    slot = preferred_slot("alpha")
    clash = next(f"w{i}" for i in range(100000) if preferred_slot(f"w{i}") == slot)
    assert users.base_for(clash) == slot_base((slot + 1) % SLOTS)


async def test_a_root_replica_of_an_earlier_agent_reports_itself_as_root(tmp_path):
    import json
    from dataclasses import replace

    spec = ContainerSpec(name="old-0", image=None, workload="old",
                         command=("/bin/sh", "-c", "exec sleep 30"))
    first = make_runtime(tmp_path)
    async with running(first):
        await first.start(replace(spec, run_as_root=True))
    # what an agent before user switching wrote: no uid, no run_as_root, the work dir
    state_file = tmp_path / "runtimes/process/old-0/state.json"
    record = json.loads(state_file.read_text())
    record.pop("uid"), record.pop("home"), record["spec"].pop("run_as_root")
    state_file.write_text(json.dumps(record))
    second = make_runtime(tmp_path)
    async with running(second):
        st = await second.status("old-0")
        assert st.alive and st.spec_hash == replace(spec, run_as_root=True).spec_hash()
        assert st.spec_hash != spec.spec_hash()  # so the reconciler restarts it
        await second.remove("old-0")


async def test_homes_others_cannot_reach_are_refused_with_the_reason(tmp_path):
    from apps.runtimes.base import ErrorCode, WorkloadRuntimeError

    rt = make_runtime(tmp_path, homes=tmp_path / "homes")  # pytest's tmp dirs are 0700
    async with running(rt):
        with pytest.raises(WorkloadRuntimeError) as info:
            await rt.start(ContainerSpec(name="lost-0", image=None, command=("true",)))
    assert info.value.code == ErrorCode.START_FAILED
    assert "is not searchable by others" in info.value.message
