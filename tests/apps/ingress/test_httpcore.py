"""The pure parts of the HTTP ingress: routes by host and path prefix, request checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.ingress.httpcore import (
    BadRequest,
    HttpRoute,
    check_request,
    match_route,
    route_table,
    split_domain,
    upstream_headers,
)
from apps.workloads.spec import spec_from_dict, spec_problems


def entry(domains, publish=("http",), timeout=0.0):
    return SimpleNamespace(spec=SimpleNamespace(domains=tuple(domains),
                                                publish=tuple((p, 0) for p in publish),
                                                route_timeout=timeout))


def test_longest_prefix_wins_on_whole_segments():
    table = route_table({"web": entry(["shop.home"]), "api": entry(["shop.home/api/"], ["rest"], 2),
                         "v2": entry(["shop.home/api/v2"]), "none": entry(["x.home"], [])})
    def to(path):
        route = match_route(table, "shop.home", path)
        return route and route.workload
    assert to("/") == "web" and to("/apix") == "web" and to("/ap") == "web"
    assert to("/api") == "api" and to("/api/") == "api" and to("/api/v22") == "api"
    assert to("/api/v2") == "v2" and to("/api/v2/x") == "v2"
    assert match_route(table, "shop.home", "/api/1") == HttpRoute("shop.home", "/api", "api",
                                                                  "rest", 2.0)
    assert match_route(table, "other.home", "/") is None
    assert "x.home" not in table  # no endpoint: no route


def test_a_host_and_prefix_claimed_twice_goes_to_the_first_workload_by_name():
    table = route_table({"b": entry(["s.home/a"]), "a": entry(["s.home/a"])})
    assert match_route(table, "s.home", "/a").workload == "a"


@given(st.lists(st.sampled_from(["", "/a", "/a/b", "/b", "/a/b/c"]), min_size=1, unique=True),
       st.lists(st.sampled_from(["a", "b", "c", "ab"]), max_size=4))
def test_the_match_is_the_longest_matching_prefix(prefixes, segments):
    entries = {f"w{i}": entry([f"h.home{p}"]) for i, p in enumerate(prefixes)}
    path = "/" + "/".join(segments)
    route = match_route(route_table(entries), "h.home", path)
    fits = [p for p in prefixes if not p or path == p or path.startswith(p + "/")]
    if not fits:
        assert route is None
    else:
        assert route is not None and route.prefix == max(fits, key=len)


def test_split_domain():
    assert split_domain("Shop.Home.") == ("shop.home", "")
    assert split_domain("shop.home/api/v1/") == ("shop.home", "/api/v1")


@pytest.mark.parametrize(("method", "target", "headers", "status"), [
    ("GET", "/", [(b"host", b"a.home"), (b"host", b"b.home")], 400),
    ("GET", "/", [(b"host", b"a.home@evil.home")], 400),
    ("GET", "/", [(b"host", b"a.home/../x")], 400),
    ("GET", "/", [(b"host", b"a home")], 400),
    ("GET", "http://evil.home/", [(b"host", b"a.home")], 400),
    ("CONNECT", "a.home:443", [(b"host", b"a.home")], 405),
    ("GET", "/a/../b", [(b"host", b"a.home")], 400),
    ("GET", "/a/%2e%2E/b", [(b"host", b"a.home")], 400),
    ("GET", "/a/%2e", [(b"host", b"a.home")], 400),
    ("GET", "/a\\b", [(b"host", b"a.home")], 400),
    ("GET", "/a%00b", [(b"host", b"a.home")], 400),
    ("GET", "a.home/x", [(b"host", b"a.home")], 400),
])
def test_hostile_requests_are_refused(method, target, headers, status):
    with pytest.raises(BadRequest) as caught:
        check_request(method, target, headers)
    assert caught.value.status == status


def test_good_requests_pass_with_their_host_and_path():
    c = check_request("GET", "/x/y.html?q=../z", [(b"host", b"Shop.Home.:8080")])
    assert (c.host, c.path, c.upgrade) == ("shop.home", "/x/y.html", False)
    c = check_request("GET", "http://shop.home:80/p?q", [(b"host", b"shop.home")])
    assert (c.host, c.path) == ("shop.home", "/p")
    c = check_request("GET", "/ws", [(b"host", b"[::1]:7080"), (b"upgrade", b"websocket"),
                                     (b"connection", b"keep-alive, Upgrade")])
    assert (c.host, c.upgrade) == ("[::1]", True)
    assert check_request("GET", "/", []).host == ""  # HTTP/1.0 without Host: 404 later
    assert check_request("OPTIONS", "*", [(b"host", b"a.home")]).path == "*"


def test_an_upgrade_keeps_its_headers_upstream():
    up = upstream_headers([(b"host", b"a.home"), (b"connection", b"Upgrade"),
                           (b"upgrade", b"websocket"), (b"sec-websocket-key", b"k")],
                          "10.0.0.2", upgrade=True)
    assert (b"upgrade", b"websocket") in up and (b"sec-websocket-key", b"k") in up
    assert up[-1] == (b"connection", b"upgrade")


def test_spec_domains_with_prefixes_and_route_timeouts():
    spec, problems = spec_from_dict({"name": "w", "command": ["x"], "publish": ["http"],
                                     "domains": ["shop.home/api/v1", "shop.home"],
                                     "route_timeout": 5})
    assert problems == [] and spec.route_timeout == 5.0
    assert spec_from_dict(spec.to_dict())[0] == spec
    for bad in ("shop.home/../x", "shop.home/a b", "shop.home/./a", "Shop.home/a"):
        spec, problems = spec_from_dict({"name": "w", "command": ["x"], "publish": ["http"],
                                         "domains": [bad]})
        assert problems + spec_problems(spec), f"{bad!r} accepted"
    spec, problems = spec_from_dict({"name": "w", "command": ["x"], "publish": ["http"],
                                     "route_timeout": -1})
    with pytest.raises(Exception, match="route_timeout"):
        spec.validate()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_pool_gives_back_the_most_recent_live_connection_and_expires_the_rest():
    from apps.ingress.pool import UpstreamPool

    clock = Clock()
    pool = UpstreamPool(max_age=3.0, per_target=2, clock=clock)
    a, b = ("w", "http", 0), ("w", "http", 1)
    assert pool.put(a, "a1") and pool.put(a, "a2") and not pool.put(a, "a3")
    clock.now = 1.0
    assert pool.put(b, "b1")
    assert pool.take(a) == "a2" and len(pool) == 2
    clock.now = 3.5  # a1 is too old now, b1 is not
    assert pool.take(a) is None and pool.stale == ["a1"]
    assert pool.sweep() == ["a1"] and pool.stale == []
    assert pool.sweep(lambda key: key != b) == ["b1"] and len(pool) == 0
    assert pool.reused == 1


@given(st.lists(st.tuples(st.sampled_from(["put", "take", "tick", "sweep"]),
                          st.integers(0, 2)), max_size=60))
def test_the_pool_never_hands_out_an_expired_or_doubled_connection(ops):
    from apps.ingress.pool import UpstreamPool

    clock = Clock()
    pool = UpstreamPool(max_age=2.0, per_target=3, clock=clock)
    born: dict[int, float] = {}
    out: set[int] = set()
    closed: set[int] = set()
    serial = 0
    for op, k in ops:
        key = ("w", "e", k)
        if op == "put":
            serial += 1
            born[serial] = clock.now
            if not pool.put(key, serial):
                closed.add(serial)
        elif op == "take":
            got = pool.take(key)
            if got is not None:
                assert clock.now - born[got] < 2.0 and got not in out and got not in closed
                out.add(got)
        elif op == "tick":
            clock.now += 0.7
        else:
            for item in pool.sweep():
                assert item not in out and item not in closed
                closed.add(item)
    assert len(pool) <= 9
