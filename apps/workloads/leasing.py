"""The lease driver: singleton leases over ``/meshcloud/lease/1`` (cores in :mod:`apps.leases`).

Every node is a **granter** (a :class:`~apps.leases.GranterCore` answering requests) and,
for the singletons placement gives it, a would-be **holder** (a
:class:`~apps.leases.HolderCore` asking for and renewing leases).

* **Granters of a workload**: the top :data:`~apps.leases.GRANTERS` nodes by rendezvous
  hash of ``lease/NAME`` over every node in the ``offers`` table — all nodes that ever ran
  the workload service, alive or not, so the set does not move when a node merely looks
  dead, and every node computes the same set once the table has converged.
* **Requests**: one stream per request (request, reply), to all granters at once, each
  bounded by ``request_timeout``; this node's own granter is called directly. Renewals
  every :data:`~apps.leases.RENEW_EVERY` seconds; a round refused for a stale term is
  retried at once with the term the refusals taught.
* **Restarted granters stay quiet** for one lease duration: a granter keeps its grants in
  memory, so right after a restart it cannot know whom it granted to; answering nobody
  until any grant it may have made has expired keeps two majorities from forming.
* **Releases** are sent (best effort) when a singleton is no longer wanted here, so the
  next holder need not wait for the grants to expire.

Time is trio's clock (monotonic); the cores get it as ``now``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import trio

from apps.leases import (
    GRANTERS,
    LEASE_DURATION,
    RENEW_EVERY,
    GranterCore,
    HeldLease,
    HolderCore,
    LeaseRelease,
    LeaseReply,
    LeaseRequest,
)
from apps.workloads.messages import LEASE_PROTOCOL
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError
from meshcloud.placement import rank
from meshcloud.transport.base import Stream, Transport

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 1.0
"""Seconds a granter has to answer one request (a LAN answers in milliseconds; a granter
that takes longer counts as a refusal for this round)."""
MAX_LEASE_MESSAGE = 4096


def granters_for(workload: str, nodes: Iterable[bytes], count: int = GRANTERS
                 ) -> tuple[bytes, ...]:
    """The granters of ``workload``: the top ``count`` of ``nodes`` for ``lease/NAME``."""
    return tuple(rank(sorted(set(nodes)), b"lease/" + workload.encode())[:count])


class LeaseService:
    """Granter and holder of one node. ``known_nodes()`` lists every node of the mesh
    (the ``offers`` table); ``on_change()`` is called when a lease is won or lost."""

    def __init__(self, node_id: bytes, transport: Transport,
                 known_nodes: Callable[[], Iterable[bytes]], *,
                 on_change: Callable[[], None] = lambda: None,
                 duration: float = LEASE_DURATION, renew_every: float = RENEW_EVERY,
                 quiet_period: float | None = None,
                 protocol: str = LEASE_PROTOCOL) -> None:
        self.node_id = node_id
        self.protocol = protocol
        self.transport = transport
        self.known_nodes = known_nodes
        self.on_change = on_change
        self.duration = duration
        self.renew_every = renew_every
        self.granter = GranterCore(node_id)
        self.holder = HolderCore(node_id, duration=duration)
        self.quiet_period = duration if quiet_period is None else quiet_period
        self._quiet_until = 0.0
        self._wanted: set[str] = set()
        self._wake = trio.Event()
        self._held_terms: dict[str, int] = {}
        self.rounds = 0
        self._releasing: set[str] = set()

    # --- holder API ---------------------------------------------------------------------

    def want(self, workloads: set[str]) -> None:
        """The singletons this node should hold (from the reconciler); others are released."""
        if workloads != self._wanted:
            self._wanted = set(workloads)
            self._wake.set()

    def leases(self) -> dict[str, HeldLease]:
        """Leases held now (valid at this instant)."""
        now = trio.current_time()
        out = {}
        for workload in list(self.holder.held):
            lease = self.holder.holds(workload, now)
            if lease is not None:
                out[workload] = lease
        return out

    def observe_term(self, workload: str, term: int) -> None:
        self.holder.observe_term(workload, term)

    def restore(self, workload: str, term: int, valid_until: float) -> None:
        """A lease this node's previous agent held (same boot: its end, measured on the
        monotonic clock, still bounds the granters' grants from below); renewals carry
        on with its term, so an adopted singleton keeps running."""
        if valid_until > trio.current_time():
            self.holder.held[workload] = HeldLease(term, valid_until)
            self.holder.observe_term(workload, term)
            self._wanted.add(workload)  # until the reconciler says otherwise

    def granters(self, workload: str) -> tuple[bytes, ...]:
        return granters_for(workload, self.known_nodes())

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self._quiet_until = trio.current_time() + self.quiet_period
        self.transport.serve(self.protocol, self._serve)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                # rounds start on a fixed cadence: a granter that does not answer costs a
                # round its timeout, never the next renewal its turn
                next_round = trio.current_time() + self.renew_every
                nursery.start_soon(self._round)
                if not self.holder.held and not self._wanted:
                    next_round = math.inf  # nothing held or wanted: sleep until want()
                with trio.move_on_at(next_round):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _round(self) -> None:
        for workload in [w for w in self.holder.held if w not in self._wanted]:
            await self._release(workload)
        wanted = sorted(self._wanted)
        if not wanted:
            return
        self.rounds += 1
        async with trio.open_nursery() as nursery:
            for workload in wanted:
                nursery.start_soon(self._acquire, workload)
        self._notice_changes(trio.current_time())

    async def _acquire(self, workload: str) -> None:
        for _ in range(2):  # a second try at once if refusals taught a higher term
            before = self.holder.known_term(workload)
            granted = await self._attempt(workload)
            after = self.holder.known_term(workload)
            if granted or after <= before:
                return

    async def _attempt(self, workload: str) -> bool:
        granters = self.granters(workload)
        if not granters:
            return False
        sends = self.holder.request(workload, granters, trio.current_time())
        won = trio.Event()

        async def ask(granter: bytes, request: LeaseRequest) -> None:
            reply = await self._ask(granter, request)
            if reply is not None and self.holder.on_reply(granter, reply,
                                                          trio.current_time()) is not None:
                won.set()

        async with trio.open_nursery() as nursery:
            for granter, request in sends:
                nursery.start_soon(ask, granter, request)
        return won.is_set()

    async def _ask(self, granter: bytes, request: LeaseRequest) -> LeaseReply | None:
        if granter == self.node_id:
            return self._answer(request)
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                stream = await self.transport.open_stream(granter, self.protocol)
                try:
                    await stream.send(encode_message(request))
                    await stream.close()
                    data = await stream.receive()
                finally:
                    with trio.CancelScope(shield=True):
                        await stream.abort("done")
            return decode_message(data, LeaseReply, max_size=MAX_LEASE_MESSAGE)
        except (MeshError, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError) as exc:
            log.debug("lease request to %s failed: %s", granter.hex()[:12], exc)
            return None

    async def _release(self, workload: str) -> None:
        if workload in self._releasing:
            return
        self._releasing.add(workload)
        try:
            await self._send_release(workload)
        finally:
            self._releasing.discard(workload)

    async def _send_release(self, workload: str) -> None:
        sends = self.holder.release(workload)
        self._held_terms.pop(workload, None)
        self.on_change()
        for granter, release in sends:
            if granter == self.node_id:
                self.granter.on_release(release)
                continue
            try:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    stream = await self.transport.open_stream(granter, self.protocol)
                    await stream.send(encode_message(release))
                    await stream.close()
            except (MeshError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    def _notice_changes(self, now: float) -> None:
        current = {w: lease.term for w in self._wanted
                   if (lease := self.holder.holds(w, now)) is not None}
        if current != self._held_terms:
            self._held_terms = current
            self.on_change()

    # --- granter ------------------------------------------------------------------------

    def _answer(self, request: LeaseRequest) -> LeaseReply:
        now = trio.current_time()
        if now < self._quiet_until:
            return LeaseReply(workload=request.workload, granted=False, term=request.term,
                              request_id=request.request_id, reason="granter restarting")
        return self.granter.on_request(request, self.granters(request.workload), now)

    async def _serve(self, stream: Stream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT * 5):
                data = await stream.receive()
                msg = decode_message(data, (LeaseRequest, LeaseRelease),
                                     max_size=MAX_LEASE_MESSAGE)
                if isinstance(msg, LeaseRelease):
                    if msg.holder == stream.peer.node_id:
                        self.granter.on_release(msg)
                    return
                if msg.holder != stream.peer.node_id:
                    await stream.abort("a lease is requested by its holder only")
                    return
                reply = self._answer(msg)
                await stream.send(encode_message(reply))
                await stream.close()
        except (MeshError, trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError,
                trio.ClosedResourceError):
            return
