"""The WireGuard plane's pure parts: `wg show dump` parsing, `wg set` arguments, the
isolation rules, the interface key file, wireguard-go's environment. (The plane itself
runs in tests/netns.)"""

from __future__ import annotations

import base64
import ipaddress

import pytest

from vnet.firewall import FWD_CHAIN, IN_CHAIN, rules_for
from vnet.ipam import replica_links
from vnet.keys import load_or_create
from vnet.plane import PeerConfig, PlaneConfig, PlaneError
from vnet.wireguard import (
    GOMAXPROCS_ENV,
    SMALL_HOST_CPUS,
    parse_dump,
    parse_link_mtu,
    parse_route,
    peer_args,
    tunnel_mtu,
    wireguard_go_env,
)

K1, K2 = base64.b64encode(b"\x01" * 32).decode(), base64.b64encode(b"\x02" * 32).decode()


def test_parse_dump():
    text = (f"PRIVATE\t{K1}\t51820\toff\n"
            f"{K2}\t(none)\t10.0.0.2:4000\t10.42.0.2/32\t1700000000\t1234\t5678\t5\n"
            f"{K1}\t(none)\t(none)\t10.42.0.3/32\t0\t0\t0\toff\n"
            "garbage line\n")
    port, stats = parse_dump(text)
    assert port == 51820
    assert [(s.public_key, s.endpoint, s.rx_bytes, s.tx_bytes, s.last_handshake)
            for s in stats] == [(b"\x02" * 32, ("10.0.0.2", 4000), 1234, 5678, 1.7e9),
                                (b"\x01" * 32, None, 0, 0, None)]
    assert parse_dump("") == (0, [])


def test_peer_args_never_carry_a_private_key():
    peer = PeerConfig(public_key=b"\x02" * 32, endpoint=("fd00::1", 9),
                      allowed_ips=(ipaddress.IPv4Network("10.42.0.2/32"),
                                   ipaddress.IPv4Network("10.42.0.9/32")))
    args = peer_args(K2, peer)
    assert args[:2] == ["peer", K2]
    assert "10.42.0.2/32,10.42.0.9/32" in args and "[fd00::1]:9" in args
    no_endpoint = peer_args(K2, PeerConfig(public_key=b"\x02" * 32, endpoint=None,
                                           allowed_ips=()))
    assert "endpoint" not in no_endpoint
    config = PlaneConfig(vnet="blue", interface="mc-blue",
                         address=ipaddress.IPv4Interface("10.42.0.1/24"),
                         private_key=b"\x07" * 32, listen_port=0)
    assert base64.b64encode(b"\x07" * 32).decode() not in repr(config)


def test_isolation_rules():
    rules = rules_for("blue", "mc-blue", ipaddress.IPv4Network("10.42.0.0/24"))
    assert ("-i", "mc-blue") in {r[1:3] for r in rules if r[0] == FWD_CHAIN}
    assert ("-o", "mc-blue") in {r[1:3] for r in rules if r[0] == FWD_CHAIN}
    inbound = [r for r in rules if r[0] == IN_CHAIN]
    assert {r[r.index("!") + 1] for r in inbound} == {"-s", "-d"}
    assert all("mc-vnet:blue" in r for r in rules)
    # the accepts (tunnel <-> this V-Net's replica veths, its range only) come first,
    # then nothing else in or out of the tunnel or the replica veths
    links = replica_links("blue") + "+"
    accepts = [r for r in rules if r[-1] == "ACCEPT"]
    assert rules[:len(accepts)] == accepts and len(accepts) == 3
    for rule in accepts:
        assert rule[0] == FWD_CHAIN and links in rule
        assert rule[5:9] == ("-s", "10.42.0.0/24", "-d", "10.42.0.0/24")
    drops = {(r[0], r[1], r[2]) for r in rules if r[-1] == "DROP"}
    for device in ("mc-blue", links):
        assert {(FWD_CHAIN, "-i", device), (FWD_CHAIN, "-o", device),
                (IN_CHAIN, "-i", device)} <= drops
    # another V-Net's replicas match another prefix
    assert replica_links("red") != replica_links("blue")
    assert not any(links in r for r in rules_for("red", "mc-red",
                                                 ipaddress.IPv4Network("10.43.0.0/24")))


