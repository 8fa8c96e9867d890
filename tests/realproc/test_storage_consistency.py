"""Read-your-writes through the S3 API of real agents (boto3): a PUT, an overwrite, a
multipart upload or a DELETE acknowledged by one node is what a GET, HEAD or
ListObjectsV2 through any other node returns at once, also right after a node restarted
(its clock resumes at its persisted HLC ceiling, ahead of the others)."""

from __future__ import annotations

import hashlib
import random

import pytest

from sim.agents import LocalCluster, wait_until

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

pytestmark = pytest.mark.real

N = 4
MIB = 1024 * 1024


def all_alive(cluster: LocalCluster) -> bool:
    return all(sum(m["state"] == "alive" for m in agent.get("/v1/members")) == N
               for agent in cluster.agents)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    cluster = LocalCluster.create(tmp_path_factory.mktemp("rywmesh"), N, chain=False)
    try:
        wait_until(lambda: all_alive(cluster), 90, interval=0.2, message="every member alive")
        key = cluster.agents[0].post("/v1/storage/keys", {
            "name": "tests", "buckets": {"*": "read,write"}, "create_buckets": True})
        yield cluster, key
    finally:
        cluster.close()


def client(agent, key):
    return boto3.client(
        "s3", endpoint_url=agent.info["s3"], aws_access_key_id=key["access_key"],
        aws_secret_access_key=key["secret"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      signature_version="s3v4"))


def body(s3, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchKey":
            return None
        raise


def etag_of(s3, bucket: str, key: str) -> str | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return None
        raise


def listing(s3, bucket: str) -> dict[str, str]:
    out = s3.list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["ETag"].strip('"') for o in out.get("Contents", [])}


def check_everywhere(clients, writer, bucket: str, expected: dict[str, bytes], key: str,
                     what: str) -> None:
    want = expected.get(key)
    for s3 in clients:
        if s3 is writer:
            continue
        assert body(s3, bucket, key) == want, what
        assert etag_of(s3, bucket, key) == (None if want is None else
                                            hashlib.md5(want).hexdigest()), what
        assert {k: v for k, v in listing(s3, bucket).items()} == {
            k: hashlib.md5(v).hexdigest() for k, v in expected.items()}, what


def test_put_overwrite_delete_through_one_node_read_at_once_through_the_others(mesh):
    cluster, key = mesh
    clients = [client(agent, key) for agent in cluster.agents]
    clients[0].create_bucket(Bucket="ryw")
    rng = random.Random(7)
    expected: dict[str, bytes] = {}
    for step in range(16):
        writer = clients[step % N]
        name = f"backup/k{rng.randrange(3)}"
        if name in expected and rng.random() < 0.3:
            writer.delete_object(Bucket="ryw", Key=name)
            expected.pop(name)
            what = f"step {step}: delete {name}"
        else:  # small ones inline in the record, others in shards
            data = rng.randbytes(rng.choice([100, 70_000])) + bytes([step])
            writer.put_object(Bucket="ryw", Key=name, Body=data)
            expected[name] = data
            what = f"step {step}: put {name}"
        check_everywhere(clients, writer, "ryw", expected, name, what)
    # a multipart upload started through one node, completed through another
    start = clients[1].create_multipart_upload(Bucket="ryw", Key="backup/big")
    parts = []
    data = b""
    for number, s3 in ((1, clients[1]), (2, clients[2])):
        piece = rng.randbytes(5 * MIB if number == 1 else 1000)
        done = s3.upload_part(Bucket="ryw", Key="backup/big", UploadId=start["UploadId"],
                              PartNumber=number, Body=piece)
        parts.append({"PartNumber": number, "ETag": done["ETag"]})
        data += piece
    clients[3].complete_multipart_upload(Bucket="ryw", Key="backup/big",
                                         UploadId=start["UploadId"],
                                         MultipartUpload={"Parts": parts})
    for s3 in clients[:3]:
        assert body(s3, "ryw", "backup/big") == data
        assert "backup/big" in listing(s3, "ryw")
        assert s3.list_multipart_uploads(Bucket="ryw").get("Uploads", []) == []


def test_writes_through_other_nodes_win_right_after_a_node_restarted(mesh):
    cluster, key = mesh
    restarted = cluster.agents[N - 1]
    restarted.stop()
    restarted.start()
    wait_until(lambda: all_alive(cluster), 90, interval=0.2, message="restarted node alive")
    clients = [client(agent, key) for agent in cluster.agents]
    again = clients[N - 1]
    again.create_bucket(Bucket="restarted")
    for round_ in range(4):
        name = f"backup.info.{round_}"
        again.put_object(Bucket="restarted", Key=name, Body=b"from the restarted node")
        newer = f"through node {round_ % (N - 1)}".encode()
        clients[round_ % (N - 1)].put_object(Bucket="restarted", Key=name, Body=newer)
        for s3 in clients:
            assert body(s3, "restarted", name) == newer, name
        clients[(round_ + 1) % (N - 1)].delete_object(Bucket="restarted", Key=name)
        for s3 in clients:
            assert body(s3, "restarted", name) is None, name
            assert name not in listing(s3, "restarted")
