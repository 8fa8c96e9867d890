"""The ingress's pure parts: row plans, routable targets, power of two choices, the port
book, the ``publish`` field of workload specs and the exposure request checks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.ingress.api import parse_exposure
from apps.ingress.messages import EndpointRecord, Exposure
from apps.ingress.ports import PortBook
from apps.ingress.routing import LocalReplica, Target, live_targets, pick, publish_plan
from apps.workloads.spec import WorkloadSpec, parse_endpoint, spec_from_dict, spec_problems
from meshcloud.errors import MeshError, NotFoundError

ME, OTHER, DEAD = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
keys = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["http", "db"]),
                 st.integers(0, 3))
records = st.builds(EndpointRecord, node=st.sampled_from([ME, OTHER]),
                    port=st.integers(1, 65535), healthy=st.booleans())
locals_ = st.builds(LocalReplica, port=st.integers(1, 65535), healthy=st.booleans())


@given(st.dictionaries(keys, records), st.dictionaries(keys, locals_))
def test_publish_plan_makes_our_rows_match_what_runs_here_and_leaves_others(rows, local):
    puts, deletes = publish_plan(ME, local, rows)
    after = {k: v for k, v in rows.items() if k not in deletes} | puts
    mine = {k: LocalReplica(v.port, v.healthy) for k, v in after.items() if v.node == ME}
    assert mine == local
    for key, row in rows.items():
        if row.node != ME and key not in local:
            assert after[key] == row  # never touched
    assert publish_plan(ME, local, after) == ({}, [])  # idempotent: nothing left to do


def test_live_targets_only_healthy_alive_and_wanted():
    rows = {("w", "http", 0): EndpointRecord(node=ME, port=1000, healthy=True),
            ("w", "http", 1): EndpointRecord(node=OTHER, port=1001, healthy=False),
            ("w", "http", 2): EndpointRecord(node=DEAD, port=1002, healthy=True),
            ("w", "http", 3): EndpointRecord(node=OTHER, port=1003, healthy=True),
            ("w", "db", 0): EndpointRecord(node=OTHER, port=1004, healthy=True),
            ("v", "http", 0): EndpointRecord(node=OTHER, port=1005, healthy=True)}
    got = live_targets(rows, "w", "http", alive={ME, OTHER}, replicas=3)
    assert got == [Target("w", "http", 0, ME, 1000)]
    got = live_targets(rows, "w", "http", alive={ME, OTHER}, replicas=4)
    assert [t.index for t in got] == [0, 3]


@given(st.lists(st.integers(0, 20), min_size=1, max_size=8), st.integers(0, 2**32),
       st.sets(st.integers(0, 7)))
def test_pick_is_one_of_two_and_never_excluded(loads, seed, excluded_indices):
    targets = [Target("w", "e", i, OTHER, 2000 + i) for i in range(len(loads))]
    load = {t.key: n for t, n in zip(targets, loads, strict=True)}
    exclude = {("w", "e", i) for i in excluded_indices}
    chosen = pick(targets, load, random.Random(seed), exclude)
    pool = [t for t in targets if t.key not in exclude]
    if not pool:
        assert chosen is None
        return
    assert chosen in pool
    # power of two choices: the chosen one is never the single most loaded of 2+
    if len(pool) >= 2:
        ranked = sorted(load[t.key] for t in pool)
        assert load[chosen.key] <= ranked[-1]
        if ranked[-1] > ranked[-2]:
            assert load[chosen.key] < ranked[-1]


def test_pick_spreads_and_prefers_the_less_loaded():
    a, b = Target("w", "e", 0, ME, 1), Target("w", "e", 1, OTHER, 2)
    rng = random.Random(1)
    assert all(pick([a, b], {a.key: 3, b.key: 1}, rng) == b for _ in range(20))


def test_port_book_is_sticky_distinct_and_survives_a_restart(tmp_path):
    offered = iter([5000, 5000, 5001, 5002, 5003])
    book = PortBook(tmp_path / "ports.json", allocate=lambda: next(offered))
    assert book.port("w", 0, "http") == 5000
    assert book.port("w", 0, "http") == 5000  # sticky
    assert book.port("w", 1, "http") == 5001  # 5000 is taken: asked again
    again = PortBook(tmp_path / "ports.json", allocate=lambda: 9)
    assert again.lookup("w", 0, "http") == 5000 and again.lookup("w", 1, "http") == 5001
    again.forget_except({("w", 1)})
    assert PortBook(tmp_path / "ports.json").lookup("w", 0, "http") is None


def test_an_unreadable_port_book_is_ignored(tmp_path):
    (tmp_path / "ports.json").write_text("{not json")
    assert PortBook(tmp_path / "ports.json", allocate=lambda: 7).port("w", 0, "e") == 7


@pytest.mark.parametrize(("text", "want"), [("http", ("http", 0)), ("5432", ("5432", 5432)),
                                            ("web=8080", ("web", 8080))])
def test_parse_endpoint(text, want):
    assert parse_endpoint(text) == want


@pytest.mark.parametrize("text", ["", "HTTP", "a b", "x=0", "x=70000", "70000", "-x", "x="])
def test_bad_endpoints_are_refused(text):
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_spec_publish_parsing_problems_and_ports():
    spec, problems = spec_from_dict({"name": "w", "command": ["x"],
                                     "publish": ["http", "BAD", "http"]})
    assert problems == ["publish 'BAD': endpoint name must be 1-32 lowercase letters, "
                        "digits or '-'"]
    assert spec is not None and "publish names each endpoint once" in spec_problems(spec)
    spec, problems = spec_from_dict({"name": "w", "image": "i:1", "publish": ["http"]})
    assert spec is not None and any("needs its port" in p for p in spec_problems(spec))
    spec, problems = spec_from_dict({"name": "w", "command": ["x"], "ports": ["9000:9000"],
                                     "publish": ["http", "db=5432"]})
    assert not problems and spec is not None and not spec_problems(spec)
    assert spec.to_dict()["publish"] == ["http", "db=5432"]
    assert spec_from_dict(spec.to_dict())[0] == spec  # round trip
    ports = {("w", 0, "http"): 41000, ("w", 0, "db"): 41001}
    container = spec.container_spec(0, 1, lambda w, i, e: ports[(w, i, e)])
    assert [(p.host_port, p.container_port) for p in container.ports] == [
        (41000, 41000), (41001, 5432), (9000, 9000)]  # endpoints first: $PORT is http's
    plain = WorkloadSpec(name="w", command=("x",))
    assert "publish" not in plain.to_dict()  # rows of older specs stay as they were
    assert spec.runtime_hash() != WorkloadSpec(
        name="w", command=("x",), ports=spec.ports).runtime_hash()


def test_exposure_requests_get_one_clear_error():
    published = {"web": ["http"], "db": []}
    assert parse_exposure({"target": "web:http", "port": 8080}, published) == (
        8080, Exposure(workload="web", endpoint="http", bind="127.0.0.1"))
    assert parse_exposure({"target": "web:http", "port": 1, "bind": "mesh"}, published)[1] \
        .bind == "mesh"
    bad = [({"target": "web", "port": 1}, "WORKLOAD:ENDPOINT"),
           ({"target": "web:http", "port": 0}, "1 to 65535"),
           ({"target": "web:http", "port": True}, "1 to 65535"),
           ({"target": "web:http", "port": 1, "bind": "nowhere"}, "not an IP"),
           ({"target": "web:db", "port": 1}, "publishes no endpoint 'db'"),
           ([], "JSON object")]
    for body, words in bad:
        with pytest.raises(MeshError) as info:
            parse_exposure(body, published)
        assert words in info.value.message
    with pytest.raises(NotFoundError):
        parse_exposure({"target": "nope:http", "port": 1}, published)


def test_each_demo_node_has_its_own_ingress_port_and_the_summary_shows_it(tmp_path):
    from meshcloud.demo import demo_nodes, summary_lines

    nodes = demo_nodes(tmp_path, 3, 7100)
    assert [n.ingress for n in nodes] == [7400, 7401, 7402]
    assert all(f"--ingress 127.0.0.1:{n.ingress}" in " ".join(n.flags()) for n in nodes)
    text = "\n".join(summary_lines(nodes, "mc"))
    assert all(f"ingress http://127.0.0.1:{7400 + i}" in text for i in range(3))


def test_the_ingress_setting_is_checked(tmp_path):
    from meshcloud.config import NodeConfig, load_config
    from meshcloud.errors import ConfigError

    assert NodeConfig().ingress == "127.0.0.1:7080"
    assert NodeConfig(ingress="off").ingress == "off"
    assert NodeConfig(ingress="mesh:8080").ingress == "mesh:8080"
    with pytest.raises(ConfigError):
        NodeConfig(ingress="127.0.0.1")
    path = tmp_path / "config.toml"
    path.write_text('ingress = "0.0.0.0:99999"\n')
    with pytest.raises(ConfigError, match="port 99999 is out of range"):
        load_config(path)
    path.write_text('ingress = "127.0.0.2:8080"\n')
    assert load_config(path).ingress == "127.0.0.2:8080"


def test_run_http_and_domain_make_a_web_app_in_one_command():
    import apps.workloads.cli as workloads_cli
    from meshcloud.cli import build_parser

    def spec(*argv):
        return workloads_cli.spec_from_args(build_parser().parse_args(["run", *argv]))

    s = spec("web", "--image", "shop:1", "--replicas", "3", "--http", "8080",
             "--domain", "shop.home", "--domain", "shop.home/api", "--route-timeout", "5")
    assert s["publish"] == ["http=8080"] and s["replicas"] == 3
    assert s["domains"] == ["shop.home", "shop.home/api"] and s["route_timeout"] == 5.0
    parsed, problems = spec_from_dict(s)
    assert problems == [] and spec_problems(parsed) == []
    assert parsed.publish == (("http", 8080),)
    assert spec("web", "--command", "x", "--domain", "a.home")["publish"] == ["http"]
    assert spec("web", "--command", "x", "--http", "--publish", "db=5432")["publish"] == \
        ["http", "db=5432"]
    assert spec("web", "--command", "x", "--publish", "api")["publish"] == ["api"]
