"""The node's forward relay: a small helper process that moves a forward's bytes.

``python -m apps.ingress.fastrelay FD``: started by the agent (:mod:`apps.ingress.fastpath`)
with one end of a ``SOCK_SEQPACKET`` socket pair as its control channel. It runs at a
higher priority than the agent (``NICE_AHEAD``) and dies with it (``PR_SET_PDEATHSIG``,
and at the end of the control channel). It is plain blocking I/O on threads (two per
connection): a forward's hop costs one wake-up of this process instead of several
steps of the agent's event loop, and a busy agent loop delays nothing.

Control messages are CBOR maps, a socket passed with ``SCM_RIGHTS`` where noted:

* agent → relay: ``register`` (id, host, token, keys; the replica's socket): wait for
  the opener's relay to dial ``host`` with ``token`` → ``registered`` (port) then
  ``attached`` or ``done``; ``unregister`` (id); ``dial`` (id, host, port, token,
  keys; the client's socket) → ``dialed`` (ok); ``cut`` (id).
* relay → agent: ``ready``, ``registered``, ``attached``, ``dialed``, ``done`` (id, ok).

Both sides keep their own copy of the TCP socket until ``dialed``/``attached``, so a
dial that fails leaves the forward on the mesh stream. The sealed connection's records
are :mod:`apps.ingress.fastseal`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import cbor2

from apps.ingress.fastseal import (
    FIN,
    HEADER_SIZE,
    HELLO,
    MAX_RECORD,
    TAG,
    TOKEN_SIZE,
    Sealer,
    SealError,
    Unsealer,
)

NICE_AHEAD = 5
PENDING_TIMEOUT = 10.0
"""Seconds a registered forward waits for the opener's relay to dial."""
DIAL_TIMEOUT = 3.0
HELLO_TIMEOUT = 5.0
MAX_GREETING = 64
"""Dialed connections at a time not yet bound to a forward (a stranger opening many is
closed at once beyond this)."""
READ_SIZE = MAX_RECORD + 64
_PR_SET_PDEATHSIG = 1


def _nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Pair:
    """One forward: a plain TCP socket (client or replica) and the sealed connection."""

    def __init__(self, relay: Relay, pair_id: int, plain: socket.socket,
                 sealed: socket.socket, sealer: Sealer, unsealer: Unsealer,
                 early: list[bytes]) -> None:
        self.relay = relay
        self.id = pair_id
        self.plain = plain
        self.sealed = sealed
        self.sealer = sealer
        self.unsealer = unsealer
        self.early = early
        self.lock = threading.Lock()
        self.running = 2
        self.failed = False

    def start(self) -> None:
        for sock in (self.plain, self.sealed):
            sock.setblocking(True)
            _nodelay(sock)
        threading.Thread(target=self._up, daemon=True).start()
        threading.Thread(target=self._down, daemon=True).start()

    def _up(self) -> None:
        """plain → sealed: read into a buffer, seal in place, send (no copy)."""
        try:
            plain, sealed, seal = self.plain, self.sealed, self.sealer.seal_in_place
            buffer = bytearray(HEADER_SIZE + MAX_RECORD + TAG)
            view = memoryview(buffer)
            room = view[HEADER_SIZE:HEADER_SIZE + MAX_RECORD]
            while size := plain.recv_into(room):
                sealed.sendall(view[:seal(buffer, size)])
            sealed.sendall(view[:seal(buffer, 0, FIN)])
        except (OSError, SealError) as exc:
            self.abort(f"plain side: {exc}")
        self._exit()

    def _down(self) -> None:
        """sealed → plain."""
        try:
            plain, sealed, unsealer = self.plain, self.sealed, self.unsealer
            for data in self.early:
                plain.sendall(data)
            self.early = []
            buffer = bytearray(2 * READ_SIZE)  # a whole record and the start of the next
            view = memoryview(buffer)
            held = unsealer.take_pending()
            end = len(held)
            view[:end] = held
            open_records = unsealer.open_in_place
            while not unsealer.finished:
                got = sealed.recv_into(view[end:])
                if not got:
                    raise SealError("sealed connection cut short (no FIN record)")
                end += got
                spans, used = open_records(buffer, end)
                for start, stop in spans:
                    plain.sendall(view[start:stop])
                if used:
                    end -= used
                    view[:end] = bytes(view[used:used + end])
            plain.shutdown(socket.SHUT_WR)
        except (OSError, SealError) as exc:
            self.abort(f"sealed side: {exc}")
        self._exit()

    def abort(self, reason: str = "") -> None:
        with self.lock:
            if self.failed:
                return
            self.failed = True
        # the sealed side first: a thread woken by the plain side's shutdown must not
        # get a FIN record out, or the peer would take a failed forward for an ended one
        for sock in (self.sealed, self.plain):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other thread

    def _exit(self) -> None:
        with self.lock:
            self.running -= 1
            last = self.running == 0
        if last:
            self.plain.close()
            self.sealed.close()
            self.relay.finished(self)


class Pending:
    def __init__(self, pair_id: int, token: bytes, key_in: bytes, key_out: bytes,
                 plain: socket.socket) -> None:
        self.id = pair_id
        self.token = token
        self.key_in = key_in
        self.key_out = key_out
        self.plain = plain
        self.deadline = time.monotonic() + PENDING_TIMEOUT


