"""GC on a real agent: shards of overwritten and deleted objects are collected after the
grace period (set to zero here), shards of live objects never."""

from __future__ import annotations

import os

import pytest

from sim.agents import wait_until

pytestmark = pytest.mark.real

boto3 = pytest.importorskip("boto3")

ENV = {"MESHCLOUD_BLOB_GC_GRACE": "0", "MESHCLOUD_BLOB_GC_INTERVAL": "1"}


def test_unreferenced_shards_are_collected_and_live_ones_kept(cluster_factory):
    from botocore.config import Config

    cluster = cluster_factory(1, env=ENV)
    agent = cluster.agents[0]
    key = agent.post("/v1/storage/keys", {"name": "gc", "buckets": {"*": "read,write"}})
    agent.post("/v1/storage/buckets", {"name": "gcbucket"})
    s3 = boto3.client("s3", endpoint_url=agent.info["s3"], aws_access_key_id=key["access_key"],
                      aws_secret_access_key=key["secret"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    keep = os.urandom(5 * 1024 * 1024)
    s3.put_object(Bucket="gcbucket", Key="keep", Body=keep)
    s3.put_object(Bucket="gcbucket", Key="overwritten", Body=os.urandom(64 * 1024))
    s3.put_object(Bucket="gcbucket", Key="overwritten", Body=b"v2" * 40_000)
    s3.put_object(Bucket="gcbucket", Key="deleted", Body=os.urandom(100_000))
    s3.delete_object(Bucket="gcbucket", Key="deleted")
    upload = s3.create_multipart_upload(Bucket="gcbucket", Key="abandoned")["UploadId"]
    s3.upload_part(Bucket="gcbucket", Key="abandoned", UploadId=upload, PartNumber=1,
                   Body=os.urandom(70_000))
    s3.abort_multipart_upload(Bucket="gcbucket", Key="abandoned", UploadId=upload)
    # keep: 2 chunks, overwritten v2: 1 chunk (1 copy each on a one-node mesh)
    live = 3

    def collected() -> bool:
        return agent.get("/v1/status")["storage"]["shards"] == live

    wait_until(collected, 30, interval=0.5, message="garbage shards collected")
    status = agent.get("/v1/status")["storage"]["gc"]
    assert status["deleted"] == 3 and status["errors"] == 0
    assert agent.get("/v1/events?kind=gc.deleted")
    assert s3.get_object(Bucket="gcbucket", Key="keep")["Body"].read() == keep
    assert s3.get_object(Bucket="gcbucket", Key="overwritten")["Body"].read() == b"v2" * 40_000
