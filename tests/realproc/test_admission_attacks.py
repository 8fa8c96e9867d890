"""The security review's admission attacks, against real agents on 127.0.0.1.

Each attack was reproduced on the code before certificates became chains (see
docs/security.md): a certificate built from an expired, a used-up or a live token was
accepted by every member, and a one-use invite redeemed through three members at once gave
three certificates. Here each is refused.

The three tests share one mesh of three agents (each start-up is seconds of CPU); the last
revokes the third member, so it runs last, and the agents the first test adds (never
started) are not among the three.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.agents import LocalCluster, wait_until

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def attack(verb: str, token: str, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.realproc.attacks", verb, token,
                             address], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def outcome(process: subprocess.Popen[str]) -> list[str]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out.strip().splitlines()


def _refused(s3) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.get_object(Bucket="photos", Key="a.txt")
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "SignatureDoesNotMatch"
    return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster.create(tmp_path_factory.mktemp("admission"), 3, chain=False) as mesh:
        yield mesh


def connected(agent, other) -> bool:
    return any(p["id"] == other.node_id and p["connected"] for p in agent.get("/v1/peers"))


def test_no_certificate_can_be_forged_from_any_token(cluster):
    a, b, c = cluster.agents[:3]
    used = cluster.invite(a)
    joiner = cluster.new_agent("joiner")
    joiner.cli("join", used, *joiner.node_flags())
    expired = a.post("/v1/invites", {"ttl_s": 0.001, "uses": 1})["token"]
    live = cluster.invite(a)
    members_before = {m["id"] for m in a.get("/v1/members")}
    attacks = [(name, target, attack("forge", token, target.address))  # nine at once
               for name, token in (("expired", expired), ("used", used), ("live", live))
               for target in (a, b, c)]
    for name, target, process in attacks:
        lines = outcome(process)
        assert len(lines) == 4, lines
        for line in lines:
            assert "refused" in line, f"{name} token at {target.name}: {line}"
    assert {m["id"] for m in a.get("/v1/members")} == members_before
    assert all(agent.running for agent in (a, b, c))
    # the admin revokes the live invite by its token: a join with it is refused at once
    a.cli("revoke", live)
    late = cluster.new_agent("late")
    result = late.cli("join", live, *late.node_flags(), check=False)
    assert result.returncode == 1 and "revoked" in result.stderr, result.stderr


def test_three_concurrent_redemptions_of_a_one_use_invite(cluster):
    agents = cluster.agents[:3]
    wait_until(lambda: all(connected(agents[0], x) for x in agents[1:]), 15,
               message="the admin's node connected to both members")
    wait_until(lambda: sum(m["state"] == "alive" for m in agents[0].get("/v1/members")) >= 3,
               15, message="both members alive in the admin's view")
    granted = 0
    for _round in range(3):
        token = cluster.invite(agents[0], uses=1)
        attempts = [attack("redeem", token, agent.address) for agent in agents]
        lines = [outcome(p)[-1] for p in attempts]
        wins = [line for line in lines if line.startswith("certificate")]
        assert len(wins) <= 1, lines
        granted += len(wins)
        for line in lines:
            assert line.startswith(("certificate", "refused: invite refused",
                                    "refused: cannot count this invite")), line
    # the same token can be used by at most one more joiner afterwards, never more
    print(f"certificates from 3 rounds of 3 concurrent redemptions of one-use invites: "
          f"{granted}")


def test_revoking_a_node_cuts_it_off_within_seconds_and_kills_its_s3_keys(cluster):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    a, b, c = cluster.agents[:3]
    wait_until(lambda: connected(a, c) and connected(b, c), 15, message="c connected")
    c.cli("bucket", "create", "photos")
    endpoint = b.get("/v1/status")["storage"]["s3"][0]

    def s3_client(key):
        return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key["access_key"],
                            aws_secret_access_key=key["secret"], region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    grants = {"name": "laptop", "buckets": {"photos": "read,write"}}
    s3 = s3_client(c.post("/v1/storage/keys", grants))
    s3.put_object(Bucket="photos", Key="a.txt", Body=b"hello")
    # a key made through the admin's node, rotated: the old secret stops working
    old = a.post("/v1/storage/keys", {**grants, "name": "phone"})
    new = a.post(f"/v1/storage/keys/{old['access_key']}/rotate", {})
    assert new["access_key"] == old["access_key"] and new["secret"] != old["secret"]
    wait_until(lambda: _refused(s3_client(old)), 10, message="the old secret refused")
    assert s3_client(new).get_object(Bucket="photos", Key="a.txt")["Body"].read() == b"hello"
    started = time.monotonic()
    a.cli("revoke", c.node_id[:12])
    took = wait_until(lambda: not connected(a, c) and not connected(b, c), 5,
                      message="every member cut the revoked node off")
    print(f"revoked node cut off by every member {time.monotonic() - started:.2f} s after "
          f"`meshcloud revoke` ({took:.2f} s of waiting)")
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket="photos", Key="a.txt")
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    # keys made through other members live on
    assert s3_client(new).get_object(Bucket="photos", Key="a.txt")["Body"].read() == b"hello"
    # it cannot come back: its own agent stays out, other members refuse its handshakes
    wait_until(lambda: all(m["id"] != c.node_id or m["state"] != "alive"
                           for m in a.get("/v1/members")), 15,
               message="the revoked node is no longer alive in the admin's view")
    assert not connected(b, c)
    # the only node revoked (the first test revoked an invite on this mesh)
    assert [r["id"] for r in a.get("/v1/revocations") if r["kind"] == "node"] == [c.node_id]
