"""Issue 15, the HTTP ingress with real agents, real sockets and real clients.

Three agents on their own loopback addresses (127.0.0.51 … .53), the process runtime,
Python replicas (tests/apps/ingress/echo_server.py). Every request goes through the
ingress of one node; the replicas run wherever the mesh put them (so most requests cross
a ``/meshcloud/forward/1`` stream). Clients: http.client, raw sockets for hostile input,
wsproto for websockets.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from apps.ingress.ports import ephemeral_port
from sim.agents import Agent, LocalCluster, wait_until
from tests.apps.ingress.test_tls import make_cert
from tests.realproc.test_ingress import healthy, kill_replicas
from tests.workload_python import inline_script_line

ADDRESSES = [f"127.0.0.{51 + i}" for i in range(3)]
SCRIPT = Path(__file__).parents[1] / "apps/ingress/echo_server.py"
HTTP_PORT = ephemeral_port()
HTTPS_PORT = ephemeral_port()
HEADER_TIMEOUT = 2.0
MAX_CLIENTS = 12
IDLE_TIMEOUT = 6.0

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingress-http")
    cluster = LocalCluster(root, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process",
                                "MESHCLOUD_HTTP": f"mesh:{HTTP_PORT}",
                                "MESHCLOUD_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                                "MESHCLOUD_HTTP_MAX_CLIENTS": str(MAX_CLIENTS),
                                "MESHCLOUD_HTTP_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
                                "MESHCLOUD_HTTPS": f"mesh:{HTTPS_PORT}",
                                "MESHCLOUD_HTTPS_REDIRECT": "1"})
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.start_all(cluster.join_many([{"listen": f"{ADDRESSES[i]}:0"}
                                             for i in range(1, 3)]))
        a = cluster.agents[0]
        wait_until(lambda: sum(m["state"] == "alive" for m in a.get("/v1/members")) == 3
                   and len(a.get("/v1/images")["mesh"]) == 3, 60,
                   message="three nodes alive, their offers known")
        run = [("app", "http", "--replicas", "2", "--http", "--domain", "app.home"),
               ("api", "http", "--http", "--domain", "app.home/api"),
               ("ws", "ws", "--http", "--domain", "ws.home"),
               ("hang", "hang", "--http", "--domain", "hang.home", "--route-timeout", "1.5"),
               ("flaky", "flaky", "--replicas", "2", "--http", "--domain", "flaky.home")]
        for name, mode, *flags in run:
            a.cli("run", name, "--command", inline_script_line(SCRIPT, mode), *flags)
        a.cli("run", "down", "--command", "/bin/false", "--domain", "down.home")
        for name, count in [("app", 2), ("api", 1), ("ws", 1), ("hang", 1), ("flaky", 2)]:
            wait_until(lambda n=name, c=count: all(healthy(x, n, c) for x in cluster.agents),
                       90, message=f"{name}: {count} healthy replicas known everywhere")
        yield cluster
    finally:
        cluster.close()
        for agent in cluster.agents:
            kill_replicas(agent)


def host_of(agent: Agent) -> str:
    return agent.address.rsplit(":", 1)[0]


def call(agent: Agent, method: str, path: str, site: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host_of(agent), HTTP_PORT, timeout=20)
    try:
        conn.request(method, path, body=body, headers={"Host": site, **(headers or {})})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


def raw(agent: Agent, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` as is, read what comes back until the ingress closes."""
    with socket.create_connection((host_of(agent), HTTP_PORT), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def status_line(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def test_prefix_routes_forwarded_headers_404_and_503(cluster):
    third = cluster.agents[2]
    s, _, b = call(third, "GET", "/x", "app.home", headers={"X-Forwarded-For": "10.1.1.1"})
    assert s == 200
    seen = json.loads(b)
    assert seen["path"] == "/x" and seen["replica"].startswith("app-")
    assert seen["headers"]["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert seen["headers"]["x-forwarded-host"] == "app.home"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    for path, workload in [("/api", "api"), ("/api/v1?q=1", "api"), ("/apix", "app"),
                           ("/", "app"), ("/a/api", "app")]:
        s, _, b = call(third, "GET", path, "APP.home:80")
        assert s == 200 and json.loads(b)["replica"].startswith(workload + "-"), path
    s, h, b = call(third, "GET", "/", "nobody.home")
    assert s == 404 and h["content-type"].startswith("text/html") and b"nobody.home" in b
    s, h, _ = call(third, "GET", "/", "down.home")
    assert s == 503 and h["retry-after"] == "2"


def test_routes_and_status_show_hosts_prefixes_and_live_replicas(cluster):
    a = cluster.agents[0]
    lines = a.cli("routes").stdout.splitlines()
    def line(start):
        return next(x for x in lines if x.split()[0] == start)
    assert "-> app:http" in line("app.home") and "2/2 live" in line("app.home")
    assert "-> api:http" in line("app.home/api") and "1/1 live" in line("app.home/api")
    assert "0/1 live (none)" in line("down.home")
    assert "timeout 1.5s" in line("hang.home")
    rows = json.loads(a.cli("routes", "--json").stdout)["routes"]
    app = next(r for r in rows if r["host"] == "app.home" and r["prefix"] == "/")
    assert sorted(x["replica"] for x in app["live"]) == [0, 1]
    status = a.cli("status").stdout
    assert f"ingress http://{host_of(a)}:{HTTP_PORT}" in status


def test_websocket_echo_through_a_cross_node_forward(cluster):
    agent = next(x for x in cluster.agents
                 if all(e["node"] != x.node_id for e in x.get("/v1/ingress")["endpoints"]
                        if e["workload"] == "ws"))
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection((host_of(agent), HTTP_PORT), timeout=20) as sock:
        sock.sendall(ws.send(Request(host="ws.home", target="/chat")))
        events: list = []

        def pump(until) -> None:
            while not until():
                data = sock.recv(1 << 16)
                ws.receive_data(data or None)
                events.extend(ws.events())
                if not data:
                    return

        pump(lambda: any(isinstance(e, AcceptConnection) for e in events))
        assert any(isinstance(e, AcceptConnection) for e in events)
        blob = os.urandom(300_000)
        sock.sendall(ws.send(TextMessage(data="hello through the mesh")))
        sock.sendall(ws.send(BytesMessage(data=blob)))
        got_text = lambda: "".join(e.data for e in events if isinstance(e, TextMessage))  # noqa: E731
        got_bytes = lambda: b"".join(e.data for e in events if isinstance(e, BytesMessage))  # noqa: E731
        pump(lambda: len(got_bytes()) >= len(blob))
        assert got_text() == "hello through the mesh"
        assert got_bytes() == blob
        sock.sendall(ws.send(CloseConnection(code=1000)))
        pump(lambda: any(isinstance(e, CloseConnection) for e in events))
        assert any(isinstance(e, CloseConnection) for e in events)


def test_a_replica_that_never_answers_gets_504_after_the_route_timeout(cluster):
    started = time.monotonic()
    s, _, b = call(cluster.agents[1], "GET", "/", "hang.home")
    took = time.monotonic() - started
    assert s == 504 and b"1.5 s" in b
    assert 1.4 <= took < 10


def test_idempotent_requests_are_retried_on_another_replica(cluster):
    third = cluster.agents[2]
    before = third.get("/v1/ingress")["status"]["retries"]
    for i in range(16):  # half of them would reach the replica that resets
        s, _, b = call(third, "GET", f"/{i}", "flaky.home")
        assert s == 200 and json.loads(b)["replica"] == "flaky-1"
    assert third.get("/v1/ingress")["status"]["retries"] > before
    posts = [call(third, "POST", "/p", "flaky.home", body=b"data")[0] for _ in range(16)]
    assert set(posts) <= {200, 502} and 502 in posts  # a POST is never sent twice


def test_hostile_input_gets_a_clean_answer(cluster):
    agent = cluster.agents[0]
    replies = {
        "two hosts": raw(agent, b"GET / HTTP/1.1\r\nHost: app.home\r\nHost: evil.home\r\n\r\n"),
        "userinfo host": raw(agent, b"GET / HTTP/1.1\r\nHost: app.home@evil\r\n\r\n"),
        "absolute other": raw(agent, b"GET http://evil.home/ HTTP/1.1\r\nHost: app.home\r\n\r\n"),
        "dot segments": raw(agent, b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: app.home\r\n\r\n"),
        "no host": raw(agent, b"GET / HTTP/1.1\r\n\r\n"),
        "garbage": raw(agent, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
    }
    for name, reply in replies.items():
        assert status_line(reply) == 400, (name, reply[:200])
    big = b"GET / HTTP/1.1\r\nHost: app.home\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    assert status_line(raw(agent, big)) == 431
    many = b"GET / HTTP/1.1\r\nHost: app.home\r\n" + b"X-A: b\r\n" * 10_000 + b"\r\n"
    assert status_line(raw(agent, many)) == 431
    s, _, _ = call(agent, "GET", "/", "app.home")  # and the node carries on
    assert s == 200


def test_slowloris_is_cut_after_the_header_timeout_while_others_are_served(cluster):
    agent = cluster.agents[1]
    slow = []
    for _ in range(4):
        sock = socket.create_connection((host_of(agent), HTTP_PORT), timeout=20)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: app.home\r\nX-Slow: 1\r\n")  # never ends
        slow.append(sock)
    started = time.monotonic()
    try:
        for _ in range(5):  # others are served meanwhile
            assert call(agent, "GET", "/", "app.home")[0] == 200
        for sock in slow:
            reply = b""
            while chunk := sock.recv(1 << 16):
                reply += chunk
            assert status_line(reply) == 408
        took = time.monotonic() - started
        assert took < HEADER_TIMEOUT + 8
    finally:
        for sock in slow:
            sock.close()


def test_a_client_stalling_mid_body_is_cut_after_the_idle_timeout(cluster):
    agent = cluster.agents[0]
    with socket.create_connection((host_of(agent), HTTP_PORT), timeout=30) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app.home\r\nContent-Length: 1000\r\n"
                     b"\r\n0123456789")  # then nothing more
        started = time.monotonic()
        try:
            while sock.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        took = time.monotonic() - started
    assert IDLE_TIMEOUT - 0.5 <= took < IDLE_TIMEOUT + 10
    assert call(agent, "GET", "/", "app.home")[0] == 200


def test_expect_100_continue_is_answered_at_once(cluster):
    agent = cluster.agents[2]
    with socket.create_connection((host_of(agent), HTTP_PORT), timeout=20) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: app.home\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        first = sock.recv(1 << 16)  # before any body byte was sent
        assert first.startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        reply = first.split(b"\r\n\r\n", 1)[1]
        while not reply.endswith(b"hello"):
            chunk = sock.recv(1 << 16)
            assert chunk
            reply += chunk
    assert status_line(reply) == 200


def test_client_connections_are_bounded(cluster):
    agent = cluster.agents[2]
    idle = [socket.create_connection((host_of(agent), HTTP_PORT), timeout=20)
            for _ in range(MAX_CLIENTS)]
    try:
        wait_until(lambda: agent.get("/v1/ingress")["status"]["http_clients"] == MAX_CLIENTS,
                   20, message="every idle connection accepted")
        reply = raw(agent, b"GET / HTTP/1.1\r\nHost: app.home\r\n\r\n")
        assert status_line(reply) == 503 and b"retry-after: 2" in reply.lower()
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: call(agent, "GET", "/", "app.home")[0] == 200, 20,
               message="served again once the idle clients left")


def test_https_with_the_users_certificate_by_sni_and_hot_reload(cluster):
    agent = cluster.agents[1]
    certs = agent.data_dir / "ingress" / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    first = make_cert(certs / "app.home.pem", "app.home")

    def get(trust: bytes) -> tuple[int, dict]:
        context = ssl.create_default_context(cadata=trust.decode())
        with socket.create_connection((host_of(agent), HTTPS_PORT), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="app.home") as tls:
            conn = http.client.HTTPConnection("app.home")
            conn.sock = tls
            conn.request("GET", "/secure", headers={"Host": "app.home"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())

    wait_until(lambda: get(first)[0] == 200, 20, message="HTTPS with the first certificate")
    status, seen = get(first)
    assert status == 200 and seen["path"] == "/secure"
    assert seen["headers"]["x-forwarded-proto"] == "https"
    second = make_cert(certs / "app.home.pem", "app.home")  # replaced while running

    def second_served() -> bool:
        try:
            return get(second)[0] == 200
        except ssl.SSLError:
            return False

    took = wait_until(second_served, 20, message="the new certificate served")
    assert took < 10
    with pytest.raises(ssl.SSLError):
        get(first)
    ingress = agent.get("/v1/ingress")["status"]
    assert ingress["https"].endswith(f":{HTTPS_PORT}")
    assert ingress["certificates"]["hosts"] == ["app.home"]
    assert "https://" in agent.cli("status").stdout
    # plain HTTP for a host with a certificate is redirected; other hosts are not
    s, h, _ = call(agent, "GET", "/a?b=1", "app.home")
    assert s == 308 and h["location"] == f"https://app.home:{HTTPS_PORT}/a?b=1"
    assert call(agent, "GET", "/.well-known/acme-challenge/t", "app.home")[0] == 200
    assert call(agent, "GET", "/", "flaky.home")[0] == 200
