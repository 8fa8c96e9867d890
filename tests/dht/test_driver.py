"""The trio driver on the in-memory transport, under a virtual clock (autojump_clock)."""

from __future__ import annotations

import random

import pytest
import trio

from dht.config import DhtConfig
from dht.driver import DhtDriver
from dht.errors import DhtError, PeerNotFound
from dht.ids import content_key
from dht.messages import PROTOCOL
from meshcloud.testing import TestMesh
from meshcloud.transport.memory import MemoryNetwork


async def start_nodes(nursery: trio.Nursery, count: int, *, latency: float = 0.005,
                      seed: int = 1, config: DhtConfig | None = None):
    mesh = TestMesh.with_members(count)
    network = MemoryNetwork(seed=seed, latency=latency)
    drivers = []
    for i, member in enumerate(mesh.members):
        transport = network.add(member.key, member.authenticator)
        await nursery.start(transport.run)
        driver = DhtDriver.create(transport, member.key, config or DhtConfig.local(),
                                  rng=random.Random(seed * 1000 + i),
                                  wall_ms=mesh.wall_ms)
        await nursery.start(driver.run)
        drivers.append(driver)
    return network, drivers


async def test_thirty_nodes_find_each_other(nursery, autojump_clock):
    _, drivers = await start_nodes(nursery, 30)
    seed_address = drivers[0].transport.listen_addresses[0]
    for driver in drivers[1:]:
        assert await driver.bootstrap([seed_address]) >= 1
    for driver in drivers:
        assert await driver.publish_self() >= 1
    # every node looks up five others, 1, 2, 4, 8 and 16 places on in the list (random
    # ids: as good as five random peers), so every node is found by five: 150 lookups,
    # not all 870 pairs (~18 ms of CPU each: 16 s of a CI run for the same paths)
    for i, driver in enumerate(drivers):
        for step in (1, 2, 4, 8, 16):
            other = drivers[(i + step) % len(drivers)]
            addresses = await driver.find_peer(other.core.local_id)
            assert addresses == other.transport.listen_addresses
    sizes = [d.statistics().routing_table_size for d in drivers]
    assert min(sizes) >= 10, sizes


def roam(network: MemoryNetwork, driver: DhtDriver, new_name: str) -> None:
    """The node changes network: its connections drop and it answers at a new address."""
    transport = driver.transport
    network.crash(transport.local_id)
    network.revive(transport.local_id)
    del network.transports[transport.name]
    transport.name = new_name
    network.transports[new_name] = transport


async def test_roaming_node_republishes_and_is_found_at_its_new_address(nursery,
                                                                        autojump_clock):
    network, drivers = await start_nodes(nursery, 12)
    seed_address = drivers[0].transport.listen_addresses[0]
    for driver in drivers[1:]:
        await driver.bootstrap([seed_address])
    for driver in drivers:
        await driver.publish_self()
    phone = drivers[5]
    old = phone.transport.listen_addresses
    assert await drivers[7].find_peer(phone.core.local_id) == old
    first_seq = phone.core.own_record.seq

    roam(network, phone, "phone-on-4g")
    assert await phone.publish_self() >= 1
    assert phone.core.own_record.seq > first_seq
    for other in drivers:
        if other is phone:
            continue
        assert await other.find_peer(phone.core.local_id) == ["mem://phone-on-4g"]
        stream = await other.transport.open_stream(phone.core.local_id, PROTOCOL)
        await stream.abort("just checking it connects")


async def test_provide_and_find_providers(nursery, autojump_clock):
    _, drivers = await start_nodes(nursery, 10)
    seed_address = drivers[0].transport.listen_addresses[0]
    for driver in drivers[1:]:
        await driver.bootstrap([seed_address])
    key = content_key(b"bucket/photos/cat.jpg")
    assert await drivers[3].provide(key) >= 1
    assert await drivers[8].provide(key) >= 1
    found = await drivers[6].find_providers(key)
    assert {p.node_id for p in found} == {drivers[3].core.local_id, drivers[8].core.local_id}
    assert all(p.addresses for p in found)
    assert await drivers[6].find_providers(content_key(b"nobody has this")) == []


async def test_unknown_peer_and_unreachable_seed(nursery, autojump_clock):
    network, drivers = await start_nodes(nursery, 4)
    for driver in drivers[1:3]:
        await driver.bootstrap([drivers[0].transport.listen_addresses[0]])
    with pytest.raises(PeerNotFound):
        await drivers[1].find_peer(bytes(32))
    lonely = drivers[3]  # has never joined
    network.crash(drivers[0].core.local_id)
    with pytest.raises(DhtError, match="no DHT seed answered"):
        await lonely.bootstrap(["mem://nowhere", drivers[0].transport.listen_addresses[0]])


async def test_malformed_request_is_counted_and_answered_by_nothing(nursery, autojump_clock):
    _, drivers = await start_nodes(nursery, 2)
    a, b = drivers
    await a.bootstrap([b.transport.listen_addresses[0]])
    stream = await a.transport.open_stream(b.core.local_id, PROTOCOL)
    await stream.send(b"\xff\xfe not cbor")
    await stream.close()
    with pytest.raises(Exception):  # noqa: B017 - reset or end: either way, no reply
        await stream.receive()
    await trio.sleep(0.1)
    assert b.statistics().dropped == {"undecodable": 1}
    assert len(b.core.table) == 1  # nothing learned from the garbage


async def test_commands_need_the_driver_running(autojump_clock):
    mesh = TestMesh.with_members(1)
    network = MemoryNetwork()
    transport = network.add(mesh.members[0].key, mesh.members[0].authenticator)
    driver = DhtDriver.create(transport, mesh.members[0].key)
    with pytest.raises(DhtError, match="not running"):
        await driver.find_peer(bytes(32))
