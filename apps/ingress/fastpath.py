"""The agent's side of the forward relay (:mod:`apps.ingress.fastrelay`): the direct path.

A forward is set up on its mesh stream as before (``ForwardOpen`` → ``ForwardReply``);
then the opener sends one :class:`ForwardPath`: ``request`` (with its key share) or
``stream`` (stay on the stream). The target answers a request with ``accept`` (its
relay's address for this forward and its share) or ``decline``; the opener's relay
dials, and if it cannot, the opener says ``fallback`` and both splice on the stream as
before. On the direct path both agents hand their TCP socket to their relay and keep
the mesh stream open, idle, as the forward's lifeline: when the relay reports the
forward done, the stream is closed (FIN: done cleanly, RESET: failed); when the stream
fails (the peer died, the mesh connection was lost) or the task is cancelled, the relay
cuts the forward.

The relay runs once per agent (a ``RunVar``), started on first use;
``MESHCLOUD_FAST_FORWARD=0`` turns the direct path off (every forward stays on its
stream).
"""

from __future__ import annotations

import array
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import cbor2
import trio

from apps.ingress.fastseal import SHARE_SIZE, Sealer, Unsealer, derive_keys
from apps.ingress.sealed import SealedStream, lifeline
from meshcloud import priority
from meshcloud.codec.messages import decode_message, encode_message, message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import MeshError
from meshcloud.transport.base import Stream

log = logging.getLogger(__name__)

