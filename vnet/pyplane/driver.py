"""The Python plane's trio driver: a TUN device and a UDP socket around :class:`PlaneCore`.

:meth:`PyPlane.apply` creates the interface (``/dev/net/tun``, ``TUNSETIFF`` with
``IFF_TUN | IFF_NO_PI``), gives it the V-Net address and MTU with ``ip``, binds the UDP
socket and starts three loops in the nursery it was given: TUN → core → UDP, UDP → core →
TUN, and a one-second tick (handshake retries, key expiry). Handshakes travel on the same
UDP socket and are authenticated by the static keys of the config: no mesh stream is
needed. Each loop drains up to :data:`BATCH` packets per wake-up, so the cost of a trio
wake-up is paid once per batch, not per packet. A refused packet is dropped and counted
by reason (:attr:`PyPlane.drops`). :meth:`PyPlane.close` stops the loops, closes the
socket and the TUN descriptor (which removes the interface) and deletes the interface in
case something else held it.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import nacl.utils
import trio

from vnet.plane import Endpoint, PeerStats, PlaneConfig, PlaneError
from vnet.pyplane.core import PlaneCore
from vnet.pyplane.messages import PacketError
from vnet.pyplane.session import SessionConfig

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
VNET_HDR = 10
"""The virtio-net header before each packet on the TUN descriptor (and inside the
encrypted payload on the wire): it carries the offload state of a packet (partial
checksum, TCP segmentation size) from the sender's kernel to the receiver's."""
GSO_MAX_SIZE = 60000
"""The largest offloaded packet the kernel may hand us (it must fit one UDP datagram)."""
BATCH = 128
"""Packets handled per wake-up of a loop before yielding to trio."""
SOCKET_BUFFER = 4 * 1024 * 1024
TICK = 1.0
POLL_MS = 200
"""How often a packet thread looks at its stop flag while idle."""


def open_tun(name: str, offload: bool = True) -> int:
    """A non-blocking descriptor for a new TUN interface ``name``: no packet info, a
    virtio-net header before each packet, and with ``offload`` the kernel's checksum and
    TCP segmentation left to the far end (large TCP packets, one per many segments)."""
    if not name or len(name.encode()) > 15:
        raise PlaneError(f"interface name {name!r}: 1 to 15 characters")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PlaneError(f"cannot open /dev/net/tun ({exc.strerror}): the Python plane "
                         "needs root and the tun module; use the userspace mode") from exc
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(),
                                               IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
    except OSError as exc:
        os.close(fd)
        raise PlaneError(f"cannot create interface {name}: {exc.strerror}") from exc
    return fd


async def _ip(*args: str) -> None:
    result = await trio.run_process(["ip", *args], capture_stdout=True, capture_stderr=True,
                                    check=False)
    if result.returncode != 0:
        raise PlaneError(f"ip {' '.join(args)}: {result.stderr.decode().strip()}")


def _no_ipv6(interface: str) -> None:
    """V-Nets are IPv4: keep the kernel from sending IPv6 router solicitations into it."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass  # no IPv6 on this host: nothing to silence


