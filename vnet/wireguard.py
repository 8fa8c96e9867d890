"""The WireGuard data plane: one interface per V-Net, configured with ``ip`` and ``wg``.

Kernel WireGuard is used when ``ip link add … type wireguard`` works; otherwise the
userspace ``wireguard-go`` makes a TUN interface (it runs in the foreground as this
agent's child and exits when the interface is deleted). Either way ``wg set`` configures
it, so the rest is the same. The private key goes to ``wg`` through a 0600 file that is
removed at once (never on a command line); peers are added, updated and removed to match
the :class:`~vnet.plane.PlaneConfig`; WireGuard itself rekeys every two minutes and
follows a peer that roams. Stats come from ``wg show IF dump``. wireguard-go's UDP socket
gets 7 MiB buffers (:mod:`vnet.sockbuf`): bookworm's 0.0.20220316 keeps the kernel's
default, which drops bursts (0.0.20231211, from bookworm-backports through ``./dev
setup``, sets them itself and adds TUN segmentation offload). wireguard-go runs with
``GOMAXPROCS=1`` on hosts of a few CPUs (:func:`wireguard_go_env`: fewer thread wakeups
per packet). The interface's MTU is the
V-Net's, or less where the underlay route to the peers leaves less after WireGuard's 80
bytes (:func:`tunnel_mtu`, as wg-quick does).

:meth:`WireGuardPlane.close` deletes the interface (its address and routes go with it)
and the V-Net's firewall rules (:mod:`vnet.firewall`).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import trio

from meshcloud import priority
from vnet import sockbuf
from vnet.firewall import Firewall, run
from vnet.plane import PeerConfig, PeerStats, PlaneConfig, PlaneError

log = logging.getLogger(__name__)

KEEPALIVE = 5
"""Seconds between keepalives to each peer (keeps NAT mappings and shows liveness)."""
UAPI_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 10.0
OVERHEAD = 80
"""Bytes WireGuard adds to a packet over an IPv6 underlay (60 over IPv4): the margin
wg-quick keeps below the underlay's MTU, so that no tunnel datagram is fragmented."""
MIN_MTU = 576


GOMAXPROCS_ENV = "MESHCLOUD_WG_GOMAXPROCS"
"""Overrides the ``GOMAXPROCS`` wireguard-go gets (:func:`wireguard_go_env`): a number,
or ``default`` for Go's own choice (one per CPU)."""
SMALL_HOST_CPUS = 4
"""Hosts with this many CPUs or fewer run wireguard-go with ``GOMAXPROCS=1``."""


