"""The node's API over real HTTP (one in-process node): query parameters are checked
(400 naming the parameter, never a 500), a slow or vanished client is one INFO line and
never an ERROR traceback, and a stalled body is cut at the configured bound."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio

from meshcloud.agent.lifecycle import init_mesh
from meshcloud.agent.node import Node
from meshcloud.api.server import serve_api
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.kit.limits import HttpLimits

CONFIG = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0")
DEADLINE = 30.0
SHORT = HttpLimits(header_timeout=1.0, body_timeout=0.5, body_min_rate=1000.0)


class Recorder(logging.Handler):
    """Keeps every record and wakes a waiter when one matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    async def wait_for(self, logger: str, text: str) -> logging.LogRecord:
        with trio.fail_after(DEADLINE):
            while True:
                for record in self.records:
                    if record.name == logger and text in record.getMessage():
                        return record
                self.changed = trio.Event()
                await self.changed.wait()

    def errors(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records
                if r.levelno >= logging.ERROR or r.exc_info]


@pytest.fixture
def logs() -> Any:
    recorder = Recorder()
    root = logging.getLogger()
    old = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        root.setLevel(old)


@pytest.fixture
async def node(tmp_path, nursery):
    datadir = DataDir(tmp_path / "a")
    init_mesh(datadir, "home", {})
    node = Node(datadir, CONFIG)
    await nursery.start(node.run)
    return node


async def exchange(url: str, raw: bytes, *, close_after_send: bool = False) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(raw)
        if close_after_send:
            return b""
        data = b""
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return data
                if not chunk:
                    return data
                data += chunk