class PyPlane:
    """The :class:`vnet.plane.DataPlane` named ``python``. Its loops run in ``nursery``."""

    name = "python"

    def __init__(self, nursery: trio.Nursery, *, session: SessionConfig | None = None,
                 random_bytes: Callable[[int], bytes] = nacl.utils.random,
                 threads: bool = True, offload: bool = True,
                 gso_max_size: int = GSO_MAX_SIZE) -> None:
        self._nursery = nursery
        self._offload = offload
        self._gso_max_size = gso_max_size
        self._lock = threading.Lock()
        self._threads = threads
        self._session = session
        self._random = random_bytes
        self._config: PlaneConfig | None = None
        self._core: PlaneCore | None = None
        self._fd = -1
        self._sock: socket.socket | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped: trio.Event | None = None
        self.drops: dict[str, int] = {}
        """Packets dropped, by reason (PacketError reasons, plus ``send``/``tun_write``)."""

    # --- DataPlane -----------------------------------------------------------------------

    async def apply(self, config: PlaneConfig) -> None:
        old = self._config
        if old is not None and (old.interface, old.address, old.private_key, old.mtu,
                                old.listen_port) != (config.interface, config.address,
                                                     config.private_key, config.mtu,
                                                     config.listen_port):
            await self.close()
            old = None
        if old is None:
            await self._open(config)
        assert self._core is not None
        with self._lock:  # the packet threads use the core too
            self._core.set_peers(config.peers)
        self._config = config

    def listen_port(self) -> int:
        if self._sock is None:
            raise PlaneError("the Python plane is not running (apply a config first)")
        port: int = self._sock.getsockname()[1]
        return port

    def stats(self) -> list[PeerStats]:
        return self._core.stats() if self._core is not None else []

    async def close(self) -> None:
        config, self._config = self._config, None
        if self._scope is not None:
            self._scope.cancel()
            assert self._stopped is not None
            await self._stopped.wait()
            self._scope = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._core = None
        if config is not None:
            with trio.CancelScope(shield=True):
                result = await trio.run_process(["ip", "link", "del", config.interface],
                                                capture_stdout=True, capture_stderr=True,
                                                check=False)
            if result.returncode == 0:
                log.debug("removed %s (it outlived its TUN descriptor)", config.interface)

    # --- setup ---------------------------------------------------------------------------

    async def _open(self, config: PlaneConfig) -> None:
        core = PlaneCore(config.private_key, self._random, self._session, ip_offset=VNET_HDR)
        self._fd = open_tun(config.interface, self._offload)
        try:
            await _ip("addr", "add", str(config.address), "dev", config.interface)
            _no_ipv6(config.interface)
            await _ip("link", "set", config.interface, "mtu", str(config.mtu),
                      "gso_max_size", str(self._gso_max_size), "up")
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock = sock
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            try:
                sock.bind(("0.0.0.0", config.listen_port))
            except OSError as exc:
                raise PlaneError(f"UDP port {config.listen_port}: {exc.strerror}") from exc
            sock.setblocking(False)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            raise
        self._core = core
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._nursery.start_soon(self._run, core, self._fd, sock, self._scope, self._stopped)

    async def _run(self, core: PlaneCore, fd: int, sock: socket.socket,
                   scope: trio.CancelScope, stopped: trio.Event) -> None:
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    if self._threads:
                        stop = threading.Event()
                        for loop in (self._tun_thread, self._udp_thread):
                            nursery.start_soon(functools.partial(
                                trio.to_thread.run_sync, loop, core, fd, sock, self._lock,
                                stop))
                        nursery.start_soon(self._stop_threads_on_cancel, stop)
                    else:
                        nursery.start_soon(self._from_tun, core, fd, sock)
                        nursery.start_soon(self._from_udp, core, fd, sock)
                    nursery.start_soon(self._ticks, core, sock,
                                       self._lock if self._threads else None)
        finally:
            stopped.set()

    @staticmethod
    async def _stop_threads_on_cancel(stop: threading.Event) -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()  # the threads see it within POLL_MS; their tasks wait for them

    # --- loops ---------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _send(self, sock: socket.socket, out: list[tuple[Endpoint, bytes]]) -> None:
        for endpoint, data in out:
            try:
                sock.sendto(data, endpoint)
            except OSError:  # a full buffer or an unreachable peer: lost, as on a network
                self._drop("send")

    async def _from_tun(self, core: PlaneCore, fd: int, sock: socket.socket) -> None:
        read, outbound, send = os.read, core.outbound, self._send
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = time.time()
            for _ in range(BATCH):
                try:
                    packet = read(fd, 65535)
                except BlockingIOError:
                    break
                try:
                    out = outbound(packet, now)
                except PacketError as exc:
                    self._drop(exc.reason)
                    continue
                send(sock, out)

    async def _from_udp(self, core: PlaneCore, fd: int, sock: socket.socket) -> None:
        recvfrom, inbound, write, send = sock.recvfrom, core.inbound, os.write, self._send
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = time.time()
            for _ in range(BATCH):
                try:
                    data, source = recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError as exc:  # ICMP errors surface here (ECONNREFUSED...)
                    if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                     errno.ENETUNREACH):
                        continue
                    raise
                try:
                    packet, out = inbound(data, source, now)
                except PacketError as exc:
                    self._drop(exc.reason)
                    continue
                if packet is not None:
                    try:
                        write(fd, packet)
                    except OSError:
                        self._drop("tun_write")
                if out:
                    send(sock, out)

    async def _ticks(self, core: PlaneCore, sock: socket.socket,
                     lock: threading.Lock | None) -> None:
        while True:
            await trio.sleep(TICK)
            if lock is None:
                out = core.tick(time.time())
            else:
                with lock:
                    out = core.tick(time.time())
            self._send(sock, out)

    # --- the same loops on two threads (the default: measured faster, see the docs) ------

    def _tun_thread(self, core: PlaneCore, fd: int, sock: socket.socket,
                    lock: threading.Lock, stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        read, outbound, send = os.read, core.outbound, self._send
        while not stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            for _ in range(BATCH):
                try:
                    packet = read(fd, 65535)
                except BlockingIOError:
                    break
                with lock:
                    try:
                        out = outbound(packet, time.time())
                    except PacketError as exc:
                        self._drop(exc.reason)
                        continue
                send(sock, out)

    def _udp_thread(self, core: PlaneCore, fd: int, sock: socket.socket,
                    lock: threading.Lock, stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        recvfrom, inbound, write, send = sock.recvfrom, core.inbound, os.write, self._send
        while not stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            for _ in range(BATCH):
                try:
                    data, source = recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError:  # ICMP errors of earlier sends surface here
                    continue
                with lock:
                    try:
                        packet, out = inbound(data, source, time.time())
                    except PacketError as exc:
                        self._drop(exc.reason)
                        continue
                if packet is not None:
                    try:
                        write(fd, packet)
                    except OSError:
                        self._drop("tun_write")
                if out:
                    send(sock, out)
