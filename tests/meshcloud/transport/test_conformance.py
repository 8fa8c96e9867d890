"""Every transport passes the same suite: the in-memory one under trio's autojump clock,
the TCP one over real loopback sockets."""

from __future__ import annotations

import pytest

from meshcloud.transport.conformance import CHECKS, Harness, run_check
from meshcloud.transport.memory import MemoryNetwork
from meshcloud.transport.tcp import TcpTransport


def memory_harness() -> Harness:
    network = MemoryNetwork(latency=0.002)

    async def start(nursery, key, authenticator):
        transport = network.add(key, authenticator)
        await nursery.start(transport.run)
        return transport

    return Harness("memory", start, block_timeout=1.0)


def tcp_harness() -> Harness:
    async def start(nursery, key, authenticator):
        transport = TcpTransport(key, authenticator)
        await nursery.start(transport.run)
        return transport

    return Harness("tcp", start, block_timeout=0.3)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_memory_transport(check, autojump_clock):
    await run_check(memory_harness(), check)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_tcp_transport(check):
    await run_check(tcp_harness(), check)
