"""podman's container states and times mapped to ReplicaStatus (pure; no podman needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from apps.runtimes.base import (
    ContainerSpec,
    HealthCheck,
    HealthKind,
    HealthState,
    ReplicaState,
    Runtime,
)
from apps.runtimes.config import PodmanConfig, ProcessConfig
from apps.runtimes.podman import PodmanRuntime
from apps.runtimes.podman_status import ContainerView, parse_time, replica_status
from apps.runtimes.process import ProcessRuntime

CHECKED = ContainerSpec(name="w", image="i", health=HealthCheck(
    kind=HealthKind.COMMAND, command=("true",)))


def view(status: str, code: int | None = 0, *, oom: bool = False, error: str = "",
         spec: ContainerSpec | None = None) -> ContainerView:
    labels = {"meshcloud.restarts": "2", "meshcloud.replica": "1", "meshcloud.workload": "web"}
    if spec is not None:
        labels["meshcloud.spec"] = spec.to_json()
    return ContainerView(name="w", id="abc", labels=labels, status=status, exit_code=code,
                         started=1.0, finished=2.0, oom=oom, error=error)


@pytest.mark.parametrize(("v", "stop", "health", "state", "code", "words"), [
    (view("created"), False, None, ReplicaState.CREATING, None, ""),
    (view("running"), False, None, ReplicaState.RUNNING, None, ""),
    (view("running"), False, (HealthState.UNHEALTHY, "x"), ReplicaState.UNHEALTHY, None, ""),
    (view("exited", 0), False, None, ReplicaState.EXITED, 0, "exit code 0"),
    (view("exited", 3), False, None, ReplicaState.FAILED, 3, "exit code 3"),
    (view("exited", 137), False, None, ReplicaState.FAILED, 137, "SIGKILL"),
    (view("exited", 143), True, None, ReplicaState.EXITED, 143, "SIGTERM"),
    (view("exited", 137, oom=True), True, None, ReplicaState.FAILED, 137, "out of memory"),
    (view("stopped", 127, error="executable file not found"), False, None,
     ReplicaState.FAILED, 127, "not found"),
    (view("dead"), False, None, ReplicaState.UNKNOWN, None, "'dead'"),
])
def test_state_mapping(v, stop, health, state, code, words):
    st = replica_status(v, stop_requested=stop, fence=4, health=health)
    assert (st.state, st.exit_code) == (state, code)
    assert words in st.message
    assert (st.restarts, st.replica, st.workload, st.fencing_token) == (2, 1, "web", 4)
    assert st.finished_at == (2.0 if st.exit_code is not None else None)


def test_health_is_starting_until_a_checker_reports():
    st = replica_status(view("running", spec=CHECKED), stop_requested=False, fence=0,
                        health=None)
    assert st.health is HealthState.STARTING
    st = replica_status(view("running"), stop_requested=False, fence=0, health=None)
    assert st.health is HealthState.NONE


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-25T12:54:20.185949678Z", datetime(2026, 11, 25, 12, 54, 20, 185949, UTC)),
    ("2026-11-25T12:54:20Z", datetime(2026, 11, 25, 12, 54, 20, tzinfo=UTC)),
    ("2026-11-25T13:54:20.5+01:00", datetime(2026, 11, 25, 12, 54, 20, 500000, UTC)),
])
def test_parse_time(text, expected):
    assert parse_time(text) == pytest.approx(expected.timestamp())


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "", None, "garbage"])
def test_parse_time_never(text):
    assert parse_time(text) is None


def test_both_runtimes_implement_the_protocol(tmp_path: Path):
    assert isinstance(ProcessRuntime(ProcessConfig(data_dir=tmp_path, node_id="n")), Runtime)
    assert isinstance(PodmanRuntime(PodmanConfig(data_dir=tmp_path, node_id="n")), Runtime)


@pytest.mark.parametrize("userns_label", [None, "host", "1073741824"])
def test_a_container_made_before_user_namespaces_reports_itself_as_root(tmp_path,
                                                                         userns_label):
    from dataclasses import replace

    from apps.runtimes.base import ContainerSpec
    from apps.runtimes.podman_status import LABEL, view_from_list

    rt = PodmanRuntime(PodmanConfig(data_dir=tmp_path, node_id="n"))
    rt.map_users = True  # a root agent
    spec = ContainerSpec(name="db-0", image="localhost/x:1", workload="db")
    labels = {LABEL + "name": "db-0", LABEL + "spec": spec.to_json(),
              LABEL + "spec_hash": spec.spec_hash()}
    if userns_label is not None:
        labels[LABEL + "userns"] = userns_label
    entry = {"Id": "c1", "Names": ["meshcloud-db-0"], "Labels": labels, "State": "running"}
    status = rt._status(view_from_list(entry))
    if userns_label is None:  # runs as host root: a different replica than wanted
        assert status.spec_hash == replace(spec, run_as_root=True).spec_hash()
        assert status.spec_hash != spec.spec_hash()
    else:
        assert status.spec_hash == spec.spec_hash()
    rt.map_users = False  # rootless podman: its own user namespace, nothing to report
    labels.pop(LABEL + "userns", None)
    assert rt._status(view_from_list(entry)).spec_hash == spec.spec_hash()
