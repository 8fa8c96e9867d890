"""Functions in any language: a version deployed with ``--image IMAGE`` runs as podman
containers of that image on this node (through the workload service's podman runtime),
one invocation at a time per container, reused warm and stopped when idle.

The contract with the image: it listens on ``$PORT`` (8080) and answers ``POST /`` whose
body is the event; headers ``X-Fn-Request-Id``, ``X-Fn-Deadline-Ms`` (wall clock, ms) and
``X-Fn-Function``. A 2xx answer is the result (its body and ``Content-Type``); any other
status is the error ``error`` with the body as message. A container that does not listen
within :data:`READY_TIMEOUT` is ``start_failed``; one that passes the timeout is removed
(``timeout``); one that drops the connection is removed (``crashed``).

Containers are named ``fn-NAME-N`` (N < the version's concurrency: their uid ranges are
bounded), publish ``$PORT`` on an ephemeral port of 127.0.0.1, carry no workload label
(the workload reconciler leaves them alone), and have the version's memory as their
cgroup limit, a pids limit, no swap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from apps.functions.messages import FunctionVersion

log = logging.getLogger(__name__)

CONTAINER_PORT = 8080
READY_TIMEOUT = 60.0
"""Seconds for a new container to listen on its port."""
READY_POLL = 0.02
PIDS = 256
MAX_REPLY = 8 << 20


class ContainerInvokeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True, eq=False)
class Box:
    """One warm container."""

    slot: int
    name: str
    port: int
    last_used: float = 0.0


def container_name(function: str, slot: int) -> str:
    return f"fn-{function}-{slot}"


async def http_post(port: int, body: bytes, headers: list[tuple[str, str]],
                    max_reply: int = MAX_REPLY) -> tuple[int, str, bytes]:
    """One ``POST /`` to ``127.0.0.1:port``: (status, content type, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    try:
        out = conn.send(h11.Request(method="POST", target="/", headers=[
            ("Host", f"127.0.0.1:{port}"), ("Content-Length", str(len(body))),
            ("Connection", "close"), *headers]))
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"") + (
            conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)
        status, ctype, parts, size = 0, "application/octet-stream", [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(1 << 16)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                for k, v in event.headers:
                    if k == b"content-type":
                        ctype = v.decode("latin-1")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_reply:
                    raise ContainerInvokeError("error", f"the reply is over {max_reply} bytes")
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, ctype, b"".join(parts)
    except h11.RemoteProtocolError as exc:
        raise ContainerInvokeError("crashed", f"bad HTTP from the container: {exc}") from None
    finally:
        await stream.aclose()


@dataclass(eq=False)
class ContainerPool:
    """The containers of one version of one image function on this node; the same
    surface as the fork-server pool (``invoke``, ``scale_down``, ``close``)."""

    name: str
    spec: FunctionVersion
    runtime: Any
    """The podman runtime (``start``, ``stop``, ``remove``, ``ensure_image``)."""
    spawn: Callable[[Callable[[], Awaitable[None]]], None]
    """Runs a stop in the background (the service's nursery)."""
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """The secrets among ``env`` (compared when they change; never logged)."""
    monotonic: Callable[[], float] = time.monotonic
    idle: list[Box] = field(default_factory=list)
    busy: set[Box] = field(default_factory=set)
    cold_starts: int = 0
    invocations: int = 0
    proc: Any = None

    def __post_init__(self) -> None:
        self._slots = trio.Semaphore(self.spec.concurrency)
        self._used: set[int] = set()

    @property
    def instances(self) -> int:
        return len(self.idle) + len(self.busy)

    async def start(self) -> None:
        """Ahead of the first call: make sure the image is on this node."""
        await self.runtime.ensure_image(self.spec.image)

    async def _new_box(self) -> Box:
        from apps.ingress.ports import ephemeral_port
        from apps.runtimes.base import WorkloadRuntimeError
        from apps.runtimes.spec import ContainerSpec, PortMapping

        slot = next(i for i in range(self.spec.concurrency) if i not in self._used)
        self._used.add(slot)
        name = container_name(self.name, slot)
        port = ephemeral_port()
        env = {**self.env, "PORT": str(CONTAINER_PORT), "FN_NAME": self.name,
               "FN_VERSION": str(self.spec.version)}
        spec = ContainerSpec(
            name=name, image=self.spec.image, env=env,
            ports=(PortMapping(container_port=CONTAINER_PORT, host_port=port),),
            memory=self.spec.memory_bytes, pids=PIDS, stop_timeout=1.0,
            labels={"fn.name": self.name, "fn.version": str(self.spec.version)})
        try:
            await self.runtime.remove(name)  # a leftover of an earlier agent or version
        except WorkloadRuntimeError:
            pass
        try:
            await self.runtime.start(spec)
        except WorkloadRuntimeError as exc:
            self._used.discard(slot)
            raise ContainerInvokeError("start_failed", f"{self.name}: {exc.message}"
                                       ) from None
        box = Box(slot, name, port)
        try:
            with trio.fail_after(READY_TIMEOUT):
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        await trio.sleep(READY_POLL)
                        continue
                    await stream.aclose()
                    break
        except trio.TooSlowError:
            await self._drop(box)
            raise ContainerInvokeError(
                "start_failed", f"{self.name}: the container of {self.spec.image} did not "
                f"listen on $PORT ({CONTAINER_PORT}) within {READY_TIMEOUT:.0f} s") from None
        self.cold_starts += 1
        return box

    async def _drop(self, box: Box) -> None:
        from apps.runtimes.base import WorkloadRuntimeError

        try:
            with trio.move_on_after(30):
                await self.runtime.stop(box.name, 1.0)
                await self.runtime.remove(box.name)
        except WorkloadRuntimeError as exc:
            log.warning("removing %s failed: %s", box.name, exc.message)
        finally:
            self._used.discard(box.slot)

    async def invoke(self, payload: bytes, request_id: str, timeout_s: float
                     ) -> tuple[bytes, str, bool]:
        async with self._slots:
            cold = not self.idle
            box = self.idle.pop() if self.idle else await self._new_box()
            self.busy.add(box)
            self.invocations += 1
            keep = False
            try:
                headers = [("X-Fn-Request-Id", request_id), ("X-Fn-Function", self.name),
                           ("X-Fn-Deadline-Ms", str(int((time.time() + timeout_s) * 1000)))]
                with trio.move_on_after(timeout_s) as scope:
                    status, ctype, body = await http_post(box.port, payload, headers)
                if scope.cancelled_caught:
                    raise ContainerInvokeError(
                        "timeout", f"{self.name} ran past its timeout of {timeout_s:g} s "
                        "and its container was stopped")
                keep = True
                if not 200 <= status < 300:
                    text = body.decode("utf-8", "replace")[:2000]
                    raise ContainerInvokeError("error", f"{self.name} answered {status}: "
                                                        f"{text}")
                return body, ctype, cold
            except OSError as exc:
                raise ContainerInvokeError(
                    "crashed", f"the {self.name} container dropped the invocation "
                    f"({type(exc).__name__}: a crash, or its memory limit of "
                    f"{self.spec.memory_bytes >> 20} MiB)") from None
            finally:
                self.busy.discard(box)
                if keep:
                    box.last_used = self.monotonic()
                    self.idle.append(box)
                else:
                    self.spawn(lambda: self._drop(box))

    def scale_down(self, now: float) -> int:
        limit = self.spec.idle_ms / 1000
        gone = [b for b in self.idle if now - b.last_used >= limit]
        self.idle = [b for b in self.idle if now - b.last_used < limit]
        for box in gone:
            self.spawn(lambda box=box: self._drop(box))  # type: ignore[misc]
        return len(gone)

    def close(self, now: bool = False) -> None:
        """Stop every container (a replaced pool's in-flight calls fail: containers
        are stopped in the background, not waited for)."""
        del now
        for box in [*self.idle, *self.busy]:
            self.spawn(lambda box=box: self._drop(box))  # type: ignore[misc]
        self.idle.clear()
        self.busy.clear()
