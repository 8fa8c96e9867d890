"""The web UI's pages on a 3-node mesh of real agents, in Chromium.

Storage through two different nodes, the invite QR code read back by zbar and accepted by
``meshcloud join``, the login rules, and a screenshot of every page on a desktop and a
phone screen with nothing wider than the phone.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect

from meshcloud.config import load_config
from meshcloud.datadir import DataDir
from sim.agents import meshcloud_cmd
from tests.ui.conftest import DESKTOP, PHONE, ui_host, ui_url, zbar_decode

pytestmark = [pytest.mark.browser, pytest.mark.real]

UPLOAD_BYTES = 5 * 1024 * 1024 + 12345
"""Two 4 MiB chunks: the object is erasure coded / replicated, not inline."""


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


NO_REDIRECT = urllib.request.build_opener(NoRedirect)


def http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, str, dict[str, str]]:
    """One request, redirects not followed: (status, body, headers)."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with NO_REDIRECT.open(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_upload_through_one_node_download_through_another(mesh, ui, tmp_path):
    node1, node2, _ = mesh.agents
    page = ui.open(node1, "/ui/storage")
    page.fill("#bucket-form input[name=name]", "family")
    page.click("#bucket-form button[type=submit]")
    bucket_link = page.locator('#buckets a[data-bucket="family"]')
    expect(bucket_link).to_be_visible(timeout=10_000)
    bucket_link.click()
    expect(page).to_have_url(f"{ui_url(node1)}/ui/storage/b/family")

    original = os.urandom(UPLOAD_BYTES)
    source = tmp_path / "holiday.bin"
    source.write_bytes(original)
    odd = tmp_path / "été & co #1.txt"  # a name that needs escaping in a URL
    odd.write_text("bonjour")
    page.set_input_files("#upload-files", [str(source), str(odd)])
    for key in ("holiday.bin", odd.name):
        item = page.locator(f'#uploads .upload-item[data-key="{key}"]')
        expect(item).to_have_class("upload-item done", timeout=60_000)
        expect(item.locator(".progress > span")).to_have_attribute("style", "width: 100%;")
        expect(page.locator(f'#objects tr.object[data-key="{key}"]')).to_be_visible(
            timeout=10_000)

    other = ui.open(node2, "/ui/storage/b/family", downloads=True)
    row = other.locator('#objects tr.object[data-key="holiday.bin"]')
    expect(row).to_be_visible(timeout=10_000)
    with other.expect_download() as download_info:
        row.locator("[data-download]").click()
    download = download_info.value
    assert download.suggested_filename == "holiday.bin"
    saved = tmp_path / "downloaded.bin"
    download.save_as(saved)
    assert saved.read_bytes() == original
    with other.expect_download() as odd_download:
        other.locator(f'#objects tr.object[data-key="{odd.name}"] [data-download]').click()
    assert odd_download.value.suggested_filename == odd.name
    odd_download.value.save_as(tmp_path / "odd.txt")
    assert (tmp_path / "odd.txt").read_text() == "bonjour"

    # the object page on node 2: where the shards are, all on live nodes
    row.locator("td.name a").click()
    expect(other.locator("#object-health")).to_have_attribute("data-health", "ok")
    holders = other.locator(".holders .holder.live")
    expect(holders).to_have_count(3)
    for agent in mesh.agents:
        expect(other.locator(f'.holder[title="{agent.node_id}"]')).to_be_visible()


def test_access_key_secret_is_shown_once(mesh, ui):
    node1 = mesh.agents[0]
    page = ui.open(node1, "/ui/storage/keys")
    page.fill("#key-form input[name=name]", "camera")
    page.click("#key-form button[type=submit]")
    secret = page.locator("#new-key-secret")
    expect(secret).to_have_text(re.compile(r"^\S{40}$"), timeout=10_000)
    shown = secret.inner_text()
    access = page.locator('#new-key [data-field="access_key"]').inner_text()
    row = page.locator(f'#keys tr[data-access-key="{access}"]')
    expect(row).to_be_visible(timeout=10_000)
    assert shown not in page.locator("#keys").inner_html()
    page.reload()
    assert shown not in page.content()
    listed = node1.get("/v1/storage/keys")
    assert [k for k in listed if k["access_key"] == access and "secret" not in k]


def test_invite_qr_code_decodes_to_a_token_that_join_accepts(mesh, ui, tmp_path, artifacts):
    admin = mesh.agents[0]
    page = ui.open(admin, "/ui/invite")
    page.select_option("#invite-form select[name=ttl_s]", "600")
    page.click("#invite-form button[type=submit]")
    qr = page.locator("#invite-qr svg")
    expect(qr).to_be_visible()
    token = page.locator("#invite-token").input_value()
    assert token and page.locator("#invite-command").inner_text() == f"meshcloud join {token}"
    png = artifacts / "invite-qr.png"
    qr.screenshot(path=str(png))
    assert zbar_decode(png) == token

    joined = tmp_path / "phone"
    result = meshcloud_cmd(joined, "join", token, "--listen", "127.0.0.1:0",
                           "--api", "127.0.0.1:0", "--s3", "127.0.0.1:0", check=False)
    assert result.returncode == 0, result.stderr
    assert DataDir(joined).mesh().cert is not None


