"""Discovery upkeep: keep this node in the DHT, and find members that moved.

The node joins the DHT through any known member, publishes its addresses, and does it
again whenever it has been alone (after a restart, a partition, a network change); now
and then it asks the DHT where members held dead are now (a phone on another network).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from dht.config import DhtConfig
from dht.driver import DhtDriver
from meshcloud.agent.peers import AddressBook
from meshcloud.clock import Clock
from meshcloud.errors import MeshError
from meshcloud.identity.keys import SigningKey, short_id
from meshcloud.transport.base import Transport

log = logging.getLogger(__name__)

RECONNECT_INTERVAL = 2.0
"""Seconds between DHT join attempts while this node is alone (times five)."""
MOVED_PEER_INTERVAL = 30.0
"""Seconds between DHT look-ups of members held dead (they may have changed address)."""
PRESETS = {"lan": DhtConfig.lan, "wan": DhtConfig.wan, "local": DhtConfig.local,
           "phone": DhtConfig.phone}


class Discovery:
    def __init__(self, transport: Transport, key: SigningKey, profile: str, clock: Clock,
                 book: AddressBook, advertised: Callable[[], list[str]],
                 members: Callable[[], list[dict[str, Any]]]) -> None:
        self.transport = transport
        self.key = key
        self.profile = profile
        self.clock = clock
        self.book = book
        self.advertised = advertised
        self.members = members
        self.dht: DhtDriver | None = None
        self.stopping = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.dht = DhtDriver.create(self.transport, self.key, PRESETS[self.profile](),
                                    wall_ms=self.clock.wall_ms)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.dht.run)
                nursery.start_soon(self._keep_in_dht, self.dht)
                nursery.start_soon(self._find_moved_peers, self.dht)
                task_status.started()
        finally:
            self.stopping.set()

    async def _keep_in_dht(self, dht: DhtDriver) -> None:
        published: list[str] = []
        while not self.stopping.is_set():
            seeds = [a for a in self.book.seeds() if a not in self.advertised()]
            if seeds and dht.statistics().routing_table_size == 0:
                with trio.move_on_after(30):
                    try:
                        await dht.bootstrap(seeds)
                    except MeshError as exc:
                        log.debug("DHT bootstrap failed", extra={"why": str(exc)})
            addresses = self.advertised()
            if addresses != published and dht.statistics().routing_table_size > 0:
                with trio.move_on_after(30):
                    try:
                        await dht.publish_self(addresses)
                        published = addresses
                    except MeshError as exc:
                        log.debug("DHT publish failed", extra={"why": str(exc)})
            with trio.move_on_after(RECONNECT_INTERVAL * 5):
                await self.stopping.wait()

    async def _find_moved_peers(self, dht: DhtDriver) -> None:
        while not self.stopping.is_set():
            with trio.move_on_after(MOVED_PEER_INTERVAL):
                await self.stopping.wait()
            if self.stopping.is_set():
                continue
            for member in self.members():
                if member["state"] != "dead":
                    continue
                node_id = bytes.fromhex(member["id"])
                fresh = None  # stays None if the look-up times out
                try:
                    with trio.move_on_after(10):
                        fresh = await dht.find_peer(node_id)
                except MeshError:
                    continue
                if fresh and sorted(fresh) != sorted(member["addresses"]):
                    log.info("peer moved", extra={"peer": short_id(node_id),
                                                  "addresses": ",".join(fresh)})
                    self.book.learn(node_id, fresh)
