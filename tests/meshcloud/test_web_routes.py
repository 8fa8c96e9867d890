"""The web UI's routes over real HTTP on in-process nodes (memory transport): login,
pages and fragments with and without a session, the invite form, storage pages."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.request

import pytest
import trio

from meshcloud.agent.lifecycle import init_mesh, join_mesh
from meshcloud.agent.node import Node
from meshcloud.client import ApiClient
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.transport.memory import MemoryNetwork

CONFIG = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0")


class Browser:
    """A cookie-keeping HTTP client (no JavaScript): what a browser sends, minus scripts.

    It connects to the API's address but, as a browser does, names the UI's own host
    (``ui.localhost:PORT``, which browsers resolve to loopback) in Host and Origin."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.host = "ui.localhost:" + base.rsplit(":", 1)[1]
        self.origin = f"http://{self.host}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers={"Host": self.host})
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post_form(self, path: str, body: bytes, origin: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, data=body, method="POST")
        request.add_header("Host", self.host)
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        request.add_header("Origin", origin or self.origin)
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def api(self, method: str, path: str, body: bytes | None = None) -> int:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        request.add_header("Host", self.host)
        request.add_header("Origin", self.origin)
        request.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code


@pytest.fixture
async def nodes(tmp_path, nursery):
    network = MemoryNetwork()

    def factory(key, auth, config):
        return network.add(key, auth)

    admin_dir, other_dir = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    init_mesh(admin_dir, "home", {})
    admin = Node(admin_dir, CONFIG, transport_factory=factory)
    await nursery.start(admin.run)
    token = admin.create_invite(ttl_s=60, uses=1)
    await join_mesh(other_dir, token.encode(), {}, transport_factory=factory)
    other = Node(other_dir, CONFIG, transport_factory=factory)
    await nursery.start(other.run)
    with trio.fail_after(10):
        while not any(p.connected for p in admin.peers.values()):
            await trio.sleep(0.01)
    return admin, other


async def new_ticket(node: Node) -> str:
    """What `meshcloud ui` does: ask the agent for a one-time login ticket."""
    reply = await trio.to_thread.run_sync(
        lambda: ApiClient(node.datadir).post("/v1/ui/ticket"))
    return str(reply["ticket"])


async def logged_in(node: Node) -> Browser:
    browser = Browser(node.api_urls[0])
    ticket = await new_ticket(node)
    status, _ = await trio.to_thread.run_sync(browser.get, f"/ui/login?ticket={ticket}")
    assert status == 200
    return browser


PAGES = ["/ui/", "/ui/frag/mesh", "/ui/events", "/ui/invite", "/ui/storage",
         "/ui/storage/keys", "/ui/storage/health", "/ui/frag/storage/buckets",
         "/ui/frag/storage/keys", "/ui/frag/storage/health", "/ui/functions", "/ui/vnets"]


async def test_pages_need_a_session_and_show_the_mesh_with_one(nodes):
    admin, other = nodes
    anonymous = Browser(other.api_urls[0])
    for path in PAGES:
        status, body = await trio.to_thread.run_sync(anonymous.get, path)
        assert status == 401, path
        assert other.node_id.hex()[:8] not in body and "home" not in body

    browser = await logged_in(other)
    for path in PAGES:
        status, body = await trio.to_thread.run_sync(browser.get, path)
        assert status == 200, path
    status, body = await trio.to_thread.run_sync(browser.get, "/ui/")
    cards = re.findall(r'class="card member state-(\w+)" data-node="([0-9a-f]+)"', body)
    assert sorted(cards) == sorted([("alive", admin.node_id.hex()),
                                    ("alive", other.node_id.hex())])
    assert "this node" in body and 'aria-current="page"' in body


async def test_login_ticket_works_once(nodes):
    _, other = nodes
    browser = await logged_in(other)
    ticket = await new_ticket(other)
    fresh = Browser(other.api_urls[0])
    assert (await trio.to_thread.run_sync(fresh.get, f"/ui/login?ticket={ticket}"))[0] == 200
    again = Browser(other.api_urls[0])
    status, body = await trio.to_thread.run_sync(again.get, f"/ui/login?ticket={ticket}")
    assert status == 401 and "expired" in body
    assert (await trio.to_thread.run_sync(again.get, "/ui/"))[0] == 401
    assert (await trio.to_thread.run_sync(browser.get, "/ui/"))[0] == 200


async def test_invite_form_on_admin_and_refusal_elsewhere(nodes):
    admin, other = nodes
    browser = await logged_in(admin)
    status, body = await trio.to_thread.run_sync(
        browser.post_form, "/ui/invite", b"ttl_s=600&uses=2")
    assert status == 200
    token = re.search(r'id="invite-token"[^>]*>(mc1-[^<]+)<', body).group(1)
    assert f"meshcloud join {token}" in body and "<svg" in body
    assert [e for e in admin.events.recent() if e["kind"] == "invite.created"
            and e["uses"] == 2]

    status, _ = await trio.to_thread.run_sync(
        browser.post_form, "/ui/invite", b"ttl_s=600", "http://evil.example")
    assert status == 403

    elsewhere = await logged_in(other)
    status, body = await trio.to_thread.run_sync(
        elsewhere.post_form, "/ui/invite", b"ttl_s=600&uses=1")
    assert status == 403 and "admin key" in body and "mc1-" not in body


async def test_storage_pages_follow_the_api(nodes):
    _, other = nodes
    browser = await logged_in(other)
    assert await trio.to_thread.run_sync(
        browser.api, "POST", "/v1/storage/buckets", b'{"name": "photos"}') == 200
    assert await trio.to_thread.run_sync(
        browser.api, "PUT", "/v1/storage/objects/photos/2024/cat.jpg", b"x" * 9000) == 200
    status, body = await trio.to_thread.run_sync(browser.get, "/ui/storage")
    assert 'data-bucket="photos"' in body
    status, body = await trio.to_thread.run_sync(browser.get, "/ui/storage/b/photos")
    assert status == 200 and "prefix=2024/" in body and "cat.jpg" not in body
    status, body = await trio.to_thread.run_sync(
        browser.get, "/ui/frag/storage/b/photos?prefix=2024/")
    assert 'data-key="2024/cat.jpg"' in body
    status, body = await trio.to_thread.run_sync(browser.get,
                                                 "/ui/storage/o/photos/2024/cat.jpg")
    assert status == 200 and 'data-health="ok"' in body
    status, body = await trio.to_thread.run_sync(browser.get, "/ui/storage/o/photos/nope")
    assert status == 404
    status, body = await trio.to_thread.run_sync(browser.get, "/ui/frag/storage/health")
    assert status == 200 and "below target layout" in body and "waiting for nodes" in body
    status, body = await trio.to_thread.run_sync(browser.get, "/ui/storage/b/nothing-here")
    assert status == 404


async def test_only_the_admin_node_offers_revoke_and_a_revoked_node_shows_it(nodes):
    admin, other = nodes
    revoke = 'data-call="POST /v1/revocations"'
    body = (await trio.to_thread.run_sync((await logged_in(other)).get, "/ui/frag/mesh"))[1]
    assert revoke not in body
    browser = await logged_in(admin)
    body = (await trio.to_thread.run_sync(browser.get, "/ui/frag/mesh"))[1]
    assert body.count(revoke) == 1 and f'"id": "{other.node_id.hex()}"' in body
    admin.revoke("node", other.node_id)
    body = (await trio.to_thread.run_sync(browser.get, "/ui/frag/mesh"))[1]
    assert revoke not in body and ">revoked<" in body
