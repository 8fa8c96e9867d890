"""Our XML as botocore parses it (the S3 service model), and hostile request bodies."""

from __future__ import annotations

import datetime as dt

import botocore.session
import pytest
from botocore.handlers import (
    decode_list_object,
    decode_list_object_v2,
    decode_list_object_versions,
)
from botocore.parsers import create_parser
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3 import xml
from blobstore.s3.listing import After, ListPage, Position
from blobstore.s3.multipart import MIN_PART_SIZE, UploadEntry, UploadsPage
from tests.blobstore.s3.test_multipart import fake_part

MODEL = botocore.session.get_session().get_service_model("s3")
OWNER = xml.Owner("owner-id", "me")
T = dt.datetime(2026, 1, 15, 12, 30, 0, 250000, tzinfo=dt.UTC).timestamp()


def parse(operation: str, body: bytes, status: int = 200) -> dict:
    shape = MODEL.operation_model(operation).output_shape
    return create_parser("rest-xml").parse(
        {"body": body, "headers": {}, "status_code": status}, shape)


def entry(key: str, size: int = 3) -> tuple[str, xml.ObjectEntry]:
    return key, xml.ObjectEntry(key, size, "d41d8cd98f00b204e9800998ecf8427e", T, owner=OWNER)


def test_list_buckets():
    body = xml.render_list_buckets([xml.BucketEntry("alpha", T), xml.BucketEntry("beta", T)],
                                   OWNER)
    parsed = parse("ListBuckets", body)
    assert [b["Name"] for b in parsed["Buckets"]] == ["alpha", "beta"]
    assert parsed["Buckets"][0]["CreationDate"] == dt.datetime.fromtimestamp(T, dt.UTC)
    assert parsed["Owner"]["ID"] == "owner-id"


def test_list_objects_v2_with_prefixes_tokens_and_url_encoding():
    page = ListPage(contents=[entry("dir/a b+c&<d>.txt"), entry("dir/é")],
                    common_prefixes=["dir/sub dir/"], is_truncated=True,
                    last=Position(After.PREFIX, "dir/sub dir/"))
    body = xml.render_list_objects_v2("bucket", page, prefix="dir/", delimiter="/", max_keys=3,
                                      continuation_token="tok1", next_continuation_token="tok2",
                                      encoding_type="url")
    parsed = parse("ListObjectsV2", body)
    decode_list_object_v2(parsed, {"encoding_type_auto_set": True})
    assert [c["Key"] for c in parsed["Contents"]] == ["dir/a b+c&<d>.txt", "dir/é"]
    assert parsed["CommonPrefixes"] == [{"Prefix": "dir/sub dir/"}]
    assert parsed["KeyCount"] == 3 and parsed["IsTruncated"] is True
    assert parsed["NextContinuationToken"] == "tok2"
    assert parsed["Contents"][0]["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    assert parsed["Contents"][0]["Size"] == 3
    assert parsed["Contents"][0]["LastModified"] == dt.datetime.fromtimestamp(T, dt.UTC) \
        .replace(microsecond=250000)


def test_list_objects_v1_next_marker_only_with_delimiter():
    page = ListPage(contents=[entry("a&b")], is_truncated=True, last=Position(After.KEY, "a&b"))
    parsed = parse("ListObjects", xml.render_list_objects_v1("b", page, max_keys=1))
    assert parsed["IsTruncated"] and "NextMarker" not in parsed
    assert parsed["Contents"][0]["Key"] == "a&b"
    assert parsed["Contents"][0]["Owner"]["ID"] == "owner-id"
    parsed = parse("ListObjects", xml.render_list_objects_v1("b", page, delimiter="/",
                                                             max_keys=1, encoding_type="url"))
    decode_list_object(parsed, {"encoding_type_auto_set": True})
    assert parsed["NextMarker"] == "a&b"


def test_list_objects_v1_keeps_the_prefix_as_given_with_url_encoding():
    page = ListPage(contents=[entry("a b/x+y")])
    body = xml.render_list_objects_v1("b", page, prefix="a b/", marker="a b/", max_keys=5,
                                      encoding_type="url")
    raw = parse("ListObjects", body)
    assert raw["Prefix"] == "a b/" and raw["Marker"] == "a%20b/"
    decode_list_object(raw, {"encoding_type_auto_set": True})
    assert (raw["Prefix"], raw["Marker"], raw["Contents"][0]["Key"]) == \
        ("a b/", "a b/", "a b/x+y")


def test_listings_show_the_default_owner_when_asked():
    page = ListPage(contents=[("k", xml.ObjectEntry("k", 1, "e" * 32, T))])
    parsed = parse("ListObjectsV2", xml.render_list_objects_v2("b", page, fetch_owner=True,
                                                                owner=OWNER))
    assert parsed["Contents"][0]["Owner"] == {"ID": "owner-id", "DisplayName": "me"}
    parsed = parse("ListObjectsV2", xml.render_list_objects_v2("b", page, owner=OWNER))
    assert "Owner" not in parsed["Contents"][0]
    parsed = parse("ListObjects", xml.render_list_objects_v1("b", page, owner=OWNER))
    assert parsed["Contents"][0]["Owner"]["ID"] == "owner-id"


def test_list_versions_of_a_bucket_without_versioning():
    page = ListPage(contents=[entry("a b"), entry("c+d")], common_prefixes=["p q/"],
                    is_truncated=True, last=Position(After.KEY, "c+d"))
    body = xml.render_list_versions("bk", page, owner=OWNER, prefix="", delimiter="/",
                                    key_marker="0 0", version_id_marker="null", max_keys=3,
                                    encoding_type="url")
    parsed = parse("ListObjectVersions", body)
    decode_list_object_versions(parsed, {"encoding_type_auto_set": True})
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in parsed["Versions"]] == \
        [("a b", "null", True), ("c+d", "null", True)]
    assert parsed["Versions"][0]["Size"] == 3 and parsed["Versions"][0]["Owner"]["ID"]
    assert parsed["CommonPrefixes"] == [{"Prefix": "p q/"}]
    assert (parsed["KeyMarker"], parsed["VersionIdMarker"]) == ("0 0", "null")
    assert (parsed["NextKeyMarker"], parsed["NextVersionIdMarker"]) == ("c+d", "null")
    assert parsed["IsTruncated"] is True and parsed["Name"] == "bk"
    assert "DeleteMarkers" not in parsed
    done = parse("ListObjectVersions", xml.render_list_versions("bk", ListPage(), owner=OWNER))
    assert done["IsTruncated"] is False and "NextKeyMarker" not in done
    assert "Versions" not in done


