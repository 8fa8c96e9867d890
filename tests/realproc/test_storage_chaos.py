"""Real agents, 4+2 (automatic code: 4+2 from six live nodes, three copies below): objects
written while kill -9 hits two agents; every acknowledged
object reads back bit-exact from every survivor; once new nodes join, repair brings every
object back to k+m shards on k+m distinct live nodes.

With two of six dead, one newcomer leaves five live nodes, fewer than the six distinct
holders a 4+2 chunk needs, so two newcomers join (a 7th and an 8th agent)."""

from __future__ import annotations

import hashlib
import random
import threading

import pytest

from sim.agents import LocalCluster, wait_until

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

pytestmark = pytest.mark.real

MIB = 1024 * 1024
ENV = {"MESHCLOUD_BLOB_REPAIR_INTERVAL": "3"}


def sizes(rng: random.Random) -> list[int]:
    # the largest spans four 4 MiB chunks: every multi-chunk path without 64 MiB read
    # back four times; one of 2-3 chunks with a partial last one; forty of one partial
    # chunk (below 1 MiB: the same single-chunk path as up to 4 MiB, a third of the bytes)
    out = [0, 1, 4095, 4096, 4 * MIB, 4 * MIB + 1, 16 * MIB]
    out += [rng.randrange(8 * MIB, 12 * MIB)]
    out += [rng.randrange(64 * 1024, MIB) for _ in range(40)]
    out += [rng.randrange(0, 64 * 1024) for _ in range(200 - len(out))]
    rng.shuffle(out)
    return out


def content(i: int, size: int) -> bytes:
    return random.Random(i).randbytes(size)


def s3_for(agent, key):
    return boto3.client(
        "s3", endpoint_url=agent.info["s3"], aws_access_key_id=key["access_key"],
        aws_secret_access_key=key["secret"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                      retries={"max_attempts": 4, "mode": "standard"},
                      connect_timeout=5, read_timeout=60))


def test_writes_survive_two_kills_and_repair_restores_full_redundancy(tmp_path):
    rng = random.Random(7)
    with LocalCluster.create(tmp_path, 6, chain=False, env=ENV) as cluster:
        admin = cluster.agents[0]
        key = admin.post("/v1/storage/keys", {"name": "chaos", "buckets": {"*": "read,write"}})
        # automatic code: 4+2 while six nodes are live, three copies below that
        admin.post("/v1/storage/buckets", {"name": "chaos"})
        clients = {a.name: s3_for(a, key) for a in cluster.agents}
        victims = rng.sample(cluster.agents[1:], 2)
        plan = sizes(rng)
        kill_at = sorted(rng.sample(range(10, 180), 2))
        acked: dict[str, tuple[int, int, str]] = {}
        failed = []

        def killer(index: int, agent) -> None:
            agent.kill()

        for i, size in enumerate(plan):
            if i in kill_at:
                victim = victims[kill_at.index(i)]
                # kill while a write is in flight: a moment later, from another thread
                threading.Timer(rng.uniform(0, 0.05), killer, (i, victim)).start()
            name = f"obj/{i:03d}"
            data = content(i, size)
            for _attempt in range(3):
                writer = rng.choice([a for a in cluster.agents if a.running])
                try:
                    clients[writer.name].put_object(Bucket="chaos", Key=name, Body=data)
                except (ClientError, BotoCoreError):
                    continue
                acked[name] = (i, size, hashlib.sha256(data).hexdigest())
                break
            else:
                failed.append(name)
        wait_until(lambda: not any(v.running for v in victims), 20, message="victims dead")
        survivors = [a for a in cluster.agents if a.running]
        assert len(survivors) == 4
        assert len(acked) >= 150, f"too few writes acknowledged: {len(acked)} ({failed[:5]})"

        for agent in survivors:
            s3 = clients[agent.name]
            for name, (_i, size, digest) in acked.items():
                body = s3.get_object(Bucket="chaos", Key=name)["Body"].read()
                assert len(body) == size and hashlib.sha256(body).hexdigest() == digest, \
                    f"{name} read through {agent.name}"
        listed = []
        for page in clients[survivors[-1].name].get_paginator("list_objects_v2").paginate(
                Bucket="chaos"):
            listed += [o["Key"] for o in page.get("Contents", [])]
        assert set(acked) <= set(listed)

        # The dead stay dead; two newcomers make six live nodes again.
        cluster.join(through=survivors[1])
        cluster.join(through=survivors[2])

        def restored() -> bool:
            layout = admin.get("/v1/storage/layout/chaos")
            objects = {o["key"]: o for o in layout["objects"]}
            return len(layout["live"]) == 6 and all(objects[n]["complete"] for n in acked)

        took = wait_until(restored, 240, interval=1.0, message="repair to k+m distinct nodes")
        layout = admin.get("/v1/storage/layout/chaos")
        live = set(layout["live"])
        dead = {v.node_id for v in victims}
        for obj in layout["objects"]:
            if obj["key"] not in acked:
                continue
            n = obj["k"] + obj["m"]
            for chunk in obj["chunks"]:
                nodes = [s["node"] for s in chunk["shards"]]
                assert len(nodes) == n and len(set(nodes)) == n and set(nodes) <= live
                assert not set(nodes) & dead
        schemes = {(o["k"], o["m"]) for o in layout["objects"] if o["key"] in acked}
        assert (4, 2) in schemes  # written before the first kill
        rebuilt = sum(a.get("/v1/status")["storage"]["repair"]["shards_rebuilt"]
                      for a in cluster.agents if a.running)
        print(f"acked {len(acked)}, failed {len(failed)}, {rebuilt} shards rebuilt, "
              f"restored {took:.1f} s after the joins")
        assert rebuilt > 0
        # and the repaired objects still read back bit-exact through a newcomer
        newcomer = s3_for(cluster.agents[-1], key)
        for name, (_i, _size, digest) in list(acked.items())[:40]:
            body = newcomer.get_object(Bucket="chaos", Key=name)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == digest
