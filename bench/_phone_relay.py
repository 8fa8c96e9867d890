"""The phone bench's network: a phone nobody can dial, and a stream to it through a relay.

A phone on mobile data sits behind a carrier NAT: it can dial out, nobody can dial in.
:class:`InboundDrop` gives the phone agent's address that property on 127.0.0.1 (an
iptables rule drops TCP SYNs *to* it; its own connections out, and their replies, pass).
The agent finds out (its reachability probes: members cannot dial it back), keeps
reservations with relays among the members and advertises ``relay://...``.

:func:`relay_stream_mb_s` then measures ``relay_mb_s``: a member identity of the mesh
(joined with an invite like any node) runs a transport in this process and streams
``total`` bytes to the phone's benchmark sink (``/meshcloud/bench/1/sink``, which every
agent serves) through one relay, end-to-end encrypted (the relay sees ciphertext), until
the phone confirms the byte count. The relay's per-peer limit applies.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import trio

from meshcloud.auth import MeshAuthenticator
from meshcloud.codec import cbor
from meshcloud.datadir import DataDir
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.transport.addresses import relay_address
from meshcloud.transport.benchmark import SINK
from meshcloud.transport.tcp import TcpTransport

MESSAGE = 256 * 1024


class InboundDrop:
    """Drop TCP connection attempts to ``host`` (iptables ``INPUT``), until closed."""

    def __init__(self, host: str) -> None:
        self.rule = ["INPUT", "-d", f"{host}/32", "-p", "tcp", "--syn", "-j", "DROP"]
        subprocess.run(["iptables", "-w", "-I", *self.rule], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["iptables", "-w", "-D", *self.rule], check=False, capture_output=True)


def identity(datadir: Path) -> tuple[object, MeshAuthenticator]:
    """The key and authenticator of a joined data dir (``meshcloud join`` wrote it)."""
    d = DataDir(datadir)
    mesh = d.mesh()
    assert mesh.cert is not None
    authenticator = MeshAuthenticator(mesh.root_public, MemoryMembershipRecords(),
                                      lambda: time.time_ns() // 1_000_000, mesh.cert)
    return d.node_key(), authenticator


async def _stream(datadir: Path, relay: bytes, relay_at: str, phone: bytes,
                  total: int) -> tuple[float, bool]:
    key, authenticator = identity(datadir)
    transport = TcpTransport(key, authenticator, listen=["127.0.0.74:0"])  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        transport.set_addresses(relay, [relay_at])
        transport.set_addresses(phone, [relay_address(relay)])
        stream = await transport.open_stream(phone, SINK)
        relayed = all(c.relayed for c in transport.connections_to(phone))
        payload = os.urandom(MESSAGE)
        start = time.perf_counter()
        for _ in range(total // MESSAGE):
            await stream.send(payload)
        await stream.close()
        confirmed = cbor.decode(await stream.receive())
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    if confirmed != total // MESSAGE * MESSAGE:
        raise RuntimeError(f"the phone's sink counted {confirmed} bytes of {total}")
    return confirmed / elapsed / 1e6, relayed


def relay_stream_mb_s(datadir: Path, relay: str, relay_at: str, phone: str,
                      total: int) -> tuple[float, bool]:
    """MB/s (10^6 bytes) of ``total`` bytes to ``phone`` through ``relay`` (hex node ids;
    ``relay_at``: the relay's address), as the member whose data dir is ``datadir``; and
    whether the stream's connection was relayed."""
    return trio.run(_stream, datadir, bytes.fromhex(relay), relay_at, bytes.fromhex(phone),
                    total)
