"""The node's view of the mesh: membership gossip (SWIM) wired into the node.

:class:`Members` owns the node's :class:`~gossip.driver.GossipDriver` and everything
around it:

* **joining**: sync with any reachable member (the invite's bootstrap addresses, then every
  peer address we have seen), and again whenever we are alone;
* **the view**: :meth:`alive_ids` (what placement, storage and the state use) and
  :meth:`view` (every member with state, incarnation, addresses, capacity, last change, for
  the API, the CLI and the UI);
* **events**: each membership change becomes a node event (``member.joined``,
  ``member.updated``, ``member.suspect``, ``member.failed``, ``member.left``,
  ``member.reaped``, with ``peer=<hex id>``) — what reconcilers, repair and the UI follow;
* **incarnation on disk**: a restarted node starts above its last incarnation, so it
  outbids any stale news about itself at once;
* **leave**: gossip a signed leave and wait for it to spread.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.driver import GossipDriver, GossipError
from gossip.hooks import cert_hooks
from gossip.lag import SAMPLE_INTERVAL
from gossip.member import MemberInfo, MemberState
from gossip.outputs import (
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberUpdated,
)
from gossip.sysinfo import read_capacity
from meshcloud import priority
from meshcloud.bulk import run_bulk
from meshcloud.clock import next_tick
from meshcloud.identity.keys import short_id

if TYPE_CHECKING:
    from meshcloud.agent.node import Node

log = logging.getLogger(__name__)

JOIN_RETRY = 2.0
"""Seconds between attempts to join while no member answers (up to JOIN_RETRY_MAX)."""
JOIN_RETRY_MAX = 30.0
STARTUP_WAIT = 60.0
"""Seconds the first join waits for the node's own start-up (services, API) to finish."""

PHONE_LAG_SAMPLE = 5.0
"""Seconds between event-loop lag samples on a phone (5 wake-ups a second otherwise; a
step that held the loop meanwhile still counts, and a freeze is a timer firing
``resume_gap`` = 3 s late, still seen)."""
PHONE_JOINED_CHECK = 10.0
"""Seconds between "am I alone?" checks on a phone while it has live peers."""

EVENT_KINDS = {MemberJoined: "member.joined", MemberUpdated: "member.updated",
               MemberSuspected: "member.suspect", MemberFailed: "member.failed",
               MemberLeft: "member.left", MemberReaped: "member.reaped"}

PRESETS = {"lan": GossipConfig.lan, "wan": GossipConfig.wan, "local": GossipConfig.local,
           "phone": GossipConfig.phone}


def capacity_dict(capacity: Capacity) -> dict[str, Any]:
    """A member's capacity as JSON for the API and the UI (unknowns become None)."""
    data = asdict(capacity)
    data["battery"] = None if capacity.battery < 0 else capacity.battery
    data["runtimes"] = list(capacity.runtimes)
    data["labels"] = dict(capacity.labels)
    return data


