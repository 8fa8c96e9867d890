"""A service's bucket made by several nodes at once (every node's database, site or
Spark service makes it when it starts): whichever bucket row wins the merge, an object
written through any of them right away stays readable through every node."""

from __future__ import annotations

import trio

from blobstore.objects import service_bucket_id
from tests.blobstore.fakes import source
from tests.blobstore.test_read_your_writes import start


async def test_a_service_bucket_made_on_every_node_at_once_keeps_every_object(
        nursery, autojump_clock):
    _network, nodes = await start(nursery, 4)

    async def make_and_write(i: int) -> None:
        await nodes[i].store.ensure_service_bucket("svc-bucket")
        body = f"written through node {i}".encode()
        await nodes[i].store.put("svc-bucket", f"k{i}", source(body), size_hint=len(body))

    async with trio.open_nursery() as inner:
        for i in range(len(nodes)):
            inner.start_soon(make_and_write, i)
    await trio.sleep(30)  # the bucket rows merge everywhere (virtual time)
    ids = {node.store.bucket("svc-bucket").bucket_id for node in nodes}
    assert ids == {service_bucket_id("svc-bucket")}
    for reader in nodes:
        for i in range(len(nodes)):
            record = await reader.store.head("svc-bucket", f"k{i}")
            data = b"".join([piece async for piece in reader.store.read(record)])
            assert data == f"written through node {i}".encode()


async def test_ensuring_an_existing_service_bucket_changes_nothing(nursery, autojump_clock):
    _network, nodes = await start(nursery, 3)
    first = await nodes[0].store.ensure_service_bucket("svc-bucket")
    await trio.sleep(5)
    again = await nodes[1].store.ensure_service_bucket("svc-bucket")
    assert again == first