KEY_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.lists(KEY_TEXT, min_size=0, max_size=8, unique=True), KEY_TEXT,
       st.sampled_from([None, "url"]))
def test_list_versions_round_trips_any_keys(keys, marker, encoding):
    keys = sorted(keys)
    page = ListPage(contents=[entry(k) for k in keys], is_truncated=bool(keys),
                    last=Position(After.KEY, keys[-1]) if keys else None)
    body = xml.render_list_versions("bk", page, owner=OWNER, key_marker=marker,
                                    encoding_type=encoding)
    parsed = parse("ListObjectVersions", body)
    decode_list_object_versions(parsed, {"encoding_type_auto_set": True})
    assert [v["Key"] for v in parsed.get("Versions", [])] == keys
    assert {v["VersionId"] for v in parsed.get("Versions", [])} <= {"null"}
    assert parsed["KeyMarker"] == marker
    if keys:
        assert parsed["NextKeyMarker"] == keys[-1]


def test_delete_result_echoes_version_ids():
    body = xml.render_delete_result(
        [xml.Deleted("a", "null"), xml.Deleted("b")],
        [xml.DeleteError("c", "NoSuchVersion", "no", "v9")])
    parsed = parse("DeleteObjects", body)
    assert parsed["Deleted"] == [{"Key": "a", "VersionId": "null"}, {"Key": "b"}]
    assert parsed["Errors"] == [{"Key": "c", "VersionId": "v9", "Code": "NoSuchVersion",
                                 "Message": "no"}]


def test_multipart_documents():
    parsed = parse("CreateMultipartUpload", xml.render_initiate_multipart("b", "k/ü", "up-1"))
    assert (parsed["Bucket"], parsed["Key"], parsed["UploadId"]) == ("b", "k/ü", "up-1")
    parsed = parse("CompleteMultipartUpload",
                   xml.render_complete_multipart("http://h/b/k", "b", "k", "abc-2"))
    assert parsed["ETag"] == '"abc-2"' and parsed["Location"] == "http://h/b/k"
    parts = [fake_part(1, MIN_PART_SIZE, "a" * 32), fake_part(2, 1, "b" * 32)]
    parsed = parse("ListParts", xml.render_list_parts("b", "k", "up-1", parts, owner=OWNER,
                                                      max_parts=2, is_truncated=True))
    assert [p["PartNumber"] for p in parsed["Parts"]] == [1, 2]
    assert parsed["NextPartNumberMarker"] == 2 and parsed["IsTruncated"]
    page = UploadsPage(uploads=[UploadEntry("k", "up-1", T)], common_prefixes=["d/"],
                       next_key_marker="k", next_upload_id_marker="up-1")
    parsed = parse("ListMultipartUploads", xml.render_list_uploads("b", page, owner=OWNER,
                                                                   delimiter="/"))
    assert parsed["Uploads"][0]["UploadId"] == "up-1"
    assert parsed["CommonPrefixes"] == [{"Prefix": "d/"}]


def test_copy_and_delete_results():
    parsed = parse("CopyObject", xml.render_copy_object("abc", T))
    assert parsed["CopyObjectResult"]["ETag"] == '"abc"'
    parsed = parse("UploadPartCopy", xml.render_copy_object("abc", T, part=True))
    assert parsed["CopyPartResult"]["ETag"] == '"abc"'
    body = xml.render_delete_result(["a", "b"], [xml.DeleteError("c", "AccessDenied", "no")])
    parsed = parse("DeleteObjects", body)
    assert [d["Key"] for d in parsed["Deleted"]] == ["a", "b"]
    assert parsed["Errors"] == [{"Key": "c", "Code": "AccessDenied", "Message": "no"}]
    quiet = parse("DeleteObjects", xml.render_delete_result(["a"], [], quiet=True))
    assert "Deleted" not in quiet


