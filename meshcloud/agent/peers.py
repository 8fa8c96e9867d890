"""The node's address book: who we have met, where they listen, who is connected now.

Kept in ``peers.json`` in the data dir (with the bootstrap addresses of the invite), fed
by the transport's connect/disconnect events and by gossip (members' addresses), and read
back at start so that a restarted node can dial its old peers at once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from meshcloud.agent.net import expand_wildcards
from meshcloud.clock import Clock
from meshcloud.events import EventFeed
from meshcloud.identity.keys import short_id
from meshcloud.transport.base import PeerConnected, PeerDisconnected, Transport

log = logging.getLogger(__name__)


@dataclass
class PeerRecord:
    node_id: bytes
    addresses: list[str] = field(default_factory=list)
    connected: bool = False
    since: float = 0.0
    agent_version: str = ""
    last_change_ms: int = 0
    pooled: bool = False
    """Its last connection was closed by the pool as unused: the next one is routine
    (no ``peer.connected`` event, nobody re-syncs with it)."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.node_id.hex(), "addresses": self.addresses,
                "connected": self.connected, "agent_version": self.agent_version,
                "last_change": self.last_change_ms}


class AddressBook:
    def __init__(self, path: Path, node_id: bytes, transport: Transport, clock: Clock,
                 events: EventFeed, bootstrap: list[str]) -> None:
        self.path = path
        self.node_id = node_id
        self.transport = transport
        self.clock = clock
        self.events = events
        self.peers: dict[bytes, PeerRecord] = {}
        self.changed = trio.Event()
        """Set (and replaced) whenever a peer connects or disconnects."""
        self.bootstrap: list[str] = []
        self._load(bootstrap)

    def _load(self, bootstrap: list[str]) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        for contact in bootstrap:
            data.setdefault("bootstrap", []).append(contact)
        for hex_id, addresses in data.get("peers", {}).items():
            node_id = bytes.fromhex(hex_id)
            if node_id != self.node_id:
                self.peers[node_id] = PeerRecord(node_id, list(addresses))
        self.bootstrap = list(dict.fromkeys(data.get("bootstrap", [])))

    def _save(self) -> None:
        data = {"peers": {p.node_id.hex(): p.addresses for p in self.peers.values()
                          if p.addresses}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    def learn(self, node_id: bytes, addresses: list[str]) -> None:
        if node_id == self.node_id or not addresses:
            return
        record = self.peers.setdefault(node_id, PeerRecord(node_id))
        if record.addresses != list(addresses):
            record.addresses = list(addresses)
            self.transport.set_addresses(node_id, record.addresses)
            self._save()

    def dial_known(self) -> None:
        """Hand every known address to the transport (at start)."""
        for record in self.peers.values():
            self.transport.set_addresses(record.node_id, record.addresses)

    def connected_since(self, alive: Callable[[], frozenset[bytes]]) -> list[bytes]:
        """Connected live peers, the longest-connected first."""
        ids = alive()
        connected = sorted((p for p in self.peers.values() if p.connected and p.node_id in ids),
                           key=lambda p: (p.since, p.node_id))
        return [p.node_id for p in connected]

    def seeds(self) -> list[str]:
        """Every address worth trying to rejoin through: peers', then bootstrap ones."""
        seeds = [a for p in self.peers.values() for a in p.addresses]
        return seeds + [a for a in self.bootstrap if a not in seeds]

    async def watch(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async for event in events:
            now = self.clock.wall_ms()
            if isinstance(event, PeerConnected):
                peer = event.peer
                if peer.joining:
                    continue
                record = self.peers.setdefault(peer.node_id, PeerRecord(peer.node_id))
                routine, record.pooled = record.pooled, False
                record.connected = True
                if not routine:
                    record.since = self.clock.monotonic()
                record.agent_version = peer.agent_version
                record.last_change_ms = now
                if peer.listen_addresses:
                    self.learn(peer.node_id, expand_wildcards(
                        list(peer.listen_addresses), host_hint=event.address))
                if not routine:  # (dialled again after an idle close: nothing to tell)
                    log.info("peer connected", extra={"peer": short_id(peer.node_id),
                                                       "address": event.address})
                    self.events.emit("peer.connected", peer=peer.node_id.hex(),
                                     address=event.address)
            elif isinstance(event, PeerDisconnected):
                record = self.peers.get(event.node_id)
                if record is None or not record.connected:
                    continue
                record.connected = False
                record.pooled = event.unused  # closed unused: datagrams need no connection
                if not event.unused:
                    record.last_change_ms = now
                    log.info("peer disconnected", extra={"peer": short_id(event.node_id),
                                                          "why": event.reason})
                    self.events.emit("peer.disconnected", peer=event.node_id.hex(),
                                     reason=event.reason)
            self.changed.set()
            self.changed = trio.Event()
