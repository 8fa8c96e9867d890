"""The UI on its own name (``ui.localhost:PORT``): the Host rules, and over real HTTP on an
in-process node the redirects and a session that is honoured with its own Host only."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshcloud.agent.lifecycle import init_mesh
from meshcloud.agent.node import Node
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.web.origin import is_ui_path, split_host, ui_host_for, ui_redirect_target

CONFIG = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0")


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1:7947", "ui.localhost:7947"),
    ("127.8.9.1:80", "ui.localhost:80"),
    ("LOCALHOST:7947", "ui.localhost:7947"),
    ("localhost", "ui.localhost"),
    ("[::1]:7947", "ui.localhost:7947"),
    ("ui.localhost:7947", None),
    ("192.168.1.20:7947", None),
    ("[fe80::1]:7947", None),
    ("evil.example:7947", None),
    ("127.0.0.1:79x", None),
    ("", None),
])
def test_ui_host_for(host, expected):
    assert ui_host_for(host) == expected


@given(st.integers(1, 65535), st.sampled_from(["127.0.0.1", "localhost", "[::1]"]),
       st.text(alphabet="abc/%._-", max_size=30), st.text(alphabet="a=&%2", max_size=20))
def test_loopback_ui_requests_move_to_the_same_port_and_path(port, name, path, query):
    target = ui_redirect_target(f"{name}:{port}", "/ui/" + path, query)
    assert target == f"http://ui.localhost:{port}/ui/{path}" + (f"?{query}" if query else "")
    assert split_host(f"{name}:{port}") == (name, str(port))


def test_ui_paths():
    assert all(is_ui_path(p) for p in ("/", "/ui", "/ui/", "/ui/login", "/ui/static/x.css"))
    assert not any(is_ui_path(p) for p in ("/v1/status", "/uix", "/v1/events/stream"))


@pytest.fixture
async def node(tmp_path, nursery):
    datadir = DataDir(tmp_path / "a")
    init_mesh(datadir, "home", {})
    node = Node(datadir, CONFIG)
    await nursery.start(node.run)
    return node


async def call(node: Node, method: str, path: str, host: str,
               **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One raw request to the node's API address with the given Host header."""
    address, port = node.api_urls[0].removeprefix("http://").rsplit(":", 1)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             "Content-Length: 0", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    stream = await trio.open_tcp_stream(address, int(port))
    data = b""
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = top.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip().lower(), value.strip())
    return int(status_line.split()[1]), fields, body


async def test_ui_requests_through_loopback_are_redirected_to_ui_localhost(node):
    port = node.api_urls[0].rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        status, headers, _ = await call(node, "GET", "/ui/storage?prefix=a%2Fb", host)
        assert status == 307
        assert headers["location"] == f"http://ui.localhost:{port}/ui/storage?prefix=a%2Fb"
        status, headers, _ = await call(node, "GET", "/", host)
        assert status == 307 and headers["location"] == f"http://ui.localhost:{port}/"
    # the JSON API stays where it is (bearer token)
    token = node.datadir.api_token()
    status, _, _ = await call(node, "GET", "/v1/status", f"127.0.0.1:{port}",
                              Authorization=f"Bearer {token}")
    assert status == 200


async def test_a_session_works_with_the_ui_host_only(node):
    port = node.api_urls[0].rsplit(":", 1)[1]
    ui, loopback = f"ui.localhost:{port}", f"127.0.0.1:{port}"
    token = node.datadir.api_token()
    status, _, body = await call(node, "POST", "/v1/ui/ticket", loopback,
                                 Authorization=f"Bearer {token}")
    reply = json.loads(body)
    assert reply["url"] == f"http://{ui}/ui/login?ticket={reply['ticket']}"

    # a login link opened through 127.0.0.1 moves, unused, to the UI's name
    status, headers, _ = await call(node, "GET", f"/ui/login?ticket={reply['ticket']}",
                                    loopback)
    assert status == 307 and headers["location"] == reply["url"]
    assert "set-cookie" not in headers
    status, headers, _ = await call(node, "GET", f"/ui/login?ticket={reply['ticket']}", ui)
    assert status == 303
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "domain=" not in cookie.lower()  # host-only: ui.localhost, no other name
    session = cookie.split(";", 1)[0]

    assert (await call(node, "GET", "/ui/", ui, Cookie=session))[0] == 200
    assert (await call(node, "GET", "/v1/status", ui, Cookie=session))[0] == 200
    # the same cookie, copied to any other Host, is worth nothing
    for host in (loopback, f"ui.localhost:{int(port) + 1}", "evil.example"):
        assert (await call(node, "GET", "/v1/status", host, Cookie=session))[0] == 401
    assert (await call(node, "GET", "/v1/members", loopback, Cookie=session))[0] == 401
