"""The V-Net service in a node (in-memory transport): API errors, the rows it writes, and
its UI page. No data plane runs here (the node is attached to nothing)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import trio

from tests.meshcloud.test_web_routes import logged_in, nodes  # noqa: F401  fixture


def call(node, method, path, body=None):
    request = urllib.request.Request(node.api_urls[0] + path, method=method,
                                     data=json.dumps(body).encode() if body else None)
    request.add_header("Authorization", f"Bearer {node.datadir.api_token()}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_create_errors_show_and_page(nodes):  # noqa: F811
    admin, other = nodes

    def run(*args):
        return trio.to_thread.run_sync(lambda: call(*args))

    status, body = await run(admin, "POST", "/v1/vnets", {"name": "blue",
                                                          "cidr": "10.42.0.0/24"})
    assert status == 201 and body["cidr"] == "10.42.0.0/24"
    for payload, code, words in [
            ({"name": "blue", "cidr": "10.50.0.0/24"}, 409, "exists"),
            ({"name": "x", "cidr": "10.42.0.0/16"}, 400, "overlaps V-Net 'blue'"),
            ({"name": "Bad!", "cidr": "10.60.0.0/24"}, 400, "bad V-Net name"),
            ({"name": "y", "cidr": "8.8.8.0/24"}, 400, "not a private range"),
            ({"name": "y"}, 400, "missing field 'cidr'")]:
        status, body = await run(admin, "POST", "/v1/vnets", payload)
        assert status == code and words in body["error"]["message"], (payload, body)
    assert [v["name"] for v in (await run(admin, "GET", "/v1/vnets"))[1]["vnets"]] == ["blue"]
    status, body = await run(admin, "POST", "/v1/vnets/nope/attach", {"host": True})
    assert status == 404 and "no V-Net 'nope'" in body["error"]["message"]
    status, body = await run(admin, "POST", "/v1/vnets/blue/attach", {})
    assert status == 400 and "--host or a WORKLOAD" in body["error"]["message"]
    status, body = await run(admin, "POST", "/v1/vnets/blue/attach", {"host": True,
                                                                      "plane": "carrier"})
    assert status == 400 and "unknown plane" in body["error"]["message"]
    # the other node sees the V-Net, attaches, and the row names its key
    with trio.fail_after(20):
        while not (await run(other, "GET", "/v1/vnets"))[1]["vnets"]:
            await trio.sleep(0.05)
    status, body = await run(other, "POST", "/v1/vnets/blue/attach",
                             {"host": True, "plane": "userspace"})
    assert status == 200 and body["address"].startswith("10.42.0.")
    show = (await run(other, "GET", "/v1/vnets/blue"))[1]
    (member,) = show["members"]
    assert member["this_node"] and member["address"] == body["address"] and member["routed"]
    key = (other.datadir.path / "vnet" / "tunnel.key")
    assert key.stat().st_mode & 0o777 == 0o600

    browser = await logged_in(admin)
    status, page = await trio.to_thread.run_sync(browser.get, "/ui/vnets")
    assert status == 200 and 'data-vnet="blue"' in page and "10.42.0.0/24" in page
    with trio.fail_after(20):
        while body["address"] not in (await trio.to_thread.run_sync(
                browser.get, "/ui/frag/vnets"))[1]:
            await trio.sleep(0.05)
    # a workload attached (ahead of its creation): the V-Nets are part of its replicas'
    # spec, as the reconciler reads them through the hook (attach/detach restarts them)
    status, _ = await run(admin, "POST", "/v1/vnets/blue/attach", {"workload": "api",
                                                                  "ahead": True})
    assert status == 200
    (workloads,) = [s for s in admin.services if s.name == "workloads"]
    (vnets,) = [s for s in admin.services if s.name == "vnet"]
    assert vnets.replica_network.networks("api") == ("blue",)
    with trio.fail_after(20):  # set once the runtimes are up
        await workloads.started.wait()
    assert workloads.reconciler.core.networks("api") == ("blue",)
    assert workloads.reconciler.core.networks("web") == ()
    status, _ = await run(admin, "DELETE", "/v1/vnets/blue")
    assert status == 200
    assert (await run(admin, "GET", "/v1/vnets"))[1]["vnets"] == []
    assert workloads.reconciler.core.networks("api") == ()  # its replicas leave
