"""Nodes behind NAT: learn whether we can be dialled, keep relays, punch holes.

:class:`NatKeeper` is the agent's driver of the NAT pieces of the transport:

* **reachability**: it asks up to three connected members (``/meshcloud/reach/1``) where
  our connection comes from and whether they can dial our listen addresses back, and
  keeps the verdict (:class:`~meshcloud.transport.reachability.Reachability`): ``public``
  or ``behind NAT``. Again every :data:`PROBE_INTERVAL` seconds (sooner while unknown);
* **relays**: behind NAT, it keeps a reservation with :data:`RELAYS_WANTED` members
  (:data:`PHONE_RELAYS_WANTED` on a phone) that can be dialled, chosen by rendezvous
  hash over the members (the same member for the same node on every try; the next one
  when it is gone), and advertises
  ``relay://<relay id>`` first (gossip and the DHT carry it, peers dial through it). When
  a relay dies its reservation ends and the next member in the rendezvous order takes
  over;
* **hole punching**: when we dial a peer through a relay, we offer it a punch
  (:mod:`~meshcloud.transport.punch`); a direct connection then replaces the relayed one.

It shows in ``GET /v1/status`` under ``reachability``: the node's ``state`` (``public``,
``behind NAT``, ``relayed``, ``direct after punch``), its relays, the relay it serves,
and the path to each connected peer. Events: ``nat.reachability``, ``nat.relay``,
``nat.punched``.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import TYPE_CHECKING, Any

import trio

from meshcloud.agent.net import expand_wildcards
from meshcloud.errors import MeshError
from meshcloud.identity.keys import short_id
from meshcloud.transport.addresses import RELAY_SCHEME, relay_address
from meshcloud.transport.base import PeerConnected
from meshcloud.transport.punch import punch, serve_punch
from meshcloud.transport.reach import probe, serve_reach
from meshcloud.transport.reachability import BEHIND_NAT, PUBLIC, UNKNOWN, Reachability
from meshcloud.transport.relay import RelayService
from meshcloud.transport.tcp import TcpTransport

if TYPE_CHECKING:
    from meshcloud.agent.node import Node

log = logging.getLogger(__name__)

PROBE_INTERVAL = 300.0
"""Seconds between reachability probes once the verdict is known."""
UNKNOWN_RETRY = 3.0
"""Seconds between probes while no member has answered."""
PROBE_TIMEOUT = 8.0
RELAYS_WANTED = 2
"""Relays a node behind NAT keeps reservations with (peers try them in turn)."""
PHONE_RELAYS_WANTED = 1
"""On a phone, one: a reservation is an open stream, which the relay keeps alive with a
ping each second of silence, and each ping wakes the phone. When the relay goes, the
slot takes the next member in rendezvous order (the phone's own connections stay up)."""
RELAY_RETRY = 2.0
"""Seconds before looking for a relay again when none would take us."""


class NatKeeper:
    def __init__(self, node: Node) -> None:
        self.node = node
        transport = node.transport
        self.transport = transport if isinstance(transport, TcpTransport) else None
        self.core = Reachability()
        self.relays = RelayService(self.transport) if self.transport is not None else None
        self.current: list[bytes] = []
        """Relays holding a reservation for us now (in rendezvous order)."""
        self.claimed: set[bytes] = set()
        """Relays a slot holds or is asking (so that two slots never ask the same)."""
        self.changed = trio.Event()
        self.rng = random.Random()
        if self.transport is not None and self.relays is not None:
            self.relays.install()
            serve_reach(self.transport)
            serve_punch(self.transport, self._punch_addresses, on_direct=self._on_direct)

    # --- what the node advertises -----------------------------------------------------------

    def relay_addresses(self) -> list[str]:
        return [relay_address(r) for r in self.current]

    def base_addresses(self) -> list[str]:
        """Where a direct dial reaches us: the configured or listen addresses."""
        node = self.node
        return list(node.config.advertise) or expand_wildcards(node.transport.listen_addresses)

    def advertised_addresses(self) -> list[str]:
        """What peers are told: behind NAT, our relays first."""
        return [*self.relay_addresses(), *self.base_addresses()]

    def _announce(self) -> None:
        """Tell gossip our new addresses (discovery republishes them in the DHT)."""
        self.changed.set()
        self.changed = trio.Event()
        try:
            self.node.members.gossip.update_addresses(self.node.advertised_addresses())
        except Exception as exc:  # gossip not started yet: it reads them at start
            log.debug("addresses not gossiped yet: %s", exc)

    def _punch_addresses(self) -> tuple[list[str], bool]:
        assert self.transport is not None
        verdict = self.core.verdict
        if verdict == PUBLIC:
            return self.base_addresses(), True
        if verdict == BEHIND_NAT:
            return self.core.punch_addresses(self.transport.listen_addresses), False
        return [], False

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if self.transport is None:
            task_status.started()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, self.transport.peer_events())
            nursery.start_soon(self._probe_loop)
            phone = self.node.config.profile == "phone"
            for _ in range(PHONE_RELAYS_WANTED if phone else RELAYS_WANTED):
                nursery.start_soon(self._relay_slot)
            task_status.started()

    async def _probe_loop(self) -> None:
        assert self.transport is not None
        while True:
            members = [p.node_id for p in self.transport.connected_peers() if not p.joining]
            self.rng.shuffle(members)
            for member in members[:3]:
                try:
                    with trio.fail_after(PROBE_TIMEOUT):
                        report = await probe(self.transport, member, self.base_addresses())
                except (MeshError, trio.TooSlowError) as exc:
                    log.debug("reachability probe failed", extra={"peer": short_id(member),
                                                                   "why": str(exc)})
                    continue
                except Exception:  # a bug costs this probe, never the agent
                    log.exception("reachability probe failed")
                    continue
                before = self.core.verdict
                after = self.core.on_report(member, report.observed, report.dialable,
                                            trio.current_time())
                if after != before:
                    log.info("reachability", extra={"verdict": after,
                                                    "observed": report.observed})
                    self.node.events.emit("nat.reachability", verdict=after,
                                          observed=report.observed)
                    self._announce()
            if self.core.verdict == UNKNOWN:  # soon, or as soon as someone connects
                with trio.move_on_after(UNKNOWN_RETRY):
                    await self.node.book.changed.wait()
            else:
                await trio.sleep(PROBE_INTERVAL)

    def _candidates(self) -> list[bytes]:
        """Members that can be dialled, in this node's rendezvous order: the ones we hold
        a direct connection to first."""
        assert self.transport is not None
        me = self.node.node_id
        direct = {p.node_id for p in self.transport.connected_peers()
                  if (c := self.transport._usable(p.node_id)) is not None and not c.relayed}
        out = []
        for member in self.node.members_view():
            node_id = bytes.fromhex(member["id"])
            addresses = member.get("addresses") or []
            if node_id == me or member["state"] != "alive" or node_id in self.current:
                continue
            if not addresses or any(a.startswith(RELAY_SCHEME) for a in addresses):
                continue
            out.append(node_id)

        def rank(node_id: bytes) -> tuple[bool, bytes]:
            return node_id not in direct, hashlib.blake2b(me + node_id, digest_size=16).digest()

        return sorted(out, key=rank)

    async def _relay_slot(self) -> None:
        """Keep one reservation while we are behind NAT."""
        while True:
            while self.core.verdict != BEHIND_NAT:
                await self.changed.wait()
            reserved = False
            for relay in self._candidates():
                if relay in self.claimed:
                    continue
                self.claimed.add(relay)
                try:
                    reserved = await self._hold(relay)
                except Exception:  # a bug must cost this attempt only, never the agent
                    log.exception("relay reservation failed", extra={"relay": short_id(relay)})
                finally:
                    self.claimed.discard(relay)
                if reserved:
                    break  # it ended: look again from the best candidate
            if not reserved:
                with trio.move_on_after(RELAY_RETRY):
                    await self.node.book.changed.wait()

    async def _hold(self, relay: bytes) -> bool:
        """Hold a reservation with ``relay`` until it ends; False if it was refused."""
        relays = self.relays
        assert relays is not None
        ended = trio.Event()

        async def reservation(task_status: trio.TaskStatus[None]) -> None:
            try:
                await relays.reserve(relay, task_status=task_status)
            finally:
                ended.set()

        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(PROBE_TIMEOUT):
                    await nursery.start(reservation)
            except (MeshError, trio.TooSlowError) as exc:
                log.debug("relay refused us", extra={"relay": short_id(relay), "why": str(exc)})
                return False
            self.current.append(relay)
            log.info("relayed", extra={"relay": short_id(relay)})
            self.node.events.emit("nat.relay", relay=relay.hex(), held=True)
            self._announce()
            try:
                await ended.wait()
            finally:
                self.current.remove(relay)
                self.node.events.emit("nat.relay", relay=relay.hex(), held=False)
                self._announce()
        return True

    async def _watch(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async with trio.open_nursery() as nursery:
            async for event in events:
                if (isinstance(event, PeerConnected) and event.we_dialed
                        and event.address.startswith(RELAY_SCHEME)):
                    nursery.start_soon(self._punch, event.peer.node_id)

    async def _punch(self, peer: bytes) -> None:
        assert self.transport is not None
        addresses, public = self._punch_addresses()
        if not addresses:
            return
        try:
            conn = await punch(self.transport, peer, addresses, public=public)
        except MeshError as exc:
            log.debug("punch failed", extra={"peer": short_id(peer), "why": str(exc)})
            return
        except Exception:  # a bug (or a malformed address) costs this punch, not the agent
            log.exception("punch failed", extra={"peer": short_id(peer)})
            return
        if conn is not None:
            self._on_direct(peer)

    def _on_direct(self, peer: bytes) -> None:
        self.node.events.emit("nat.punched", peer=peer.hex())

    # --- status -------------------------------------------------------------------------------

    def paths(self) -> dict[str, str]:
        if self.transport is None:
            return {}
        out = {}
        for peer in self.transport.connected_peers():
            conn = self.transport._usable(peer.node_id)
            if conn is None:
                continue
            out[peer.node_id.hex()] = ("relayed" if conn.relayed else
                                       "direct after punch" if conn.punched else "direct")
        return out

    def status(self) -> dict[str, Any]:
        paths = self.paths()
        punched = sum(1 for p in paths.values() if p == "direct after punch")
        return {"state": self.core.mode(relays=len(self.current), punched=punched),
                "verdict": self.core.verdict, "observed": self.core.observed_host,
                "relays": [r.hex() for r in self.current], "paths": paths,
                "relay_service": self.relays.status() if self.relays is not None else None}
