"""Throughput of one stream through a relay on 127.0.0.1 (for the phone bench's
``relay_mb_s``): three real transports in this process, A → relay R → B, where B is
reached only through its reservation with R. The stream's bytes are encrypted end to end
by the A-B session and, on each hop, by that hop's session (the relay sees ciphertext).
The relay's default limits apply (:class:`~meshcloud.transport.relaylimits.RelayConfig`).
"""

from __future__ import annotations

import time

import trio

from meshcloud.testing import TestMesh
from meshcloud.transport.addresses import relay_address
from meshcloud.transport.relay import RelayService
from meshcloud.transport.relaylimits import RelayConfig
from meshcloud.transport.tcp import TcpTransport

SINK = "/bench/sink/1"
MESSAGE = 256 * 1024


async def _sink(stream) -> None:  # type: ignore[no-untyped-def]
    received = 0
    try:
        while True:
            received += len(await stream.receive())
    except trio.EndOfChannel:
        await stream.send(str(received).encode())


async def _measure(total: int, config: RelayConfig | None) -> float:
    mesh = TestMesh.with_members(3)
    async with trio.open_nursery() as nursery:
        nodes = []
        for member in mesh.members:
            transport = TcpTransport(member.key, member.authenticator)
            transport.serve(SINK, _sink)
            relays = RelayService(transport, config)
            relays.install()
            await nursery.start(transport.run)
            nodes.append((transport, relays))
        (a, _), (r, _), (b, b_relays) = nodes
        b.set_addresses(r.local_id, r.listen_addresses)
        await nursery.start(b_relays.reserve, r.local_id)
        a.set_addresses(r.local_id, r.listen_addresses)
        a.set_addresses(b.local_id, [relay_address(r.local_id)])
        chunk = bytes(MESSAGE)
        stream = await a.open_stream(b.local_id, SINK)
        assert a.connections_to(b.local_id)[0].relayed
        start = time.perf_counter()
        for _ in range(total // MESSAGE):
            await stream.send(chunk)
        await stream.close()
        received = int(await stream.receive())
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return received / elapsed / 1e6


def measure_relay_mb_s(total_mib: int = 64, config: RelayConfig | None = None) -> float:
    """MB/s (10^6 bytes) of one stream A → relay → B on 127.0.0.1; prints the figure."""
    mb_s = trio.run(_measure, total_mib * 1024 * 1024, config)
    limit = (config or RelayConfig()).bytes_per_s / 1e6
    print(f"relay: {total_mib} MiB through a relay on 127.0.0.1: {mb_s:.1f} MB/s "
          f"(relay limit {limit:.1f} MB/s per peer)")
    return mb_s


if __name__ == "__main__":
    measure_relay_mb_s()
    measure_relay_mb_s(config=RelayConfig(bytes_per_s=1e12, burst=1e12))
