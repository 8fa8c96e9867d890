"""Issue 15 acceptance, static sites: three agents, ``meshcloud site deploy`` through node
1, real HTTP clients with ``Host: blog.home`` through node 2's and node 3's ingress.

Each agent runs on its own loopback address (127.0.0.51 … .53) with its HTTP ingress on
``mesh:PORT``, so "through node 2" is a real choice of node. The switch time of a new
deploy and of a rollback is measured on every node and printed.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import time
from pathlib import Path

import pytest

from apps.ingress.ports import ephemeral_port
from sim.agents import Agent, process_mesh, wait_until

ADDRESSES = [f"127.0.0.{51 + i}" for i in range(3)]
HTTP_PORT = ephemeral_port()
SWITCH_BOUND = 5.0

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with process_mesh(tmp_path_factory.mktemp("sites"), ADDRESSES, http_port=HTTP_PORT) as mesh:
        yield mesh


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def http_get(address: str, target: str, host: str = "blog.home", method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(address, HTTP_PORT, timeout=15)
    try:
        conn.request(method, target, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


def current_everywhere(agents: list[Agent], name: str, version: int) -> bool:
    for agent in agents:
        sites = {s["name"]: s for s in agent.get("/v1/sites")["sites"]}
        if sites.get(name, {}).get("current") != version:
            return False
    return True


STYLE = b"body { color: #333 }\n" * 50
BIG = bytes(range(256)) * 8192  # 2 MiB: streamed from the blobstore, not cached
V1 = {"index.html": b"<!doctype html><h1>blog v1</h1>\n", "404.html": b"<h1>lost</h1>\n",
      "posts/index.html": b"<h1>posts</h1>\n", "css/site.css": STYLE,
      "css/site.css.gz": gzip.compress(STYLE, mtime=0), "big.bin": BIG}


def test_deploy_ls_rollback_rm_through_the_cli(cluster, tmp_path):
    a, b, c = cluster.agents
    site = write_tree(tmp_path / "docs", {"index.html": b"docs v1", "a/b.txt": b"b"})
    out = a.cli("site", "deploy", str(site), "--name", "docs", "--domain", "docs.home")
    assert "2 to upload" in out.stdout and "deployed docs version 1" in out.stdout
    wait_until(lambda: current_everywhere([b, c], "docs", 1), SWITCH_BOUND, interval=0.05,
               message="version 1 everywhere")
    (site / "index.html").write_bytes(b"docs v2")
    out = a.cli("site", "deploy", str(site), "--name", "docs").stdout
    assert "1 to upload" in out and "1 unchanged" in out
    listed = json.loads(c.cli("site", "ls", "--json").stdout)
    wait_until(lambda: current_everywhere([b, c], "docs", 2), SWITCH_BOUND, interval=0.05,
               message="version 2 everywhere")
    assert b.cli("site", "rollback", "docs").stdout.strip() == "docs now serves version 1"
    wait_until(lambda: current_everywhere([a, c], "docs", 1), SWITCH_BOUND, interval=0.05,
               message="rollback everywhere")
    bad = a.cli("site", "rollback", "docs", "--to", "9", check=False)
    assert bad.returncode == 1 and "keeps no version 9" in bad.stderr
    clash = write_tree(tmp_path / "clash", {"index.html": b"x"})
    bad = a.cli("site", "deploy", str(clash), "--name", "other", "--domain", "docs.home",
                check=False)
    assert bad.returncode == 1 and "already serves site 'docs'" in bad.stderr
    hostile = write_tree(tmp_path / "hostile", {"a\\b.html": b"x"})
    bad = a.cli("site", "deploy", str(hostile), "--name", "h", "--domain", "h.home",
                check=False)
    assert bad.returncode == 1 and "backslash" in bad.stderr
    assert [s["name"] for s in listed if s["name"] == "docs"] == ["docs"]
    assert "removed site docs" in c.cli("site", "rm", "docs").stdout
    wait_until(lambda: all("docs" not in {s["name"] for s in x.get("/v1/sites")["sites"]}
                           for x in (a, b)), SWITCH_BOUND, message="removed everywhere")


def test_served_byte_exact_through_nodes_2_and_3(cluster, tmp_path):
    a, _, c = cluster.agents
    through = [ADDRESSES[1], ADDRESSES[2]]
    site = write_tree(tmp_path / "blog", V1)
    a.cli("site", "deploy", str(site), "--name", "blog", "--domain", "blog.home")
    wait_until(lambda: all(http_get(x, "/")[0] == 200 for x in through), 20,
               interval=0.1, message="blog served on nodes 2 and 3")
    for address in through:
        status, headers, body = http_get(address, "/")
        assert (status, body) == (200, V1["index.html"])
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        etag = headers["etag"]
        assert etag == '"' + hashlib.sha256(V1["index.html"]).hexdigest()[:32] + '"'
        assert http_get(address, "/", headers={"If-None-Match": etag})[0] == 304
        modified = headers["last-modified"]
        assert http_get(address, "/", headers={"If-Modified-Since": modified})[0] == 304
        status, headers, body = http_get(address, "/css/site.css")
        assert body == STYLE and headers["content-type"] == "text/css; charset=utf-8"
        assert headers["vary"] == "Accept-Encoding" and "content-encoding" not in headers
        status, headers, body = http_get(address, "/css/site.css",
                                         headers={"Accept-Encoding": "gzip"})
        assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == STYLE
        status, headers, body = http_get(address, "/big.bin")
        assert status == 200 and body == BIG
        status, headers, body = http_get(address, "/big.bin",
                                         headers={"Range": "bytes=1000000-1000999"})
        assert status == 206 and body == BIG[1_000_000:1_001_000]
        assert headers["content-range"] == f"bytes 1000000-1000999/{len(BIG)}"
        assert http_get(address, "/big.bin", headers={"Range": "bytes=9999999-"})[0] == 416
        status, headers, body = http_get(address, "/posts")
        assert status == 301 and headers["location"] == "/posts/"
        assert http_get(address, "/posts/")[2] == V1["posts/index.html"]
        status, _, body = http_get(address, "/no/such/page")
        assert (status, body) == (404, V1["404.html"])
        status, headers, body = http_get(address, "/", method="HEAD")
        assert status == 200 and body == b""
        assert headers["content-length"] == str(len(V1["index.html"]))
        for target in ("/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/a%2fb", "/a%00b",
                       "/a\\b", "/" + "x" * 5000):
            assert http_get(address, target)[0] in (400, 404), target

    # a new deploy switches every node within SWITCH_BOUND seconds
    (site / "index.html").write_bytes(b"<h1>blog v2</h1>\n")
    a.cli("site", "deploy", str(site), "--name", "blog")
    started = time.monotonic()
    switched = {}
    for address in [ADDRESSES[0], *through]:
        wait_until(lambda addr=address: http_get(addr, "/")[2] == b"<h1>blog v2</h1>\n",
                   SWITCH_BOUND, interval=0.02, message=f"v2 on {address}")
        switched[address] = round(time.monotonic() - started, 3)
    print(f"deploy switch seconds per node (after the CLI returned): {switched}")

    a.cli("site", "rollback", "blog")
    started = time.monotonic()
    for address in through:
        wait_until(lambda addr=address: http_get(addr, "/")[2] == V1["index.html"],
                   SWITCH_BOUND, interval=0.02, message=f"rollback on {address}")
    print(f"rollback switch seconds: {time.monotonic() - started:.3f}")

    # counters reach the site listing of any node
    wait_until(lambda: next(s for s in c.get("/v1/sites")["sites"]
                            if s["name"] == "blog")["stats"]["not_found"] >= 2,
               10, interval=0.2, message="counters replicated")


def raw_call(agent: Agent, method: str, path: str, data: bytes,
             content_type: str = "application/octet-stream") -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(agent.api_url + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {agent.datadir.api_token()}")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_bad_uploads_and_commits_change_nothing(cluster):
    a, b, _ = cluster.agents
    good = b"hello"
    digest = hashlib.sha256(good).hexdigest()
    listing = [{"path": "index.html", "size": len(good), "sha256": digest}]
    status, reply = raw_call(a, "PUT", f"/v1/sites/evil/files/{digest}", b"olleh")
    assert status == 400 and "hash" in reply["error"]["message"]
    status, reply = raw_call(a, "PUT", f"/v1/sites/evil/files/{'z' * 64}", good)
    assert status == 400
    assert b.post("/v1/sites/evil/missing", {"files": listing})["missing"] == [digest]
    for files in ([{"path": "../x", "size": 1, "sha256": digest}],
                  [{"path": "a/%2e%2e/b\\c", "size": 1, "sha256": digest}],
                  [{"path": "a\u0000b", "size": 1, "sha256": digest}], listing):
        status, reply = raw_call(a, "POST", "/v1/sites/evil/versions",
                                 json.dumps({"files": files, "domains": ["evil.home"]})
                                 .encode(), "application/json")
        assert status == 400, reply
    status, _ = raw_call(a, "POST", "/v1/sites/evil/versions", b"{not json",
                         "application/json")
    assert status == 400
    assert "evil" not in {s["name"] for s in b.get("/v1/sites")["sites"]}
    assert "evil" not in {s["name"] for s in a.get("/v1/sites")["sites"]}