def host_cpus() -> int:
    """The CPUs this agent may run on (its affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def wireguard_go_env(base: Mapping[str, str], cpus: int) -> dict[str, str]:
    """The environment of a ``wireguard-go`` child: ``base`` (the agent's), errors-only
    logging, and ``GOMAXPROCS=1`` on a host of at most :data:`SMALL_HOST_CPUS` CPUs.

    Why one: every packet crosses three goroutines in wireguard-go (the TUN or UDP
    reader, a crypto worker, the in-order writer). With more than one Go ``P``, each
    hand-off may wake another parked Go thread, and on a machine at rest that is a
    wakeup of another, halted CPU (an inter-processor interrupt; on a VM, through the
    hypervisor); with one, the goroutines run one after the other on the thread the
    packet woke. Measured on a 2-CPU VM: 0.05-0.1 ms less on the median V-Net ping,
    throughput within the noise (docs/benchmarks.md). What it gives up is crypto on
    several cores at once, which a host of a few CPUs, whose applications want them
    too, has little of to give; and on a CPU-saturated host a preempted thread holds up
    the whole pipeline (there the ping's mean and 90th percentile rose).
    ``$MESHCLOUD_WG_GOMAXPROCS`` (a number, or ``default``) overrides the choice; a
    ``GOMAXPROCS`` already in the agent's environment is kept."""
    env = {**base, "LOG_LEVEL": "error"}
    env.pop(GOMAXPROCS_ENV, None)
    wanted = base.get(GOMAXPROCS_ENV, "").strip()
    if wanted == "default":
        env.pop("GOMAXPROCS", None)
    elif wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise PlaneError(f"${GOMAXPROCS_ENV} must be a number ≥ 1 or `default`, "
                             f"not {wanted!r}")
        env["GOMAXPROCS"] = str(int(wanted))
    elif "GOMAXPROCS" not in base and cpus <= SMALL_HOST_CPUS:
        env["GOMAXPROCS"] = "1"
    return env


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def available() -> str | None:
    """Why this host cannot run the plane, or None when it can."""
    if os.geteuid() != 0:
        return "the WireGuard plane needs root (CAP_NET_ADMIN)"
    if shutil.which("wg") is None or shutil.which("ip") is None:
        return "`wg` or `ip` is missing (apt-get install wireguard-tools iproute2)"
    return None


async def kernel_wireguard() -> bool:
    """True if the kernel makes WireGuard links (tried with a throwaway one)."""
    probe = f"mcwgprobe{os.getpid() % 10000}"
    out = await trio.run_process(["ip", "link", "add", probe, "type", "wireguard"],
                                 check=False, capture_stdout=True, capture_stderr=True)
    if out.returncode == 0:
        await run("ip", "link", "del", probe, check=False)
        return True
    return False


class WireGuardPlane:
    name = "wireguard"

    def __init__(self, workdir: Path, firewall: Firewall, *,
                 kernel: bool | None = None) -> None:
        self.workdir = workdir
        self.firewall = firewall
        self.kernel = kernel
        self.config: PlaneConfig | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._stats: list[PeerStats] = []
        self.mode = ""
        self._buffers: frozenset[int] = frozenset()
        self._mtu = 0
        """The interface's MTU as last set (:func:`tunnel_mtu`)."""
        self._mtu_hosts: tuple[str, ...] | None = None
        self._route_mtus: list[int] = []
        """wireguard-go's UDP sockets given larger buffers (:mod:`vnet.sockbuf`)."""

    # --- the interface --------------------------------------------------------------------

    async def _link_exists(self, interface: str) -> bool:
        out = await trio.run_process(["ip", "link", "show", "dev", interface], check=False,
                                     capture_stdout=True, capture_stderr=True)
        return out.returncode == 0

    async def _create(self, interface: str) -> None:
        if await self._link_exists(interface):
            # left by an earlier run of this agent (kill -9): take it over
            self.mode = self.mode or "existing"
            return
        if self.kernel is None:
            self.kernel = await kernel_wireguard()
        if self.kernel:
            await run("ip", "link", "add", interface, "type", "wireguard")
            self.mode = "kernel"
            return
        if shutil.which("wireguard-go") is None:
            raise PlaneError("no kernel WireGuard and no `wireguard-go` "
                             "(apt-get install wireguard-go), or use --plane python")
        if not os.path.exists("/dev/net/tun"):
            raise PlaneError("wireguard-go needs /dev/net/tun")
        self.workdir.mkdir(parents=True, exist_ok=True)
        logfile = open(self.workdir / f"{interface}.log", "ab")  # noqa: SIM115
        self.process = priority.popen(
            ["wireguard-go", "-f", interface], stdout=logfile, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=wireguard_go_env(os.environ, host_cpus()))
        logfile.close()
        self.mode = "wireguard-go"
        with trio.move_on_after(START_TIMEOUT):
            while not (UAPI_DIR / f"{interface}.sock").exists() \
                    or not await self._link_exists(interface):
                if self.process.poll() is not None:
                    raise PlaneError(f"wireguard-go exited ({self.process.returncode}); "
                                     f"see {self.workdir / (interface + '.log')}")
                await trio.sleep(0.02)
            return
        raise PlaneError(f"wireguard-go did not make {interface} within {START_TIMEOUT} s")

    async def _set_key(self, config: PlaneConfig) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / f".{config.interface}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b64(config.private_key).encode() + b"\n")
        finally:
            os.close(fd)
        try:
            await run("wg", "set", config.interface, "private-key", str(path),
                      "listen-port", str(config.listen_port))
        finally:
            path.unlink(missing_ok=True)

    # --- DataPlane ------------------------------------------------------------------------

    async def apply(self, config: PlaneConfig) -> None:
        old = self.config
        if old is not None and old.interface != config.interface:
            raise PlaneError("a plane serves one interface; close it first")
        iface = config.interface
        if old is None or not await self._link_exists(iface):
            await self._create(iface)
            old = None
        if old is None or old.private_key != config.private_key or \
                (config.listen_port and config.listen_port != self._port):
            try:
                await self._set_key(config)
            except PlaneError:
                if not config.listen_port:
                    raise
                # the port is taken (by something else since last time): any port
                await self._set_key(_with_port(config, 0))
        if old is None or old.address != config.address:
            await run("ip", "-4", "addr", "flush", "dev", iface)
            await run("ip", "addr", "add", str(config.address), "dev", iface)
        mtu = await self._tunnel_mtu(config)
        if old is None or mtu != self._mtu:
            await run("ip", "link", "set", iface, "mtu", str(mtu), "up")
            self._mtu = mtu
        await self.firewall.ensure(config.vnet, iface, config.address.network)
        await self._sync_peers(config, old)
        self.config = config
        await self.refresh()

    async def _tunnel_mtu(self, config: PlaneConfig) -> int:
        """:func:`tunnel_mtu` for the underlay routes to the peers' endpoints (looked up
        again only when their addresses change)."""
        hosts = tuple(sorted({p.endpoint[0] for p in config.peers if p.endpoint}))
        if hosts != self._mtu_hosts:
            self._mtu_hosts = hosts
            self._route_mtus = [m for m in [await route_mtu(h) for h in hosts] if m]
        return tunnel_mtu(config.mtu, self._route_mtus)

    async def _sync_peers(self, config: PlaneConfig, old: PlaneConfig | None) -> None:
        wanted = {b64(p.public_key): p for p in config.peers}
        present = set(await self._dump_peers(config.interface)) if old is None else \
            {b64(p.public_key) for p in old.peers}
        for key in sorted(present - set(wanted)):
            await run("wg", "set", config.interface, "peer", key, "remove")
        before = {b64(p.public_key): p for p in (old.peers if old else ())}
        for key, peer in sorted(wanted.items()):
            if before.get(key) == peer:
                continue
            await run("wg", "set", config.interface, *peer_args(key, peer))

    async def _dump_peers(self, interface: str) -> list[str]:
        text = await run("wg", "show", interface, "dump", check=False)
        return [b64(s.public_key) for s in parse_dump(text)[1]]

    async def rebind(self) -> None:
        """Set every peer's endpoint again: after this host's own underlay address
        changed, WireGuard forgets the source address it stuck to and sends from the new
        one at once (the peers follow it on the first authenticated packet)."""
        config = self.config
        if config is None:
            return
        for peer in config.peers:
            if peer.endpoint is not None:
                await run("wg", "set", config.interface, *peer_args(b64(peer.public_key),
                                                                     peer), check=False)

    async def refresh(self) -> None:
        """Read ``wg show IF dump`` into :meth:`listen_port` and :meth:`stats`."""
        if self.config is None:
            return
        text = await run("wg", "show", self.config.interface, "dump", check=False)
        port, stats = parse_dump(text)
        self._port = port or self._port
        self._stats = stats
        if self.process is not None and self._port and self.process.poll() is None:
            try:  # its socket (again after a rebind) gets the buffers it lacks
                self._buffers |= sockbuf.enlarge(self.process.pid, self._port,
                                                 done=self._buffers)
            except OSError as exc:
                log.debug("wireguard-go socket buffers: %s", exc)

    def listen_port(self) -> int:
        return self._port

    def stats(self) -> list[PeerStats]:
        return list(self._stats)

    async def close(self) -> None:
        config, self.config = self.config, None
        if config is None:
            return
        await self.firewall.remove(config.vnet)
        await run("ip", "link", "del", config.interface, check=False)
        process, self.process = self.process, None
        if process is not None:
            with trio.move_on_after(5):
                while process.poll() is None:
                    await trio.sleep(0.02)
            if process.poll() is None:
                process.kill()
                process.wait()


def _with_port(config: PlaneConfig, port: int) -> PlaneConfig:
    from dataclasses import replace

    return replace(config, listen_port=port)


def peer_args(key: str, peer: PeerConfig) -> list[str]:
    args = ["peer", key, "persistent-keepalive", str(KEEPALIVE),
            "allowed-ips", ",".join(str(n) for n in peer.allowed_ips)]
    if peer.endpoint is not None:
        host, port = peer.endpoint
        host = f"[{host}]" if ":" in host else host
        args += ["endpoint", f"{host}:{port}"]
    return args


def parse_dump(text: str) -> tuple[int, list[PeerStats]]:
    """``wg show IF dump``: the interface line (private, public, port, fwmark), then one
    line per peer (public, psk, endpoint, allowed, handshake, rx, tx, keepalive)."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0]) < 3:
        return 0, []
    port = int(lines[0][2]) if lines[0][2].isdigit() else 0
    stats: list[PeerStats] = []
    for cols in lines[1:]:
        if len(cols) < 8:
            continue
        try:
            key = base64.b64decode(cols[0])
            endpoint = None
            if cols[2] != "(none)":
                host, _, p = cols[2].rpartition(":")
                endpoint = (host.strip("[]"), int(p))
            handshake = int(cols[4])
            stats.append(PeerStats(public_key=key, endpoint=endpoint,
                                   rx_bytes=int(cols[5]), tx_bytes=int(cols[6]),
                                   last_handshake=float(handshake) if handshake else None))
        except ValueError:
            continue
    return port, stats




def tunnel_mtu(wanted: int, route_mtus: list[int]) -> int:
    """The interface's MTU: ``wanted`` (the V-Net's), or less where the underlay route to
    the peers leaves less after WireGuard's :data:`OVERHEAD` (as wg-quick does: the
    largest of the routes' MTUs, less 80). Never more than ``wanted``: every member of a
    V-Net keeps the MTU its replicas' interfaces were given."""
    if not route_mtus:
        return wanted
    return max(MIN_MTU, min(wanted, max(route_mtus) - OVERHEAD))


def parse_route(route_get: str) -> tuple[str | None, int | None]:
    """``ip -o route get ADDRESS``: the device, and the route's own ``mtu`` if it has
    one."""
    words = route_get.split()
    dev = words[words.index("dev") + 1] if "dev" in words[:-1] else None
    mtu = None
    for i, word in enumerate(words[:-1]):
        if word == "mtu" and words[i + 1].isdigit():
            mtu = int(words[i + 1])
        elif word == "mtu" and words[i + 1] == "lock" and i + 2 < len(words) \
                and words[i + 2].isdigit():
            mtu = int(words[i + 2])
    return dev, mtu


def parse_link_mtu(link_show: str) -> int | None:
    """``ip -o link show dev DEV``: its ``mtu``."""
    words = link_show.split()
    for i, word in enumerate(words[:-1]):
        if word == "mtu" and words[i + 1].isdigit():
            return int(words[i + 1])
    return None


async def route_mtu(host: str) -> int | None:
    """The MTU of this host's route to ``host``: the route's own, else its device's
    (None when there is no route)."""
    dev, mtu = parse_route(await run("ip", "-o", "route", "get", host, check=False))
    if mtu is None and dev is not None:
        mtu = parse_link_mtu(await run("ip", "-o", "link", "show", "dev", dev, check=False))
    return mtu
