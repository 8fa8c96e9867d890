"""``GET /v1/storage/layout/{bucket}/{key}``: one object's shard placement over the API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import trio

from meshcloud.agent.lifecycle import init_mesh
from meshcloud.agent.node import Node
from meshcloud.config import NodeConfig
from meshcloud.datadir import DataDir
from meshcloud.transport.memory import MemoryNetwork

CONFIG = NodeConfig(listen=["127.0.0.1:0"], api="127.0.0.1:0", s3="127.0.0.1:0")


def call(node: Node, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
    request = urllib.request.Request(node.api_urls[0] + path, data=body, method=method)
    request.add_header("Authorization", f"Bearer {node.datadir.api_token()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_layout_of_one_object_names_its_holders_and_health(tmp_path, nursery):
    datadir = DataDir(tmp_path / "a")
    init_mesh(datadir, "home", {})
    network = MemoryNetwork()
    node = Node(datadir, CONFIG, transport_factory=lambda k, a, c: network.add(k, a))
    await nursery.start(node.run)

    async def api(method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        return await trio.to_thread.run_sync(call, node, method, path, body)

    assert (await api("POST", "/v1/storage/buckets", b'{"name": "photos"}'))[0] == 200
    big = bytes(range(256)) * 64  # 16 KiB: over the inline limit, so it has shards
    assert (await api("PUT", "/v1/storage/objects/photos/2024/cat.jpg", big))[0] == 200
    assert (await api("PUT", "/v1/storage/objects/photos/note.txt", b"hi"))[0] == 200

    status, layout = await api("GET", "/v1/storage/layout/photos/2024/cat.jpg")
    assert status == 200
    assert layout["key"] == "2024/cat.jpg" and layout["size"] == len(big)
    assert layout["inline"] is False and layout["complete"] is True
    me = node.node_id.hex()
    assert layout["live"] == [me]
    shards = [s for chunk in layout["chunks"] for s in chunk["shards"]]
    assert shards and all(s["node"] == me and s["live"] for s in shards)

    status, small = await api("GET", "/v1/storage/layout/photos/note.txt")
    assert status == 200 and small["inline"] is True and small["chunks"] == []

    status, missing = await api("GET", "/v1/storage/layout/photos/nope")
    assert status == 404 and missing["error"]["code"] == "not_found"
    status, _ = await api("GET", "/v1/storage/layout/no-such-bucket/x")
    assert status == 404
