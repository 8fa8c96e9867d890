"""Network diagnostics every node serves: ping a peer, hold a stream open, measure the link.

* ``/meshcloud/ping/1``: echo one message; ``meshcloud ping NODE`` and ``POST
  /v1/peers/{id}/ping`` report the round trip and who answered (the authenticated id).
* ``/meshcloud/hold/1``: a stream that stays open until either side goes away; ``POST
  /v1/debug/hold`` opens one to a peer and records how and when it ended as an event
  (``stream.ended``) — the way to watch a dead or frozen peer being noticed.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import MeshError, TransportError
from meshcloud.transport.base import Stream, receive_message, send_message, stream_error

if TYPE_CHECKING:
    from meshcloud.agent.node import Node

log = logging.getLogger(__name__)

PING_PROTOCOL = "/meshcloud/ping/1"
HOLD_PROTOCOL = "/meshcloud/hold/1"
PING_TIMEOUT = 5.0


@message(TagBlock.CORE + 30)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    nonce: int


@message(TagBlock.CORE + 31)
@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    nonce: int
    node_id: bytes
    agent_version: str


class Diagnostics:
    def __init__(self, node: Node) -> None:
        self.node = node
        node.transport.serve(PING_PROTOCOL, self._serve_ping)
        node.transport.serve(HOLD_PROTOCOL, self._serve_hold)
        from meshcloud.transport.benchmark import serve_benchmark

        serve_benchmark(node.transport)
        self._benchmark_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def _serve_ping(self, stream: Stream) -> None:
        import meshcloud

        request = await receive_message(stream, Ping)
        await send_message(stream, Pong(nonce=request.nonce, node_id=self.node.node_id,
                                        agent_version=meshcloud.__version__))
        await stream.close()

    async def _serve_hold(self, stream: Stream) -> None:
        try:
            while True:
                await stream.receive()
        except (trio.EndOfChannel, TransportError):
            return

    async def ping(self, peer: bytes) -> dict[str, object]:
        nonce = secrets.randbits(32)
        start = trio.current_time()
        try:
            with trio.fail_after(PING_TIMEOUT):
                stream = await self.node.transport.open_stream(peer, PING_PROTOCOL)
                await send_message(stream, Ping(nonce=nonce))
                await stream.close()
                pong = await receive_message(stream, Pong)
        except trio.TooSlowError:
            raise TransportError(f"no answer from {peer.hex()[:12]} within "
                                 f"{PING_TIMEOUT:.0f} s") from None
        if pong.nonce != nonce or pong.node_id != peer:
            raise TransportError("the answer came from another node")
        rtt_ms = round((trio.current_time() - start) * 1e3, 3)
        return {"peer": pong.node_id.hex(), "rtt_ms": rtt_ms, "agent_version": pong.agent_version}

    async def benchmark(self, address: str, *, quick: bool = False) -> dict[str, object]:
        """Measure the link to the node at ``address`` (``python -m bench transport``)."""
        from meshcloud.transport.benchmark import MiB, measure

        if self._benchmark_lock.locked():
            raise MeshError("a transport benchmark is already running", code="conflict")
        async with self._benchmark_lock:
            if quick:
                return await measure(self.node.transport, address, connects=5, rpcs=1000,
                                     bulk_bytes=64 * MiB)
            return await measure(self.node.transport, address)

    async def hold(self, peer: bytes) -> None:
        """Open a held stream to ``peer``; its end is reported as a ``stream.ended`` event."""
        if self._nursery is None:
            raise MeshError("diagnostics are not running")
        stream = await self.node.transport.open_stream(peer, HOLD_PROTOCOL)
        self.node.events.emit("stream.opened", peer=peer.hex(), protocol=HOLD_PROTOCOL)
        self._nursery.start_soon(self._watch_hold, stream, peer)

    async def _watch_hold(self, stream: Stream, peer: bytes) -> None:
        opened = trio.current_time()
        try:
            await stream.receive()
            reason = "peer sent data"
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError,
                MeshError) as exc:
            reason = stream_error(exc)
        self.node.events.emit("stream.ended", peer=peer.hex(), reason=reason,
                              after_s=round(trio.current_time() - opened, 3))

