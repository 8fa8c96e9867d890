"""Crashes the fuzz campaign found, one test each: the input now gets the typed error."""

from __future__ import annotations

import dataclasses

import pytest

from blobstore.s3.conditions import Current, check_conditions, parse_http_date
from blobstore.s3.errors import (
    AccessDenied,
    AuthorizationQueryParametersError,
    InvalidArgument,
    MalformedXML,
    S3Error,
)
from blobstore.s3.listing import parse_max_keys
from blobstore.s3.multipart import parse_part_number
from blobstore.s3.payload import PayloadCheck
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import StaticCredentials, verify_request
from blobstore.s3.xml import parse_complete_multipart, parse_delete
from meshcloud.api.app import field
from meshcloud.errors import InviteError, MeshError
from meshcloud.identity.invites import InviteToken
from tests.fuzz.targets import mesh, read_json_now


@pytest.mark.parametrize("cut", [0, 1, 31])
def test_invite_token_with_a_short_key_seed_is_a_damaged_invite(cut):
    # The one-time key's seed is not covered by the root's signature: a token whose seed
    # was cut still passes the signature check, and SigningKey raised ValueError.
    m = mesh()
    token = m.invite(ttl_ms=60_000)
    damaged = dataclasses.replace(token, invite_seed=token.invite_seed[:cut])
    with pytest.raises(InviteError, match="damaged"):
        InviteToken.decode(damaged.encode())
    assert InviteToken.decode(token.encode()) == token


@pytest.mark.parametrize("body", [
    b"[" * 5000,                     # RecursionError inside json
    b'{"uses": ' + b"9" * 5000 + b"}",  # ValueError: int above the digit limit
    b'{"a": "\\ud800"}' + b"\xff",    # a stray byte after the document
])
def test_api_json_body_that_breaks_the_parser_is_a_bad_request(body):
    with pytest.raises(MeshError) as info:
        read_json_now(body)
    assert info.value.code == "bad_request"


def test_api_json_body_still_reads_objects():
    assert read_json_now(b'{"uses": 2, "spec": {"name": "web"}}') == {"uses": 2,
                                                                    "spec": {"name": "web"}}


@pytest.mark.parametrize("encoding", ["UTF-N", "shift_jis", "utf-7"])
def test_xml_naming_an_encoding_expat_cannot_read_is_malformed(encoding):
    body = (f'<?xml version="1.0" encoding="{encoding}"?><Delete><Object><Key>k</Key>'
            f"</Object></Delete>").encode()
    with pytest.raises(MalformedXML):
        parse_delete(body)
    with pytest.raises(MalformedXML):
        parse_complete_multipart(body)


@pytest.mark.parametrize("value", [
    "Sunday, 06-Nov-94 0999999999999999999998:49:37 GMT",
    "Thu, 15 Jan 2026 12:30:00 099999999999999999999",
])
def test_http_date_with_a_huge_field_is_not_a_date(value):
    assert parse_http_date(value) is None
    request = S3Request("GET", "/b/k", "", (("If-Modified-Since", value),))
    check_conditions(request, Current(etag="e", last_modified=1.0))  # ignored, not a crash


@pytest.mark.parametrize("date", [
    "Thu, 15 Jan 2026 12:30:00 099999999999999999999",  # OverflowError in the parser
    "Fri, 31 Dec 9999 23:59:59 -2359",                 # OverflowError converting to UTC
])
def test_sigv4_date_header_out_of_range_is_access_denied(date):
    auth = ("AWS4-HMAC-SHA256 Credential=AKID/20260115/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=" + "0" * 64)
    request = S3Request.build("GET", "/b/k", [("Host", "x"), ("Authorization", auth),
                                              ("Date", date),
                                              ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")])
    with pytest.raises(AccessDenied):
        verify_request(request, StaticCredentials({"AKID": "secret"}), 1.77e9)


# str.isdigit() is true for '²', '³', '①'... which int() refuses: each check that let them
# through to int() raised ValueError. Checks now also require ASCII.
SUPERSCRIPTS = ["²", "1²", "³", "①"]


@pytest.mark.parametrize("text", SUPERSCRIPTS)
def test_query_numbers_with_non_ascii_digits_are_invalid_arguments(text):
    with pytest.raises(InvalidArgument):
        parse_max_keys(text)
    with pytest.raises(S3Error):
        parse_part_number(text)


@pytest.mark.parametrize("text", SUPERSCRIPTS)
def test_part_number_in_xml_with_non_ascii_digits_is_malformed(text):
    body = (f"<CompleteMultipartUpload><Part><PartNumber>{text}</PartNumber><ETag>e</ETag>"
            f"</Part></CompleteMultipartUpload>").encode()
    with pytest.raises(MalformedXML):
        parse_complete_multipart(body)


@pytest.mark.parametrize("text", ["\xb2", "10\xb2"])  # latin-1 header bytes, as received
def test_content_length_with_a_superscript_is_an_invalid_argument(text):
    request = S3Request("PUT", "/b/k", "", (("Content-Length", text),))
    with pytest.raises(InvalidArgument):
        PayloadCheck.for_request(request, None)


def test_presigned_expiry_with_a_superscript_is_a_query_error():
    query = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20260115%2Fus-east-1"
             "%2Fs3%2Faws4_request&X-Amz-Date=20260115T123000Z&X-Amz-Expires=6%C2%B2"
             "&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64)
    request = S3Request("GET", "/b/k", query, (("Host", "x"),))
    with pytest.raises(AuthorizationQueryParametersError):
        verify_request(request, StaticCredentials({"AKID": "secret"}), 1_768_480_200.0)


@pytest.mark.parametrize("body", [b'{"ttl_s": NaN}', b'{"ttl_s": Infinity}', b'{"ttl_s": 1e999}',
                                  b'{"ttl_s": -Infinity}', b'{"ttl_s": 1' + b"0" * 400 + b"}"])
def test_api_float_field_that_is_not_finite_is_a_bad_request(body):
    # NaN passed the invite route's range check (every comparison with NaN is false) and
    # crashed in int(ttl_s * 1000); a 400-digit integer overflowed float().
    with pytest.raises(MeshError) as info:
        field(read_json_now(body), "ttl_s", float, 3600.0)
    assert info.value.code == "bad_request"
    assert field(read_json_now(b'{"ttl_s": 60}'), "ttl_s", float) == 60.0


def test_api_list_field_with_members_of_another_type_is_a_bad_request():
    body = read_json_now(b'{"bootstrap": ["tcp://10.0.0.1:7946", 7946]}')
    with pytest.raises(MeshError) as info:
        field(body, "bootstrap", list, None, items=str)
    assert info.value.code == "bad_request"
    assert field({"bootstrap": ["a", "b"]}, "bootstrap", list, items=str) == ["a", "b"]
