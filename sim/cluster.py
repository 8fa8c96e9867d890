"""Simulated nodes: the real membership (SWIM) and discovery (Kademlia) cores on one clock.

Each :class:`Host` holds a node's :class:`~gossip.core.SwimCore` and, optionally, its
:class:`~dht.core.DhtCore` — the production code, fed by the simulator's event queue
instead of trio. Messages are the real message objects; the :class:`~sim.network.Network`
decides their fate. Only signatures are cheapened (fake signers) so that thousands of
nodes fit in minutes.

Node model:

* **crash** (kill -9): the process is gone; peers with an open connection are told at once
  (the kernel resets the sockets: the transport's ``on_peer_lost`` hint), and a datagram
  a peer sends it later comes back as ICMP port unreachable (the same hint, at most once
  per ``HINT_INTERVAL`` per pair); a permanent crash (the machine gone) tells nothing;
* **restart**: a new core with the same id and a higher incarnation (the real node keeps
  its incarnation on disk), joining through a live member;
* **leave**: a graceful leave, then the process stops once the leave has spread;
* **sleep / wake** (a phone): frozen and off the network, then back with the same core
  (its timers fire late, as a suspended process's do);
* **roam**: the phone changes network: unreachable for a few seconds, then new addresses,
  re-announced (SWIM alive with a new incarnation, DHT record republished);
* **slow**: every message it handles is delayed (an overloaded Raspberry Pi).

The cluster records truth and every node's view into the :class:`~sim.trace.Trace`.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dht.core import DhtCore
from dht.hooks import FakeSigner as DhtFakeSigner
from dht.hooks import FakeVerifier as DhtFakeVerifier
from dht.messages import PeerInfo
from dht.outputs import LookupFinished
from dht.outputs import Send as DhtSend
from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.core import SwimCore
from gossip.hooks import fake_hooks
from gossip.outputs import (
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberSuspected,
    MemberUpdated,
    Send,
    Sync,
)
from meshcloud.transport.udp import HINT_INTERVAL
from sim.connections import ConnectionModel
from sim.engine import Engine
from sim.network import Network
from sim.trace import Trace

SYNC_CONNECT_TIMEOUT = 3.0
"""A push-pull to an unreachable peer fails after the TCP connect timeout."""
SLOW_DELAY = 0.25
"""Extra seconds a slow node takes to handle each message."""
ROAM_BLACKOUT = 3.0
"""Seconds a roaming phone is off the network while it changes address."""
BYTES_SAMPLE_EVERY = 64
"""One message in this many is encoded to estimate bytes on the wire (deterministic)."""


def sim_node_id(index: int) -> bytes:
    return hashlib.blake2b(b"meshcloud-sim-%d" % index, digest_size=32).digest()


def gossip_preset(profile: str) -> GossipConfig:
    return {"lan": GossipConfig.lan, "wan": GossipConfig.wan, "local": GossipConfig.local,
            "phone": GossipConfig.phone}[profile]()


@dataclass
class Host:
    node_id: bytes
    index: int
    swim: SwimCore
    dht: DhtCore | None
    up: bool = True
    asleep: bool = False
    slow: bool = False
    phone: bool = False
    left: bool = False
    gone: bool = False
    """Crashed for good (the machine is gone): nothing answers for it, not even ICMP."""
    generation: int = 0
    incarnation_on_disk: int = 0
    address_version: int = 0
    timer_armed: float = math.inf
    sent: int = 0
    """Messages sent: protocol messages plus handshakes, keepalives and GOAWAYs."""
    proto_sent: int = 0
    """Protocol messages sent (gossip, DHT, push-pull)."""
    overhead_bytes: int = 0
    """Bytes sent besides protocol messages: handshakes, keepalives, frame headers."""

    @property
    def reachable(self) -> bool:
        return self.up and not self.asleep

    def addresses(self) -> tuple[str, ...]:
        return (f"sim://{self.index}/{self.address_version}",)


VIEW_STATES = {MemberJoined: "alive", MemberUpdated: "alive", MemberSuspected: "suspect",
               MemberFailed: "dead", MemberLeft: "left"}


class SimCluster:
    def __init__(self, engine: Engine, network: Network, trace: Trace, *,
                 config: GossipConfig, with_dht: bool = True) -> None:
        self.engine = engine
        self.network = network
        self.trace = trace
        self.config = config
        self.with_dht = with_dht
        self.hosts: dict[bytes, Host] = {}
        self.by_index: list[Host] = []
        self.messages = 0
        self._encoded = 0
        self._encoded_bytes = 0
        self.listeners: list[Callable[[float, bytes, Any], None]] = []
        """Called with (time, node, output) for every membership event (for models)."""
        self._lookups: dict[tuple[bytes, int], dict[str, Any]] = {}
        self.conns = ConnectionModel(count=self._count_overhead)
        """Every node's transport connections (:mod:`sim.connections`)."""
        self.overhead_messages = 0
        self._unreachable_hints: dict[tuple[bytes, bytes], float] = {}

    # --- building -------------------------------------------------------------------------

    def _new_host(self, index: int, *, phone: bool = False, incarnation: int = 0) -> Host:
        node_id = sim_node_id(index)
        generation = self.hosts[node_id].generation + 1 if node_id in self.hosts else 0
        rng = self.engine.derive_random(f"swim/{index}/{generation}")
        config = GossipConfig.phone() if phone else self.config
        address_version = self.hosts[node_id].address_version if node_id in self.hosts else 0
        capacity = Capacity(cpu_cores=4 if not phone else 8, ram_total=8 << 30,
                            ram_free=4 << 30, disk_free=100 << 30,
                            battery=80 if phone else -1, on_ac=not phone, metered=phone,
                            arch="aarch64" if phone else "x86_64",
                            runtimes=("process",) if phone else ("podman", "process"))
        swim = SwimCore(node_id, config, fake_hooks(node_id), rng, now=self.engine.now,
                        addresses=(f"sim://{index}/{address_version}",), capacity=capacity,
                        incarnation=incarnation,
                        connected=lambda: self.conns.peers(node_id))  # as the agent does
        dht = None
        if self.with_dht:
            dht = DhtCore(DhtFakeSigner(node_id), DhtFakeVerifier(), None,
                          rng=self.engine.derive_random(f"dht/{index}/{generation}"),
                          addresses=(f"sim://{index}/{address_version}",))
        host = Host(node_id, index, swim, dht, phone=phone, generation=generation,
                    incarnation_on_disk=incarnation, address_version=address_version)
        self.hosts[node_id] = host
        if index == len(self.by_index):
            self.by_index.append(host)
        else:
            self.by_index[index] = host
        return host

    def populate(self, n: int, *, phones: float = 0.0, slow: float = 0.0) -> None:
        """Start ``n`` nodes at t = now that already know each other (a converged mesh)."""
        rng = self.engine.derive_random("population")
        phone_set = set(rng.sample(range(n), round(phones * n)))
        slow_set = set(rng.sample(range(n), round(slow * n)))
        hosts = [self._new_host(i, phone=i in phone_set) for i in range(n)]
        for host in hosts:
            host.slow = host.index in slow_set
        alives = [h.swim.table.members[h.node_id].alive for h in hosts]
        self.conns.warm_start([h.node_id for h in hosts])  # they all met once
        now = self.engine.now
        for host in hosts:
            host.swim.preload(alives, now, verified=True)
            host.swim.queue.remove(host.node_id)  # our own first alive is old news here
            host.swim._next_gossip = None
            self.trace.node_state(now, host.node_id, "alive")
        self.trace.records["initial_members"].append(
            {"t": now, "nodes": [h.node_id for h in hosts]})
        if self.with_dht:
            self._fill_dht_tables(hosts)
        for host in hosts:
            self._arm(host)

    def _fill_dht_tables(self, hosts: list[Host]) -> None:
        from sim.dhtmesh import fill_tables_uniformly

        cores = [h.dht for h in hosts]
        infos = [PeerInfo(node_id=h.node_id, addresses=h.addresses()) for h in hosts]
        fill_tables_uniformly(cores, infos, self.engine.derive_random("dht-tables"))

    def add(self, *, phone: bool = False, seed: bytes | None = None) -> Host:
        """A new node joins through ``seed`` (a random live node by default)."""
        seed = seed or self.random_live()
        host = self._new_host(len(self.by_index), phone=phone)
        self.trace.node_state(self.engine.now, host.node_id, "alive")
        self._join(host, seed)
        return host

    def _join(self, host: Host, seed: bytes | None) -> None:
        now = self.engine.now
        seeds = [seed] if seed is not None else []
        self._handle_swim(host, host.swim.join(seeds, now))
        if host.dht is not None and seed is not None:
            seed_host = self.hosts[seed]
            info = PeerInfo(node_id=seed, addresses=seed_host.addresses())
            self._handle_dht(host, host.dht.bootstrap([info], now))
        self._arm(host)

    # --- queries --------------------------------------------------------------------------

    def live(self) -> list[Host]:
        return [h for h in self.by_index if h.up and not h.left]

    def random_live(self, exclude: bytes | None = None) -> bytes | None:
        candidates = [h.node_id for h in self.by_index
                      if h.reachable and not h.left and h.node_id != exclude]
        if not candidates:
            return None
        return self.engine.random.choice(candidates)

    # --- faults ---------------------------------------------------------------------------

    def crash(self, node: bytes, *, permanent: bool = False) -> None:
        host = self.hosts[node]
        if not host.up:
            return
        host.incarnation_on_disk = max(host.incarnation_on_disk, host.swim.incarnation)
        host.up = False
        host.gone = permanent
        host.generation += 1
        now = self.engine.now
        self.trace.node_state(now, node, "gone" if permanent else "crashed")
        # the kernel resets the dead process's TCP connections: peers hear of it at once
        for peer in self.conns.crashed(node):
            other = self.hosts.get(peer)
            if other is not None and other.reachable:
                self.engine.after(self.network.default.sample_delay(self.network.rng),
                                  self._peer_lost, other.node_id, other.generation, node)

    def _peer_lost(self, node: bytes, generation: int, lost: bytes) -> None:
        host = self.hosts[node]
        if host.generation != generation or not host.reachable:
            return
        self._handle_swim(host, host.swim.on_peer_lost(lost, self.engine.now))

    def restart(self, node: bytes) -> None:
        old = self.hosts[node]
        if old.up:
            return
        host = self._new_host(old.index, phone=old.phone, incarnation=old.incarnation_on_disk + 1)
        host.slow = old.slow
        self.trace.node_state(self.engine.now, node, "alive")
        self._join(host, self.random_live(exclude=node))

    def leave(self, node: bytes) -> None:
        host = self.hosts[node]
        if not host.reachable or host.left:
            return
        host.left = True
        self.trace.node_state(self.engine.now, node, "left")
        self._handle_swim(host, host.swim.leave(self.engine.now))
        # the process exits once the leave had time to spread (LeaveSpread or timeout)
        self.engine.after(self.config.leave_timeout, self._stop_after_leave, node,
                          host.generation)

    def _stop_after_leave(self, node: bytes, generation: int) -> None:
        host = self.hosts[node]
        if host.generation == generation:
            host.up = False
            host.generation += 1

    def sleep(self, node: bytes) -> None:
        host = self.hosts[node]
        if not host.reachable or host.left:
            return
        host.asleep = True
        self.trace.node_state(self.engine.now, node, "asleep")

    def wake(self, node: bytes) -> None:
        host = self.hosts[node]
        if not host.up or not host.asleep:
            return
        host.asleep = False
        self.trace.node_state(self.engine.now, node, "alive")
        host.timer_armed = math.inf
        self._arm(host)

    def roam(self, node: bytes) -> None:
        host = self.hosts[node]
        if not host.reachable or host.left:
            return
        self.sleep(node)
        self.engine.after(ROAM_BLACKOUT, self._arrive, node, host.generation)

    def _arrive(self, node: bytes, generation: int) -> None:
        host = self.hosts[node]
        if host.generation != generation:
            return
        host.address_version += 1
        self.wake(node)
        now = self.engine.now
        self._handle_swim(host, host.swim.update_addresses(host.addresses(), now))
        if host.dht is not None:
            self._handle_dht(host, host.dht.publish_self(list(host.addresses()), now))

    # --- delivery -------------------------------------------------------------------------

    def _count_overhead(self, node: bytes, messages: int, size: int) -> None:
        host = self.hosts.get(node)
        if host is not None:
            host.sent += messages
            host.overhead_bytes += size
        self.overhead_messages += messages

    def _rtt(self) -> float:
        return 2 * self.network.default.sample_delay(self.network.rng)

    def _can_connect(self, src: Host, dst: Host | None) -> bool:
        return dst is not None and dst.reachable and self.network.reachable(src.node_id,
                                                                            dst.node_id)

    def _send(self, src: Host, dst_id: bytes, kind: int, msg: Any) -> None:
        dst = self.hosts.get(dst_id)
        self.messages += 1
        src.sent += 1
        src.proto_sent += 1
        if self.messages % BYTES_SAMPLE_EVERY == 0:
            self._count_bytes(src, msg)
        if dst is None:
            return
        engine = self.engine
        network = self.network
        conns = self.conns
        now = engine.now
        src_id = src.node_id
        # a DHT message needs a connection: dialled first (handshake) when the pool has
        # none; gossip goes as a sealed datagram between proven pairs. Whether a dial can
        # succeed is asked only when one is needed
        rtt = 2 * network.default.sample_delay(network.rng)
        if kind == 0:
            if not dst.up and not dst.gone and conns.knows(src_id, dst_id):
                self._unreachable(src, dst_id, now, rtt)
            wait = conns.datagram(src_id, dst_id, now, rtt,
                                  can_connect=lambda: self._can_connect(src, dst))
        else:
            wait = conns.send(src_id, dst_id, now, rtt,
                              can_connect=lambda: self._can_connect(src, dst))
        if wait is None:
            return  # the dial failed: a datagram is dropped, a request times out
        # DHT requests and replies travel on streams: loss only delays them
        reliable = kind == 1
        delay = network.transit(src_id, dst_id, 0, now, reliable=reliable)
        if reliable:
            if delay is None or not dst.reachable:
                conns.stream(src_id, dst_id, now, None, answered=False)
            if delay is None:
                return
            delay += wait
            if delay >= conns.config.keepalive_interval:
                conns.stream(src_id, dst_id, now, delay, answered=True)
        else:
            if delay is None:
                return
            delay += wait
        if dst.slow:
            delay += SLOW_DELAY
        engine.at(now + delay, self._deliver, src_id, dst_id, dst.generation, kind, msg)

    def _unreachable(self, src: Host, dst_id: bytes, now: float, rtt: float) -> None:
        """``src``'s datagram reaches a killed process's host: ICMP port unreachable comes
        back after a round trip, which the transport turns into a hint (rate-limited)."""
        pair = (src.node_id, dst_id)
        if now - self._unreachable_hints.get(pair, -HINT_INTERVAL) < HINT_INTERVAL:
            return
        self._unreachable_hints[pair] = now
        self.engine.after(rtt, self._peer_unreachable, src.node_id, src.generation, dst_id)

    def _peer_unreachable(self, node: bytes, generation: int, lost: bytes) -> None:
        host = self.hosts[node]
        if host.generation != generation or not host.reachable:
            return
        self._handle_swim(host, host.swim.on_peer_unreachable(lost, self.engine.now))

    def _count_bytes(self, host: Host, msg: Any) -> None:
        """Encode one message to estimate bytes on the wire (every BYTES_SAMPLE_EVERY-th)."""
        from meshcloud.codec.messages import encode_message

        try:
            size = len(encode_message(msg))
        except Exception:  # a size estimate only: never fail the run for it
            return
        self._encoded += 1
        self._encoded_bytes += size

    @property
    def mean_message_bytes(self) -> float:
        return self._encoded_bytes / self._encoded if self._encoded else 0.0

    def _deliver(self, src_id: bytes, dst_id: bytes, generation: int, kind: int,
                 msg: Any) -> None:
        dst = self.hosts[dst_id]
        if dst.generation != generation or not dst.reachable:
            return
        now = self.engine.now
        if kind == 0:
            self._handle_swim(dst, dst.swim.on_message(src_id, msg, now))
        else:
            assert dst.dht is not None
            self._handle_dht(dst, dst.dht.on_message(src_id, msg, now))

    def _sync(self, src: Host, peer_id: bytes, msg: Any) -> None:
        """A push-pull over a stream: reliable, or failed after the TCP connect timeout (no
        connection) or the keepalive's ``dead_timeout`` (a connection that no longer
        answers: the peer also hears nothing, and the connection is dropped)."""
        peer = self.hosts.get(peer_id)
        now = self.engine.now
        self.messages += 2
        src.sent += 1
        src.proto_sent += 1
        if peer is not None:
            peer.sent += 1
            peer.proto_sent += 1
        connected = self.conns.connected(src.node_id, peer_id)
        wait = self.conns.send(src.node_id, peer_id, now, self._rtt(),
                               can_connect=self._can_connect(src, peer))
        if wait is None:
            self.engine.after(SYNC_CONNECT_TIMEOUT, self._sync_failed, src.node_id,
                              src.generation, peer_id)
            return
        assert peer is not None
        if connected and not self._can_connect(src, peer):
            self._stream_died(src, peer_id)
            return
        delay = wait + self.network.default.sample_delay(self.network.rng)
        self.engine.at(now + delay, self._sync_at_peer, src.node_id, src.generation, peer_id,
                       peer.generation, msg)

    def _stream_died(self, src: Host, peer_id: bytes) -> None:
        """A stream on a connection whose peer went silent: keepalives, then dead."""
        cfg = self.conns.config
        self.conns.stream(src.node_id, peer_id, self.engine.now, None, answered=False)
        self.engine.after(cfg.dead_timeout, self._sync_failed, src.node_id, src.generation,
                          peer_id)
        self.engine.after(cfg.dead_timeout, self._peer_lost, src.node_id, src.generation,
                          peer_id)

    def _sync_at_peer(self, src_id: bytes, src_gen: int, peer_id: bytes, peer_gen: int,
                      msg: Any) -> None:
        peer = self.hosts[peer_id]
        if peer.generation != peer_gen or not peer.reachable:
            src = self.hosts[src_id]
            if src.generation == src_gen:
                self._stream_died(src, peer_id)
            return
        now = self.engine.now
        reply, outs = peer.swim.on_push_pull(src_id, msg, now)
        self._handle_swim(peer, outs)
        self.conns.send(peer_id, src_id, now, 0.0, can_connect=True)  # the reply's frame
        delay = self.network.default.sample_delay(self.network.rng)
        self.engine.at(now + delay, self._sync_reply, src_id, src_gen, peer_id, reply)

    def _sync_reply(self, src_id: bytes, src_gen: int, peer_id: bytes, reply: Any) -> None:
        src = self.hosts[src_id]
        if src.generation != src_gen or not src.reachable:
            return
        self._handle_swim(src, src.swim.on_push_pull_reply(peer_id, reply, self.engine.now))

    def _sync_failed(self, src_id: bytes, src_gen: int, peer_id: bytes) -> None:
        src = self.hosts[src_id]
        if src.generation != src_gen or not src.reachable:
            return
        self._handle_swim(src, src.swim.on_push_pull_failed(peer_id, self.engine.now))

    # --- outputs and timers ---------------------------------------------------------------

    def _handle_swim(self, host: Host, outputs: list[Any], arm: bool = True) -> None:
        now = self.engine.now
        for out in outputs:
            kind = type(out)
            if kind is Send:
                self._send(host, out.to, 0, out.msg)
            elif kind is Sync:
                self._sync(host, out.to, out.msg)
            else:
                state = VIEW_STATES.get(kind)
                if state is not None:
                    subject = out.member.node_id
                    if subject != host.node_id:
                        self.trace.view(now, host.node_id, subject, state)
                for listener in self.listeners:
                    listener(now, host.node_id, out)
        if arm:
            self._arm(host)

    def _handle_dht(self, host: Host, outputs: list[Any], arm: bool = True) -> None:
        for out in outputs:
            kind = type(out)
            if kind is DhtSend:
                self._send(host, out.to, 1, out.msg)
            elif kind is LookupFinished:
                self._lookup_finished(host, out)
        if arm:
            self._arm(host)

    def _arm(self, host: Host) -> None:
        if not host.up or host.asleep:
            return
        deadline = host.swim.next_deadline()
        dht = host.dht
        if dht is not None:
            d = dht.next_deadline()
            if d is not None and (deadline is None or d < deadline):
                deadline = d
        if deadline is None:
            return
        now = self.engine.now
        if deadline < now:
            deadline = now
        if deadline < host.timer_armed:
            host.timer_armed = deadline
            self.engine.at(deadline, self._timer, host.node_id, host.generation, deadline)

    def _timer(self, node: bytes, generation: int, when: float) -> None:
        host = self.hosts[node]
        if host.generation != generation:
            return
        if host.timer_armed == when:
            host.timer_armed = math.inf
        if not host.reachable:
            return
        now = self.engine.now
        swim_due = host.swim.next_deadline()
        swim_ran = swim_due is not None and swim_due <= now
        if swim_ran:
            self._handle_swim(host, host.swim.on_timer(now), arm=False)
        if host.dht is not None:
            dht_due = host.dht.next_deadline()
            if dht_due is not None and dht_due <= now:
                if swim_ran:
                    self._arm(host)  # (re-arming between the two keeps the event order)
                self._handle_dht(host, host.dht.on_timer(now), arm=False)
        self._arm(host)

    # --- DHT lookups (for the checker) ----------------------------------------------------

    def lookup(self, rng: random.Random) -> None:
        """One find-peer lookup from a random live node for another random live node."""
        live = [h for h in self.by_index if h.reachable and not h.left and h.dht is not None]
        if len(live) < 2:
            return
        origin, target = rng.sample(live, 2)
        assert origin.dht is not None
        outputs = origin.dht.find_peer(target.node_id, self.engine.now)
        lookup_id = outputs[0].lookup_id
        self._lookups[(origin.node_id, lookup_id)] = {
            "t": self.engine.now, "origin": origin.node_id.hex(), "target": target.node_id.hex(),
            "want": target.addresses(), "origin_gen": origin.generation,
            "reachable": self.network.reachable(origin.node_id, target.node_id)}
        self._handle_dht(origin, outputs)

    def _lookup_finished(self, host: Host, out: LookupFinished) -> None:
        pending = self._lookups.pop((host.node_id, out.lookup_id), None)
        if pending is None:
            return
        target = self.hosts[bytes.fromhex(pending["target"])]
        found = tuple(out.addresses or ())
        ok = bool(found) and found == target.addresses()
        # a lookup can only be expected to find a node it can reach, alive all along
        expected = (target.reachable and pending["reachable"]
                    and self.network.reachable(host.node_id, target.node_id))
        self.trace.record("dht_lookup", t=pending["t"], origin=pending["origin"],
                          target=pending["target"], ok=ok, expected=expected,
                          rounds=out.rounds, seconds=round(self.engine.now - pending["t"], 3))
