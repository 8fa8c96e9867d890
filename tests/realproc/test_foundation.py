"""Issue 3 acceptance, with real agent processes talking over real TCP on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from sim.agents import AgentError, wait_until

pytestmark = [pytest.mark.real, pytest.mark.slow]


def connected(agent, other) -> bool:
    peers = agent.get("/v1/peers")
    return any(p["id"] == other.node_id and p["connected"] for p in peers)


def membership_state(agent) -> tuple[str, list]:
    """What admission may change: the invite ledger's grants and the revocations."""
    path = agent.data_dir / "redemption-ledger.json"
    return (path.read_text() if path.exists() else "", agent.get("/v1/revocations"))


def events_of(agent, kind):
    return [e for e in agent.get(f"/v1/events?limit=2000&kind={kind}")]


def test_join_exchange_and_refusals(cluster_factory, tmp_path):
    cluster = cluster_factory(2)
    a, b = cluster.agents
    wait_until(lambda: connected(a, b) and connected(b, a), 10, message="A and B connected")
    # an authenticated message each way, answered by the node we meant
    reply = b.post(f"/v1/peers/{a.node_id}/ping")
    assert reply["peer"] == a.node_id
    reply = a.post(f"/v1/peers/{b.node_id}/ping")
    assert reply["peer"] == b.node_id
    status = json.loads(b.cli("status", "--json").stdout)
    assert status["node"]["id"] == b.node_id
    assert any(p["id"] == a.node_id and p["connected"] for p in status["peers"])

    before = membership_state(a)
    peers_before = {p["id"] for p in a.get("/v1/peers")}

    # a re-used invite: B already used this one
    used = cluster.invite(a)
    first = cluster.new_agent("first")
    first.cli("join", used, *first.node_flags())
    before = membership_state(a)
    reuse = cluster.new_agent("reuse")
    result = reuse.cli("join", used, *reuse.node_flags(), check=False)
    assert result.returncode == 1
    assert "already used" in result.stderr and result.stderr.count("\n") == 1

    # an expired invite
    expired = a.post("/v1/invites", {"ttl_s": 0.001, "uses": 1})["token"]
    late = cluster.new_agent("late")
    result = late.cli("join", expired, *late.node_flags(), check=False)
    assert result.returncode == 1 and "expired" in result.stderr

    # a forged invite: same bootstrap, signed by a key that is not the mesh's
    forged = forge_invite(tmp_path, a.address)
    forger = cluster.new_agent("forger")
    result = forger.cli("join", forged, *forger.node_flags(), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("meshcloud: ") and result.stderr.count("\n") == 1

    # a valid key with no certificate at all, straight at the transport
    result = subprocess.run([sys.executable, "-c", NO_CERT_DIAL, a.address],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:"), result.stdout

    # A's state is unchanged by any refused attempt
    assert membership_state(a) == before
    assert {p["id"] for p in a.get("/v1/peers")} == peers_before
    assert a.running and b.running


def forge_invite(tmp_path, address: str) -> str:
    from meshcloud.clock import SystemClock
    from meshcloud.identity.invites import create_invite
    from meshcloud.identity.keys import SigningKey

    forger = SigningKey.generate()
    return create_invite(forger, now=SystemClock().wall_ms(), ttl_ms=600_000,
                         uses=1, bootstrap=(address,), ledger=(forger.id,)).encode()


NO_CERT_DIAL = """
import sys, trio
from meshcloud.auth import MeshAuthenticator
from meshcloud.clock import SystemClock
from meshcloud.config import NodeConfig
from meshcloud.identity.keys import SigningKey
from meshcloud.membership import MemoryMembershipRecords
from meshcloud.agent.net import tcp_transport
from meshcloud.errors import MeshError

async def main():
    key = SigningKey.generate()
    auth = MeshAuthenticator(key.public, MemoryMembershipRecords(), SystemClock().wall_ms)
    transport = tcp_transport(key, auth, NodeConfig(listen=["127.0.0.1:0"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            with trio.fail_after(10):
                await transport.dial(sys.argv[1])
            print("admitted")
        except MeshError as exc:
            print(f"refused: {exc}")
        except trio.TooSlowError:
            print("timeout")
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def test_kill_9_mid_stream_is_noticed_and_others_still_served(cluster_factory):
    cluster = cluster_factory(3, chain=False)
    a, b, c = cluster.agents
    wait_until(lambda: connected(a, b) and connected(a, c), 10, message="A connected to B, C")
    a.post("/v1/debug/hold", {"peer": b.node_id})
    wait_until(lambda: events_of(a, "stream.opened"), 5, message="stream open")
    killed_at = time.monotonic()
    b.kill()
    elapsed = wait_until(lambda: events_of(a, "stream.ended"), 5,
                         message="A notices the killed peer")
    assert time.monotonic() - killed_at < 5.0
    ended = events_of(a, "stream.ended")[0]
    assert ended["peer"] == b.node_id and ended["after_s"] >= 0
    assert elapsed < 5.0
    assert c.post(f"/v1/peers/{a.node_id}/ping")["peer"] == a.node_id
    assert a.post(f"/v1/peers/{c.node_id}/ping")["peer"] == c.node_id


def test_sigstop_peer_is_marked_dead_within_5s(cluster_factory):
    cluster = cluster_factory(2)
    a, b = cluster.agents
    wait_until(lambda: connected(a, b), 10, message="A connected to B")
    a.post("/v1/debug/hold", {"peer": b.node_id})
    wait_until(lambda: events_of(a, "stream.opened"), 5, message="stream open")
    try:
        frozen_at = time.monotonic()
        b.freeze()
        wait_until(lambda: not connected(a, b), 5, message="A marks frozen B dead")
        assert time.monotonic() - frozen_at < 5.5
        ended = events_of(a, "stream.ended")
        assert ended and ended[0]["peer"] == b.node_id
    finally:
        b.thaw()


def test_agent_shuts_down_cleanly_on_sigterm(cluster_factory):
    cluster = cluster_factory(1)
    (a,) = cluster.agents
    assert a.datadir.runtime_info() is not None
    a.signal(signal.SIGTERM)
    assert a.process.wait(timeout=15) == 0
    assert a.datadir.runtime_info() is None
    log = (a.data_dir / "logs" / "agent.log").read_text().splitlines()
    entries = [json.loads(line) for line in log]
    assert any(e["msg"] == "node stopped" for e in entries)
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    token = a.datadir.api_token()
    assert token not in "\n".join(log)


def test_second_agent_on_same_data_dir_is_refused(cluster_factory):
    cluster = cluster_factory(1)
    (a,) = cluster.agents
    result = a.cli("up", check=False, timeout=30)
    assert result.returncode == 1 and "already running" in result.stderr


def test_unreachable_agent_gives_one_clear_line(tmp_path):
    from sim.agents import meshcloud_cmd

    result = meshcloud_cmd(tmp_path / "nothing", "status", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("meshcloud: ") and result.stderr.count("\n") == 1
    with pytest.raises(AgentError):
        meshcloud_cmd(tmp_path / "nothing", "status")
