"""Transport measurements: connect time, request latency, bulk throughput.

Reusable pieces (the agent and ``python -m bench transport`` call them):

* :func:`serve_benchmark` makes a transport serve :data:`ECHO` (every message is sent
  back) and :data:`SINK` (messages are counted; on close the count is sent back);
* :func:`measure` runs the measurements from another transport against a peer address
  and returns a dict of figures (MB = 10^6 bytes);
* :func:`spawn_peer` starts a peer in a separate process (``--peer``), so the two sides
  do not share a CPU-bound interpreter, exactly as two agents would.

Command line::

    python -m meshcloud.transport.benchmark                 # spawn a peer, measure, print JSON
    python -m meshcloud.transport.benchmark --write-credentials DIR   # DIR/a and DIR/b
    python -m meshcloud.transport.benchmark --peer DIR/b [--listen 0.0.0.0:7946]
    python -m meshcloud.transport.benchmark --measure ADDR --credentials DIR/a

A credentials file holds a test mesh member's key and certificate (see
:func:`write_credentials`); the peer prints ``LISTENING <address>`` once it is up and exits
when its standard input closes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from meshcloud.auth import MeshAuthenticator
from meshcloud.codec import cbor
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.identity.certs import MeshCert
from meshcloud.identity.keys import SigningKey, write_secret
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.testing import TestMember, TestMesh
from meshcloud.transport.base import Stream, Transport

ECHO = "/meshcloud/bench/1/echo"
SINK = "/meshcloud/bench/1/sink"

MiB = 1024 * 1024


# --- server side ----------------------------------------------------------------------------


async def _echo(stream: Stream) -> None:
    while True:
        try:
            data = await stream.receive()
        except trio.EndOfChannel:
            break
        await stream.send(data)
    await stream.close()


async def _sink(stream: Stream) -> None:
    total = 0
    while True:
        try:
            total += len(await stream.receive())
        except trio.EndOfChannel:
            break
    await stream.send(cbor.encode(total))
    await stream.close()


def serve_benchmark(transport: Transport) -> None:
    """Serve the echo and sink protocols that :func:`measure` talks to."""
    transport.serve(ECHO, _echo)
    transport.serve(SINK, _sink)


# --- client side ----------------------------------------------------------------------------


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def measure(transport: Transport, peer_address: str, *, connects: int = 25,
                  rpcs: int = 2000, bulk_bytes: int = 256 * MiB,
                  message_size: int = MiB) -> dict[str, Any]:
    """Measure against a peer serving :func:`serve_benchmark`. Returns milliseconds and MB/s.

    * ``connect_ms``: median of ``connects`` fresh connections (TCP, handshake, cert checks);
    * ``rpc_p50_ms``/``rpc_p99_ms``: a 64-byte request and its echo on a fresh stream each
      (the shape of :func:`~meshcloud.transport.base.request`), ``rpcs`` times;
    * ``rpc_cpu_us``: CPU time this process (all its tasks and threads) used per request
      meanwhile: unlike wall time it barely moves with other processes' load, so runs on
      a busy machine compare; ``load_avg``: the 1-minute load average at the start;
    * ``pingpong_p50_ms``: the same on one long-lived stream;
    * ``stream_mb_s``: ``bulk_bytes`` sent to the sink in ``message_size`` messages, timed
      until the sink confirmed the byte count.
    """
    load = load_average()
    peer = await transport.dial(peer_address)
    node = peer.node_id
    times = []
    for _ in range(connects):
        await transport.disconnect(node, "benchmark reconnect")
        start = time.perf_counter()
        await transport.dial(peer_address, expect=node)
        times.append(time.perf_counter() - start)
    connect_ms = statistics.median(times) * 1000

    request = b"q" * 64
    for _ in range(100):  # warm up
        await _one_rpc(transport, node, request)
    cpu = time.process_time()
    rpc = sorted([await _one_rpc(transport, node, request) for _ in range(rpcs)])
    rpc_cpu = (time.process_time() - cpu) / rpcs

    stream = await transport.open_stream(node, ECHO)
    pings = []
    for _ in range(rpcs):
        start = time.perf_counter()
        await stream.send(request)
        await stream.receive()
        pings.append(time.perf_counter() - start)
    await stream.close()
    pings.sort()

    payload = os.urandom(message_size)
    count = max(1, bulk_bytes // message_size)
    stream = await transport.open_stream(node, SINK)
    start = time.perf_counter()
    for _ in range(count):
        await stream.send(payload)
    await stream.close()
    confirmed = cbor.decode(await stream.receive())
    elapsed = time.perf_counter() - start
    if confirmed != count * message_size:
        raise RuntimeError(f"sink counted {confirmed} bytes of {count * message_size}")
    return {
        "connect_ms": round(connect_ms, 3),
        "rpc_p50_ms": round(_percentile(rpc, 0.5) * 1000, 4),
        "rpc_p99_ms": round(_percentile(rpc, 0.99) * 1000, 4),
        "rpc_cpu_us": round(rpc_cpu * 1e6, 1),
        "load_avg": load,
        "pingpong_p50_ms": round(_percentile(pings, 0.5) * 1000, 4),
        "stream_mb_s": round(count * message_size / elapsed / 1e6, 1),
        "bulk_bytes": count * message_size,
        "rpcs": rpcs,
        "connects": connects,
    }


async def _one_rpc(transport: Transport, node: bytes, request: bytes) -> float:
    start = time.perf_counter()
    stream = await transport.open_stream(node, ECHO)
    await stream.send(request)
    await stream.close()
    await stream.receive()
    elapsed = time.perf_counter() - start
    try:
        await stream.receive()
    except trio.EndOfChannel:
        pass
    return elapsed


# --- processes ------------------------------------------------------------------------------


def write_credentials(path: Path, mesh: TestMesh, member: TestMember) -> None:
    """Write what a peer process needs to be ``member`` of ``mesh`` (mode 0600)."""
    data = {"root": mesh.root.public, "seed": member.key.seed(),
            "cert": encode_message(member.cert)}
    write_secret(path, cbor.encode(data))


def load_credentials(path: Path) -> tuple[SigningKey, MeshAuthenticator]:
    data = cbor.decode(path.read_bytes())
    cert = decode_message(data["cert"], MeshCert)
    authenticator = MeshAuthenticator(data["root"], MemoryMembershipRecords(),
                                      lambda: time.time_ns() // 1_000_000, cert)
    return SigningKey(data["seed"]), authenticator


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB (Linux /proc), None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


async def spawn_peer(credentials: Path, *, listen: str = "127.0.0.1:0",
                     extra: list[str] | None = None) -> tuple[trio.Process, str]:
    """Start ``--peer`` in a child process; returns it and the address it listens on."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "meshcloud.transport.benchmark", "--peer", str(credentials),
         "--listen", listen, *(extra or [])],
        stdin=-1, stdout=-1, env={**os.environ, "PYTHONPATH": _project_root()})
    assert process.stdout is not None
    buffer = b""
    try:
        with trio.fail_after(20):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("peer process exited before listening")
                buffer += chunk
    except BaseException:
        process.kill()
        raise
    line = buffer.split(b"\n", 1)[0].decode()
    if not line.startswith("LISTENING "):
        process.kill()
        raise RuntimeError(f"unexpected output from peer process: {line!r}")
    return process, line.split(" ", 1)[1]