def test_tunnel_key_file(tmp_path):
    from meshcloud.errors import DataDirError

    path = tmp_path / "vnet" / "tunnel.key"
    private, public = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(private) == len(public) == 32 and private != public
    assert load_or_create(path) == (private, public)
    path.chmod(0o644)
    with pytest.raises(DataDirError, match="readable by others"):
        load_or_create(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(DataDirError, match="32-byte"):
        load_or_create(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("10.99.0.7 dev v0 src 10.99.0.1 uid 0 \\    cache mtu 1400 ", ("v0", 1400)),
    ("10.99.0.7 dev v0 src 10.99.0.1 uid 0 \\    cache mtu lock 1300 ", ("v0", 1300)),
    ("10.99.0.7 via 10.99.0.254 dev eth0 src 10.99.0.1 uid 0 \\    cache ", ("eth0", None)),
    ("", (None, None)),  # no route: `ip route get` failed
])
def test_parse_route(text, expected):
    assert parse_route(text) == expected


def test_parse_link_mtu():
    line = ("2: eth0@if9: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1492 qdisc noqueue state UP "
            "mode DEFAULT group default qlen 1000\\    link/ether 4a:1b:00:00:00:01")
    assert parse_link_mtu(line) == 1492
    assert parse_link_mtu("") is None


@pytest.mark.parametrize(("routes", "expected"), [
    ([], 1420),               # no peer endpoint yet: the V-Net's MTU
    ([1500], 1420),           # Ethernet: 1500 - 80 = the V-Net's 1420
    ([9000], 1420),           # jumbo frames: never above the V-Net's MTU
    ([1492], 1412),           # PPPoE
    ([1400, 1492], 1412),     # the largest route, as wg-quick picks
    ([600], 576),             # never below IPv4's minimum
])
def test_tunnel_mtu_follows_the_underlay_route_less_80(routes, expected):
    assert tunnel_mtu(1420, routes) == expected


@pytest.mark.parametrize(("agent_env", "cpus", "expected"), [
    ({}, 1, "1"),
    ({}, 2, "1"),
    ({}, SMALL_HOST_CPUS, "1"),                  # a host of a few CPUs: one Go thread
    ({}, SMALL_HOST_CPUS + 1, None),             # larger: Go's default, one per CPU
    ({"GOMAXPROCS": "3"}, 2, "3"),               # the agent's own setting is kept
    ({GOMAXPROCS_ENV: "default"}, 2, None),      # the override, both ways
    ({GOMAXPROCS_ENV: "default", "GOMAXPROCS": "3"}, 2, None),
    ({GOMAXPROCS_ENV: " 2 "}, 64, "2"),
    ({GOMAXPROCS_ENV: "1", "GOMAXPROCS": "8"}, 64, "1"),
])
def test_wireguard_go_gomaxprocs(agent_env, cpus, expected):
    base = {"PATH": "/usr/bin", **agent_env}
    env = wireguard_go_env(base, cpus)
    assert env.get("GOMAXPROCS") == expected
    assert env["LOG_LEVEL"] == "error" and env["PATH"] == "/usr/bin"
    assert GOMAXPROCS_ENV not in env  # ours, not wireguard-go's
    assert base == {"PATH": "/usr/bin", **agent_env}  # the agent's own is left alone


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_wireguard_go_gomaxprocs_refuses_nonsense(bad):
    with pytest.raises(PlaneError, match=GOMAXPROCS_ENV):
        wireguard_go_env({GOMAXPROCS_ENV: bad}, 2)
