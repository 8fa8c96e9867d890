"""Replica logs from any node: ``/meshcloud/logs/1`` and the client the API uses.

A replica's output lives on the node that runs it (podman's k8s-file log, the process
runtime's ``output.log``). ``meshcloud logs NAME`` works on any node: its API looks up the
replica's claim and, when another node runs it, opens a stream to that node:

```
client -> LogsRequest(workload, replica, follow, tail)
server -> LogLines(lines)*  ...  LogsEnd(code="" | error code, message)
```

Lines are batched (what is ready, up to :data:`MAX_LOG_BATCH` lines, is one message) and
cut at :data:`MAX_LOG_LINE` characters. With ``follow`` the stream lasts until the
replica ends or the client goes away (flow control holds a slow reader's node back, not
the replica: the runtime reads its log file at the reader's pace).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import trio

from apps.runtimes.base import Runtime, WorkloadRuntimeError
from apps.workloads.errors import WorkloadError
from apps.workloads.messages import (
    LOGS_PROTOCOL,
    MAX_LOG_BATCH,
    MAX_LOG_LINE,
    LogLines,
    LogsEnd,
    LogsRequest,
)
from apps.workloads.spec import replica_name
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError, NotFoundError, TransportError
from meshcloud.transport.base import Stream, Transport

log = logging.getLogger(__name__)

MAX_LOGS_MESSAGE = MAX_LOG_BATCH * (MAX_LOG_LINE * 4 + 16) + 1024
"""Decode limit of one LogLines message (UTF-8 worst case)."""
MAX_TAIL = 100_000


async def find_runtime(runtimes: Mapping[str, Runtime], name: str) -> Runtime | None:
    """The runtime of this node that holds replica ``name``."""
    for runtime in runtimes.values():
        try:
            await runtime.status(name)
        except WorkloadRuntimeError:
            continue
        return runtime
    return None


async def local_lines(runtimes: Mapping[str, Runtime], request: LogsRequest
                      ) -> AsyncIterator[str]:
    name = replica_name(request.workload, request.replica)
    runtime = await find_runtime(runtimes, name)
    if runtime is None:
        raise NotFoundError(f"replica {name} has no log on this node")
    tail = None if request.tail is None else max(0, min(request.tail, MAX_TAIL))
    async for line in runtime.logs(name, follow=request.follow, tail=tail):
        yield line[:MAX_LOG_LINE]


class LogServer:
    """Serves ``/meshcloud/logs/1`` from this node's runtimes."""

    def __init__(self, runtimes: Mapping[str, Runtime]) -> None:
        self.runtimes = runtimes

    async def handle(self, stream: Stream) -> None:
        try:
            with trio.fail_after(10):
                request = decode_message(await stream.receive(), LogsRequest, max_size=4096)
        except (MeshError, trio.TooSlowError, trio.EndOfChannel) as exc:
            await stream.abort(f"bad logs request: {exc}")
            return
        try:
            await _pump(local_lines(self.runtimes, request), stream)
            end = LogsEnd()
        except (MeshError, BaseExceptionGroup) as exc:
            error = mesh_error(exc)
            if error is None:
                if _only_closed(exc):
                    return
                raise
            end = LogsEnd(code=error.code, message=error.message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        try:
            await stream.send(encode_message(end))
            await stream.close()
        except (MeshError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def mesh_error(exc: BaseException) -> MeshError | None:
    """The :class:`MeshError` that ``exc`` is, or that a group (a nursery's) wraps alone."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, MeshError) else None


def _only_closed(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_closed(e) for e in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)


async def _pump(lines: AsyncIterator[str], stream: Stream) -> None:
    """Send lines in batches: whatever is ready when the previous batch went out."""
    send, receive = trio.open_memory_channel[str](MAX_LOG_BATCH)

    async def produce() -> None:
        async with send:
            async for line in lines:
                await send.send(line)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < MAX_LOG_BATCH:
                    try:
                        item = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(item)
                await stream.send(encode_message(LogLines(lines=tuple(batch))))


async def remote_lines(transport: Transport, peer: bytes, request: LogsRequest
                       ) -> AsyncIterator[str]:
    """Lines of a replica on ``peer`` (raises the error the peer reported)."""
    try:
        stream = await transport.open_stream(peer, LOGS_PROTOCOL)
    except MeshError as exc:
        raise WorkloadError(f"cannot reach node {peer.hex()[:12]} for the logs of "
                            f"{replica_name(request.workload, request.replica)}: {exc}",
                            code="node_unreachable") from None
    try:
        await stream.send(encode_message(request))
        while True:
            try:
                msg = decode_message(await stream.receive(), (LogLines, LogsEnd),
                                     max_size=MAX_LOGS_MESSAGE)
            except trio.EndOfChannel:
                return
            except TransportError as exc:
                raise WorkloadError(f"log stream from {peer.hex()[:12]} broke: {exc}",
                                    code="node_unreachable") from None
            if isinstance(msg, LogsEnd):
                if msg.code:
                    raise (NotFoundError(msg.message) if "not_found" in msg.code
                           else WorkloadError(msg.message, code=msg.code))
                return
            for line in msg.lines:
                yield line
    finally:
        with trio.CancelScope(shield=True):
            await stream.abort("done")
