"""The storage verbs of the CLI against a real agent: buckets, cp both ways, ls, S3 keys."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.real

boto3 = pytest.importorskip("boto3")


def test_bucket_cp_ls_and_key_create(cluster_factory, tmp_path):
    from botocore.config import Config

    cluster = cluster_factory(1)
    agent = cluster.agents[0]
    assert "created bucket docs" in agent.cli("bucket", "create", "docs").stdout
    assert "docs" in agent.cli("bucket", "ls").stdout
    src = tmp_path / "report.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 3))
    agent.cli("cp", str(src), "s3://docs/2024/")
    listing = agent.cli("ls", "s3://docs/").stdout
    assert "PRE" in listing and "2024/" in listing
    assert "2024/report.bin" in agent.cli("ls", "s3://docs/2024/").stdout
    back = tmp_path / "back.bin"
    agent.cli("cp", "s3://docs/2024/report.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    missing = agent.cli("cp", "s3://docs/nope", str(tmp_path / "x"), check=False)
    assert missing.returncode == 1 and "NoSuchKey" in missing.stderr
    created = agent.cli("s3", "key", "create", "laptop", "--bucket", "docs",
                        "--allow", "read").stdout
    key_id = created.split("access key id:")[1].split()[0]
    secret = created.split("secret access key:")[1].split()[0]
    s3 = boto3.client("s3", endpoint_url=agent.info["s3"], aws_access_key_id=key_id,
                      aws_secret_access_key=secret, region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    body = s3.get_object(Bucket="docs", Key="2024/report.bin")["Body"].read()
    assert body == src.read_bytes()
    assert key_id in agent.cli("s3", "key", "ls").stdout
    assert secret not in agent.cli("s3", "key", "ls").stdout
    puts = agent.get("/v1/events?kind=object.put")
    assert any(e["key"] == "2024/report.bin" and e["size"] == src.stat().st_size for e in puts)
    storage = agent.get("/v1/status")["storage"]
    assert storage["shards"] >= 2 and storage["bytes"] >= src.stat().st_size
    refused = agent.cli("bucket", "rm", "docs", check=False)
    assert refused.returncode == 1 and "BucketNotEmpty" in refused.stderr
