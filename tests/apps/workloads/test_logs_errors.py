"""The logs protocol reports why there is no log, instead of failing its handler."""

from __future__ import annotations

import trio

from apps.workloads.logs import LogServer, mesh_error
from apps.workloads.messages import LogsEnd, LogsRequest
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError, NotFoundError


class FakeStream:
    def __init__(self, request: LogsRequest) -> None:
        self.inbox = [encode_message(request)]
        self.sent: list[bytes] = []
        self.aborted: str | None = None
        self.closed = False

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.inbox.pop(0)

    async def send(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(data)

    async def close(self) -> None:
        self.closed = True

    async def abort(self, reason: str) -> None:
        self.aborted = reason


async def test_a_replica_without_log_ends_with_not_found_not_a_failed_handler():
    stream = FakeStream(LogsRequest(workload="web", replica=0, follow=False, tail=None))
    await LogServer({}).handle(stream)  # type: ignore[arg-type]
    assert stream.aborted is None and stream.closed
    end = decode_message(stream.sent[-1], LogsEnd)
    assert end.code == "not_found" and "web-0 has no log on this node" in end.message


def test_mesh_error_unwraps_a_single_error_group():
    error = NotFoundError("gone")
    assert mesh_error(error) is error
    assert mesh_error(ExceptionGroup("x", [ExceptionGroup("y", [error])])) is error
    assert mesh_error(ExceptionGroup("x", [error, MeshError("two")])) is None
    assert mesh_error(ValueError("no")) is None
