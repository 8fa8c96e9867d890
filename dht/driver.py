"""DhtDriver: runs a :class:`~dht.core.DhtCore` over the transport, with trio.

The whole I/O adapter, kept thin (EXAMPLES.md rule 8): every input goes to the core, every
output is performed, and one timer task sleeps until the core's ``next_deadline()``.

* **Requests**: each ``Send`` of a request becomes one stream on ``/meshcloud/dht/1``
  (one request, one reply, :func:`meshcloud.transport.base.request`), bounded by
  ``trio.move_on_after(request_timeout)``. The reply goes to ``core.on_message``; a
  transport error, a malformed reply or the timeout goes to ``core.on_request_failed``.
  Before dialling, the driver tells the transport where the core believes the peer is
  (``transport.set_addresses``); it does the same for every ``PeerFound`` and for the
  providers a lookup returns, so the node can then open streams to them.
* **Serving**: an incoming stream carries one request; the core's reply is written back
  on it and the stream closed. A request that does not decode is counted
  (``statistics().dropped["undecodable"]``) and the stream aborted.
* **Commands** (:meth:`bootstrap`, :meth:`find_peer`, :meth:`publish_self`,
  :meth:`provide`, :meth:`find_providers`, :meth:`find_closest`) start an operation in
  the core and wait for its ``LookupFinished``. They need :meth:`run` to be running.

Usage::

    dht = DhtDriver.create(transport, node_key, DhtConfig.lan())
    await nursery.start(dht.run)
    await dht.bootstrap(["tcp://192.168.1.20:7946"])
    await dht.publish_self()                       # our listen addresses, signed
    addresses = await dht.find_peer(other_node_id)
    await dht.provide(content_key(b"bucket/photos"))
    holders = await dht.find_providers(content_key(b"bucket/photos"))
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from dht.config import DhtConfig
from dht.core import DhtCore, DhtStatistics
from dht.errors import DhtError, PeerNotFound
from dht.hooks import Ed25519Verifier, KeySigner
from dht.messages import PROTOCOL, REPLY_TYPES, REQUEST_TYPES, PeerInfo
from dht.outputs import LookupFinished, LookupStarted, Output, PeerFound, Send
from meshcloud.clock import SystemClock
from meshcloud.errors import AuthError, CodecError, TransportError
from meshcloud.identity.keys import SigningKey, short_id
from meshcloud.transport.base import (
    Stream,
    Transport,
    receive_message,
    request,
    send_message,
    stream_error,
)

log = logging.getLogger(__name__)

_STREAM_ERRORS = (TransportError, AuthError, CodecError, trio.EndOfChannel,
                  trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(slots=True)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    result: LookupFinished | None = None


class DhtDriver:
    """Feeds one node's DhtCore from the transport and trio's clock."""

    def __init__(self, transport: Transport, core: DhtCore, *,
                 wall_ms: Callable[[], int] | None = None) -> None:
        self.transport = transport
        self.core = core
        self._wall_ms = wall_ms or SystemClock().wall_ms
        self._nursery: trio.Nursery | None = None
        self._timer: trio.CancelScope | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._replies: dict[tuple[bytes, int], list[object]] = {}

    @classmethod
    def create(cls, transport: Transport, key: SigningKey, config: DhtConfig | None = None,
               *, rng: random.Random | None = None,
               wall_ms: Callable[[], int] | None = None) -> DhtDriver:
        """A driver and its core for ``key``'s node, signing with Ed25519."""
        core = DhtCore(KeySigner(key), Ed25519Verifier(), config,
                       rng=rng or random.Random(), addresses=transport.listen_addresses)
        return cls(transport, core, wall_ms=wall_ms)

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the DHT protocol and run the core's timers until cancelled."""
        now = trio.current_time()
        self.core.set_clock(now, self._wall_ms() - int(now * 1000))
        self.transport.serve(PROTOCOL, self._serve)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._run_timer()
        finally:
            self._nursery = None
            for waiter in self._waiters.values():
                waiter.event.set()

    async def _run_timer(self) -> None:
        while True:
            with trio.CancelScope(deadline=self.core.next_deadline()) as scope:
                self._timer = scope
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            if now >= self.core.next_deadline():
                self._perform(self.core.on_timer(now))

    def _perform(self, outputs: list[Output]) -> None:
        for out in outputs:
            match out:
                case Send():
                    if isinstance(out.msg, REPLY_TYPES):
                        slot = self._replies.get((out.to, out.msg.rid))
                        if slot is not None:
                            slot.append(out.msg)
                    elif self._nursery is not None:
                        self._nursery.start_soon(self._request, out)
                case PeerFound():
                    if out.addresses:
                        self.transport.set_addresses(out.node_id, list(out.addresses))
                case LookupFinished():
                    for provider in out.providers:
                        if provider.provider != self.core.local_id and provider.addresses:
                            self.transport.set_addresses(provider.provider,
                                                         list(provider.addresses))
                    waiter = self._waiters.get(out.lookup_id)
                    if waiter is not None:
                        waiter.result = out
                        waiter.event.set()
        if self._timer is not None:
            self._timer.deadline = self.core.next_deadline()

    async def _request(self, send: Send) -> None:
        if send.addresses:
            self.transport.set_addresses(send.to, list(send.addresses))
        reply = None
        with trio.move_on_after(self.core.config.request_timeout):
            try:
                reply = await request(self.transport, send.to, PROTOCOL, send.msg, REPLY_TYPES)
            except _STREAM_ERRORS as exc:
                log.debug("dht request to %s failed: %s", short_id(send.to), stream_error(exc))
        now = trio.current_time()
        if reply is None:
            self._perform(self.core.on_request_failed(send.to, send.msg.rid, now))
        else:
            self._perform(self.core.on_message(send.to, reply, now))

    async def _serve(self, stream: Stream) -> None:
        peer = stream.peer.node_id
        msg = None
        with trio.move_on_after(self.core.config.request_timeout):
            try:
                msg = await receive_message(stream, REQUEST_TYPES)
            except CodecError:  # receive_message has aborted the stream
                self.core.on_malformed(peer, "undecodable")
                return
            except _STREAM_ERRORS as exc:
                log.debug("dht request from %s lost: %s", short_id(peer), stream_error(exc))
                return
        if msg is None:
            await stream.abort("no request in time")
            return
        key = (peer, msg.rid)
        slot: list[object] = []
        self._replies[key] = slot
        try:
            self._perform(self.core.on_message(peer, msg, trio.current_time()))
        finally:
            self._replies.pop(key, None)
        if not slot:
            await stream.abort("request refused")
            return
        with trio.move_on_after(self.core.config.request_timeout):
            try:
                await send_message(stream, slot[0])
                await stream.close()
            except _STREAM_ERRORS as exc:
                log.debug("dht reply to %s lost: %s", short_id(peer), stream_error(exc))

    # --- commands -----------------------------------------------------------------------

    async def _command(self, start: Callable[..., list[Output]], *args: object) -> LookupFinished:
        if self._nursery is None:
            raise DhtError("the DHT driver is not running")
        outputs = start(*args, trio.current_time())
        # bootstrap puts its seeds in the table first: a full bucket's ping may come first
        started = next(out for out in outputs if type(out) is LookupStarted)
        waiter = self._waiters[started.lookup_id] = _Waiter()
        try:
            self._perform(outputs)
            await waiter.event.wait()
        finally:
            del self._waiters[started.lookup_id]
        if waiter.result is None:
            raise DhtError("the DHT driver stopped")
        return waiter.result

    async def bootstrap(self, seeds: Sequence[str | PeerInfo]) -> int:
        """Join through ``seeds`` (addresses to dial, or known ids with addresses), then
        look up our own id. Returns the routing table's size; DhtError if no seed answered."""
        infos: list[PeerInfo] = []
        for seed in seeds:
            if isinstance(seed, PeerInfo):
                infos.append(seed)
                continue
            with trio.move_on_after(self.core.config.request_timeout):
                try:
                    peer = await self.transport.dial(seed)
                except (TransportError, AuthError) as exc:
                    log.info("dht seed %s unreachable: %s", seed, exc)
                    continue
                infos.append(PeerInfo(node_id=peer.node_id, addresses=(seed,)))
        result = await self._command(self.core.bootstrap, infos)
        if not result.succeeded:
            raise DhtError("no DHT seed answered")
        return len(self.core.table)

    async def find_closest(self, target: bytes) -> list[PeerInfo]:
        """The k live nodes closest to ``target`` (nearest first)."""
        return list((await self._command(self.core.find_node, target)).closest)

    async def find_peer(self, node_id: bytes) -> list[str]:
        """``node_id``'s current addresses; PeerNotFound if the DHT does not know them."""
        result = await self._command(self.core.find_peer, node_id)
        if not result.succeeded:
            raise PeerNotFound(f"no address known for node {short_id(node_id)}")
        return list(result.addresses)

    async def publish_self(self, addresses: Sequence[str] | None = None) -> int:
        """Sign and store our peer record (default: the transport's listen addresses) at
        the k nodes closest to our id. Returns how many stored it."""
        if addresses is None:
            addresses = self.transport.listen_addresses
        return (await self._command(self.core.publish_self, list(addresses))).stored

    async def provide(self, key: bytes) -> int:
        """Announce that this node holds ``key``; returns how many nodes stored it."""
        return (await self._command(self.core.provide, key)).stored

    async def find_providers(self, key: bytes) -> list[PeerInfo]:
        """Nodes announcing ``key`` (freshest first), with their signed addresses."""
        result = await self._command(self.core.find_providers, key)
        return [PeerInfo(node_id=r.provider, addresses=r.addresses) for r in result.providers]

    def statistics(self) -> DhtStatistics:
        return self.core.statistics()
