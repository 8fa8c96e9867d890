"""The HTTP ingress on real nodes in one process: Host routing, keep-alive, streamed
bodies both ways, X-Forwarded-*, 404 and 503 (clients are http.client in a thread)."""

from __future__ import annotations

import http.client
import json
import os
from pathlib import Path

import pytest
import trio

from apps.ingress.http import downstream_headers, host_of, upstream_headers
from apps.ingress.service import IngressService
from apps.ingress.tables import endpoint_rows
from apps.ingress.targets import HostResponse
from meshcloud.transport.memory import MemoryNetwork
from tests.apps.workloads.mesh import LocalMesh, wait_for
from tests.workload_python import inline_script

HTTP = inline_script(Path(__file__).with_name("echo_server.py"), "http")


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    monkeypatch.setenv("MESHCLOUD_RUNTIMES", "process")
    monkeypatch.setenv("MESHCLOUD_HTTP", "127.0.0.1:0")  # each node its own port


@pytest.fixture
async def mesh3(tmp_path, nursery):
    mesh = await LocalMesh.create(tmp_path, nursery, 3, MemoryNetwork(seed=3))
    yield mesh
    await mesh.close()


def ingress_of(member) -> IngressService:
    return next(s for s in member.running.services if isinstance(s, IngressService))


def request(address: str, calls: list[tuple[str, str, str, bytes | None]]
            ) -> list[tuple[int, dict[str, str], bytes]]:
    """Several requests on ONE connection (keep-alive), in a thread."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    out = []
    try:
        for method, path, site, body in calls:
            conn.request(method, path, body=body, headers={"Host": site})
            response = conn.getresponse()
            out.append((response.status, {k.lower(): v for k, v in response.getheaders()},
                        response.read()))
    finally:
        conn.close()
    return out


async def test_host_routing_keep_alive_streaming_and_errors(mesh3):
    a = mesh3.members[0]
    a.service.submit({"name": "shop", "command": HTTP, "replicas": 2, "publish": ["http"],
                      "domains": ["shop.home"]}, replace_existing=False)
    await wait_for(lambda: sum(r.healthy for k, r in endpoint_rows(a.running.state).items()
                               if k[0] == "shop") == 2, "shop healthy", 60)
    a.service.submit({"name": "down", "command": ["/bin/false"], "replicas": 1,
                      "publish": ["http"], "domains": ["down.home"]}, replace_existing=False)
    await wait_for(lambda: "down" in ingress_of(a)._entries(), "down known", 30)
    await wait_for(lambda: sum(r.healthy for k, r in endpoint_rows(a.running.state).items()
                               if k[0] == "shop") == 2, "shop healthy after a move", 60)
    address = ingress_of(a).http_address
    assert address
    body = os.urandom(3 << 20)
    results = await trio.to_thread.run_sync(request, address, [
        ("GET", "/a?b=1", "shop.home", None),
        ("POST", "/upload", "shop.home:7080", body),
        ("GET", "/stream", "SHOP.home", None),
        ("GET", "/", "unknown.home", None),
        ("GET", "/", "down.home", None),
        ("GET", "/again", "shop.home", None),
    ])
    (s1, _, b1), (s2, _, b2), (s3, h3, b3), (s4, _, _), (s5, h5, _), (s6, _, b6) = results
    seen = json.loads(b1)
    assert s1 == 200 and seen["path"] == "/a?b=1"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-forwarded-host"] == "shop.home"
    assert s2 == 200 and b2 == body  # 3 MiB each way, streamed
    assert s3 == 200 and b3 == b"part0;part1;part2;part3;part4;"
    assert h3.get("transfer-encoding") == "chunked"
    assert s4 == 404
    assert s5 == 503 and h5["retry-after"] == "2"
    assert s6 == 200 and json.loads(b6)["path"] == "/again"  # same connection throughout
    assert ingress_of(a).status()["http"] == address


def test_header_rewriting():
    assert host_of([(b"host", b"Shop.Home:8080")]) == "shop.home"
    assert host_of([(b"host", b"[::1]:80")]) == "[::1]"
    assert host_of([]) == ""
    up = upstream_headers([(b"host", b"a.home"), (b"connection", b"keep-alive, x-secret"),
                           (b"x-secret", b"1"), (b"x-forwarded-for", b"10.0.0.1"),
                           (b"x-forwarded-proto", b"https"), (b"accept", b"*/*"),
                           (b"transfer-encoding", b"chunked")], "127.0.0.9")
    assert up == [(b"host", b"a.home"), (b"accept", b"*/*"),
                  (b"x-forwarded-for", b"10.0.0.1, 127.0.0.9"),
                  (b"x-forwarded-proto", b"http"), (b"x-forwarded-host", b"a.home"),
                  (b"connection", b"keep-alive")]
    assert downstream_headers([(b"content-length", b"3"), (b"keep-alive", b"timeout=5"),
                               (b"connection", b"close")]) == [(b"content-length", b"3")]


class Site:
    """A host handler as a sites service would register: a streamed body."""

    def __init__(self) -> None:
        self.seen: list = []

    async def respond(self, request):
        self.seen.append(request)

        async def body():
            yield b"hello "
            yield b""
            yield request.target.encode()

        length = str(len(b"hello ") + len(request.target)).encode()
        return HostResponse(200, [(b"content-type", b"text/plain"),
                                  (b"content-length", length)], body())


async def test_host_lookups_answer_what_no_route_matches(mesh3):
    a = mesh3.members[0]
    a.service.submit({"name": "shop", "command": HTTP, "replicas": 1, "publish": ["http"],
                      "domains": ["blog.home/api"]}, replace_existing=False)
    await wait_for(lambda: sum(r.healthy for k, r in endpoint_rows(a.running.state).items()
                               if k[0] == "shop") == 1, "shop healthy", 60)
    ingress = ingress_of(a)
    site = Site()
    asked: list = []

    def never(host, path):
        asked.append((host, path))
        return None

    def broken(host, path):
        raise RuntimeError("a lookup's bug")

    ingress.add_host_lookup(never)
    ingress.add_host_lookup(broken)
    ingress.add_host_lookup(lambda host, path: site if host == "blog.home" else None)
    results = await trio.to_thread.run_sync(request, ingress.http_address, [
        ("GET", "/index.html?x=1", "Blog.Home.", None),
        ("POST", "/form", "blog.home", b"x" * 300_000),  # drained, then answered
        ("HEAD", "/index.html", "blog.home", None),
        ("GET", "/api/items", "blog.home", None),          # the workload route wins
        ("GET", "/apix", "blog.home", None),               # not under /api: the site
        ("GET", "/", "other.home", None),
    ])
    (s1, h1, b1), (s2, _, b2), (s3, h3, b3), (s4, _, b4), (s5, _, b5), (s6, h6, b6) = results
    assert (s1, b1) == (200, b"hello /index.html?x=1")
    assert h1["content-type"] == "text/plain"
    assert (s2, b2) == (200, b"hello /form")
    assert (s3, b3) == (200, b"") and h3["content-length"] == str(len(b"hello /index.html"))
    assert s4 == 200 and json.loads(b4)["path"] == "/api/items"
    assert (s5, b5) == (200, b"hello /apix")
    assert s6 == 404 and h6["content-type"].startswith("text/html")
    assert b"other.home" in b6
    assert [r.method for r in site.seen] == ["GET", "POST", "HEAD", "GET"]
    assert site.seen[0].host == "blog.home" and site.seen[0].client_ip == "127.0.0.1"
    assert ("blog.home", "/index.html") in asked and ("other.home", "/") in asked