def head(node: Node, method: str, path: str, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close",
             f"Authorization: Bearer {node.datadir.api_token()}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse(reply: bytes) -> tuple[int, Any]:
    top, _, body = reply.partition(b"\r\n\r\n")
    status = int(top.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith((b"{", b"[")) else body


async def get(node: Node, path: str) -> tuple[int, Any]:
    return parse(await exchange(node.api_urls[0], head(node, "GET", path)))


async def test_events_query_parameters_are_checked(node, logs):
    for query, param in [("limit=abc", "limit"), ("limit=0", "limit"),
                         ("limit=-3", "limit"), ("limit=2001", "limit"),
                         ("limit=1e3", "limit"), ("limit=%C2%B2", "limit"),
                         ("limit=99999999999999999999999", "limit"),
                         ("kind=" + "k" * 201, "kind")]:
        status, body = await get(node, f"/v1/events?{query}")
        assert status == 400, query
        assert body["error"]["code"] == "bad_param" and body["error"]["param"] == param
        assert repr(param) in body["error"]["message"]
    status, body = await get(node, "/v1/events?limit=2&kind=")
    assert status == 200 and isinstance(body, list) and len(body) <= 2
    assert (await get(node, "/v1/events?limit=%2B5"))[0] == 400
    assert logs.errors() == []


async def test_storage_listing_limit_is_checked(node, logs):
    if "storage" not in {s.name for s in node.services}:
        pytest.skip("this node runs no storage service")
    body = json.dumps({"name": "photos"}).encode()
    status, _ = parse(await exchange(node.api_urls[0], head(
        node, "POST", "/v1/storage/buckets", Content_Type="application/json",
        Content_Length=str(len(body))) + body))
    assert status == 200
    status, reply = await get(node, "/v1/storage/objects/photos?limit=many")
    assert status == 400 and reply["error"]["param"] == "limit"
    status, reply = await get(node, "/v1/storage/objects/photos?limit=10")
    assert status == 200 and reply["objects"] == []
    assert logs.errors() == []


async def test_a_client_gone_mid_body_is_one_info_line(node, logs):
    raw = head(node, "POST", "/v1/invites", Content_Type="application/json",
               Content_Length="100") + b'{"uses": '
    await exchange(node.api_urls[0], raw, close_after_send=True)
    record = await logs.wait_for("meshcloud.api.app", "went away")
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "POST /v1/invites" in record.getMessage()
    assert logs.errors() == []
    assert (await get(node, "/v1/status"))[0] == 200


async def test_api_cuts_a_stalled_body_and_keeps_serving(node, nursery, logs):
    (url,) = await nursery.start(lambda task_status: serve_api(
        node, limits=SHORT, bind="127.0.0.1:0", task_status=task_status))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stalled = await trio.open_tcp_stream(host, int(port))
    await stalled.send_all(head(node, "POST", "/v1/invites", Content_Type="application/json",
                                Content_Length="100") + b'{"uses": ')
    status, _ = parse(await exchange(url, head(node, "GET", "/v1/status")))
    assert status == 200  # served while the other one hangs

    reply = b""
    with trio.fail_after(DEADLINE):
        while chunk := await stalled.receive_some(65536):
            reply += chunk
    status, body = parse(reply)
    assert status == 400 and body["error"]["code"] == "incomplete_body"
    cut = await logs.wait_for("meshcloud.kit.guard", "too slow")
    assert cut.levelno == logging.INFO
    assert logs.errors() == []
    assert (await exchange(url, head(node, "GET", "/v1/status"))).startswith(b"HTTP/1.1 200")


async def api_post(node: Node, path: str, value: dict[str, Any]) -> Any:
    body = json.dumps(value).encode()
    status, reply = parse(await exchange(node.api_urls[0], head(
        node, "POST", path, Content_Type="application/json",
        Content_Length=str(len(body))) + body))
    assert status == 200, reply
    return reply


async def test_s3_cuts_a_stalled_upload_and_stores_nothing(node, nursery, logs):
    """The node's real S3 app behind a server with short bounds: a signed PUT that
    stalls mid-body is answered IncompleteBody and closed; the object never appears."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from blobstore.s3http.server import serve_s3

    storage = next((s for s in node.services if s.name == "storage"), None)
    if storage is None:
        pytest.skip("this node runs no storage service")
    await api_post(node, "/v1/storage/buckets", {"name": "slow"})
    key = await api_post(node, "/v1/storage/keys", {"name": "t",
                                                    "buckets": {"slow": "read,write"}})
    (url,) = await nursery.start(lambda task_status: serve_s3(
        storage.app, "127.0.0.1:0", limits=SHORT, task_status=task_status))
    host = url.removeprefix("http://")
    request = AWSRequest(method="PUT", url=f"{url}/slow/k", headers={
        "Content-Length": "100", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(key["access_key"], key["secret"]), "s3",
                "us-east-1").add_auth(request)
    lines = ["PUT /slow/k HTTP/1.1", f"Host: {host}",
             *(f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host")]
    address, port = host.rsplit(":", 1)
    stalled = await trio.open_tcp_stream(address, int(port))
    await stalled.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + b"x" * 10)
    reply = b""
    with trio.fail_after(DEADLINE):
        while chunk := await stalled.receive_some(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"<Code>IncompleteBody</Code>" in reply
    await logs.wait_for("meshcloud.kit.guard", "too slow")
    status, listing = await get(node, "/v1/storage/objects/slow")
    assert status == 200 and listing["objects"] == []
    assert logs.errors() == []


HOSTILE = ["abc", "-1", "0", "99999999999999999999999", "1e3", "%00", "k:" + "x" * 5000,
           "p:", "%FF%FE", ""]


async def test_no_query_parameter_value_gives_a_server_error(node, logs):
    """Every query parameter the API and UI read, with hostile values: 4xx or a page,
    never a 500, never an ERROR in the log."""
    if "storage" in {s.name for s in node.services}:
        await api_post(node, "/v1/storage/buckets", {"name": "qqq"})
    paths = {"/v1/events": ["limit", "kind"],
             "/v1/storage/objects/qqq": ["limit", "prefix", "delimiter", "after"],
             "/v1/replicas": ["workload"],
             "/ui/storage/b/qqq": ["prefix", "after"],
             "/ui/frag/storage/b/qqq": ["prefix", "after"],
             "/ui/events": ["kind"]}
    for path, params in paths.items():
        for param in params:
            for value in HOSTILE:
                status, body = await get(node, f"{path}?{param}={value}")
                assert status < 500, (path, param, value, body)
    assert logs.errors() == []
