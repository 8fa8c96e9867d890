"""Issue 16 first slice, functions on real agents: deploy through node 1, invoke through
node 3 (CLI and ``POST /fn/NAME`` on its ingress) on a 3-agent mesh; a function past its
timeout or its memory limit is stopped with a clear error and the agents keep serving.
Rollback, listing and removal through the CLI."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from apps.ingress.ports import ephemeral_port
from sim.agents import LocalCluster, wait_until

ADDRESSES = [f"127.0.0.{61 + i}" for i in range(3)]
HTTP_PORT = ephemeral_port()

pytestmark = [pytest.mark.real, pytest.mark.slow]

HANDLER = '''
import os, time
GREETING = os.environ.get("GREETING", "hello")
def handle(event, context):
    event = event or {}
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("alloc_mb"):
        hog = bytearray(event["alloc_mb"] << 20)
    return {"greeting": GREETING, "echo": event, "request_id": context.request_id,
            "uid": os.getuid(), "version": VERSION}
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("functions")
    cluster = LocalCluster(root, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process",
                                "MESHCLOUD_HTTP": f"mesh:{HTTP_PORT}"})
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        for i in range(1, 3):
            cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[i]}:0")
        agents = cluster.agents
        wait_until(lambda: all(len([m for m in a.get("/v1/status")["members"]
                                    if m.get("state") == "alive"]) >= 3 for a in agents),
                   60, interval=0.2, message="three members alive everywhere")
        yield cluster
    finally:
        cluster.close()


def write_fn(root: Path, version: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(HANDLER + f"VERSION = {version}\n")
    return root


def http_post(address: str, target: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, HTTP_PORT, timeout=30)
    try:
        conn.request("POST", target, body=body, headers={"Host": "any.home"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_deploy_on_one_invoke_on_another(cluster, tmp_path):
    a, _, c = cluster.agents
    out = a.cli("fn", "deploy", "greet", str(write_fn(tmp_path / "v1", 1)), "--env",
                "GREETING=hi", "--timeout", "2s", "--memory", "64M").stdout
    assert "version 1" in out
    wait_until(lambda: any(f["name"] == "greet"
                           for f in c.get("/v1/functions")["functions"]), 30,
               interval=0.1, message="greet replicated to node 3")
    # the top node started the fork server ahead of the first call
    wait_until(lambda: any(x.get("/v1/status")["functions"]["pools"].get("greet@1", {})
                           .get("fork_server") for x in cluster.agents), 30, interval=0.1,
               message="greet's fork server started ahead on its top node")
    # CLI through node 3
    got = json.loads(c.cli("fn", "invoke", "greet", "--data", '{"n": 1}').stdout)
    assert got["greeting"] == "hi" and got["echo"] == {"n": 1} and got["version"] == 1
    assert got["uid"] != 0  # an unprivileged user of its own
    # HTTP trigger through node 3's ingress
    status, body = http_post(ADDRESSES[2], "/fn/greet", b'{"n": 2}')
    assert status == 200, body
    assert json.loads(body)["echo"] == {"n": 2}
    # a second version, then rollback
    a.cli("fn", "deploy", "greet", str(write_fn(tmp_path / "v2", 2)), "--timeout", "2s",
          "--memory", "64M")
    wait_until(lambda: json.loads(c.cli("fn", "invoke", "greet").stdout)["version"] == 2,
               30, interval=0.2, message="version 2 live through node 3")
    assert "version 1" in c.cli("fn", "rollback", "greet").stdout
    wait_until(lambda: json.loads(c.cli("fn", "invoke", "greet").stdout)["version"] == 1,
               30, interval=0.2, message="rollback live through node 3")
    listed = json.loads(a.cli("fn", "ls", "--json").stdout)
    assert [v["version"] for v in listed[0]["versions"]] == [1, 2]


def test_timeout_and_memory_limit_stop_the_instance(cluster, tmp_path):
    a, _, c = cluster.agents
    a.cli("fn", "deploy", "hog", str(write_fn(tmp_path / "hog", 1)), "--timeout", "1s",
          "--memory", "64M")
    wait_until(lambda: any(f["name"] == "hog" for f in c.get("/v1/functions")["functions"]),
               30, interval=0.1, message="hog replicated to node 3")
    slow = c.cli("fn", "invoke", "hog", "--data", '{"sleep": 30}', check=False)
    assert slow.returncode != 0
    assert "timeout of 1 s" in slow.stderr + slow.stdout
    status, body = http_post(ADDRESSES[1], "/fn/hog", b'{"alloc_mb": 200}')
    assert status == 502, body
    assert json.loads(body)["error"]["code"] in ("memory", "crashed")
    assert "memory" in json.loads(body)["error"]["message"]
    # the agents and the function keep serving
    got = json.loads(c.cli("fn", "invoke", "hog", "--data", '{"n": 3}').stdout)
    assert got["echo"] == {"n": 3}
    for agent in cluster.agents:
        assert agent.get("/v1/status")
    status, body = http_post(ADDRESSES[0], "/fn/nosuch", b"{}")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert "removed function hog" in a.cli("fn", "rm", "hog").stdout
