"""Choosing a node's data plane, and what a plane with an interface tells the node's
stream server and firewall (fake inner plane, server and firewall: the real ones are in
the netns tests)."""

from __future__ import annotations

import ipaddress

import pytest

from vnet.plane import PeerStats, PlaneConfig, PlaneError
from vnet.planes import Served, choose, offered


@pytest.mark.parametrize(("wanted", "wg", "tun", "root", "expected"), [
    ("", None, True, True, "wireguard"),
    ("", "no wg", True, True, "python"),
    ("", "no wg", False, True, "userspace"),
    ("", "needs root", True, False, "userspace"),
    ("python", None, True, True, "python"),
    ("userspace", None, True, True, "userspace"),
    ("wireguard", "no wg", False, False, "wireguard"),  # forced: the plane says why not
])
def test_choose(wanted, wg, tun, root, expected):
    assert choose(wanted, wireguard_missing=wg, tun=tun, root=root) == expected


def test_choose_refuses_an_unknown_plane():
    with pytest.raises(PlaneError, match="unknown plane 'tap'"):
        choose("tap", wireguard_missing=None, tun=True, root=True)


@pytest.mark.parametrize(("wg", "tun", "root", "kernel", "expected"), [
    (None, True, True, False, ["wireguard", "python", "userspace"]),
    (None, False, True, True, ["wireguard", "userspace"]),       # kernel WireGuard, no TUN
    (None, False, True, False, ["userspace"]),                  # no TUN for wireguard-go
    ("needs root", False, False, False, ["userspace"]),         # a phone
    ("needs root", True, False, True, ["userspace"]),
    ("no wg", True, True, True, ["python", "userspace"]),
])
def test_offered_planes_need_tun_or_kernel_wireguard(wg, tun, root, kernel, expected):
    planes = offered(wireguard_missing=wg, tun=tun, root=root, kernel_wireguard=kernel)
    assert planes == expected
    assert choose("", wireguard_missing=None if "wireguard" in planes else wg or "no",
                  tun=tun, root=root) == planes[0]


CONFIG = PlaneConfig(vnet="blue", interface="mc-blue",
                     address=ipaddress.IPv4Interface("10.42.0.3/24"),
                     private_key=bytes(32), listen_port=0)


class Inner:
    name = "python"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.applied: list[PlaneConfig] = []
        self.closed = False

    async def apply(self, config: PlaneConfig) -> None:
        if self.fail:
            raise PlaneError("no tun")
        self.applied.append(config)

    def listen_port(self) -> int:
        return 51820

    def stats(self) -> list[PeerStats]:
        return [PeerStats(b"k" * 32, None, 1, 2, None)]

    async def close(self) -> None:
        self.closed = True


class Server:
    def __init__(self) -> None:
        self.configs: dict[str, tuple[PlaneConfig, bool]] = {}

    def update(self, config: PlaneConfig, *, loopback: bool) -> None:
        self.configs[config.vnet] = (config, loopback)

    def remove(self, vnet: str) -> None:
        del self.configs[vnet]


class Firewall:
    def __init__(self) -> None:
        self.rules: dict[str, tuple[str, ipaddress.IPv4Network]] = {}

    async def ensure(self, vnet, interface, network) -> None:
        self.rules[vnet] = (interface, network)

    async def remove(self, vnet) -> None:
        del self.rules[vnet]


async def test_served_registers_the_config_and_rules_then_undoes_them():
    inner, server, firewall = Inner(), Server(), Firewall()
    plane = Served(inner, server, firewall)  # type: ignore[arg-type]
    assert plane.name == "python"
    await plane.apply(CONFIG)
    assert inner.applied == [CONFIG]
    assert server.configs == {"blue": (CONFIG, False)}  # addresses on this host
    assert firewall.rules == {"blue": ("mc-blue", ipaddress.IPv4Network("10.42.0.0/24"))}
    assert plane.listen_port() == 51820 and plane.stats()[0].tx_bytes == 2
    await plane.rebind()  # the inner plane has none: nothing to do
    await plane.close()
    assert inner.closed and server.configs == {} and firewall.rules == {}


async def test_served_registers_nothing_when_the_plane_fails():
    inner, server, firewall = Inner(fail=True), Server(), Firewall()
    plane = Served(inner, server, firewall)  # type: ignore[arg-type]
    with pytest.raises(PlaneError):
        await plane.apply(CONFIG)
    assert server.configs == {} and firewall.rules == {}
    await plane.close()
    assert inner.closed
