"""Which data plane a node runs, and what every plane with an interface shares.

:func:`choose` is the rule (pure): the plane asked for (``attach --plane``, else
``$MESHCLOUD_VNET_PLANE``), else WireGuard where this host can run it, else the Python
plane where it has ``/dev/net/tun`` and root, else the userspace mode (no interface: a
SOCKS5 entry over the mesh transport).

:class:`Served` wraps a plane that owns an interface (WireGuard, Python): once a config
is applied it tells the node's one :class:`~vnet.userspace.stream.VnetTcpServer` about it
(``loopback=False``: the V-Net addresses are on this host), so userspace-mode nodes reach
the members hosted here; and for a plane that does not install the V-Net's firewall
rules itself (the Python plane) it installs them. Closing undoes both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vnet.plane import DataPlane, PeerStats, PlaneConfig, PlaneError

if TYPE_CHECKING:
    from vnet.firewall import Firewall

PLANES = ("wireguard", "python", "userspace")


def choose(wanted: str, *, wireguard_missing: str | None, tun: bool, root: bool) -> str:
    """The plane to run: ``wanted`` when given (checked), else the best this host has.
    ``wireguard_missing`` is why WireGuard cannot run here (None: it can)."""
    if wanted:
        if wanted not in PLANES:
            raise PlaneError(f"unknown plane {wanted!r} (one of {', '.join(PLANES)})")
        return wanted
    if wireguard_missing is None:
        return "wireguard"
    if tun and root:
        return "python"
    return "userspace"


def offered(*, wireguard_missing: str | None, tun: bool, root: bool,
            kernel_wireguard: bool) -> list[str]:
    """The planes this host can run, best first. WireGuard needs the kernel's module or,
    for wireguard-go, ``/dev/net/tun``; the Python plane needs TUN and root; the
    userspace mode needs nothing (a phone: no root, no TUN)."""
    out = []
    if wireguard_missing is None and (tun or kernel_wireguard):
        out.append("wireguard")
    if tun and root:
        out.append("python")
    return [*out, "userspace"]


class Registry(Protocol):
    """What :class:`Served` needs of the node's VnetTcpServer."""

    def update(self, config: PlaneConfig, *, loopback: bool) -> None: ...

    def remove(self, vnet: str) -> None: ...


class Served:
    """A :class:`DataPlane` with an interface, registered with the node's stream server
    (and, with ``firewall``, isolated by the V-Net's rules)."""

    def __init__(self, inner: DataPlane, server: Registry,
                 firewall: Firewall | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self._server = server
        self._firewall = firewall
        self._vnet: str | None = None

    async def apply(self, config: PlaneConfig) -> None:
        await self.inner.apply(config)
        self._vnet = config.vnet
        if self._firewall is not None:
            await self._firewall.ensure(config.vnet, config.interface,
                                        config.address.network)
        self._server.update(config, loopback=False)

    def listen_port(self) -> int:
        return self.inner.listen_port()

    def stats(self) -> list[PeerStats]:
        return self.inner.stats()

    async def rebind(self) -> None:
        rebind = getattr(self.inner, "rebind", None)
        if rebind is not None:
            await rebind()

    async def refresh(self) -> None:
        refresh = getattr(self.inner, "refresh", None)
        if refresh is not None:
            await refresh()

    async def close(self) -> None:
        vnet, self._vnet = self._vnet, None
        try:
            if vnet is not None:
                self._server.remove(vnet)
                if self._firewall is not None:
                    await self._firewall.remove(vnet)
        finally:
            await self.inner.close()