def _project_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


async def _peer_main(credentials: Path, listen: str) -> None:
    from meshcloud.transport.tcp import TcpTransport

    key, authenticator = load_credentials(credentials)
    transport = TcpTransport(key, authenticator, listen=[listen])
    serve_benchmark(transport)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        print(f"LISTENING {transport.listen_addresses[0]}", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some(1024):  # run until the parent goes away
            pass
        nursery.cancel_scope.cancel()


async def _measure_main(address: str | None, credentials: Path | None) -> dict[str, Any]:
    from meshcloud.transport.tcp import TcpTransport

    process = None
    with tempfile.TemporaryDirectory() as tmp:
        if credentials is None:
            mesh = TestMesh.with_members(2)
            credentials = Path(tmp) / "me"
            peer_credentials = Path(tmp) / "peer"
            write_credentials(credentials, mesh, mesh.members[0])
            write_credentials(peer_credentials, mesh, mesh.members[1])
            process, address = await spawn_peer(peer_credentials)
        assert address is not None
        key, authenticator = load_credentials(credentials)
        transport = TcpTransport(key, authenticator)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                idle = rss_mib(process.pid) if process is not None else None
                figures = await measure(transport, address)
                if process is not None:
                    figures["peer_idle_rss_mib"] = idle
                    figures["peer_rss_after_mib"] = rss_mib(process.pid)
                figures["local_rss_after_mib"] = rss_mib(os.getpid())
                nursery.cancel_scope.cancel()
        finally:
            if process is not None:
                process.kill()
                await process.wait()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meshcloud.transport.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", type=Path, metavar="FILE", help="serve as the peer")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--measure", metavar="ADDR", help="measure against a running peer")
    parser.add_argument("--credentials", type=Path, metavar="FILE")
    parser.add_argument("--write-credentials", type=Path, metavar="DIR",
                        help="make a two-member test mesh: DIR/a and DIR/b")
    args = parser.parse_args(argv)
    if args.write_credentials is not None:
        mesh = TestMesh.with_members(2)
        for name, member in zip("ab", mesh.members, strict=True):
            write_credentials(args.write_credentials / name, mesh, member)
        print(f"wrote {args.write_credentials / 'a'} and {args.write_credentials / 'b'}")
        return
    if args.peer is not None:
        trio.run(_peer_main, args.peer, args.listen)
        return
    if args.measure is not None and args.credentials is None:
        parser.error("--measure needs --credentials (a member of the peer's mesh)")
    figures = trio.run(_measure_main, args.measure, args.credentials)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