class Relay:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.pairs: dict[int, Pair] = {}
        self.pending: dict[bytes, Pending] = {}
        self.listeners: dict[str, int] = {}
        self.greeting = threading.BoundedSemaphore(MAX_GREETING)

    # --- control ------------------------------------------------------------------------

    def tell(self, op: str, **fields: Any) -> None:
        data = cbor2.dumps({"op": op, **fields})
        with self.send_lock, contextlib.suppress(OSError):
            self.control.sendall(data)

    def serve(self) -> None:
        self.tell("ready", pid=os.getpid())
        threading.Thread(target=self._expire, daemon=True).start()
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, 65536, 1)
            except OSError:
                return
            if not data:
                return
            try:
                command = cbor2.loads(data)
                self.command(command, fds[0] if fds else None)
            except Exception as exc:  # a bad command must not stop the relay
                for fd in fds:
                    os.close(fd)
                print(f"fastrelay: bad command: {exc!r}", file=sys.stderr, flush=True)

    def command(self, command: dict[str, Any], fd: int | None) -> None:
        op, pair_id = command["op"], int(command.get("id", 0))
        if op == "register":
            assert fd is not None
            plain = socket.socket(fileno=fd)
            try:
                port = self._listener(str(command["host"]))
            except OSError as exc:
                plain.close()
                self.tell("done", id=pair_id, ok=False, why=f"listen: {exc}")
                return
            pending = Pending(pair_id, bytes(command["token"]), bytes(command["key_in"]),
                              bytes(command["key_out"]), plain)
            with self.lock:
                self.pending[pending.token] = pending
            self.tell("registered", id=pair_id, port=port)
        elif op == "unregister":
            with self.lock:
                found = [p for p in self.pending.values() if p.id == pair_id]
                for p in found:
                    del self.pending[p.token]
            for p in found:
                p.plain.close()
                self.tell("done", id=pair_id, ok=False, why="unregistered")
        elif op == "dial":
            assert fd is not None
            threading.Thread(target=self._dial, args=(command, socket.socket(fileno=fd)),
                             daemon=True).start()
        elif op == "cut":
            with self.lock:
                pair = self.pairs.get(pair_id)
            if pair is not None:
                pair.abort("cut by the agent")
        elif fd is not None:
            os.close(fd)

    def finished(self, pair: Pair) -> None:
        with self.lock:
            self.pairs.pop(pair.id, None)
        self.tell("done", id=pair.id, ok=not pair.failed)

    def _add(self, pair: Pair) -> None:
        with self.lock:
            self.pairs[pair.id] = pair

    def _expire(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self.lock:
                gone = [p for p in self.pending.values() if p.deadline < now]
                for p in gone:
                    del self.pending[p.token]
            for p in gone:
                p.plain.close()
                self.tell("done", id=p.id, ok=False, why="the opener never dialed")

    # --- the opener's side --------------------------------------------------------------

    def _dial(self, command: dict[str, Any], plain: socket.socket) -> None:
        pair_id = int(command["id"])
        try:
            sealed = socket.create_connection((str(command["host"]), int(command["port"])),
                                              timeout=DIAL_TIMEOUT)
        except OSError as exc:
            plain.close()
            self.tell("dialed", id=pair_id, ok=False, why=str(exc))
            return
        sealer = Sealer(bytes(command["key_out"]))
        try:
            sealed.settimeout(DIAL_TIMEOUT)
            _nodelay(sealed)
            sealed.sendall(bytes(command["token"]) + sealer.seal(b"", HELLO))
        except OSError as exc:
            plain.close()
            sealed.close()
            self.tell("dialed", id=pair_id, ok=False, why=str(exc))
            return
        pair = Pair(self, pair_id, plain, sealed, sealer, Unsealer(bytes(command["key_in"])),
                    [])
        self._add(pair)
        self.tell("dialed", id=pair_id, ok=True)
        pair.start()

    # --- the target's side --------------------------------------------------------------

    def _listener(self, host: str) -> int:
        with self.lock:
            port = self.listeners.get(host)
        if port is not None:
            return port
        listener = socket.create_server((host, 0), backlog=128)
        port = int(listener.getsockname()[1])
        with self.lock:
            self.listeners[host] = port
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return port

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # out of descriptors, most likely: let some close
                time.sleep(0.1)
                continue
            if not self.greeting.acquire(blocking=False):
                sock.close()
                continue
            threading.Thread(target=self._hello, args=(sock,), daemon=True).start()

    def _hello(self, sock: socket.socket) -> None:
        """Bind a dialed connection to its registered forward once its HELLO opened."""
        try:
            self._greet(sock)
        finally:
            self.greeting.release()

    def _greet(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(HELLO_TIMEOUT)
            token = b""
            while len(token) < TOKEN_SIZE:
                got = sock.recv(TOKEN_SIZE - len(token))
                if not got:
                    raise SealError("closed before its token")
                token += got
            with self.lock:
                pending = self.pending.get(token)
            if pending is None:
                raise SealError("unknown token")
            unsealer = Unsealer(pending.key_in)
            early: list[bytes] = []
            while not unsealer.hellos:
                got = sock.recv(READ_SIZE)
                if not got:
                    raise SealError("closed before its HELLO")
                early += unsealer.feed(got)
            with self.lock:
                if self.pending.get(token) is not pending:
                    raise SealError("forward taken or expired")
                del self.pending[token]
        except (OSError, SealError):
            sock.close()  # a stranger or a forgery: the forward keeps waiting
            return
        pair = Pair(self, pending.id, pending.plain, sock, Sealer(pending.key_out), unsealer,
                    early)
        self._add(pair)
        self.tell("attached", id=pending.id)
        pair.start()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str]) -> int:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the agent died before prctl
        return 1
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - NICE_AHEAD)
    control = socket.socket(fileno=int(argv[0]))
    Relay(control).serve()
    return 0


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
