"""The databases' backup S3 key made by two nodes at once (each node's database service
makes it when it first needs it, before the other's row has reached it): each writes its
own random secret and the row keeps one. As soon as either node's service has the key in
hand, that is the secret every node's S3 API checks signatures against: pgBackRest is
never refused with SignatureDoesNotMatch for want of a merge.

The service's repository side (apps.db.repo.Repo) on real object stores, index services
and state drivers over the in-memory transport under a virtual clock; the service and
node around it are reduced to the four facts it reads of them."""

from __future__ import annotations

from types import SimpleNamespace

import trio

from apps.db.backup import BUCKET, access_key_id
from apps.db.repo import Repo
from blobstore.s3http.app import KeyTable
from tests.blobstore.test_read_your_writes import start

MESH_ID = bytes(range(32))


def _repo(node) -> Repo:
    service = SimpleNamespace(
        state=node.index.state,
        node=SimpleNamespace(mesh=SimpleNamespace(mesh_id=MESH_ID), node_id=node.me,
                             clock=SimpleNamespace(wall_ms=lambda: 1_767_225_600_000)))
    return Repo(service, SimpleNamespace(index=node.index, objects=node.store))


async def test_a_key_made_on_two_nodes_at_once_is_the_one_every_node_checks(
        nursery, autojump_clock):
    _network, nodes = await start(nursery, 4)
    got: dict[int, tuple[str, str]] = {}

    async def ensure(i: int) -> None:
        key = await _repo(nodes[i]).ensure_key()
        # at once: the node's own S3 API accepts what its service will sign with
        assert KeyTable(nodes[i].index.state).secret_for(key[0]) == key[1]
        got[i] = key

    async with trio.open_nursery() as inner:
        inner.start_soon(ensure, 0)
        inner.start_soon(ensure, 1)
    assert got[0] == got[1] and got[0][0] == access_key_id(MESH_ID)
    for node in nodes:  # and so does every other node's, with no wait
        assert KeyTable(node.index.state).secret_for(got[0][0]) == got[0][1]
        assert node.store.bucket(BUCKET) is not None


async def test_a_node_that_lacks_the_key_asks_its_peers_before_making_one(
        nursery, autojump_clock):
    network, nodes = await start(nursery, 3)
    away = nodes[2]
    await trio.sleep(5)  # the first connections are made (none is half-way at the cut)
    network.partition({nodes[0].me, nodes[1].me}, {away.me})
    await trio.sleep(5)  # the connections across the cut die (virtual time)
    for node in nodes[:2]:  # node 2 is away: the key's push does not reach it
        node.view.remove(away.me)
    first = await _repo(nodes[0]).ensure_key()
    network.heal()
    for node in nodes[:2]:
        node.view.append(away.me)
    # back, before any sync brought it the row
    assert KeyTable(away.index.state).secret_for(first[0]) is None
    assert await _repo(away).ensure_key() == first  # the peers' key, not a rival
    assert KeyTable(nodes[0].index.state).secret_for(first[0]) == first[1]
