"""Admission: a fixed host port that two replicas on one machine would share is refused."""

from __future__ import annotations

from apps.workloads.admission import (
    HOW_TO_GET_IMAGES,
    admission_problems,
    machine_of_addresses,
)
from apps.workloads.messages import NodeOffer
from apps.workloads.spec import parse_spec
from meshcloud.placement import NodeInfo

IMAGE = "localhost/meshcloud/web:1"
IDS = [bytes([i]) * 32 for i in (1, 2, 3)]


def _mesh(hosts: list[str]) -> tuple[list[NodeInfo], dict[bytes, NodeOffer], dict[bytes, str]]:
    ids = IDS[:len(hosts)]
    view = [NodeInfo(i, runtimes=frozenset({"podman"}), cpus=4, ram_mb=4096) for i in ids]
    offers = {i: NodeOffer(runtimes=("podman",), images=(IMAGE,)) for i in ids}
    return view, offers, dict(zip(ids, hosts, strict=True))


def _spec(replicas: int, ports: list[str]):
    return parse_spec({"name": "web", "image": IMAGE, "replicas": replicas, "ports": ports,
                       "constraints": {"runtime": "podman"}})


def test_two_replicas_on_one_machine_cannot_share_a_host_port():
    view, offers, machines = _mesh(["127.0.0.1", "127.0.0.1", "127.0.0.1"])
    problems = admission_problems(_spec(2, ["8080:8080"]), view, offers, {}, machines)
    assert len(problems) == 1
    assert "host port(s) 8080/tcp" in problems[0] and "1 machine(s) (127.0.0.1)" in problems[0]


def test_replicas_on_distinct_machines_may_publish_the_same_port():
    view, offers, machines = _mesh(["10.0.0.1", "10.0.0.2", "10.0.0.2"])
    assert admission_problems(_spec(2, ["8080:8080"]), view, offers, {}, machines) == []
    problems = admission_problems(_spec(3, ["8080:8080"]), view, offers, {}, machines)
    assert any("2 machine(s)" in p for p in problems)


def test_no_fixed_port_or_one_replica_is_fine_on_one_machine():
    view, offers, machines = _mesh(["127.0.0.1"] * 3)
    assert admission_problems(_spec(1, ["8080:8080"]), view, offers, {}, machines) == []
    assert admission_problems(_spec(3, []), view, offers, {}, machines) == []


def test_machine_of_addresses():
    assert machine_of_addresses(["127.0.0.1:7100", "10.0.0.1:7946"]) == "127.0.0.1"
    assert machine_of_addresses(["[::1]:7946"]) == "::1"
    assert machine_of_addresses(["mem://n1"]) == "n1"  # in-process nodes: one each
    assert machine_of_addresses(["tcp://10.0.0.2:7946"]) == "10.0.0.2"
    assert machine_of_addresses([]) is None


def test_missing_image_hint_names_the_cli_verb():
    view, _, machines = _mesh(["127.0.0.1"])
    problems = admission_problems(_spec(1, []), view, {IDS[0]: NodeOffer(runtimes=("podman",))},
                                  {}, machines)
    assert "meshcloud images push" in problems[0] and "python -m" not in HOW_TO_GET_IMAGES


def test_a_refusal_for_too_few_nodes_says_when_members_have_not_announced_yet():
    view, offers, machines = _mesh(["10.0.0.1", "10.0.0.2"])
    quiet = admission_problems(_spec(3, []), view, offers, {}, machines)
    assert quiet == ["replicas = 3 but only 2 live node(s) can run it "
                     "(each replica needs its own node)"]
    waiting = admission_problems(_spec(3, []), view, offers, {}, machines, unannounced=1)
    assert len(waiting) == 1
    assert "1 more live member(s) have not announced their runtimes yet" in waiting[0]
