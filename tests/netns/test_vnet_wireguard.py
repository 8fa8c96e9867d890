"""Acceptance of V-Nets over the WireGuard plane: three network namespaces as hosts, a
real agent in each (``sim/vnetlab.py``).

What is shown: a V-Net across the three with every host attached; ping and a TCP stream
by V-Net address between hosts; on the underlay only encrypted UDP: the V-Nets' WireGuard
packets (the stream's bytes never appear in clear) and the agents' own sealed gossip
datagrams (no member id, protocol name or V-Net byte in clear); two V-Nets on the same
hosts cannot reach each other (a peer that
forces the other V-Net's address into its tunnel is refused by the receiver's rule, whose
packet counter shows it); a kill -9'd host is dropped by its peers and rejoins with the
same addresses; a host that leaves the mesh loses its tunnels; ``ip link``, routes and
``iptables-save`` are as before once the V-Nets are removed and the agents stopped.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import threading

import pytest

from meshcloud.transport.sealed import OVERHEAD, SENDER_TAG, VERSION
from sim.agents import AgentError, wait_until
from sim.vnetlab import VNetLab, ns, snapshot

pytestmark = [pytest.mark.netns, pytest.mark.real, pytest.mark.slow]

STREAM = 4 << 20
MARKER = b"MESHCLOUD-CLEARTEXT-MARKER-"

SERVER = """
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.sendall(f"{n} {h.hexdigest()}".encode()); c.close()
"""

CLIENT = """
import socket, sys
payload = open(sys.argv[2], "rb").read()
c = socket.create_connection((sys.argv[1], 5201), timeout=20)
c.sendall(payload); c.shutdown(socket.SHUT_WR)
print(c.recv(200).decode())
"""


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the V-Net acceptance test needs root (network namespaces)")
    with VNetLab(tmp_path, 3) as built:
        yield built


def tcp_stream(lab, src, dst_host, dst_address, payload_file):
    server = subprocess.Popen([*dst_host.exec_prefix(), "python3", "-c", SERVER,
                               dst_address], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        out = ns(src, "python3", "-c", CLIENT, dst_address, str(payload_file)).stdout.split()
        server.wait(timeout=20)
        return int(out[0]), out[1]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


class Capture:
    """tcpdump on a host's underlay veth, to a file (a 32 MiB kernel buffer: on a busy
    machine a small one drops packets)."""

    def __init__(self, host) -> None:
        self.path = f"/tmp/vnetwg-{os.getpid()}-{host.index}.pcap"
        self.proc = subprocess.Popen([*host.exec_prefix(), "tcpdump", "-i", host.veth_ns,
                                      "-n", "-B", "32768", "-U", "-s", "0", "-w", self.path],
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def watch():
            for line in self.proc.stderr:
                self.lines.append(line.strip())
                if "listening on" in line:
                    ready.set()

        self.reader = threading.Thread(target=watch, daemon=True)
        self.reader.start()
        assert ready.wait(20), "tcpdump did not start"

    def wait_for_bytes(self, size: int, timeout: float = 30) -> None:
        """Until the file holds ``size`` bytes (or ``timeout``: the checks after say what
        is missing): a starved tcpdump lags behind the wire, and what it has not read
        yet when it is stopped is lost."""
        try:
            wait_until(lambda: os.path.exists(self.path) and os.path.getsize(self.path) > size,
                       timeout, interval=0.1, message=f"the capture holds {size} bytes")
        except AgentError:
            pass

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)  # its summary lines are read

    @property
    def dropped(self) -> int:
        """Packets the kernel dropped for tcpdump, as its summary says."""
        for line in self.lines:
            words = line.split()
            if line.endswith("dropped by kernel") and words and words[0].isdigit():
                return int(words[0])
        return 0

    def least_stream_bytes(self, stream: int) -> int:
        """What the capture must hold of a stream: all of it, or most of it when the kernel
        dropped packets for a starved tcpdump."""
        return stream if self.dropped == 0 else stream // 2


def udp_packets(pcap: str) -> list[tuple[int, int, bytes]]:
    """(source port, destination port, payload) of each IPv4 UDP packet of a pcap file
    (Ethernet, Linux cooked or raw IP link; later fragments skipped)."""
    with open(pcap, "rb") as fh:
        data = fh.read()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    link = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
    offset, out = 24, []
    while offset + 16 <= len(data):
        size = struct.unpack_from(endian + "I", data, offset + 8)[0]
        frame = data[offset + 16:offset + 16 + size]
        offset += 16 + size
        if link == 1 and frame[12:14] == b"\x08\x00":
            ip = frame[14:]
        elif link == 113 and frame[14:16] == b"\x08\x00":
            ip = frame[16:]
        elif link == 101:
            ip = frame
        else:
            continue
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        if struct.unpack_from(">H", ip, 6)[0] & 0x1FFF:  # not the first fragment
            continue
        head = (ip[0] & 15) * 4
        source, destination = struct.unpack_from(">HH", ip, head)
        out.append((source, destination, ip[head + 8:]))
    return out


def agent_ports(agents) -> set[int]:
    return {int(x.address.rsplit(":", 1)[1]) for x in agents}


def check_sealed(payload: bytes, ids: list[bytes]) -> None:
    """An agent's gossip datagram on the underlay: sealed (our header, a member's tag,
    room for the AEAD tag) and nothing of what it carries in clear (member ids, V-Net
    bytes, protocol names)."""
    assert len(payload) > OVERHEAD and payload[0] == VERSION, payload[:16]
    assert payload[1:1 + SENDER_TAG] in {i[:SENDER_TAG] for i in ids}, payload[:16]
    for clear in (*ids, MARKER, b"/meshcloud/"):
        assert clear not in payload, f"{clear!r} in clear in a gossip datagram"


def test_vnet_over_wireguard_between_three_hosts(lab, tmp_path):
    h, a = lab.hosts, lab.agents
    # host 2's route to the others has a smaller MTU (as over PPPoE or another tunnel):
    # its V-Net interfaces get that less WireGuard's 80 bytes, as wg-quick sets them
    ns(h[2], "ip", "route", "change", h[2].ip.rsplit(".", 1)[0] + ".0/24", "dev",
       h[2].veth_ns, "proto", "kernel", "scope", "link", "src", h[2].ip, "mtu", "1400")
    before = [snapshot(host) for host in h]

    # --- bad input is refused with one clear line ---------------------------------------
    bad = a[0].cli("vnet", "create", "x", "--cidr", "10.42.0.1/24", check=False)
    assert bad.returncode != 0 and "host bits" in bad.stderr
    bad = a[0].cli("vnet", "create", "x", "--cidr", f"{h[0].ip.rsplit('.', 1)[0]}.0/25",
                   check=False)
    assert bad.returncode != 0 and "overlaps this host's route" in bad.stderr
    bad = a[0].cli("vnet", "attach", "nope", "--host", check=False)
    assert bad.returncode != 0 and "no V-Net 'nope'" in bad.stderr

    a[0].cli("vnet", "create", "blue", "--cidr", "10.42.0.0/24")
    a[1].cli("vnet", "create", "red", "--cidr", "10.43.0.0/24")
    bad = a[2].cli("vnet", "create", "x", "--cidr", "10.42.0.128/25", check=False)
    if "overlaps V-Net" not in bad.stderr:  # the create may not have arrived yet
        wait_until(lambda: len(a[2].get("/v1/vnets")["vnets"]) == 2, 20)
        bad = a[2].cli("vnet", "create", "x", "--cidr", "10.42.0.128/25", check=False)
    assert bad.returncode != 0 and "overlaps V-Net 'blue'" in bad.stderr
    wait_until(lambda: all(len(x.get("/v1/vnets")["vnets"]) == 2 for x in a), 20,
               message="both V-Nets everywhere")
    blue = lab.attach_all("blue")
    red = lab.attach_all("red")
    assert len(set(blue)) == 3 and len(set(red)) == 3
    up = wait_until(lambda: lab.tunnels_up("blue") and lab.tunnels_up("red"), 40,
                    interval=0.3, message="every tunnel handshaken")
    print(f"every tunnel of both V-Nets handshaken {up:.1f} s after the last attach")

    mtus = [ns(host, "ip", "-o", "link", "show", "dev", "mc-blue").stdout.split()
            for host in h]
    assert [int(m[m.index("mtu") + 1]) for m in mtus] == [1420, 1420, 1320]
    big = ["ping", "-n", "-c", "1", "-W", "2", "-M", "do"]  # don't fragment
    assert ns(h[2], *big, "-s", str(1320 - 28), blue[0], check=False).returncode == 0
    too_big = ns(h[2], *big, "-s", str(1320 - 27), blue[0], check=False)
    assert too_big.returncode != 0 and "mtu=1320" in too_big.stdout + too_big.stderr

    # --- names: host 0 asks host 1's resolver (on its blue address) for host 2 --------
    name = f"{a[2].node_id[:12]}.blue.vnet"
    wait_until(lambda: dig(h[0], blue[1], name) == [blue[2]], 20, interval=0.3,
               message="the V-Net name resolves")
    assert dig(h[0], blue[1], f"{a[2].node_id[:12]}.red.vnet") == []  # not in blue
    assert lab.ping(h[0], dig(h[0], blue[1], f"{a[1].node_id[:12]}.blue.vnet")[0])

    # --- ping and a TCP stream by V-Net address; the underlay sees only UDP ------------
    assert lab.ping(h[0], blue[1], count=3)
    assert lab.ping(h[2], blue[0], count=3)
    assert lab.ping(h[1], red[2], count=3)
    payload = tmp_path / "payload"
    payload.write_bytes((MARKER * (STREAM // len(MARKER) + 1))[:STREAM])
    dump = Capture(h[1])
    pcap = dump.path
    gossip_ports = agent_ports(a)
    try:
        size, digest = tcp_stream(lab, h[0], h[1], blue[1], payload)
        dump.wait_for_bytes(STREAM)
        wait_until(lambda: any(src in gossip_ports or dst in gossip_ports
                               for src, dst, _ in udp_packets(pcap)), 20, interval=0.2,
                   message="an agent's sealed gossip datagram on the underlay")
    finally:
        dump.stop()
    packets = udp_packets(pcap)
    assert size == STREAM and digest == hashlib.sha256(payload.read_bytes()).hexdigest()
    with open(pcap, "rb") as fh:
        raw = fh.read()
    crossed = dump.least_stream_bytes(STREAM)
    assert len(raw) > crossed, ("the stream did not cross the captured underlay",
                                len(raw), dump.lines[-3:])
    assert MARKER not in raw, "V-Net bytes appeared in clear on the underlay"
    lines = subprocess.run(["tcpdump", "-r", pcap, "-n"], capture_output=True,
                           text=True).stdout.splitlines()
    os.unlink(pcap)
    vnet_lines = [line for line in lines if "10.42." in line or "10.43." in line]
    assert vnet_lines == [], f"V-Net addresses on the underlay: {vnet_lines[:3]}"
    udp = [line for line in lines if " UDP," in line]
    assert len(packets) >= len(udp) - 2  # (the capture may end inside a packet)
    ports = {x.get(f"/v1/vnets/{v}")["local"]["port"] for x in a for v in ("blue", "red")}
    ids = [bytes.fromhex(x.node_id) for x in a]
    sealed = tunnelled = 0
    for src, dst, body in packets:  # WireGuard between V-Net ports, or sealed gossip
        if src in ports or dst in ports:
            # (with UDP segmentation offload one captured packet may hold many)
            assert body[0] in (1, 2, 3, 4) and body[1:4] == bytes(3), (src, dst, body[:8])
            tunnelled += len(body)
        else:
            assert src in gossip_ports and dst in gossip_ports, ("unexpected UDP", src, dst)
            check_sealed(body, ids)
            sealed += 1
    assert tunnelled > crossed, f"only {tunnelled} bytes of WireGuard for the stream"
    assert sealed >= 1

    # --- isolation: blue cannot reach red, even when a blue peer tries ----------------
    # host 0 forces host 1's red address into its blue tunnel (as a hostile node could):
    # the packets reach host 1 on mc-blue and host 1's rule refuses them
    refused_before = a[1].get("/v1/vnets/blue/refused")["packets"]
    peer_key = next(m for m in a[0].get("/v1/vnets/blue")["members"]
                    if m["node"] == a[1].node_id)
    key = _public_key_b64(a[1])
    assert peer_key["address"] == blue[1]
    subprocess.run(["nsenter", "-t", str(a[0].pid), "-m", "-n", "wg", "set", "mc-blue",
                    "peer", key, "allowed-ips", f"{blue[1]}/32,10.43.0.0/24"], check=True)
    assert not lab.ping(h[0], red[1], count=3, interface="mc-blue")
    refused = a[1].get("/v1/vnets/blue/refused")["packets"] - refused_before
    assert refused >= 3, f"host 1 refused {refused} packets from blue to red"
    # and nothing crosses from one V-Net's interface to another through a host
    assert not lab.ping(h[0], red[2], count=1, interface="mc-blue")

    # --- a kill -9'd host is dropped by its peers, then rejoins with its addresses ----
    a[2].kill()
    dropped = wait_until(lambda: not any(m["node"] == a[2].node_id and m.get("tunnel")
                               for m in a[0].get("/v1/vnets/blue")["members"]), 45,
               interval=0.3, message="host 2's tunnel dropped by host 0")
    a[2].start()
    back = wait_until(lambda: lab.tunnels_up("blue"), 40, interval=0.3,
                      message="host 2 back")
    print(f"kill -9: host 2 dropped by host 0 after {dropped:.1f} s; back {back:.1f} s "
          "after its restart")
    assert a[2].get("/v1/vnets/blue")["local"]["address"] == f"{blue[2]}/24"
    assert lab.ping(h[0], blue[2], count=2)

    # --- a host that leaves the mesh loses its tunnels within seconds ------------------
    a[1].cli("leave")
    gone = wait_until(lambda: not any(m["node"] == a[1].node_id and m.get("tunnel")
                                      for m in a[0].get("/v1/vnets/blue")["members"]),
                      15, interval=0.2, message="host 1's tunnel dropped after it left")
    print(f"leave: host 1's tunnel dropped by host 0 {gone:.1f} s after `meshcloud leave`")
    assert a[1].process.wait(timeout=30) == 0
    wait_until(lambda: snapshot(h[1]) == before[1], 20, interval=0.3,
               message="host 1 as before once its agent stopped")

    # --- removal and stop leave the hosts as they were --------------------------------
    a[0].cli("vnet", "rm", "blue")
    a[0].cli("vnet", "rm", "red")

    def clean() -> bool:
        return all(snapshot(host) == was for host, was in zip(h, before, strict=True))

    try:
        wait_until(clean, 20, interval=0.3, message="links, routes and rules as before")
    except Exception:
        for host, was in zip(h, before, strict=True):
            now = snapshot(host)
            for part in was:
                assert now[part] == was[part], f"{host.netns} {part} differs"
        raise
    for agent in (a[0], a[2]):
        assert agent.stop() == 0
    after = [snapshot(host) for host in h]
    assert after == before


DIG = """
import sys, dns.message, dns.query, dns.rcode
q = dns.message.make_query(sys.argv[2], "A")
r = dns.query.udp(q, sys.argv[1], timeout=2)
print(" ".join(a.address for rr in r.answer for a in rr) if r.rcode() == 0 else "")
"""


def dig(host, server, name):
    """Ask the V-Net resolver at ``server`` from inside ``host`` (dnspython)."""
    import sys

    out = ns(host, sys.executable, "-c", DIG, server, name, check=False)
    if out.returncode != 0:
        raise OSError(out.stderr.strip()[-200:])
    return out.stdout.split()


def _public_key_b64(agent):
    import base64

    from nacl.public import PrivateKey

    raw = (agent.data_dir / "vnet" / "tunnel.key").read_bytes()
    assert oct((agent.data_dir / "vnet" / "tunnel.key").stat().st_mode & 0o777) == "0o600"
    return base64.b64encode(bytes(PrivateKey(raw).public_key)).decode()