ENV = "MESHCLOUD_FAST_FORWARD"
READY_TIMEOUT = 5.0
"""Seconds the first forward waits for the relay process to start."""
REPLY_TIMEOUT = 10.0
RESTART_AFTER = 30.0
"""Seconds before a relay that failed is started again (forwards stay on their streams
meanwhile)."""
_STREAM_ERRORS = (MeshError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@message(TagBlock.APPS + 56, version=2)
@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardPath:
    """The path of a forward's bytes, agreed on its stream after ``ForwardReply``:
    ``request``/``stream`` (opener), ``accept``/``decline`` (target), ``fallback``
    (opener: its relay could not dial). A ``request`` with ``running`` asks the target
    to decline at once unless its relay runs already (it starts it for later forwards):
    an opener on a request's path (the HTTP ingress) never waits for a process start."""

    kind: str
    share: bytes = b""
    host: str = ""
    port: int = 0
    running: bool = False


HTTP_ENV = "MESHCLOUD_HTTP_DIRECT"


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip() not in ("0", "off", "no", "false")


def http_direct() -> bool:
    """Whether the HTTP ingress's upstreams to remote replicas take the direct path
    (:func:`open_sealed`): off unless ``MESHCLOUD_HTTP_DIRECT=1`` (and the direct path
    on). Measured on 2 cores: a third of the added latency with one connection, but
    half the throughput with 32 (each upstream wakes its own pair of relay threads,
    where the mesh connection carries them all in a few writes)."""
    return enabled() and os.environ.get(HTTP_ENV, "0").strip() in ("1", "on", "yes", "true")


@dataclass
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    replies: list[dict[str, Any]] = field(default_factory=list)

    def push(self, reply: dict[str, Any]) -> None:
        self.replies.append(reply)
        self.event.set()

    async def next(self, op: str | None = None) -> dict[str, Any]:
        """The next reply (of kind ``op``, if given); a ``done`` always ends the wait."""
        while True:
            while not self.replies:
                self.event = trio.Event()
                await self.event.wait()
            reply = self.replies.pop(0)
            if op is None or reply["op"] in (op, "done"):
                return reply


class RelayClient:
    """The agent's handle on its relay process."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.raw: socket.socket | None = None
        self.sock: trio.socket.SocketType | None = None
        self.ready = trio.Event()
        self.failed = False
        self.started = trio.current_time()
        self.waiters: dict[int, _Waiter] = {}
        self.ids = itertools.count(1)

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self.process = priority.popen(
                [sys.executable, "-m", "apps.ingress.fastrelay", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("forward relay not started: %s", exc)
            ours.close()
            self.failed = True
            self.ready.set()
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self.raw = ours
        self.sock = trio.socket.from_stdlib_socket(ours)
        trio.lowlevel.spawn_system_task(self._read)

    async def _read(self) -> None:
        assert self.sock is not None and self.process is not None
        try:
            while True:
                data = await self.sock.recv(65536)
                if not data:
                    break
                reply = cbor2.loads(data)
                if reply.get("op") == "ready":
                    self.ready.set()
                    continue
                waiter = self.waiters.get(int(reply.get("id", 0)))
                if waiter is not None:
                    waiter.push(reply)
        except Exception as exc:  # a system task must not raise: the relay is given up
            log.warning("forward relay channel failed: %r", exc)
        finally:
            self.failed = True
            self.ready.set()
            for waiter in list(self.waiters.values()):
                waiter.push({"op": "done", "ok": False, "why": "relay gone"})
            self.sock.close()
            with contextlib.suppress(OSError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)  # killed: at once

    async def usable(self) -> bool:
        with trio.move_on_after(READY_TIMEOUT):
            await self.ready.wait()
        return self.ready.is_set() and not self.failed

    def new(self) -> tuple[int, _Waiter]:
        pair_id = next(self.ids)
        waiter = self.waiters[pair_id] = _Waiter()
        return pair_id, waiter

    def forget(self, pair_id: int) -> None:
        self.waiters.pop(pair_id, None)

    async def send(self, op: str, fd: int | None = None, **fields: Any) -> None:
        assert self.sock is not None
        data = cbor2.dumps({"op": op, **fields})
        ancillary = [] if fd is None else [
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        await self.sock.sendmsg([data], ancillary)

    def send_nowait(self, op: str, **fields: Any) -> None:
        """Best effort, for cancelled tasks (``cut``)."""
        if self.raw is not None and not self.failed:
            with contextlib.suppress(OSError):
                self.raw.send(cbor2.dumps({"op": op, **fields}))


_RELAY: trio.lowlevel.RunVar[RelayClient] = trio.lowlevel.RunVar("forward_relay")


def _client() -> RelayClient:
    try:
        client: RelayClient | None = _RELAY.get()
    except LookupError:
        client = None
    if client is None or (client.failed and
                          trio.current_time() - client.started > RESTART_AFTER):
        client = RelayClient()
        _RELAY.set(client)
        client.start()
    return client


async def relay() -> RelayClient | None:
    """This agent's relay, started on first use; None when off or not working."""
    if not enabled():
        return None
    client = _client()
    return client if await client.usable() else None


def running_relay() -> RelayClient | None:
    """This agent's relay if it runs already, without waiting: else None (and it is
    started, for later forwards, unless off)."""
    if not enabled():
        return None
    client = _client()
    return client if client.ready.is_set() and not client.failed else None


# --- negotiation on a forward's stream ---------------------------------------------------

def decode_path(data: bytes) -> ForwardPath | None:
    """The opener's first message as a :class:`ForwardPath`, or None when it is data (an
    opener that speaks on the stream at once, like the HTTP ingress)."""
    if not data or len(data) > MAX_CONTROL:
        return None
    try:
        return decode_message(data, ForwardPath, max_size=MAX_CONTROL)
    except (MeshError, ValueError):
        return None


MAX_CONTROL = 4096


def direct_host(stream: Stream) -> str | None:
    """Our address on the stream's mesh connection if it is direct (not relayed, not a
    hole punch): the opener reached us there, so it can reach our relay there too."""
    conn = getattr(stream, "_conn", None)
    if conn is None or getattr(conn, "relayed", True) or getattr(conn, "punched", True):
        return None
    try:
        return str(conn.sock.getsockname()[0])
    except (OSError, AttributeError, IndexError):
        return None


async def _send_path(stream: Stream, kind: str, **fields: Any) -> None:
    await stream.send(encode_message(ForwardPath(kind=kind, **fields)))


async def _dial(stream: Stream, fd: int) -> tuple[RelayClient, int, _Waiter] | None:
    """Ask the target for the direct path and have our relay dial its relay with the
    socket ``fd`` as the plain side: (relay, pair id, waiter) once dialed, None (and the
    target told ``fallback`` when it had accepted) if the bytes stay on ``stream``."""
    share = os.urandom(SHARE_SIZE)
    await _send_path(stream, "request", share=share)
    with trio.fail_after(REPLY_TIMEOUT):
        answer = decode_message(await stream.receive(), ForwardPath, max_size=MAX_CONTROL)
    if answer.kind != "accept":
        return None
    client = await relay()  # only now: a mesh without direct paths never starts one
    if client is None or len(answer.share) != SHARE_SIZE:
        await _send_path(stream, "fallback")
        return None
    key_ot, key_to, token = derive_keys(share, answer.share)
    pair_id, waiter = client.new()
    try:
        with trio.fail_after(REPLY_TIMEOUT):
            await client.send("dial", fd=fd, id=pair_id, host=answer.host,
                              port=answer.port, token=token, key_in=key_to, key_out=key_ot)
            reply = await waiter.next("dialed")
    except BaseException:
        client.send_nowait("cut", id=pair_id)
        client.forget(pair_id)
        raise
    if not reply.get("ok"):
        client.forget(pair_id)
        log.info("forward relay could not dial %s:%d (%s): staying on the stream",
                 answer.host, answer.port, reply.get("why", ""))
        await _send_path(stream, "fallback")
        return None
    return client, pair_id, waiter


async def open_direct(tcp: trio.SocketStream, stream: Stream) -> bool | None:
    """The opener's side, right after an accepted ``ForwardOpen``: None if the bytes stay
    on ``stream`` (the caller splices), else whether the direct forward ended cleanly."""
    if not enabled():
        await _send_path(stream, "stream")
        return None
    dialed = await _dial(stream, tcp.socket.fileno())
    if dialed is None:
        return None
    client, pair_id, waiter = dialed
    try:
        await tcp.aclose()  # the relay holds the connection now
        return await _watch(client, pair_id, waiter, stream)
    finally:
        client.forget(pair_id)


async def open_sealed(stream: Stream, nursery: trio.Nursery) -> SealedStream | None:
    """The opener's side for a user inside this agent that parses the bytes anyway (the
    HTTP ingress), right after an accepted ``ForwardOpen``: a :class:`SealedStream` to
    the target's relay, dialed and sealed by this agent (no relay of ours on the path,
    the target's agent off it), its lifeline watched in ``nursery``. None when the bytes
    stay on ``stream`` (direct path off, the target's relay not running yet or no direct
    connection: the caller speaks on the stream)."""
    if not http_direct():
        return None
    share = os.urandom(SHARE_SIZE)
    await _send_path(stream, "request", share=share, running=True)
    with trio.fail_after(REPLY_TIMEOUT):
        answer = decode_message(await stream.receive(), ForwardPath, max_size=MAX_CONTROL)
    if answer.kind != "accept":
        return None
    if len(answer.share) != SHARE_SIZE:
        await _send_path(stream, "fallback")
        return None
    key_ot, key_to, token = derive_keys(share, answer.share)
    try:
        tcp = await trio.open_tcp_stream(answer.host, answer.port)
    except OSError as exc:
        log.info("could not dial the forward relay at %s:%d (%s): staying on the stream",
                 answer.host, answer.port, exc)
        await _send_path(stream, "fallback")
        return None
    sealed = SealedStream(tcp, Sealer(key_ot), Unsealer(key_to))
    try:
        await sealed.hello(token)
    except BaseException:
        await tcp.aclose()
        raise
    nursery.start_soon(lifeline, stream, sealed)
    return sealed


async def serve_direct(tcp: trio.SocketStream, stream: Stream, path: ForwardPath
                       ) -> bool | None:
    """The target's side, given the opener's :class:`ForwardPath`: None if the bytes stay
    on ``stream``, else whether the direct forward ended cleanly."""
    if path.kind != "request":
        return None
    host = direct_host(stream)
    client = None
    if host is not None and len(path.share) == SHARE_SIZE:
        client = running_relay() if path.running else await relay()
    if client is None or host is None:
        await _send_path(stream, "decline")
        return None
    share = os.urandom(SHARE_SIZE)
    key_ot, key_to, token = derive_keys(path.share, share)
    pair_id, waiter = client.new()
    try:
        with trio.fail_after(REPLY_TIMEOUT):
            await client.send("register", fd=tcp.socket.fileno(), id=pair_id, host=host,
                              token=token, key_in=key_ot, key_out=key_to)
            reply = await waiter.next("registered")
        if reply["op"] != "registered":
            await _send_path(stream, "decline")
            return None
        await _send_path(stream, "accept", share=share, host=host, port=int(reply["port"]))
        outcome: dict[str, Any] = {}
        try:
            async with trio.open_nursery() as nursery:
                async def from_relay() -> None:
                    reply = await waiter.next("attached")
                    outcome.setdefault("op", reply["op"])
                    nursery.cancel_scope.cancel()

                async def from_stream() -> None:
                    # (errors are caught here: a nursery would raise them in a group)
                    try:
                        said = decode_message(await stream.receive(), ForwardPath,
                                              max_size=MAX_CONTROL).kind
                    except trio.EndOfChannel:
                        return  # the opener finished already: the relay says how
                    except _STREAM_ERRORS as exc:
                        said = f"lost: {exc!r}"
                    outcome.setdefault("op", "fallback" if said == "fallback" else said)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(from_relay)
                nursery.start_soon(from_stream)
        except BaseException:
            client.send_nowait("unregister", id=pair_id)
            client.send_nowait("cut", id=pair_id)
            raise
        if outcome.get("op") == "fallback":
            await client.send("unregister", id=pair_id)
            return None
        if outcome.get("op") != "attached":
            log.debug("direct forward not attached: %s", outcome.get("op"))
            client.send_nowait("unregister", id=pair_id)
            client.send_nowait("cut", id=pair_id)
            with trio.move_on_after(1):
                await stream.abort("direct forward failed")
            return False
        await tcp.aclose()  # the relay holds the connection now
        return await _watch(client, pair_id, waiter, stream)
    finally:
        client.forget(pair_id)


async def _watch(client: RelayClient, pair_id: int, waiter: _Waiter, stream: Stream
                 ) -> bool:
    """Wait for the relay to end the forward; the stream is its lifeline."""
    result: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            async def from_relay() -> None:
                result.update(await waiter.next("done"))
                nursery.cancel_scope.cancel()

            async def from_stream() -> None:
                try:
                    while True:
                        await stream.receive()
                except trio.EndOfChannel:
                    return  # the peer's side is done: ours follows
                except _STREAM_ERRORS as exc:  # caught here, not raised in a group
                    log.debug("forward lifeline lost: %r", exc)
                    client.send_nowait("cut", id=pair_id)

            nursery.start_soon(from_relay)
            nursery.start_soon(from_stream)
    except BaseException:
        client.send_nowait("cut", id=pair_id)
        raise
    ok = bool(result.get("ok"))
    with trio.move_on_after(1):
        if ok:
            await stream.close()
        else:
            await stream.abort("forward failed")
    return ok
