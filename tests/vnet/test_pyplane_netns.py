"""The Python plane for real: two network namespaces joined by a veth pair, a plane helper
process in each, ping and a TCP transfer across the V-Net, and tcpdump on the veth seeing
only UDP (and none of the plaintext)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vnet.pyplane.lab import PORT, PlaneLab, wait_output

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MARKER = b"meshcloud-vnet-plaintext-marker/"
SIZE = 4 * 1024 * 1024

SINK = r"""
import hashlib, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 7000))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while data := conn.recv(1 << 16):
    digest.update(data)
    total += len(data)
conn.sendall(f"{total} {digest.hexdigest()}".encode())
conn.close()
"""

SOURCE = r"""
import socket, sys
marker, size = sys.argv[2].encode(), int(sys.argv[3])
payload = (marker * (size // len(marker) + 1))[:size]
conn = socket.create_connection((sys.argv[1], 7000), timeout=60)
conn.sendall(payload)
conn.shutdown(socket.SHUT_WR)
print(conn.recv(1024).decode(), flush=True)
"""


def capture(lab: PlaneLab, path: Path, expression: str) -> subprocess.Popen[str]:
    side = lab.sides[1]
    proc = subprocess.Popen(side.exec("tcpdump", "-i", side.veth, "-n", "-U",
                                      "--immediate-mode", "-w", str(path), expression),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_output(proc, "listening on", 30, stream="stderr")
    return proc


def packets(path: Path) -> list[str]:
    out = subprocess.run(["tcpdump", "-r", str(path), "-n"], capture_output=True, text=True,
                         check=True)
    return out.stdout.splitlines()


@pytest.mark.parametrize("threads, offload", [(True, True), (False, False)],
                         ids=["threads-offload", "trio-loops-no-offload"])
def test_ping_and_tcp_across_two_namespaces_with_only_udp_on_the_wire(
        tmp_path: Path, threads: bool, offload: bool) -> None:
    with PlaneLab() as lab:
        a, b = lab.sides
        lab.start_planes(threads=threads, offload=offload)
        clear = capture(lab, tmp_path / "clear.pcap", "ip and not udp")
        tunnel = capture(lab, tmp_path / "tunnel.pcap", "udp")  # with fragments
        try:
            ping = subprocess.run(a.exec("ping", "-c", "3", "-i", "0.2", "-W", "10",
                                         b.address), capture_output=True, text=True,
                                  timeout=60)
            assert ping.returncode == 0 and " 3 received" in ping.stdout, ping.stdout

            sink = subprocess.Popen(b.exec(sys.executable, "-c", SINK, b.address),
                                    stdout=subprocess.PIPE, text=True)
            wait_output(sink, "listening", 30)
            sent = subprocess.run(a.exec(sys.executable, "-c", SOURCE, b.address,
                                         MARKER.decode(), str(SIZE)),
                                  capture_output=True, text=True, timeout=120)
            sink.wait(timeout=30)
            payload = (MARKER * (SIZE // len(MARKER) + 1))[:SIZE]
            assert sent.stdout.split() == [str(SIZE), hashlib.sha256(payload).hexdigest()], \
                sent.stderr
        finally:
            for proc in (clear, tunnel):
                proc.terminate()
                proc.wait(timeout=30)
        assert packets(tmp_path / "clear.pcap") == []  # no ICMP, no TCP in the clear
        udp = packets(tmp_path / "tunnel.pcap")
        assert any(f".{PORT} > " in line for line in udp), udp[:5]
        wire = (tmp_path / "tunnel.pcap").read_bytes()
        # a busy machine's tcpdump misses packets: most of the transfer is enough to judge
        assert len(wire) > SIZE // 4, len(wire)
        assert MARKER not in wire

        errors = lab.stop_planes()
        assert all("drops" in err for err in errors.values()), errors
        for side in lab.sides:  # close() removed the interface
            gone = subprocess.run(side.exec("ip", "link", "show", lab.interface),
                                  capture_output=True, text=True)
            assert gone.returncode != 0, gone.stdout


def ping(side, address: str, count: int = 3, wait: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(side.exec("ping", "-c", str(count), "-i", "0.2", "-W", str(wait),
                                    address), capture_output=True, text=True, timeout=120)


def test_a_roaming_host_keeps_its_session_and_a_removed_peer_is_cut_off() -> None:
    with PlaneLab() as lab:
        a, b = lab.sides
        lab.start_planes()
        assert ping(a, b.address).returncode == 0

        # A's underlay address changes; B's config still names the old one
        prefix = a.underlay.rsplit(".", 1)[0]
        lab.roam(a, f"{prefix}.7")
        moved = ping(a, b.address)
        assert moved.returncode == 0 and " 3 received" in moved.stdout, moved.stdout
        back = ping(b, a.address)  # B answers to where A's packets came from
        assert back.returncode == 0 and " 3 received" in back.stdout, back.stdout

        # the control plane removes A from B's peers: nothing of A's gets through
        lab.apply(b, {**lab.config(b, a), "peers": []})
        cut = ping(a, b.address, count=3, wait=1)
        assert " 0 received" in cut.stdout, cut.stdout

        # and A is back (at its new address): B's traffic handshakes anew at once
        lab.apply(b, {**lab.config(b, a)})
        again = ping(b, a.address)
        assert again.returncode == 0 and " 3 received" in again.stdout, again.stdout
        assert ping(a, b.address).returncode == 0
        errors = lab.stop_planes()
        drops = json.loads(errors[b.netns].split("drops ", 1)[1])
        assert drops.get("index", 0) + drops.get("unknown_peer", 0) >= 3, drops
