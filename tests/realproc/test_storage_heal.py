"""Real agents: objects written during an outage return to their target layout.

A 3-node mesh with one node down writes two copies (only two nodes are live); a 6-node
mesh with two nodes down writes three copies (4+2 needs six). Once the nodes are back the
repair worker re-encodes every such object to the mesh's target (three copies, 4+2), the
count of objects below target (layout API and every agent's status) falls to 0, and every
object still reads back bit-exact. GC then drops the old layouts: the shards stored on
all agents are exactly those the manifests list."""

from __future__ import annotations

import hashlib
import random

import pytest

from sim.agents import LocalCluster, wait_until

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

pytestmark = pytest.mark.real

KIB = 1024
MIB = 1024 * KIB
ENV = {"MESHCLOUD_BLOB_REPAIR_INTERVAL": "2", "MESHCLOUD_BLOB_GC_GRACE": "8",
       "MESHCLOUD_BLOB_GC_INTERVAL": "3"}
"""Short GC grace: the old layouts' shards, unreferenced once re-encoded, go within about
20 s (a shard goes once it is past the grace and still unreferenced a grace later; the
writes and re-encodes here commit their manifests within a second or two of storing)."""
SIZES = [5 * KIB, 64 * KIB, 300 * KIB, MIB, 4 * MIB + 7, 9 * MIB]


def s3_for(agent, key):
    return boto3.client(
        "s3", endpoint_url=agent.info["s3"], aws_access_key_id=key["access_key"],
        aws_secret_access_key=key["secret"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries={"max_attempts": 4, "mode": "standard"},
                      connect_timeout=5, read_timeout=60))


def below_target_counts(agents) -> list[int | None]:
    return [a.get("/v1/status")["storage"]["repair"]["objects_below_target"] for a in agents]


def outage_then_heal(tmp_path, nodes: int, down: int, during: tuple[str, str],
                     target: tuple[int, int]) -> None:
    rng = random.Random(nodes)
    with LocalCluster.create(tmp_path, nodes, chain=False, env=ENV) as cluster:
        admin = cluster.agents[0]
        key = admin.post("/v1/storage/keys", {"name": "heal", "buckets": {"*": "read,write"}})
        admin.post("/v1/storage/buckets", {"name": "heal"})
        wait_until(lambda: len(admin.get("/v1/storage/layout/heal")["live"]) == nodes, 60,
                   interval=0.5, message="every node live")
        written: dict[str, str] = {}
        s3 = s3_for(admin, key)
        for i, size in enumerate(SIZES[:2]):  # before the outage: already at target
            data = random.Random(i).randbytes(size)
            s3.put_object(Bucket="heal", Key=f"before/{i}", Body=data)
            written[f"before/{i}"] = hashlib.sha256(data).hexdigest()

        victims = cluster.agents[-down:]
        for victim in victims:
            victim.kill()
        survivors = cluster.agents[:nodes - down]
        # every writer must see the outage: one that still counts a victim live writes
        # the object at the full layout's code
        wait_until(lambda: all(len(a.get("/v1/storage/layout/heal")["live"]) == nodes - down
                               for a in survivors), 60, interval=0.5, message="the outage seen")
        for i, size in enumerate(SIZES):
            name = f"during/{i}"
            data = random.Random(100 + i).randbytes(size)
            for _attempt in range(3):
                writer = rng.choice(survivors)
                try:
                    s3_for(writer, key).put_object(Bucket="heal", Key=name, Body=data)
                except (ClientError, BotoCoreError):
                    continue
                written[name] = hashlib.sha256(data).hexdigest()
                break
        assert len(written) == 2 + len(SIZES), sorted(written)
        layout = admin.get("/v1/storage/layout/heal")
        codes = {o["key"]: o["code"] for o in layout["objects"]}
        assert all(codes[f"during/{i}"] == during[0] for i in range(len(SIZES))), codes
        before = layout["below_target"]
        assert before >= len(SIZES) - 1  # the 5 KiB object may be inline: at target
        assert layout["target"] == during[1]

        for victim in victims:
            victim.start()

        def healed() -> bool:
            layout = admin.get("/v1/storage/layout/heal")
            return len(layout["live"]) == nodes and layout["below_target"] == 0

        took = wait_until(healed, 300, interval=1.0, message="every object at its target")
        # every agent's repair worker agrees after a full pass of its own
        passes = {a.name: a.get("/v1/status")["storage"]["repair"]["passes"]
                  for a in cluster.agents}

        def counted() -> bool:
            status = [a.get("/v1/status")["storage"]["repair"] for a in cluster.agents]
            return all(s["passes"] >= passes[a.name] + 2 and s["objects_below_target"] == 0
                       for a, s in zip(cluster.agents, status, strict=True))

        wait_until(counted, 120, interval=1.0, message="every agent counts 0 below target")
        layout = admin.get("/v1/storage/layout/heal")
        live = set(layout["live"])
        for obj in layout["objects"]:
            assert obj["at_target"], obj["key"]
            if obj["inline"]:
                continue
            assert (obj["k"], obj["m"]) == target, obj["key"]
            n = obj["k"] + obj["m"]
            for chunk in obj["chunks"]:
                holders = {s["node"] for s in chunk["shards"]}
                assert len(chunk["shards"]) == n and len(holders) == n and holders <= live
        per_agent = [a.get("/v1/status")["storage"]["repair"]["objects_reencoded"]
                     for a in cluster.agents]
        reencoded = sum(per_agent)
        assert reencoded >= len(SIZES) - 1
        for name, digest in written.items():
            body = s3_for(victims[0], key).get_object(Bucket="heal", Key=name)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == digest, name
        expected = sum(len(o["chunks"]) * (o["k"] + o["m"]) for o in layout["objects"])

        def stored() -> int:
            return sum(a.get("/v1/status")["storage"]["shards"] for a in cluster.agents)

        extra = stored() - expected
        dropped = wait_until(lambda: stored() == expected, 240, interval=1.0,
                             message="the old layouts dropped by GC")
        after = below_target_counts(cluster.agents)
        print(f"{nodes} nodes, {down} down: {before} objects below target before the nodes "
              f"came back, {reencoded} re-encoded {per_agent}, at target {took:.1f} s after; "
              f"below target per agent now {after}; {extra} old shards dropped by GC "
              f"{dropped:.1f} s later")


def test_three_node_mesh_raises_two_copies_to_three_after_an_outage(tmp_path):
    outage_then_heal(tmp_path, 3, 1, ("r2", "r3"), (1, 2))


def test_six_node_mesh_reencodes_three_copies_to_4_plus_2_after_an_outage(tmp_path):
    outage_then_heal(tmp_path, 6, 2, ("r3", "4+2"), (4, 2))
