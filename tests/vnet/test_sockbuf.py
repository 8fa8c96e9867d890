"""Enlarging another process's UDP socket buffers (vnet/sockbuf.py), with a real child."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vnet.sockbuf import enlarge, udp_inodes

ROW = ("  {sl}: {local} 00000000:0000 07 00000000:00000000 00:00000000 00000000     0"
       "        0 {inode} 2 0000000000000000 0")
TABLE = "\n".join([
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
    "  timeout inode ref pointer drops",
    ROW.format(sl=12, local="00000000:CA6C", inode=4242),
    ROW.format(sl=13, local="0100007F:0035", inode=77),
    "  14: garbage"])


CHILD = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
sys.stdin.readline()
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
      s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), flush=True)
"""


def test_udp_inodes_of_a_port():
    assert udp_inodes(TABLE, 0xCA6C) == {4242}
    assert udp_inodes(TABLE, 53) == {77}
    assert udp_inodes(TABLE, 9) == set() and udp_inodes("", 53) == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE and pidfd_getfd need root")
def test_enlarge_a_childs_socket():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port, before = map(int, child.stdout.readline().split())
        (inode,) = enlarge(child.pid, port, 4 << 20)
        assert enlarge(child.pid, port, 4 << 20, done=frozenset({inode})) == set()
        assert enlarge(child.pid, port + 1 if port < 65535 else 1, 4 << 20) == set()
        child.stdin.write("\n")
        child.stdin.flush()
        rcv, snd = map(int, child.stdout.readline().split())
        assert rcv >= 4 << 20 > before and snd >= 4 << 20  # the kernel doubles it
    finally:
        child.kill()
        child.wait()
    assert enlarge(child.pid, port) == set()  # gone: nothing to do
