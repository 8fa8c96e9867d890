"""S3 acceptance on a 3-node mesh of real agents: boto3 and the aws CLI (path style),
multipart with ranged reads (bit-exact), hostile input, bounded memory on a big upload."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest

from sim.agents import LocalCluster

boto3 = pytest.importorskip("boto3")
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

pytestmark = pytest.mark.real

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    cluster = LocalCluster.create(tmp_path_factory.mktemp("s3mesh"), 3, chain=False)
    try:
        admin = cluster.agents[0]
        key = admin.post("/v1/storage/keys", {"name": "tests", "buckets": {"*": "read,write"},
                                              "create_buckets": True})
        yield cluster, key
    finally:
        cluster.close()


def client(agent, key, **config):
    return boto3.client(
        "s3", endpoint_url=agent.info["s3"], aws_access_key_id=key["access_key"],
        aws_secret_access_key=key["secret"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                      signature_version="s3v4",
                      **config))


def code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def test_bucket_and_object_operations_with_boto3(mesh):
    cluster, key = mesh
    a, b, c = (client(agent, key) for agent in cluster.agents)
    a.create_bucket(Bucket="photos")
    b.head_bucket(Bucket="photos")
    again = c.create_bucket(Bucket="photos")  # your own bucket again: 200 in us-east-1
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "photos" in [x["Name"] for x in c.list_buckets()["Buckets"]]
    data = os.urandom(3 * MIB + 123)
    put = a.put_object(Bucket="photos", Key="2024/cat.jpg", Body=data, ContentType="image/jpeg",
                       Metadata={"camera": "pi"})
    assert put["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    head = c.head_object(Bucket="photos", Key="2024/cat.jpg")
    assert head["ContentLength"] == len(data) and head["ContentType"] == "image/jpeg"
    assert head["Metadata"] == {"camera": "pi"}
    assert b.get_object(Bucket="photos", Key="2024/cat.jpg")["Body"].read() == data
    for spec, want in [("bytes=0-0", data[:1]), ("bytes=100-4194400", data[100:4194401]),
                       ("bytes=-10", data[-10:]), (f"bytes={len(data) - 5}-", data[-5:])]:
        got = c.get_object(Bucket="photos", Key="2024/cat.jpg", Range=spec)
        assert got["Body"].read() == want and got["ResponseMetadata"]["HTTPStatusCode"] == 206
    with pytest.raises(ClientError) as err:
        a.get_object(Bucket="photos", Key="2024/cat.jpg", Range=f"bytes={len(data)}-")
    assert code(err.value) == "InvalidRange"
    etag = put["ETag"]
    with pytest.raises(ClientError) as err:
        a.get_object(Bucket="photos", Key="2024/cat.jpg", IfNoneMatch=etag)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as err:
        a.get_object(Bucket="photos", Key="2024/cat.jpg", IfMatch='"0000"')
    assert code(err.value) == "PreconditionFailed"
    later = datetime.now(UTC) + timedelta(days=1)
    with pytest.raises(ClientError) as err:
        a.get_object(Bucket="photos", Key="2024/cat.jpg", IfModifiedSince=later)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as err:
        a.put_object(Bucket="photos", Key="2024/cat.jpg", Body=b"x", IfNoneMatch="*")
    assert code(err.value) == "PreconditionFailed"
    # copy, keeping and replacing metadata
    b.copy_object(Bucket="photos", Key="copy.jpg",
                  CopySource={"Bucket": "photos", "Key": "2024/cat.jpg"})
    assert c.head_object(Bucket="photos", Key="copy.jpg")["Metadata"] == {"camera": "pi"}
    b.copy_object(Bucket="photos", Key="copy2.jpg", MetadataDirective="REPLACE",
                  Metadata={"x": "y"}, ContentType="text/plain",
                  CopySource={"Bucket": "photos", "Key": "2024/cat.jpg"})
    head = a.head_object(Bucket="photos", Key="copy2.jpg")
    assert head["Metadata"] == {"x": "y"} and head["ContentType"] == "text/plain"
    assert a.get_object(Bucket="photos", Key="copy2.jpg")["Body"].read() == data
    # empty object, unicode key
    a.put_object(Bucket="photos", Key="empty", Body=b"")
    assert c.get_object(Bucket="photos", Key="empty")["Body"].read() == b""
    a.put_object(Bucket="photos", Key="été/ß €.txt", Body=b"u")
    assert b.get_object(Bucket="photos", Key="été/ß €.txt")["Body"].read() == b"u"
    # delete and multi-delete
    a.delete_object(Bucket="photos", Key="copy.jpg")
    with pytest.raises(ClientError) as err:
        b.head_object(Bucket="photos", Key="copy.jpg")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    result = c.delete_objects(Bucket="photos", Delete={"Objects": [
        {"Key": "copy2.jpg"}, {"Key": "empty"}, {"Key": "never-was"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["copy2.jpg", "empty", "never-was"]
    keys = [o["Key"] for o in a.list_objects_v2(Bucket="photos")["Contents"]]
    assert keys == ["2024/cat.jpg", "été/ß €.txt"]
    with pytest.raises(ClientError) as err:
        a.delete_bucket(Bucket="photos")
    assert code(err.value) == "BucketNotEmpty"


def test_listing_v1_v2_with_prefix_delimiter_and_paging(mesh):
    cluster, key = mesh
    a, b = client(cluster.agents[0], key), client(cluster.agents[1], key)
    a.create_bucket(Bucket="listing")
    names = [f"dir{d}/file{i:02d}" for d in range(3) for i in range(7)] + ["top", "z" * 700]
    for name in names:
        a.put_object(Bucket="listing", Key=name, Body=name.encode())
    pages = b.get_paginator("list_objects_v2").paginate(Bucket="listing",
                                                        PaginationConfig={"PageSize": 4})
    seen = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert seen == sorted(names)
    top = b.list_objects_v2(Bucket="listing", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir0/", "dir1/", "dir2/"]
    assert [o["Key"] for o in top["Contents"]] == ["top", "z" * 700]
    sub = a.list_objects_v2(Bucket="listing", Prefix="dir1/", MaxKeys=3,
                            StartAfter="dir1/file02")
    assert [o["Key"] for o in sub["Contents"]] == ["dir1/file03", "dir1/file04", "dir1/file05"]
    assert sub["IsTruncated"]
    v1 = b.list_objects(Bucket="listing", Prefix="dir2/", Marker="dir2/file04")
    assert [o["Key"] for o in v1["Contents"]] == ["dir2/file05", "dir2/file06"]
    v1p = list(b.get_paginator("list_objects").paginate(Bucket="listing", Delimiter="/",
                                                        PaginationConfig={"PageSize": 2}))
    assert [p["Prefix"] for page in v1p for p in page.get("CommonPrefixes", [])] == \
        ["dir0/", "dir1/", "dir2/"]
    with pytest.raises(ClientError) as err:
        a.list_objects_v2(Bucket="listing", ContinuationToken="forged")
    assert code(err.value) == "InvalidArgument"


def test_multipart_100_mib_and_ranged_reads_bit_exact(mesh):
    cluster, key = mesh
    a, b, c = (client(agent, key) for agent in cluster.agents)
    a.create_bucket(Bucket="big")
    part_size = 20 * MIB
    parts_data = [os.urandom(part_size) for _ in range(5)]
    upload = a.create_multipart_upload(Bucket="big", Key="blob.bin",
                                       ContentType="application/x-test")
    uid = upload["UploadId"]
    other = b.create_multipart_upload(Bucket="big", Key="aborted.bin")["UploadId"]
    listed = c.list_multipart_uploads(Bucket="big")
    assert {u["UploadId"] for u in listed["Uploads"]} == {uid, other}
    etags = []
    for i, chunk in enumerate(parts_data, 1):
        agent_client = (a, b, c)[i % 3]  # parts through different nodes
        etags.append(agent_client.upload_part(Bucket="big", Key="blob.bin", UploadId=uid,
                                              PartNumber=i, Body=chunk)["ETag"])
    assert [p["PartNumber"] for p in
            b.list_parts(Bucket="big", Key="blob.bin", UploadId=uid)["Parts"]] == [1, 2, 3, 4, 5]
    with pytest.raises(ClientError) as err:
        a.complete_multipart_upload(Bucket="big", Key="blob.bin", UploadId=uid,
                                    MultipartUpload={"Parts": [
                                        {"PartNumber": 2, "ETag": etags[1]},
                                        {"PartNumber": 1, "ETag": etags[0]}]})
    assert code(err.value) == "InvalidPartOrder"
    done = c.complete_multipart_upload(
        Bucket="big", Key="blob.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e}
                                   for i, e in enumerate(etags, 1)]})
    assert done["ETag"].strip('"').endswith("-5")
    b.abort_multipart_upload(Bucket="big", Key="aborted.bin", UploadId=other)
    assert not c.list_multipart_uploads(Bucket="big").get("Uploads")
    whole = b"".join(parts_data)
    digest = hashlib.sha256(a.get_object(Bucket="big", Key="blob.bin")["Body"].read())
    assert digest.digest() == hashlib.sha256(whole).digest()
    for start, end in [(0, 99), (part_size - 10, part_size + 10), (4 * MIB - 1, 4 * MIB),
                       (len(whole) - 1000, len(whole) - 1), (33 * MIB + 7, 71 * MIB + 3)]:
        got = c.get_object(Bucket="big", Key="blob.bin", Range=f"bytes={start}-{end}")
        assert got["Body"].read() == whole[start:end + 1]
    part3 = b.get_object(Bucket="big", Key="blob.bin", PartNumber=3)
    assert part3["Body"].read() == parts_data[2]
    assert b.head_object(Bucket="big", Key="blob.bin")["ContentLength"] == 100 * MIB


def test_presigned_urls_and_permissions(mesh):
    cluster, key = mesh
    agent = cluster.agents[1]
    a = client(agent, key)
    a.create_bucket(Bucket="shared")
    a.put_object(Bucket="shared", Key="doc", Body=b"hello")
    url = a.generate_presigned_url("get_object", Params={"Bucket": "shared", "Key": "doc"},
                                   ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"hello"
    signed_long_ago = (datetime.now(UTC) - timedelta(minutes=10)).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=signed_long_ago):
        expired = a.generate_presigned_url("get_object",
                                           Params={"Bucket": "shared", "Key": "doc"},
                                           ExpiresIn=60)  # signed 10 min ago: expired
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(expired, timeout=10)
    assert err.value.code == 403 and b"AccessDenied" in err.value.read()
    reader = agent.post("/v1/storage/keys", {"name": "reader", "buckets": {"shared": "read"}})
    r = client(agent, reader)
    assert r.get_object(Bucket="shared", Key="doc")["Body"].read() == b"hello"
    for call in (lambda: r.put_object(Bucket="shared", Key="doc", Body=b"evil"),
                 lambda: r.delete_object(Bucket="shared", Key="doc"),
                 lambda: r.list_objects_v2(Bucket="photos"),
                 lambda: r.create_bucket(Bucket="mine")):
        with pytest.raises(ClientError) as err:
            call()
        assert code(err.value) == "AccessDenied"
    assert a.get_object(Bucket="shared", Key="doc")["Body"].read() == b"hello"
    assert [x["Name"] for x in r.list_buckets()["Buckets"]] == ["shared"]


def raw_request(url: str, method: str, path: str, key, *, body: bytes = b"",
                headers: dict[str, str] | None = None, sign: bool = True,
                secret: str | None = None) -> tuple[int, bytes]:
    """A hand-made request, signed with botocore's signer over exactly these bytes."""
    request = AWSRequest(method=method, url=url + path, data=body, headers=headers or {})
    if sign:
        creds = Credentials(key["access_key"], secret or key["secret"])
        request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    prepared = request.prepare()
    http = urllib.request.Request(prepared.url, data=body or None, method=method,
                                  headers=dict(prepared.headers.items()))
    try:
        with urllib.request.urlopen(http, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_hostile_input_gets_s3_errors_and_changes_nothing(mesh):
    import socket

    cluster, key = mesh
    agent = cluster.agents[2]
    url = agent.info["s3"]
    s3 = client(agent, key)
    s3.create_bucket(Bucket="hostile")
    s3.put_object(Bucket="hostile", Key="keep", Body=b"original")

    def listing() -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket="hostile").get("Contents", [])]

    status, body = raw_request(url, "PUT", "/hostile/keep", key, body=b"evil",
                               secret="wrong" * 8)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, body = raw_request(url, "PUT", "/hostile/x", key, body=b"a", sign=False)
    assert status == 403 and b"AccessDenied" in body
    for bad_path, error in [("/hostile/a/../b", b"InvalidArgument"),
                            ("/hostile/a%00b", b"InvalidArgument"),
                            ("/hostile/" + "k" * 1100, b"KeyTooLongError"),
                            ("/hostile/..", b"InvalidArgument")]:
        status, body = raw_request(url, "PUT", bad_path, key, body=b"x")
        assert status == 400 and error in body, (bad_path, body)
    status, body = raw_request(url, "PUT", "/hostile/md5", key, body=b"payload",
                               headers={"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg=="})
    assert status == 400 and b"BadDigest" in body
    status, body = raw_request(url, "PUT", "/hostile/md5", key, body=b"payload",
                               headers={"Content-MD5": "not-base64!"})
    assert status == 400 and b"InvalidDigest" in body
    host = url.split("//")[1]
    # a body signed for 1 MiB whose sender stops half-way
    for declared, sent, error in [(MIB, 1000, None), (6 * 1024**3, 10, b"EntityTooLarge")]:
        request = AWSRequest(method="PUT", url=f"{url}/hostile/cut", data=b"",
                             headers={"Content-Length": str(declared),
                                      "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
        S3SigV4Auth(Credentials(key["access_key"], key["secret"]), "s3",
                  "us-east-1").add_auth(request)
        with socket.create_connection(tuple(host.rsplit(":", 1)), timeout=10) as sock:
            head = f"PUT /hostile/cut HTTP/1.1\r\nHost: {host}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
            sock.sendall(head.encode() + b"\r\n" + b"x" * sent)
            if error is not None:
                reply = b""
                while b"</Error>" not in reply:
                    more = sock.recv(65536)
                    if not more:
                        break
                    reply += more
                assert b"413" in reply.split(b"\r\n")[0] or b"400" in reply.split(b"\r\n")[0]
                assert error in reply
            sock.shutdown(socket.SHUT_WR)  # the body stops short
            try:  # the server is done with the request once it closes the connection
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    assert listing() == ["keep"]
    assert s3.get_object(Bucket="hostile", Key="keep")["Body"].read() == b"original"
    status, body = raw_request(url, "PUT", "/Bad_Bucket", key)
    assert status == 400 and b"InvalidBucketName" in body
    status, body = raw_request(url, "POST", "/hostile?delete", key,
                               body=b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "x">]>'
                                    b"<Delete><Object><Key>keep</Key></Object></Delete>",
                               headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    assert status == 400 and (b"MalformedXML" in body or b"BadDigest" in body)
    assert listing() == ["keep"]


def test_aws_cli_path_style(mesh, tmp_path):
    aws = shutil.which("aws") or str(Path(sys.executable).parent / "aws")
    assert Path(aws).exists(), "the aws CLI (awscli, a test dependency) is missing: run ./dev setup"
    cluster, key = mesh
    agent = cluster.agents[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key["access_key"],
           "AWS_SECRET_ACCESS_KEY": key["secret"], "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "config"), "AWS_EC2_METADATA_DISABLED": "true"}
    (tmp_path / "config").write_text("[default]\ns3 =\n    addressing_style = path\n")

    def run(*args: str) -> str:
        done = subprocess.run([aws, "--endpoint-url", agent.info["s3"], *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("s3", "mb", "s3://cli-bucket")
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from the aws cli\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MIB + 5))  # over the CLI's 8 MiB multipart threshold
    run("s3", "cp", str(small), "s3://cli-bucket/docs/small.txt")
    run("s3", "cp", str(big), "s3://cli-bucket/big.bin")
    listing = run("s3", "ls", "s3://cli-bucket/", "--recursive")
    assert "docs/small.txt" in listing and "big.bin" in listing
    run("s3", "cp", "s3://cli-bucket/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    run("s3api", "get-object", "--bucket", "cli-bucket", "--key", "big.bin", "--range",
        "bytes=10-19", str(tmp_path / "range.bin"))
    assert (tmp_path / "range.bin").read_bytes() == big.read_bytes()[10:20]
    assert "cli-bucket" in run("s3", "ls")
    run("s3", "rm", "s3://cli-bucket/", "--recursive")
    run("s3", "rb", "s3://cli-bucket")
    assert "cli-bucket" not in run("s3", "ls")


def test_big_upload_streams_in_bounded_memory(mesh, tmp_path):
    import threading

    cluster, key = mesh
    agent = cluster.agents[0]
    s3 = client(agent, key)
    s3.create_bucket(Bucket="stream")
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        for _ in range(24):
            fh.write(os.urandom(16 * MIB))  # 384 MiB
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:  # anonymous memory (LMDB's file-backed map pages do not count)
        while not done.is_set():
            samples.append(_rss_anon(agent.pid))
            done.wait(0.02)  # a sample every 20 ms until the transfer ends

    before = _rss_anon(agent.pid)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(path, "rb") as fh:
            s3.put_object(Bucket="stream", Key="big", Body=fh)
        body = s3.get_object(Bucket="stream", Key="big")["Body"]
        digest = hashlib.sha256()
        for piece in iter(lambda: body.read(MIB), b""):
            digest.update(piece)
    finally:
        done.set()
        sampler.join()
    want = hashlib.sha256()
    with open(path, "rb") as fh:
        for piece in iter(lambda: fh.read(16 * MIB), b""):
            want.update(piece)
    assert digest.digest() == want.digest()
    # The agent held a bounded window (a few chunks in flight), never the 384 MiB object.
    assert max(samples) - before < 192 * MIB, (before, max(samples))


def _rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def chunked_put(url: str, path: str, key, data: bytes, *, piece: int = 65536,
                tamper: bool = False, content_encoding: str = "aws-chunked"
                ) -> tuple[int, bytes]:
    """PUT with an aws-chunked body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), chunk signatures
    chained from the seed signature as the S3 reference describes."""
    import http.client

    from blobstore.s3.request import S3Request
    from blobstore.s3.sigv4 import (
        EMPTY_SHA256,
        canonical_request,
        sign,
        signing_key,
        string_to_sign,
    )

    host = url.split("//")[1]
    now = datetime.now(UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/us-east-1/s3/aws4_request"
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)] + [b""]
    encoded_length = sum(len(f"{len(p):x};chunk-signature=") + 64 + 4 + len(p) for p in pieces)
    headers = [("host", host), ("content-encoding", content_encoding),
               ("content-length", str(encoded_length)),
               ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
               ("x-amz-date", amz_date), ("x-amz-decoded-content-length", str(len(data)))]
    signed = tuple(sorted(name for name, _ in headers))
    request = S3Request("PUT", path, "", tuple(headers))
    secret_key = signing_key(key["secret"], day, "us-east-1", "s3")
    seed = sign(secret_key, string_to_sign(amz_date, scope, canonical_request(
        request, signed, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")))
    previous, body = seed, bytearray()
    for index, chunk in enumerate(pieces):
        signature = sign(secret_key, "\n".join([
            "AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA256,
            hashlib.sha256(chunk).hexdigest()]))
        previous = signature
        if tamper and index == 1:
            chunk = b"X" + chunk[1:]
        body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + chunk + b"\r\n"
    authorization = (f"AWS4-HMAC-SHA256 Credential={key['access_key']}/{scope}, "
                     f"SignedHeaders={';'.join(signed)}, Signature={seed}")
    connection = http.client.HTTPConnection(host, timeout=30)
    connection.request("PUT", path, body=bytes(body),
                       headers={**dict(headers), "authorization": authorization})
    response = connection.getresponse()
    return response.status, response.read()


def test_aws_chunked_upload_end_to_end(mesh):
    cluster, key = mesh
    agent = cluster.agents[0]
    s3 = client(cluster.agents[2], key)
    s3.create_bucket(Bucket="chunked")
    data = os.urandom(300_000)
    status, body = chunked_put(agent.info["s3"], "/chunked/streamed", key, data)
    assert status == 200, body
    assert s3.get_object(Bucket="chunked", Key="streamed")["Body"].read() == data
    status, body = chunked_put(agent.info["s3"], "/chunked/tampered", key, data, tamper=True)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="chunked")["Contents"]] == ["streamed"]
    modes = agent.get("/v1/status")["storage"]["s3_payload_modes"]
    assert modes.get("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", 0) >= 2


# --- conformance: what S3 test suites and cleanup tools rely on ------------------------------


def status_of(exc: ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


def test_cleanup_by_listing_versions_then_deleting_them_empties_the_bucket(mesh):
    cluster, key = mesh
    a, b = client(cluster.agents[0], key), client(cluster.agents[1], key)
    a.create_bucket(Bucket="versions")
    names = ["a b", "c+d", "dir/x", "dir/y", "z"]
    for name in names:
        a.put_object(Bucket="versions", Key=name, Body=name.encode())
    listed = b.list_object_versions(Bucket="versions")
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in listed["Versions"]] == \
        [(n, "null", True) for n in names]
    assert listed["Versions"][0]["Size"] == 3 and "DeleteMarkers" not in listed
    pages = b.get_paginator("list_object_versions").paginate(
        Bucket="versions", PaginationConfig={"PageSize": 2})
    assert [v["Key"] for p in pages for v in p.get("Versions", [])] == names
    top = b.list_object_versions(Bucket="versions", Delimiter="/", Prefix="")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir/"]
    with pytest.raises(ClientError) as err:
        a.get_object(Bucket="versions", Key="z", VersionId="3HL4kqtJlcpXroDTDmJ")
    assert code(err.value) == "InvalidArgument"
    assert a.get_object(Bucket="versions", Key="z", VersionId="null")["Body"].read() == b"z"
    a.delete_object(Bucket="versions", Key="z", VersionId="null")
    # what cleanup tools do: every version, deleted by version id, then the bucket
    versions = b.list_object_versions(Bucket="versions")["Versions"]
    served = cluster.agents[1].get("/v1/status")["storage"]["index_writes_served"]
    result = b.delete_objects(Bucket="versions", Delete={"Objects": [
        {"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]})
    # one quorum write for the whole batch (the bucket's three holders are these nodes)
    assert cluster.agents[1].get("/v1/status")["storage"]["index_writes_served"] - served \
        <= 2
    assert sorted((d["Key"], d["VersionId"]) for d in result["Deleted"]) == \
        [(n, "null") for n in names[:-1]]
    assert "Versions" not in a.list_object_versions(Bucket="versions")
    a.delete_bucket(Bucket="versions")
    with pytest.raises(ClientError) as err:
        b.head_bucket(Bucket="versions")
    assert status_of(err.value) == 404


def test_upload_part_copy_with_ranges_and_copy_conditions(mesh):
    cluster, key = mesh
    a, c = client(cluster.agents[0], key), client(cluster.agents[2], key)
    a.create_bucket(Bucket="partcopy")
    source = os.urandom(5 * MIB + 1000)
    etag = a.put_object(Bucket="partcopy", Key="src", Body=source)["ETag"]
    upload = c.create_multipart_upload(Bucket="partcopy", Key="dst")["UploadId"]
    src = {"Bucket": "partcopy", "Key": "src"}
    one = c.upload_part_copy(Bucket="partcopy", Key="dst", UploadId=upload, PartNumber=1,
                             CopySource=src, CopySourceIfMatch=etag)
    two = c.upload_part_copy(Bucket="partcopy", Key="dst", UploadId=upload, PartNumber=2,
                             CopySource=src, CopySourceRange="bytes=10-109")
    assert two["CopyPartResult"]["ETag"].strip('"') == hashlib.md5(source[10:110]).hexdigest()
    for bad, want in (("bytes=10-", "InvalidArgument"), ("bytes=0-99999999", "InvalidRange")):
        with pytest.raises(ClientError) as err:
            c.upload_part_copy(Bucket="partcopy", Key="dst", UploadId=upload, PartNumber=3,
                               CopySource=src, CopySourceRange=bad)
        assert code(err.value) == want
    later = datetime.now(UTC) + timedelta(days=1)
    for condition in ({"CopySourceIfMatch": '"0000"'}, {"CopySourceIfNoneMatch": etag},
                      {"CopySourceIfModifiedSince": later}):
        with pytest.raises(ClientError) as err:
            c.upload_part_copy(Bucket="partcopy", Key="dst", UploadId=upload, PartNumber=3,
                               CopySource=src, **condition)
        assert code(err.value) == "PreconditionFailed"
        with pytest.raises(ClientError) as err:
            c.copy_object(Bucket="partcopy", Key="copy", CopySource=src, **condition)
        assert code(err.value) == "PreconditionFailed"
    c.complete_multipart_upload(Bucket="partcopy", Key="dst", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": one["CopyPartResult"]["ETag"]},
                  {"PartNumber": 2, "ETag": two["CopyPartResult"]["ETag"]}]})
    got = a.get_object(Bucket="partcopy", Key="dst")["Body"].read()
    assert got == source + source[10:110]
    assert [o["Key"] for o in a.list_objects_v2(Bucket="partcopy")["Contents"]] == ["dst", "src"]


def test_multipart_completion_conditions_repeats_and_part_numbers(mesh):
    cluster, key = mesh
    a, b = client(cluster.agents[0], key), client(cluster.agents[1], key)
    a.create_bucket(Bucket="complete")
    with pytest.raises(ClientError) as err:  # If-Match on a key that does not exist
        a.put_object(Bucket="complete", Key="nothing", Body=b"x", IfMatch="*")
    assert (code(err.value), status_of(err.value)) == ("PreconditionFailed", 412)
    first, last = os.urandom(5 * MIB), os.urandom(1000)
    upload = a.create_multipart_upload(Bucket="complete", Key="mp")["UploadId"]
    p1 = a.upload_part(Bucket="complete", Key="mp", UploadId=upload, PartNumber=1,
                       Body=os.urandom(5 * MIB))["ETag"]
    p1 = [p1, a.upload_part(Bucket="complete", Key="mp", UploadId=upload, PartNumber=1,
                            Body=first)["ETag"]]  # part 1 again: the last upload counts
    p2 = a.upload_part(Bucket="complete", Key="mp", UploadId=upload, PartNumber=2,
                       Body=last)["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": p1[0]}, {"PartNumber": 1, "ETag": p1[1]},
                       {"PartNumber": 2, "ETag": p2}]}
    a.put_object(Bucket="complete", Key="mp", Body=b"already here")
    with pytest.raises(ClientError) as err:
        b.complete_multipart_upload(Bucket="complete", Key="mp", UploadId=upload,
                                    MultipartUpload=parts, IfNoneMatch="*")
    assert code(err.value) == "PreconditionFailed"
    assert a.get_object(Bucket="complete", Key="mp")["Body"].read() == b"already here"
    done = b.complete_multipart_upload(Bucket="complete", Key="mp", UploadId=upload,
                                       MultipartUpload=parts)
    again = a.complete_multipart_upload(Bucket="complete", Key="mp", UploadId=upload,
                                        MultipartUpload=parts)  # a retry: same answer
    assert again["ETag"] == done["ETag"] and done["ETag"].endswith('-2"')
    assert a.get_object(Bucket="complete", Key="mp")["Body"].read() == first + last
    assert b.get_object(Bucket="complete", Key="mp", PartNumber=2)["Body"].read() == last
    with pytest.raises(ClientError) as err:
        b.get_object(Bucket="complete", Key="mp", PartNumber=3)
    assert (code(err.value), status_of(err.value)) == ("InvalidPart", 400)
    with pytest.raises(ClientError) as err:  # another upload id was never completed here
        a.complete_multipart_upload(Bucket="complete", Key="mp", UploadId=upload[:-4] + "AAAA",
                                    MultipartUpload=parts)
    assert code(err.value) == "NoSuchUpload"


def test_presigned_url_status_codes(mesh):
    cluster, key = mesh
    a = client(cluster.agents[1], key)
    a.create_bucket(Bucket="presign")
    a.put_object(Bucket="presign", Key="doc", Body=b"hello")
    params = {"Bucket": "presign", "Key": "doc"}

    def fetch(url: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    for expires in (609901, -7):
        url = a.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)
        status, body = fetch(url)
        assert status == 403 and b"AuthorizationQueryParametersError" in body, body
    good = a.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    assert fetch(good) == (200, b"hello")
    start = good.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    end = good.find("&", start)
    end = len(good) if end < 0 else end
    for tampered in (good[:end - 1] + good[end:], good[:end] + "0" + good[end:]):
        status, body = fetch(tampered)
        assert status == 403 and b"SignatureDoesNotMatch" in body, body


def test_listing_owner_url_encoding_and_empty_token(mesh):
    cluster, key = mesh
    a = client(cluster.agents[2], key)
    a.create_bucket(Bucket="listing2")
    for name in ("a b/x+y", "a b/z", "q"):
        a.put_object(Bucket="listing2", Key=name, Body=b"1")
    v2 = a.list_objects_v2(Bucket="listing2", FetchOwner=True)
    assert all(o["Owner"]["ID"] for o in v2["Contents"])
    assert "Owner" not in a.list_objects_v2(Bucket="listing2")["Contents"][0]
    empty = a.list_objects_v2(Bucket="listing2", ContinuationToken="")
    assert [o["Key"] for o in empty["Contents"]] == ["a b/x+y", "a b/z", "q"]
    assert empty["ContinuationToken"] == ""
    v1 = a.list_objects(Bucket="listing2", Prefix="a b/", Marker="a b/x+y")
    assert (v1["Prefix"], v1["Marker"]) == ("a b/", "a b/x+y")
    assert [o["Key"] for o in v1["Contents"]] == ["a b/z"]
    raw = a.list_objects(Bucket="listing2", Prefix="a b/", Delimiter="+", EncodingType="url")
    assert raw["Prefix"] == "a b/" and raw["Delimiter"] == "%2B"
    assert [p["Prefix"] for p in raw["CommonPrefixes"]] == ["a%20b/x%2B"]


def test_response_overrides_chunked_bodies_and_content_encoding(mesh):
    import http.client

    cluster, key = mesh
    agent = cluster.agents[0]
    a = client(agent, key)
    a.create_bucket(Bucket="headers")
    a.put_object(Bucket="headers", Key="doc", Body=b"hello")
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    got = a.get_object(Bucket="headers", Key="doc", ResponseContentLanguage="fr",
                       ResponseContentEncoding="br", ResponseExpires=when,
                       ResponseContentType="text/x", ResponseCacheControl="no-cache")
    headers = got["ResponseMetadata"]["HTTPHeaders"]
    assert (headers["content-language"], headers["content-encoding"],
            headers["content-type"], headers["cache-control"]) == \
        ("fr", "br", "text/x", "no-cache")
    assert got["Expires"] == when
    # an HTTP body with Transfer-Encoding: chunked and no Content-Length
    data = os.urandom(200_000)
    request = AWSRequest(method="PUT", url=agent.info["s3"] + "/headers/streamed", data=data)
    S3SigV4Auth(Credentials(key["access_key"], key["secret"]), "s3",
                "us-east-1").add_auth(request)
    host = agent.info["s3"].split("//")[1]
    connection = http.client.HTTPConnection(host, timeout=30)
    connection.request("PUT", "/headers/streamed", body=iter([data[:70_000], data[70_000:]]),
                       headers={k: v for k, v in request.headers.items()
                                if k.lower() != "content-length"}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 200, response.read()
    assert a.get_object(Bucket="headers", Key="streamed")["Body"].read() == data
    # aws-chunked framing is not part of the object's Content-Encoding
    status, body = chunked_put(agent.info["s3"], "/headers/gz", key, b"x" * 1000,
                               content_encoding="gzip, aws-chunked")
    assert status == 200, body
    assert a.head_object(Bucket="headers", Key="gz")["ContentEncoding"] == "gzip"