def test_without_the_token_nothing_is_served(mesh, ui, tmp_path):
    node = mesh.agents[1]
    ids = [a.node_id for a in mesh.agents]
    for path in ("/v1/status", "/v1/members", "/v1/events", "/v1/storage/buckets",
                 "/v1/events/stream", "/ui/", "/ui/frag/mesh", "/ui/events", "/ui/storage",
                 "/ui/storage/b/family", "/ui/invite", "/ui/workloads"):
        status, body, _ = http(node.api_url + path, headers={"Host": ui_host(node)})
        assert status == 401, path
        assert not any(i[:8] in body for i in ids), f"{path} leaks a node id"
        assert "family" not in body
    for cookie in ("meshcloud_session=forged", ""):
        status, _, _ = http(node.api_url + "/ui/",
                            headers={"Cookie": cookie, "Host": ui_host(node)})
        assert status == 401
    status, body, _ = http(node.api_url + "/v1/members",
                           headers={"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"

    # a login link works once
    ticket = node.post("/v1/ui/ticket")["ticket"]
    login = f"{node.api_url}/ui/login?ticket={ticket}"
    status, _, headers = http(login, headers={"Host": ui_host(node)})
    assert status == 303 and "meshcloud_session=" in headers.get("set-cookie", "")
    status, body, _ = http(login, headers={"Host": ui_host(node)})
    assert status == 401 and not any(i[:8] in body for i in ids)

    # in the browser: a page without a session shows no data
    page = ui.anonymous()
    response = page.goto(node.api_url + "/ui/")
    assert response is not None and response.status == 401
    assert page.url == ui_url(node) + "/ui/"
    text = page.content()
    assert "Not logged in" in text and not any(i[:8] in text for i in ids)

    # a session cookie alone cannot make changes from another site
    logged_in = ui.open(node)
    cookies = logged_in.context.cookies()
    session = next(c for c in cookies if c["name"] == "meshcloud_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert session["domain"] == "ui.localhost"  # host-only, on the UI's own name
    status, _, _ = http(node.api_url + "/v1/storage/buckets", method="POST",
                        headers={"Cookie": f"meshcloud_session={session['value']}",
                                 "Host": ui_host(node),
                                 "Origin": "http://evil.example", "Content-Type":
                                 "application/json"}, body=b'{"name": "evil"}')
    assert status == 403
    assert "evil" not in [b["name"] for b in node.get("/v1/storage/buckets")]


@contextmanager
def header_recorder() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A tiny HTTP server on another 127.0.0.1 port (a stand-in for a published workload)
    that records the headers of every request; ``/set`` also sets a cookie ``probe``."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            if self.path == "/set":
                self.send_header("Set-Cookie", "probe=1; Path=/")
            page = b'<!doctype html><link rel="icon" href="data:,"><p>ok</p>'  # no favicon
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_ui_session_never_reaches_other_services_on_loopback(mesh, ui):
    """Cookies ignore ports: what 127.0.0.1:A sets, the browser sends to 127.0.0.1:B.
    The UI's session cookie belongs to ui.localhost, so no other service sees it."""
    node = mesh.agents[0]
    page = ui.open(node)
    session = next(c for c in page.context.cookies() if c["name"] == "meshcloud_session")
    with header_recorder() as (first, first_seen), header_recorder() as (other, seen):
        assert page.goto(first + "/set").ok
        assert page.goto(other + "/").ok
        page.goto("about:blank")  # nothing left to load when the recorders stop
    sent = [h.get("cookie", "") for h in [*first_seen, *seen]]
    assert "probe=1" in seen[0].get("cookie", ""), "the browser did not share a cookie " \
        "across ports: this test would prove nothing"
    assert not any("meshcloud_session" in c or session["value"] in c for c in sent), sent
    # the UI itself still has its session
    response = page.goto(ui_url(node) + "/ui/")
    assert response is not None and response.status == 200


def test_api_and_ui_bind_to_loopback_by_default(tmp_path):
    fresh = tmp_path / "fresh"
    meshcloud_cmd(fresh, "init", "--name", "home")
    config = load_config(DataDir(fresh).config_path)
    assert config.api.rsplit(":", 1)[0] == "127.0.0.1"
    assert config.s3.rsplit(":", 1)[0] == "127.0.0.1"


PAGES = [
    ("mesh", "/ui/"),
    ("events", "/ui/events"),
    ("invite", "/ui/invite"),
    ("storage", "/ui/storage"),
    ("bucket", "/ui/storage/b/shots"),
    ("folder", "/ui/storage/b/shots?prefix=2024/"),
    ("object", "/ui/storage/o/shots/2024/a-long-name-for-a-photo-from-the-summer-holiday.jpg"),
    ("keys", "/ui/storage/keys"),
    ("storage-health", "/ui/storage/health"),
    ("workloads", "/ui/workloads"),
    ("functions", "/ui/functions"),
    ("sites", "/ui/sites"),
    ("databases", "/ui/databases"),
    ("vnets", "/ui/vnets"),
    ("spark", "/ui/spark"),
]


def put_object(agent, bucket: str, key: str, data: bytes) -> None:
    request = urllib.request.Request(f"{agent.api_url}/v1/storage/objects/{bucket}/{key}",
                                     data=data, method="PUT")
    request.add_header("Authorization", f"Bearer {agent.datadir.api_token()}")
    kind = {"jpg": "image/jpeg", "png": "image/png", "txt": "text/plain", "md": "text/markdown"}
    request.add_header("Content-Type", kind.get(key.rsplit(".", 1)[-1], "binary/octet-stream"))
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def workloads_available(agent) -> bool:
    """True when the agents run the workload service; then a workload "hello" exists."""
    try:
        listed = agent.get("/v1/workloads")["workloads"]
    except urllib.error.HTTPError:
        return False
    if not any(w["name"] == "hello" for w in listed):
        agent.post("/v1/workloads", {"spec": {
            "name": "hello", "replicas": 2,
            "command": ["sh", "-c", "while true; do echo hello from $$; sleep 1; done"]}})
    return True


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_page_screenshot_and_no_horizontal_overflow(mesh, ui, artifacts: Path,
                                                          viewport):
    node = mesh.agents[0]
    if "shots" not in [b["name"] for b in node.get("/v1/storage/buckets")]:
        node.post("/v1/storage/buckets", {"name": "shots"})
        for key in ("2024/a-long-name-for-a-photo-from-the-summer-holiday.jpg",
                    "2024/notes.txt", "2024/trip/map.png", "readme.md"):
            put_object(node, "shots", key, os.urandom(20_000 if "." in key[-4:] else 100))
        node.post("/v1/storage/keys", {"name": "laptop", "buckets": {"shots": "read"}})
    pages = list(PAGES)
    if workloads_available(node):
        pages.append(("workload", "/ui/workloads/w/hello"))
    page = ui.open(node, viewport=viewport)
    size = f"{viewport['width']}x{viewport['height']}"
    for name, path in pages:
        response = page.goto(ui_url(node) + path)
        assert response is not None and response.ok, f"{path}: {response and response.status}"
        page.wait_for_load_state("load")
        if name == "invite":
            page.click("#invite-form button[type=submit]")
            expect(page.locator("#invite-qr svg")).to_be_visible()
        expect(page.locator("#live")).to_have_class("live on", timeout=10_000)
        page.screenshot(path=str(artifacts / f"{name}-{size}.png"), full_page=True)
        overflow = page.evaluate("""() => ({scroll: document.documentElement.scrollWidth,
                                             inner: window.innerWidth})""")
        assert overflow["scroll"] <= overflow["inner"], f"{path} overflows at {size}: {overflow}"
        # every section's tab is wholly on screen (none hidden behind a sideways scroll)
        cut = page.evaluate("""() => [...document.querySelectorAll('.side a')]
            .filter(a => { const r = a.getBoundingClientRect();
                           return r.left < 0 || r.right > window.innerWidth + 0.5
                                  || a.scrollWidth > a.clientWidth + 1; })
            .map(a => a.textContent.trim())""")
        assert cut == [], f"{path} at {size}: tabs cut {cut}"
        if name == "invite":  # the whole command shows, no inner scroll hides its end
            box = page.evaluate("""() => { const c = document.querySelector('#invite-command');
                                           return [c.scrollHeight, c.clientHeight]; }""")
            assert box[0] <= box[1] + 1, f"invite command cut at {size}: {box}"


def test_events_feed_is_live_and_filterable(mesh, ui):
    admin = mesh.agents[0]
    page = ui.open(admin, "/ui/events")
    expect(page.locator("#live")).to_have_class("live on", timeout=10_000)
    page.evaluate("window.__noReload = true")
    if "feed" not in [b["name"] for b in admin.get("/v1/storage/buckets")]:
        admin.post("/v1/storage/buckets", {"name": "feed"})
    admin.post("/v1/invites", {"ttl_s": 60, "uses": 3})
    put_object(admin, "feed", "live/event.txt", b"hello")
    newest = page.locator("#events .event").first
    expect(newest).to_have_attribute("data-kind", "object.put", timeout=10_000)
    expect(page.locator('#events .event[data-kind="invite.created"]').first).to_contain_text(
        "uses 3")

    page.click('#event-filters .chip[data-family="invite"]')
    visible = page.locator("#events .event:visible")
    expect(visible.first).to_have_attribute("data-kind", "invite.created")
    assert all(kind.startswith("invite.") for kind in
               visible.evaluate_all("els => els.map(e => e.dataset.kind)"))
    page.click('#event-filters .chip[data-family=""]')
    page.fill("#event-search", "live/event.txt")
    expect(visible).to_have_count(1)
    expect(visible.first).to_have_attribute("data-kind", "object.put")
    assert page.evaluate("window.__noReload") is True
