"""The process runtime's network hook (:mod:`apps.runtimes.network`), with real
processes and a real network namespace: a replica the hook places runs inside the
namespace, as its workload's user, with the hook's variables; without the hook's answer
it runs in the host's network; a namespace that cannot be opened refuses the start."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import trio

from apps.runtimes.base import ContainerSpec, ErrorCode, ReplicaState, WorkloadRuntimeError
from apps.runtimes.base import running as started
from apps.runtimes.network import ReplicaNet
from tests.apps.runtimes.test_process import make_runtime

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="network namespaces and users need a root agent")

PROBE = "id -u; readlink /proc/self/ns/net; echo \"vnet=$MESHCLOUD_VNET_BLUE\""


class Hook:
    """Places replicas named ``inside-*`` in ``netns`` (the rest: host network)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.asked: list[str] = []

    async def prepare(self, spec: ContainerSpec) -> ReplicaNet | None:
        await trio.lowlevel.checkpoint()
        self.asked.append(spec.name)
        if not spec.name.startswith("inside"):
            return None
        return ReplicaNet(netns=self.netns, env={"MESHCLOUD_VNET_BLUE": "10.42.0.9"})

    async def joined(self, spec: ContainerSpec, pid: int) -> None:
        raise AssertionError("the process runtime never calls joined")


async def output(rt, name: str) -> list[str]:
    with trio.fail_after(20):
        st = await rt.wait_exit(name)
    assert st.state is ReplicaState.EXITED, st.message
    return [line async for line in rt.logs(name)]


async def test_a_placed_replica_runs_in_its_namespace_as_its_user(tmp_path):
    name = f"mctest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = f"/run/netns/{name}"
        want = f"net:[{os.stat(path).st_ino}]"
        host = os.readlink("/proc/self/ns/net")
        hook = Hook(path)
        rt = make_runtime(tmp_path)
        rt.network = hook
        async with started(rt):
            await rt.start(ContainerSpec(name="inside-0", image=None,
                                         command=("/bin/sh", "-c", PROBE), workload="w"))
            uid, netns, env = await output(rt, "inside-0")
            assert netns == want and netns != host
            assert int(uid) != 0  # the user switch still happens, after entering
            assert env == "vnet=10.42.0.9"
            await rt.start(ContainerSpec(name="outside-0", image=None,
                                         command=("/bin/sh", "-c", PROBE), workload="w"))
            uid2, netns2, env2 = await output(rt, "outside-0")
            assert netns2 == host and env2 == "vnet=" and int(uid2) != 0
            assert hook.asked == ["inside-0", "outside-0"]
            # a namespace that is gone: one clear error, nothing started
            hook.netns = f"/run/netns/{name}-gone"
            with pytest.raises(WorkloadRuntimeError) as err:
                await rt.start(ContainerSpec(name="inside-1", image=None,
                                             command=("/bin/sh", "-c", PROBE)))
            assert err.value.code == ErrorCode.START_FAILED
            assert "network namespace" in err.value.message
            assert "inside-1" not in {s.name for s in await rt.list()}
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