class Members:
    def __init__(self, node: Node) -> None:
        self.node = node
        config = node.config
        self.incarnation_path = node.datadir.path / "run" / "incarnation"
        # on a phone, sampling may start a Termux:API command: at the base priority
        self.sample = partial(priority.call_at_base, read_capacity, node.datadir.path,
                              labels=config.labels, metered=True if config.metered else None,
                              low_battery=config.battery_threshold,
                              disk_quota=config.quota_bytes())
        self.gossip = GossipDriver(
            node.transport, PRESETS[config.profile](),
            cert_hooks(node.key, node.cert, node.mesh.root_public, node.records),
            capacity=self.sample(), capacity_source=self.sample,
            # parsing /proc is Python: real-time next to a real-time loop (meshcloud/bulk.py)
            run_sync=partial(run_bulk, bound=trio.CapacityLimiter(1), lower=False),
            incarnation=self._saved_incarnation() + 1, watch_steps=True,
            lag_interval=PHONE_LAG_SAMPLE if config.profile == "phone" else SAMPLE_INTERVAL,
        )
        self.left = False
        self._saved = -1
        self.revoked: set[bytes] = set()
        """Members whose revocation this node has enforced: out of :meth:`alive_ids` at
        once, before gossip has found them dead (they still answer pings on UDP for a
        while, and reads must not wait for a holder every connection refuses)."""

    # --- incarnation ----------------------------------------------------------------------

    def _saved_incarnation(self) -> int:
        try:
            return int(self.incarnation_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return -1

    def _save_incarnation(self) -> None:
        try:
            incarnation = self.gossip.core.incarnation
        except GossipError:
            return
        if incarnation != self._saved:
            self.incarnation_path.parent.mkdir(mode=0o700, exist_ok=True)
            tmp = self.incarnation_path.with_suffix(".tmp")
            tmp.write_text(f"{incarnation}\n")
            tmp.replace(self.incarnation_path)
            self._saved = incarnation

    # --- the view -------------------------------------------------------------------------

    def revoked_cut(self, node_id: bytes) -> None:
        """This node cut a revoked member's connections: out of the live view now."""
        self.revoked.add(node_id)
        self.node.events.emit("peer.revoked", peer=node_id.hex())

    def alive_ids(self) -> frozenset[bytes]:
        """Members gossip holds alive (or only suspected), this node excluded."""
        try:
            members = self.gossip.members()
        except GossipError:
            return frozenset()
        me = self.node.node_id
        return frozenset(m.node_id for m in members if m.node_id != me and
                         m.node_id not in self.revoked and
                         m.state in (MemberState.ALIVE, MemberState.SUSPECT))

    def view(self) -> list[dict[str, Any]]:
        try:
            members = self.gossip.members()
        except GossipError:
            return []
        wall_now = self.node.clock.wall_ms() / 1000
        out = [self._entry(m, wall_now) for m in members]
        me = self.node.node_id.hex()
        out.sort(key=lambda m: (m["id"] != me, m["id"]))
        return out

    def _entry(self, member: MemberInfo, wall_now: float) -> dict[str, Any]:
        changed = GossipDriver.wall_time(member.changed_at, wall_now)
        return {"id": member.node_id.hex(), "state": member.state.name.lower(),
                "incarnation": member.incarnation, "addresses": list(member.addresses),
                "capacity": capacity_dict(member.capacity),
                "last_change": int(changed * 1000)}

    # --- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.gossip.run)
            self.gossip.update_addresses(self.node.advertised_addresses())
            self._save_incarnation()
            nursery.start_soon(self._follow_events, self.gossip.subscribe())
            nursery.start_soon(self._keep_joined)
            task_status.started()

    async def _follow_events(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async for event in events:
            kind = EVENT_KINDS.get(type(event))
            if kind is None:
                continue
            if isinstance(event, MemberReaped):
                self.node.events.emit(kind, peer=event.node_id.hex())
                continue
            member = event.member
            if member.node_id == self.node.node_id:
                self._save_incarnation()
                continue
            facts: dict[str, Any] = {"peer": member.node_id.hex(),
                                     "incarnation": member.incarnation}
            if isinstance(event, MemberSuspected):
                facts["accuser"] = event.accuser.hex()
            if isinstance(event, MemberUpdated) and event.refuted:
                facts["refuted"] = True
            if member.addresses:
                self.node.book.learn(member.node_id, list(member.addresses))
            log.info(kind.replace(".", " "), extra={"peer": short_id(member.node_id),
                                                     "incarnation": member.incarnation})
            self.node.events.emit(kind, **facts)
            self._save_incarnation()

    def seeds(self) -> list[str]:
        mine = set(self.node.advertised_addresses())
        return [a for a in dict.fromkeys(self.node.book.seeds()) if a not in mine]

    def loop_status(self) -> dict[str, Any]:
        """The agent's event-loop lag and who held the loop (for ``/v1/status``)."""
        return self.gossip.loop_status()

    async def _keep_joined(self) -> None:
        """Join through any reachable member; try again, backing off, while alone.

        Not before the node has started its services and API: start-up work holds the
        event loop, and a node that announced itself while it cannot answer probes gets
        suspected (and, in a burst of starts, declared dead) by its new peers."""
        with trio.move_on_after(STARTUP_WAIT):
            while not self.node.api_urls:
                await trio.sleep(0.05)
        delay = JOIN_RETRY
        while not self.left:
            if not self.alive_ids():
                seeds = self.seeds()
                if seeds:
                    try:
                        with trio.move_on_after(30):
                            joined = await self.gossip.join(seeds)
                            if joined:
                                log.info("joined the mesh", extra={"syncs": joined})
                                delay = JOIN_RETRY
                    except GossipError as exc:
                        log.debug("join attempt failed", extra={"why": str(exc)})
                        delay = min(delay * 2, JOIN_RETRY_MAX)
            phone = self.node.config.profile == "phone"
            if phone and self.alive_ids():
                await trio.sleep_until(next_tick(trio.current_time(), PHONE_JOINED_CHECK))
            else:
                await trio.sleep(delay)

    async def leave(self) -> None:
        """Announce a graceful leave (signed) and wait for it to spread."""
        self.left = True
        await self.gossip.leave()
        self._save_incarnation()
        self.node.events.emit("node.left", node=self.node.node_id.hex())
