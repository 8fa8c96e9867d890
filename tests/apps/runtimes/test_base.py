"""ContainerSpec validation, serialisation and the end-state rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.runtimes.base import (
    ContainerSpec,
    ErrorCode,
    HealthCheck,
    HealthKind,
    PortMapping,
    ReplicaState,
    VolumeMount,
    WorkloadRuntimeError,
    ended_state,
)


def spec(**kw) -> ContainerSpec:
    base = dict(name="web-0", image="localhost/meshcloud/web:1")
    return ContainerSpec(**{**base, **kw})


def test_good_spec_passes():
    spec(ports=(PortMapping(container_port=8080, host_port=18080),), cpu=0.5,
         memory=64 << 20, pids=64, cpu_time=100, volumes=(VolumeMount(name="d", path="/data"),),
         health=HealthCheck(kind=HealthKind.HTTP, port=8080),
         env={"A": "1"}, labels={"team": "x"}).validate(needs_image=True)


@pytest.mark.parametrize(("kw", "words"), [
    ({"name": "Web 0"}, "name"),
    ({"name": "../etc"}, "name"),
    ({"image": ""}, "image is required"),
    ({"memory": -1}, "memory"),
    ({"memory": 10}, "memory"),
    ({"memory": 1.5e9}, "memory"),
    ({"cpu": 0}, "cpu"),
    ({"cpu": 4000}, "cpu"),
    ({"cpu": float("nan")}, "cpu"),
    ({"pids": 0}, "pids"),
    ({"ports": (PortMapping(container_port=0, host_port=80),)}, "container_port"),
    ({"ports": (PortMapping(container_port=80, host_port=70000),)}, "host_port"),
    ({"ports": (PortMapping(container_port=80, host_port=81, host_ip="localhost"),)},
     "host_ip"),
    ({"ports": (PortMapping(container_port=80, host_port=81),
                PortMapping(container_port=82, host_port=81))}, "published twice"),
    ({"env": {"1A": "x"}}, "env name"),
    ({"env": {"A": "x\0y"}}, "NUL"),
    ({"volumes": (VolumeMount(name="d", path="data"),)}, "volume path"),
    ({"volumes": (VolumeMount(name="d", path="/a/../b"),)}, "volume path"),
    ({"labels": {"meshcloud.node": "x"}}, "runtime's"),
    ({"health": HealthCheck(kind=HealthKind.TCP, port=9)}, "health check port"),
    ({"health": HealthCheck(kind=HealthKind.COMMAND)}, "needs a command"),
    ({"stop_timeout": -1}, "stop_timeout"),
    ({"fencing_token": -1}, "fencing_token"),
])
def test_bad_spec_gets_one_clear_error(kw, words):
    with pytest.raises(WorkloadRuntimeError) as info:
        spec(**kw).validate(needs_image=True)
    assert info.value.code == ErrorCode.INVALID_SPEC
    assert words in info.value.message


def test_all_problems_named_at_once():
    with pytest.raises(WorkloadRuntimeError) as info:
        spec(memory=-5, cpu=-1, pids=-2).validate(needs_image=True)
    msg = info.value.message
    assert "memory" in msg and "cpu" in msg and "pids" in msg


def test_process_runtime_rules():
    with pytest.raises(WorkloadRuntimeError, match="image must be None"):
        spec(command=("true",)).validate(needs_image=False)
    with pytest.raises(WorkloadRuntimeError, match="command is required"):
        spec(image=None).validate(needs_image=False)
    spec(image=None, command=("true",)).validate(needs_image=False)


names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True)
specs = st.builds(
    ContainerSpec, name=names, image=st.just("localhost/x:1"),
    command=st.lists(st.text(max_size=5), max_size=3).map(tuple),
    env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True),
                        st.text(max_size=5), max_size=3),
    ports=st.lists(st.builds(PortMapping, container_port=st.integers(1, 65535),
                             host_port=st.integers(1, 65535)), max_size=2).map(tuple),
    memory=st.none() | st.integers(4 << 20, 1 << 40), cpu=st.none() | st.floats(0.01, 64),
    fencing_token=st.integers(0, 1 << 40), replica=st.integers(0, 100),
    health=st.none() | st.builds(HealthCheck, kind=st.just(HealthKind.COMMAND),
                                 command=st.just(("true",)), interval=st.floats(0.1, 10)))


@settings(max_examples=60, deadline=None)
@given(specs)
def test_spec_json_round_trip(s):
    again = ContainerSpec.from_json(s.to_json())
    assert again == s
    assert again.spec_hash() == s.spec_hash()


def test_spec_hash_ignores_fencing_token_only():
    a = spec(fencing_token=1)
    assert a.spec_hash() == spec(fencing_token=7).spec_hash()
    assert a.spec_hash() != spec(fencing_token=1, memory=64 << 20).spec_hash()


@pytest.mark.parametrize(("code", "stop", "state"), [
    (0, False, ReplicaState.EXITED),
    (3, False, ReplicaState.FAILED),
    (137, False, ReplicaState.FAILED),
    (143, True, ReplicaState.EXITED),
    (None, False, ReplicaState.UNKNOWN),
    (None, True, ReplicaState.EXITED),
])
def test_ended_state(code, stop, state):
    assert ended_state(code, stop_requested=stop) is state
