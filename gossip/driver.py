"""The trio driver: a Transport on one side, a SwimCore on the other.

Thin on purpose (ARCHITECTURE.md §3): every behaviour worth testing lives in the core.
The driver

* decodes datagrams on ``/meshcloud/gossip/1`` (bounded; malformed or oversize ones are
  dropped and counted) and feeds ``core.on_message``; encodes every :class:`Send`;
* serves and opens push-pull streams on ``/meshcloud/gossip-sync/1`` (a join: one
  PushPull each way; a periodic sync: digest, delta, wanted entries, see
  :mod:`gossip.digest`; bounded by ``sync_timeout`` and ``max_sync_bytes``);
* keeps **one** timer, at ``core.next_deadline()``, re-armed after every input;
* turns ``PeerDisconnected`` from ``transport.peer_events()`` into ``core.on_peer_lost``
  (a hint to probe that peer now; death still goes through suspicion), except for
  connections the pool closed as unused (``unused``: nothing happened to the peer), and
  ``PeerUnreachable`` (a datagram to it came back as an ICMP error) into
  ``core.on_peer_unreachable`` (the same hint; the probe skips the wait for a direct ack);
* tells the transport every member's addresses (``set_addresses``) as they are learnt;
* optionally samples the machine's capacity (``capacity_source``, in a worker thread)
  every ``capacity_interval`` and hands it to ``core.update_capacity``;
* publishes membership events to subscribers (the API, the UI) and counts bytes;
* measures its own event loop's lag (a task that sleeps ``lag_interval`` and measures how
  late trio wakes it: :mod:`gossip.lag`), feeds it to ``core.on_loop_lag`` and logs any
  stall over 100 ms; with ``watch_steps``, a trio instrument also names the task steps
  that held the loop (:meth:`loop_status`).

Usage::

    driver = GossipDriver(transport, GossipConfig.lan(), cert_hooks(key, cert, root, records),
                          capacity=read_capacity(data_dir))
    await nursery.start(driver.run)
    await driver.join(["tcp://192.168.1.10:7946"])
    events = driver.subscribe()
    ...
    await driver.leave()
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from gossip.capacity import Capacity
from gossip.config import GossipConfig
from gossip.core import SwimCore
from gossip.hooks import GossipHooks
from gossip.lag import CPU_MARK_EVERY, SAMPLE_INTERVAL, LagHistogram
from gossip.member import MemberInfo
from gossip.messages import (
    GOSSIP_PROTOCOL,
    PACKET_TYPES,
    SYNC_PROTOCOL,
    PushPull,
    SyncDelta,
    SyncDigest,
)
from gossip.outputs import (
    LeaveSpread,
    MemberEvent,
    MemberJoined,
    MemberUpdated,
    Output,
    Refuted,
    Send,
    Sync,
)
from gossip.stats import GossipStatistics
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import AuthError, CodecError, MeshError, TransportError
from meshcloud.transport.base import PeerDisconnected, PeerUnreachable, Stream, Transport

log = logging.getLogger(__name__)

SUBSCRIBER_BUFFER = 1024
"""Events queued per subscriber; a subscriber that falls further behind loses events
(counted in ``events_dropped``) rather than stalling gossip."""
DRAIN_BUDGET = 0.02
"""Seconds one step of the datagram task may spend on datagrams already queued before it
lets other tasks run. A starved loop runs each runnable task about once per scheduling
round (0.1-1 s under heavy load); taking one datagram per round let hundreds queue up
behind each other, so probes were acked and accusations refuted 10-30 s late."""


class GossipError(MeshError):
    """Joining or syncing failed (no seed answered, a seed refused us...)."""

    code = "gossip_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverStatistics:
    core: GossipStatistics
    datagrams_sent: int
    datagrams_received: int
    bytes_sent: int
    bytes_received: int
    syncs_ok: int
    syncs_failed: int
    sync_bytes_sent: int
    sync_bytes_received: int
    dropped_malformed: int
    """Datagrams or syncs that did not decode (CodecError) or were oversize."""
    events_dropped: int

    @property
    def hostile_dropped(self) -> int:
        return self.core.hostile_dropped + self.dropped_malformed


def thread_runqueue_clock() -> Callable[[], float]:
    """A clock of the seconds the *calling* thread has spent runnable but not running
    (waiting on a run queue: Linux ``/proc/thread-self/schedstat``), read with one
    ``pread``; a clock that stays at 0 where there is no such file."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return lambda: 0.0

    def read() -> float:
        try:
            return int(os.pread(fd, 96, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    return read


class SlowSteps(trio.abc.Instrument):
    """Times each task step; remembers the slow ones by task name (count, max, total).

    Cheap enough to watch every step of a busy agent: a step is timed with the monotonic
    clock (no system call); the thread's CPU clock (a system call) is read only when a
    step turned out slow, and otherwise at most once per ``cpu_mark_every`` seconds, so
    a slow step's CPU time is counted from a mark taken at most that long before it
    began (and capped at its wall time).

    With the run-queue clock (``runq_clock``, read at the same moments), a slow step's
    wall time splits three ways: CPU (our own work), run queue (the kernel ran other
    threads: the machine is busy) and the rest, blocked while ready to go on (on this
    thread of a trio loop: waiting for the GIL a worker thread holds)."""

    def __init__(self, threshold: float = 0.05, keep: int = 64, *,
                 cpu_mark_every: float = CPU_MARK_EVERY,
                 clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.thread_time,
                 runq_clock: Callable[[], float] | None = None) -> None:
        self.threshold = threshold
        self.keep = keep
        self.cpu_mark_every = cpu_mark_every
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.runq_clock = runq_clock
        """None: opened on the first step, in the loop's thread (the clock is per thread)."""
        self.slow: dict[str, list[float]] = {}
        """task name -> [count, max seconds, total seconds, CPU seconds, run-queue seconds]"""
        self._started: float | None = None
        self._mark_at = -math.inf
        self._cpu_mark = 0.0
        self._runq_mark = 0.0
        self.longest = 0.0
        """The longest slow step since the last :meth:`take_longest` (seconds, 0 if none)."""
        self.last: tuple[str, float, float, float] | None = None
        """The latest slow step: (task name, seconds, CPU seconds, run-queue seconds)."""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = self._started = self.clock()
        if now - self._mark_at >= self.cpu_mark_every:
            self._mark_at = now
            self._cpu_mark = self.cpu_clock()
            if self.runq_clock is None:
                self.runq_clock = thread_runqueue_clock()
            self._runq_mark = self.runq_clock()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        started = self._started
        if started is None:  # added in the middle of a step: not timed
            return
        self._started = None
        took = self.clock() - started
        if took < self.threshold:
            return
        cpu_now = self.cpu_clock()
        cpu = min(max(0.0, cpu_now - self._cpu_mark), took)
        runq_now = self.runq_clock() if self.runq_clock is not None else 0.0
        runq = min(max(0.0, runq_now - self._runq_mark), took - cpu)
        self._mark_at, self._cpu_mark, self._runq_mark = started + took, cpu_now, runq_now
        self.longest = max(self.longest, took)
        self.last = (task.name, took, cpu, runq)
        entry = self.slow.get(task.name)
        if entry is None:
            if len(self.slow) >= self.keep:
                return
            entry = self.slow[task.name] = [0, 0.0, 0.0, 0.0, 0.0]
        entry[0] += 1
        entry[1] = max(entry[1], took)
        entry[2] += took
        entry[3] += cpu
        entry[4] += runq

    def take_longest(self) -> float:
        """The longest slow step since the last call (0.0 if none), and start over."""
        longest, self.longest = self.longest, 0.0
        return longest

    def top(self, n: int = 10) -> list[dict[str, Any]]:
        """The tasks whose slow steps held the loop longest (wall time), with the CPU
        time those steps used on this thread: wall far above CPU means the machine did
        not run us (other processes), CPU close to wall means our own work blocked."""
        ranked = sorted(self.slow.items(), key=lambda kv: -kv[1][2])[:n]
        return [{"task": name, "count": int(c), "max_ms": round(m * 1000, 1),
                 "total_ms": round(t * 1000, 1), "cpu_ms": round(u * 1000, 1),
                 "runq_ms": round(q * 1000, 1)}
                for name, (c, m, t, u, q) in ranked]


class GossipDriver:
    def __init__(self, transport: Transport, config: GossipConfig, hooks: GossipHooks, *,
                 capacity: Capacity | None = None, incarnation: int = 0,
                 rng: random.Random | None = None,
                 capacity_source: Callable[[], Capacity] | None = None,
                 run_sync: Callable[[Callable[[], Capacity]], Awaitable[Capacity]]
                 = trio.to_thread.run_sync,
                 lag_interval: float | None = SAMPLE_INTERVAL,
                 watch_steps: bool = False) -> None:
        self.transport = transport
        self.config = config
        self.hooks = hooks
        self._capacity = capacity
        self._incarnation = incarnation
        self._random = rng or random.Random()
        self._capacity_source = capacity_source
        self._run_sync = run_sync
        """How the (blocking) capacity reading runs: a worker thread by default."""
        self._lag_interval = lag_interval
        self.lag = LagHistogram()
        self.slow_steps = SlowSteps() if watch_steps else None
        self._core: SwimCore | None = None
        self._nursery: trio.Nursery | None = None
        self._timer_scope: trio.CancelScope | None = None
        """The timer loop's sleep (None while it is awake): its deadline follows the core's."""
        self._subscribers: list[trio.MemorySendChannel[MemberEvent]] = []
        self._leave_spread = trio.Event()
        self._counts = dict.fromkeys(
            ("datagrams_sent", "datagrams_received", "bytes_sent", "bytes_received",
             "syncs_ok", "syncs_failed", "sync_bytes_sent", "sync_bytes_received",
             "dropped_malformed", "events_dropped"), 0)

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def core(self) -> SwimCore:
        if self._core is None:
            raise GossipError("the gossip driver is not running")
        return self._core

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Run until cancelled. Started with ``nursery.start(driver.run)``."""
        transport = self.transport
        self._core = SwimCore(transport.local_id, self.config, self.hooks, self._random,
                              now=trio.current_time(),
                              addresses=transport.listen_addresses, capacity=self._capacity,
                              incarnation=self._incarnation,
                              connected=lambda: [p.node_id for p in transport.connected_peers()])
        datagrams = transport.datagrams(GOSSIP_PROTOCOL)
        events = transport.peer_events()
        transport.serve(SYNC_PROTOCOL, self._serve_sync)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._datagram_loop, datagrams)
                nursery.start_soon(self._peer_event_loop, events)
                nursery.start_soon(self._timer_loop)
                if self._capacity_source is not None:
                    nursery.start_soon(self._capacity_loop)
                if self._lag_interval is not None:
                    nursery.start_soon(self._lag_loop, self._lag_interval)
                if self.slow_steps is not None:
                    trio.lowlevel.add_instrument(self.slow_steps)
                task_status.started()
        finally:
            if self.slow_steps is not None:
                with contextlib.suppress(KeyError):
                    trio.lowlevel.remove_instrument(self.slow_steps)
            self._nursery = None
            for channel in self._subscribers:
                channel.close()

    async def join(self, addresses: Iterable[str]) -> int:
        """Dial each seed address and sync with it; returns how many syncs succeeded.

        Raises GossipError when seeds were given but none could be synced with.
        """
        addresses = list(addresses)
        ids: list[bytes] = []
        errors: list[str] = []
        for address in addresses:
            try:
                peer = await self.transport.dial(address)
            except (TransportError, AuthError) as exc:
                errors.append(f"{address}: {exc}")
                continue
            if peer.node_id != self.transport.local_id:
                ids.append(peer.node_id)
        joined = 0
        for out in self.core.join(ids, trio.current_time()):
            if isinstance(out, Sync):
                if await self._sync(out):
                    joined += 1
                else:
                    errors.append(f"{out.to.hex()[:12]}: sync failed")
        if addresses and not joined:
            raise GossipError("could not join the mesh: " + "; ".join(errors or ["no seed"]))
        return joined

    async def leave(self) -> None:
        """Gossip a signed leave and wait (at most ``leave_timeout``) for it to go out.

        "Out" means sent as often as the retransmit limit asks; we then linger one gossip
        interval more so the last datagrams leave the transport before the caller stops
        it (a stopped transport drops what it still holds)."""
        self._perform(self.core.leave(trio.current_time()))
        with trio.move_on_after(self.config.leave_timeout):
            await self._leave_spread.wait()
            await trio.sleep(self.config.gossip_interval)

    def update_capacity(self, capacity: Capacity) -> None:
        self._perform(self.core.update_capacity(capacity, trio.current_time()))

    def update_addresses(self, addresses: Iterable[str]) -> None:
        self._perform(self.core.update_addresses(addresses, trio.current_time()))

    # --- queries --------------------------------------------------------------------------

    def members(self) -> list[MemberInfo]:
        """Every known member (this node included). ``changed_at`` is in trio time;
        :meth:`wall_time` converts it."""
        return self.core.members()

    def member(self, node_id: bytes) -> MemberInfo | None:
        return self.core.member(node_id)

    @staticmethod
    def wall_time(core_time: float, wall_now: float) -> float:
        """A core timestamp as Unix seconds, given the wall clock now."""
        return wall_now - (trio.current_time() - core_time)

    def subscribe(self) -> trio.MemoryReceiveChannel[MemberEvent]:
        """A new subscription to membership events (joined, updated, suspected...)."""
        send, receive = trio.open_memory_channel[MemberEvent](SUBSCRIBER_BUFFER)
        self._subscribers.append(send)
        return receive

    def statistics(self) -> DriverStatistics:
        return DriverStatistics(core=self.core.statistics(), **self._counts)

    def loop_status(self) -> dict[str, object]:
        """This node's event-loop lag (max, histogram, stalls), the task steps that held
        the loop longest, and what gossip made of it (health score, extended probes)."""
        out: dict[str, object] = self.lag.snapshot()
        if self.slow_steps is not None:
            out["slow_steps"] = self.slow_steps.top()
        if self._core is not None:
            stats = self._core.statistics()
            out.update(health_score=stats.health_score, probes_stalled=stats.probes_stalled,
                       suspicions_postponed=stats.suspicions_postponed,
                       suspicions_renewed=stats.suspicions_renewed,
                       deaths_checked=stats.deaths_checked,
                       probes_unsettled=stats.probes_unsettled,
                       probes_retried=stats.probes_retried, probes_failed=stats.probes_failed,
                       probe_hints=stats.probe_hints)
        return out

    # --- performing outputs ---------------------------------------------------------------

    def _perform(self, outputs: list[Output]) -> None:
        for out in outputs:
            match out:
                case Send():
                    data = encode_message(out.msg)
                    self._counts["datagrams_sent"] += 1
                    self._counts["bytes_sent"] += len(data)
                    self.transport.send_datagram(out.to, GOSSIP_PROTOCOL, data)
                case Sync():
                    if self._nursery is not None:
                        self._nursery.start_soon(self._sync, out)
                case LeaveSpread():
                    self._leave_spread.set()
                case Refuted():
                    log.info("refuted an accusation by %s: now at incarnation %d",
                             out.accuser.hex()[:12], out.incarnation)
                case _:  # a membership event
                    if isinstance(out, MemberJoined | MemberUpdated):
                        info: MemberInfo = out.member
                        if info.node_id != self.transport.local_id:
                            self.transport.set_addresses(info.node_id, list(info.addresses))
                    self._publish(out)
        # move the timer loop's sleep to the core's next deadline instead of waking it:
        # an ack, a ping answered or a lag sample (5 a second) rarely moves it earlier,
        # and an ack's cancelled probe timeout moves it later (no wake-up for nothing)
        scope, core = self._timer_scope, self._core
        if scope is not None and core is not None:
            deadline = core.next_deadline()
            scope.deadline = deadline if deadline is not None else math.inf

    def _publish(self, event: MemberEvent) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self._counts["events_dropped"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(channel)

    # --- loops ----------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        core = self.core
        while True:
            deadline = core.next_deadline()
            with trio.CancelScope(deadline=deadline if deadline is not None
                                  else math.inf) as scope:
                self._timer_scope = scope  # _perform moves its deadline
                await trio.sleep_forever()
            self._timer_scope = None  # awake: it reads the deadline again
            now = trio.current_time()
            deadline = core.next_deadline()
            if deadline is not None and now >= deadline:
                # woken late: that is loop lag too, and the core must know it before it
                # judges the probe steps and suspicions that ran out meanwhile
                self._perform(core.on_loop_lag(now - deadline, now))
                self._perform(core.on_timer(now))

    async def _datagram_loop(self, datagrams: trio.MemoryReceiveChannel[tuple[bytes, bytes]]
                             ) -> None:
        async for peer, data in datagrams:
            self._on_datagram(peer, data)
            # take what else is queued now, within a budget: one datagram per scheduling
            # round falls behind a busy mesh's traffic on a starved loop
            until = time.perf_counter() + DRAIN_BUDGET
            while time.perf_counter() < until:
                try:
                    peer, data = datagrams.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._on_datagram(peer, data)

    def _on_datagram(self, peer: bytes, data: bytes) -> None:
        self._counts["datagrams_received"] += 1
        self._counts["bytes_received"] += len(data)
        try:
            msg = decode_message(data, PACKET_TYPES, max_size=self.config.max_datagram)
        except CodecError as exc:
            self._counts["dropped_malformed"] += 1
            log.debug("dropped a malformed gossip datagram from %s: %s", peer.hex()[:12], exc)
            return
        self._perform(self.core.on_message(peer, msg, trio.current_time()))

    async def _peer_event_loop(self, events: trio.MemoryReceiveChannel[object]) -> None:
        async for event in events:
            if isinstance(event, PeerDisconnected) and not event.unused:
                self._perform(self.core.on_peer_lost(event.node_id, trio.current_time()))
            elif isinstance(event, PeerUnreachable):
                self._perform(self.core.on_peer_unreachable(event.node_id,
                                                            trio.current_time()))

    async def _lag_loop(self, interval: float) -> None:
        """Sleep ``interval``; how late trio wakes us is the loop's lag (a task step
        that held the thread, or the OS not running this process)."""
        core = self.core
        while True:
            expected = trio.current_time() + interval
            await trio.sleep_until(expected)
            now = trio.current_time()
            lag = now - expected
            if self.slow_steps is not None:
                # a step that held the loop between two samples delayed every task that
                # was ready meanwhile: that is lag too, even if this sleep ended after it
                lag = max(lag, self.slow_steps.take_longest())
            if self.lag.record(lag):
                last = self.slow_steps.last if self.slow_steps is not None else None
                log.warning("event loop stalled for %.0f ms%s", lag * 1000,
                            f" (last slow step: {last[0]}, {last[1] * 1000:.0f} ms; "
                            f"cpu {last[2] * 1000:.0f} ms, run queue "
                            f"{last[3] * 1000:.0f} ms)" if last else "")
            self._perform(core.on_loop_lag(lag, now))

    async def _capacity_loop(self) -> None:
        source = self._capacity_source
        assert source is not None
        interval = max(self.config.capacity_interval, 1.0)
        while True:
            await trio.sleep(interval)
            try:
                capacity = await self._run_sync(source)
            except (OSError, ValueError) as exc:  # a reading we cannot use: try later
                log.warning("could not read this machine's capacity: %s", exc)
                continue
            self.update_capacity(capacity)

    # --- push-pull ------------------------------------------------------------------------

    async def _sync(self, out: Sync) -> bool:
        """Run one push-pull as the initiator; feed the reply (or the failure) to the core.

        A join sends the full state; a periodic sync starts with a digest
        (:mod:`gossip.digest`) and moves full entries only where the views differ."""
        core = self.core
        digest = not out.msg.join
        try:
            with trio.fail_after(self.config.sync_timeout):
                stream = await self.transport.open_stream(out.to, SYNC_PROTOCOL)
                try:
                    if digest:
                        outputs = await self._digest_sync(stream, out.to)
                    else:
                        reply = await self._full_sync(stream, out.msg)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await stream.abort("sync abandoned")
                    raise
        except CodecError as exc:
            self._counts["dropped_malformed"] += 1
            self._counts["syncs_failed"] += 1
            log.info("malformed sync reply from %s: %s", out.to.hex()[:12], exc)
            self._perform(core.on_push_pull_failed(out.to, trio.current_time()))
            return False
        except (TransportError, AuthError, trio.TooSlowError, trio.EndOfChannel,
                trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._counts["syncs_failed"] += 1
            log.debug("sync with %s failed: %s", out.to.hex()[:12], exc)
            self._perform(core.on_push_pull_failed(out.to, trio.current_time()))
            return False
        self._counts["syncs_ok"] += 1
        if digest:
            self._perform(outputs)
        else:
            self._perform(core.on_push_pull_reply(out.to, reply, trio.current_time()))
        return True

    async def _send_sync(self, stream: Stream, msg: object) -> None:
        data = encode_message(msg)
        await stream.send(data)
        self._counts["sync_bytes_sent"] += len(data)

    async def _receive_sync(self, stream: Stream, expect: type | tuple[type, ...]) -> Any:
        data = await stream.receive()
        self._counts["sync_bytes_received"] += len(data)
        return decode_message(data, expect, max_size=self.config.max_sync_bytes)

    async def _full_sync(self, stream: Stream, msg: PushPull) -> PushPull:
        await self._send_sync(stream, msg)
        await stream.close()
        reply: PushPull = await self._receive_sync(stream, PushPull)
        return reply

    async def _digest_sync(self, stream: Stream, peer: bytes) -> list[Output]:
        core = self.core
        await self._send_sync(stream, core.sync_digest())
        delta: SyncDelta = await self._receive_sync(stream, SyncDelta)
        wanted, outputs = core.on_sync_delta(peer, delta, trio.current_time())
        await self._send_sync(stream, wanted)
        await stream.close()
        return outputs

    async def _serve_sync(self, stream: Stream) -> None:
        """Answer a push-pull: read theirs, send ours, merge theirs (a full sync); or
        answer a digest with the differences and merge the entries that come back."""
        core = self._core
        if core is None:
            await stream.abort("gossip not running")
            return
        peer = stream.peer.node_id
        try:
            with trio.fail_after(self.config.sync_timeout):
                try:
                    msg = await self._receive_sync(stream, (PushPull, SyncDigest))
                    if type(msg) is SyncDigest:
                        delta = core.on_sync_digest(peer, msg, trio.current_time())
                        await self._send_sync(stream, delta)
                        entries = await self._receive_sync(stream, PushPull)
                        await stream.close()
                        outputs = core.on_sync_entries(peer, entries, trio.current_time())
                    else:
                        reply, outputs = core.on_push_pull(peer, msg, trio.current_time())
                        await self._send_sync(stream, reply)
                        await stream.close()
                except CodecError:
                    self._counts["dropped_malformed"] += 1
                    await stream.abort("malformed push-pull")
                    return
        except (TransportError, trio.TooSlowError, trio.EndOfChannel,
                trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.abort("sync failed")
            return
        self._perform(outputs)
