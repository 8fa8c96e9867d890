"""The CLI verbs and the JSON API, against real in-process nodes over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import trio

from meshcloud.cli import main as cli_main
from meshcloud.transport.memory import MemoryNetwork
from tests.apps.workloads.mesh import LocalMesh, alive_replicas, wait_for


@pytest.fixture(autouse=True)
def process_runtime_only(monkeypatch):
    monkeypatch.setenv("MESHCLOUD_RUNTIMES", "process")


@pytest.fixture
async def mesh3(tmp_path, nursery):
    mesh = await LocalMesh.create(tmp_path, nursery, 3, MemoryNetwork(seed=2))
    yield mesh
    await mesh.close()


async def cli(member, *args: str, capsys) -> tuple[int, str, str]:
    code = await trio.to_thread.run_sync(
        lambda: cli_main(["--data-dir", str(member.datadir.path), *args]))
    out = capsys.readouterr()
    return code, out.out, out.err


def api(member, method: str, path: str, body=None):
    info = member.datadir.runtime_info()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(info["api"] + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {member.datadir.api_token()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


SERVICE = "/bin/sh -c 'echo hello from $MESHCLOUD_NAME; exec sleep 3600'"


async def test_run_ps_logs_rm_from_different_nodes(mesh3, capsys):
    a, b, c = mesh3.members
    code, out, err = await cli(a, "run", "hello", "--replicas", "2", "--command", SERVICE,
                               "--env", "X=1", "--wait", "20s", capsys=capsys)
    assert code == 0, err
    assert "hello: 2 replica(s) wanted (process" in out and "2 of 2 running" in out
    with trio.fail_after(20):  # b learns the replicas' states by replication, a moment later
        while True:
            code, out, _ = await cli(b, "ps", capsys=capsys)
            lines = out.splitlines()
            if all(ln.split()[2] == "running" for ln in lines[1:]) and len(lines) == 3:
                break
            await trio.sleep(0.1)
    assert lines[0].split()[:3] == ["REPLICA", "NODE", "STATE"]
    assert [ln.split()[0] for ln in lines[1:]] == ["hello-0", "hello-1"]
    with trio.fail_after(10):  # "running" can come before the processes printed
        while len((out := (await cli(c, "logs", "hello", capsys=capsys))[1]).splitlines()) < 2:
            await trio.sleep(0.05)
    assert sorted(out.splitlines()) == ["hello-0 | hello from hello-0",
                                        "hello-1 | hello from hello-1"]
    code, out, _ = await cli(c, "logs", "hello", "--replica", "1", capsys=capsys)
    assert out == "hello from hello-1\n"
    code, out, err = await cli(c, "ps", "--json", capsys=capsys)
    rows = json.loads(out)
    assert {r["state"] for r in rows} == {"running"} and len({r["node"] for r in rows}) == 2
    code, out, err = await cli(b, "rm", "hello", capsys=capsys)
    assert code == 0 and "removed" in out
    with trio.fail_after(20):
        while any([await alive_replicas(m) for m in mesh3.up()]):
            await trio.sleep(0.05)
    code, out, err = await cli(a, "logs", "hello", capsys=capsys)
    assert code == 1 and err.startswith("meshcloud: ") and err.count("\n") == 1


async def test_deploy_file_and_refusals_leave_the_state_untouched(mesh3, capsys, tmp_path):
    a = mesh3.members[0]
    good = tmp_path / "svc.toml"
    good.write_text('''
name = "svc"
command = ["/bin/sh", "-c", "exec sleep 3600"]
replicas = 3
memory = "64m"
[env]
MODE = "test"
[constraints]
avoid_battery = false
''')
    code, out, err = await cli(a, "deploy", str(good), "--wait", "20s", capsys=capsys)
    assert code == 0, err
    assert "3 of 3 running" in out
    roots = {t: a.running.state.merkle_root(t) for t in ("workloads", "replicas")}
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "svc"\ncommand = ["x"]\nmemory = "-1g"\nreplicas = 9\n'
                   '[constraints]\nmin_ram = "1000t"\n')
    code, out, err = await cli(a, "deploy", str(bad), capsys=capsys)
    assert code == 1 and err.count("\n") == 1
    assert "negative" in err
    code, out, err = await cli(a, "run", "img", "--image", "localhost/none:1", capsys=capsys)
    assert code == 1 and "not in any node's store" in err
    code, out, err = await cli(a, "deploy", str(good.with_name("missing.toml")),
                               capsys=capsys)
    assert code == 1 and "cannot read" in err
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    code, out, err = await cli(a, "deploy", str(broken), capsys=capsys)
    assert code == 1 and "broken.toml" in err
    assert {t: a.running.state.merkle_root(t) for t in roots} == roots


async def test_api_returns_every_problem_and_conflicts(mesh3):
    a = mesh3.members[0]
    status, body = await trio.to_thread.run_sync(lambda: api(a, "POST", "/v1/workloads", {
        "spec": {"name": "x", "command": ["true"], "memory": -1, "replicas": 0,
                 "cpu": 99999}}))
    assert status == 400 and body["error"]["code"] == "invalid_spec"
    problems = body["error"]["problems"]
    assert len(problems) == 3 and any("memory" in p for p in problems)
    assert any("cpu" in p for p in problems) and any("replicas" in p for p in problems)
    ok = {"spec": {"name": "x", "command": ["/bin/sh", "-c", "exec sleep 100"]}}
    status, body = await trio.to_thread.run_sync(lambda: api(a, "POST", "/v1/workloads", ok))
    assert status == 201 and body["desired"] == 1
    status, body = await trio.to_thread.run_sync(lambda: api(a, "POST", "/v1/workloads", ok))
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await trio.to_thread.run_sync(lambda: api(a, "GET", "/v1/workloads/nope"))
    assert status == 404
    # a peer held suspect for a moment on a loaded machine is not live: count from a settled view
    await wait_for(lambda: len(a.running.alive_peer_ids()) == 2, "both peers alive in a's view")
    status, body = await trio.to_thread.run_sync(
        lambda: api(a, "POST", "/v1/workloads/x/scale", {"replicas": 7}))
    assert status == 400 and "only 3 live node(s)" in body["error"]["message"]
    status, body = await trio.to_thread.run_sync(lambda: api(a, "GET", "/v1/workloads"))
    assert status == 200 and [w["name"] for w in body["workloads"]] == ["x"]
    status, body = await trio.to_thread.run_sync(
        lambda: api(a, "POST", "/v1/workloads/check", {"spec": {"name": "y", "image": "q"}}))
    assert status == 200 and "not in any node's store" in body["problems"][0]


async def test_drain_command_waits_for_safe_to_unplug(mesh3, capsys):
    a, b, _ = mesh3.members
    code, _, err = await cli(a, "run", "svc", "--replicas", "2", "--command",
                             "/bin/sh -c 'exec sleep 3600'", "--wait", "20s", capsys=capsys)
    assert code == 0, err
    holder = next(m for m in mesh3.up() if m.service.reconciler.last
                  and [s for s in m.service.reconciler.last.observed if s.alive])
    await wait_for(lambda: holder.service.reconciler.last.observed, "observed")
    code, out, err = await cli(b, "drain", holder.node_id.hex()[:10], "--timeout", "30s",
                               capsys=capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"draining node {holder.node_id.hex()[:12]}")
    assert out.splitlines()[-1].startswith(f"safe to unplug {holder.node_id.hex()[:12]}")
    assert await alive_replicas(holder) == []
    rows = a.service.replica_rows("svc")
    assert all(bytes.fromhex(r["node"]) != holder.node_id for r in rows)
    code, out, _ = await cli(b, "drain", holder.node_id.hex(), "--undo", capsys=capsys)
    assert code == 0 and "takes workloads again" in out


async def test_follow_logs_over_http_from_a_node_that_does_not_run_it(mesh3):
    a = mesh3.members[0]
    a.service.submit({"name": "ticker", "command": [
        "/bin/sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"]},
        replace_existing=False)
    await wait_for(lambda: a.service.replica_rows("ticker")[0]["state"] == "running",
                   "ticker running")
    holder = bytes.fromhex(a.service.replica_rows("ticker")[0]["node"])
    reader = next(m for m in mesh3.up() if m.node_id != holder)

    def follow() -> list[str]:
        info = reader.datadir.runtime_info()
        request = urllib.request.Request(
            info["api"] + "/v1/workloads/ticker/logs?follow=1&tail=1")
        request.add_header("Authorization", f"Bearer {reader.datadir.api_token()}")
        lines = []
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["content-type"].startswith("text/plain")
            for raw in response:
                lines.append(raw.decode().rstrip("\n"))
                if len(lines) == 6:
                    break
        return lines

    lines = await trio.to_thread.run_sync(follow)
    numbers = [int(line.split()[1]) for line in lines]
    assert all(line.startswith("tick ") for line in lines)
    assert numbers == list(range(numbers[0], numbers[0] + 6)), "lines lost or reordered"
    status, body = await trio.to_thread.run_sync(
        lambda: api(reader, "GET", "/v1/workloads/ticker/logs?replica=5"))
    assert status == 404 and "not claimed" in body["error"]["message"]