def test_error_document_as_botocore_reads_it():
    err = e.NoSuchKey(Key="dir/<k>")
    body = xml.render_error(err, request_id="req-1", resource="/b/dir/<k>")
    parsed = parse("GetObject", body, status=err.status)
    assert parsed["Error"]["Code"] == "NoSuchKey"
    assert parsed["Error"]["Message"] == err.message
    assert parsed["Error"]["Key"] == "dir/<k>"
    assert b"<RequestId>req-1</RequestId>" in body and b"&lt;k&gt;" in body


def test_location():
    assert b"<LocationConstraint" in xml.render_location("us-east-1")


# --- parsing request bodies ----------------------------------------------------------


COMPLETE = b"""<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><PartNumber>1</PartNumber><ETag>"aaa"</ETag><ChecksumCRC32>x</ChecksumCRC32></Part>
  <Part><ETag>bbb</ETag><PartNumber>2</PartNumber></Part>
</CompleteMultipartUpload>"""


def test_parse_complete_multipart():
    assert xml.parse_complete_multipart(COMPLETE) == [(1, "aaa"), (2, "bbb")]
    plain = COMPLETE.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b"")
    assert xml.parse_complete_multipart(plain) == [(1, "aaa"), (2, "bbb")]


def test_parse_delete():
    body = (b"<Delete><Quiet>true</Quiet><Object><Key>a &amp; b</Key></Object>"
            b"<Object><Key>c</Key><VersionId>v1</VersionId></Object></Delete>")
    req = xml.parse_delete(body)
    assert req.quiet and req.objects == (("a & b", None), ("c", "v1"))


def test_botocore_serialised_bodies_parse():
    """The bodies boto3 itself sends for these two calls."""
    from botocore.serialize import create_serializer

    serializer = create_serializer("rest-xml")
    op = MODEL.operation_model("CompleteMultipartUpload")
    request = serializer.serialize_to_request({
        "Bucket": "b", "Key": "k", "UploadId": "u",
        "MultipartUpload": {"Parts": [{"PartNumber": 1, "ETag": '"e1"'},
                                      {"PartNumber": 2, "ETag": '"e2"'}]}}, op)
    assert xml.parse_complete_multipart(request["body"]) == [(1, "e1"), (2, "e2")]
    op = MODEL.operation_model("DeleteObjects")
    request = serializer.serialize_to_request({
        "Bucket": "b", "Delete": {"Objects": [{"Key": "x/y"}, {"Key": "z"}], "Quiet": False}},
        op)
    assert xml.parse_delete(request["body"]).objects == (("x/y", None), ("z", None))


HOSTILE = {
    "xxe": b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b"<Delete><Object><Key>&x;</Key></Object></Delete>",
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                      b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                      b"<Delete><Object><Key>&b;</Key></Object></Delete>",
    "param-entity": b'<!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1/x"> %p;]><Delete/>',
    "undefined-entity": b"<Delete><Object><Key>&x;</Key></Object></Delete>",
    "not-xml": b"this is not xml",
    "empty": b"",
    "truncated": b"<Delete><Object><Key>a</Key>",
    "two-roots": b"<Delete/><Delete/>",
    "wrong-root": b"<Remove><Object><Key>a</Key></Object></Remove>",
    "no-key": b"<Delete><Object><VersionId>1</VersionId></Object></Delete>",
    "no-objects": b"<Delete><Quiet>true</Quiet></Delete>",
    "too-many": b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
    "too-deep": b"<Delete>" + b"<a>" * 20 + b"</a>" * 20 + b"</Delete>",
    "too-big": b"<Delete><Object><Key>" + b"k" * (3 * 1024 * 1024) + b"</Key></Object></Delete>",
    "long-text": b"<Delete><Object><Key>" + b"k" * 5000 + b"</Key></Object></Delete>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_delete_bodies_are_malformed_xml(name):
    with pytest.raises(e.MalformedXML) as info:
        xml.parse_delete(HOSTILE[name])
    assert (info.value.code, info.value.status) == ("MalformedXML", 400)


@pytest.mark.parametrize("body", [
    b"<CompleteMultipartUpload/>",
    b"<CompleteMultipartUpload><Part><PartNumber>0</PartNumber><ETag>a</ETag></Part>"
    b"</CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part>"
    b"</CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>"
    b"</CompleteMultipartUpload>",
    b"<CompleteMultipartUpload><Part><PartNumber>99999999999</PartNumber><ETag>a</ETag>"
    b"</Part></CompleteMultipartUpload>",
    HOSTILE["xxe"].replace(b"Delete", b"CompleteMultipartUpload"),
])
def test_bad_complete_bodies(body):
    with pytest.raises(e.MalformedXML):
        xml.parse_complete_multipart(body)
