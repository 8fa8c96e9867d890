"""SigV4 verification against requests signed by botocore itself."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3.request import S3Request
from blobstore.s3.sigv4 import PayloadMode, SigV4Config, StaticCredentials, verify_request
from tests.blobstore.s3.signing import (
    ACCESS,
    NOW,
    STORE,
    T0,
    header_signed,
    presigned,
)

URL = "http://127.0.0.1:9000/bucket/photos/2026/a%20b%2Bc%3D~%C3%A9%21.jpg"


def test_header_signed_get_is_accepted():
    req = header_signed("GET", URL + "?list-type=2&prefix=a%20b&delimiter=%2F")
    auth = verify_request(req, STORE, NOW)
    assert auth is not None and auth.access_key == ACCESS and not auth.presigned
    assert auth.payload_mode is PayloadMode.SIGNED
    assert auth.payload_sha256 == hashlib.sha256(b"").hexdigest()
    assert "host" in auth.signed_headers and "x-amz-date" in auth.signed_headers
    assert auth.scope == "20260115/us-east-1/s3/aws4_request"


def test_signed_put_with_body_hash_and_metadata():
    body = b"hello world"
    req = header_signed("PUT", URL, {"x-amz-meta-Colour": "  blue   green ",
                                     "Content-Type": "text/plain"}, body)
    auth = verify_request(req, STORE, NOW)
    assert auth.payload_sha256 == hashlib.sha256(body).hexdigest()


def test_bare_query_parameters_and_repeated_names():
    req = header_signed("POST", "http://h/bucket/key?uploads")
    assert verify_request(req, STORE, NOW) is not None
    req = header_signed("GET", "http://h/bucket?b=2&a=1&a=0&x")
    assert verify_request(req, STORE, NOW) is not None


@settings(max_examples=40, deadline=None)
@given(key=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_any_key_botocore_signs_verifies(key):
    from urllib.parse import quote

    req = header_signed("GET", "http://h/b/" + quote(key.encode(), safe="/~"))
    assert verify_request(req, STORE, NOW) is not None


def test_date_header_instead_of_x_amz_date():
    req = header_signed("GET", URL, {"Date": "x"})
    assert req.header("x-amz-date") is None and req.header("date")
    assert verify_request(req, STORE, NOW) is not None


def test_unsigned_payload_mode():
    # botocore sends UNSIGNED-PAYLOAD over TLS when payload signing is off.
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    from tests.blobstore.s3.signing import CREDS, frozen, to_s3request

    r = AWSRequest(method="PUT", url=URL, data=b"abc")
    r.context["payload_signing_enabled"] = False
    r.url = r.url.replace("http://", "https://")
    r.headers["Content-MD5"] = "x"
    with frozen():
        S3SigV4Auth(CREDS, "s3", "us-east-1").add_auth(r)
    req = to_s3request("PUT", r.url, r.headers)
    auth = verify_request(req, STORE, NOW)
    assert auth.payload_mode is PayloadMode.UNSIGNED and auth.payload_sha256 is None


def _with_header(req: S3Request, name: str, value: str) -> S3Request:
    kept = tuple((k, v) for k, v in req.headers if k.lower() != name.lower())
    return dataclasses.replace(req, headers=(*kept, (name, value)))


def _auth_parts(req: S3Request) -> str:
    return req.header("authorization")


TAMPER = {
    "method": lambda r: dataclasses.replace(r, method="DELETE"),
    "path": lambda r: dataclasses.replace(r, raw_path=r.raw_path + "x"),
    "path-encoding": lambda r: dataclasses.replace(r, raw_path="/bucket/other"),
    "query-value": lambda r: dataclasses.replace(r, raw_query="prefix=b"),
    "query-added": lambda r: dataclasses.replace(r, raw_query=r.raw_query + "&versionId=1"),
    "host": lambda r: _with_header(r, "Host", "evil.example"),
    "signed-header": lambda r: _with_header(r, "x-amz-meta-colour", "red"),
    "time": lambda r: _with_header(r, "x-amz-date", "20260115T123001Z"),
    "signature": lambda r: _with_header(
        r, "Authorization", _auth_parts(r)[:-1] + ("0" if _auth_parts(r)[-1] != "0" else "1")),
    "payload-hash": lambda r: _with_header(r, "x-amz-content-sha256", "0" * 64),
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_any_tampering_breaks_the_signature(how):
    req = header_signed("PUT", URL + "?prefix=a", {"x-amz-meta-colour": "blue"}, b"body")
    assert verify_request(req, STORE, NOW) is not None
    with pytest.raises(e.SignatureDoesNotMatch) as info:
        verify_request(TAMPER[how](req), STORE, NOW)
    assert info.value.code == "SignatureDoesNotMatch" and info.value.status == 403


def test_signature_error_carries_the_string_to_sign():
    req = _with_header(header_signed("GET", URL), "x-amz-date", "20260115T123001Z")
    with pytest.raises(e.SignatureDoesNotMatch) as info:
        verify_request(req, STORE, NOW)
    assert info.value.extra["StringToSign"].startswith("AWS4-HMAC-SHA256\n20260115T123001Z")
    assert "CanonicalRequest" in info.value.extra


def test_wrong_secret_and_unknown_key():
    req = header_signed("GET", URL)
    with pytest.raises(e.SignatureDoesNotMatch):
        verify_request(req, StaticCredentials({ACCESS: "another secret"}), NOW)
    with pytest.raises(e.InvalidAccessKeyId):
        verify_request(req, StaticCredentials({}), NOW)


def test_unsigned_amz_header_is_access_denied():
    req = header_signed("GET", URL)
    req = dataclasses.replace(req, headers=(*req.headers, ("x-amz-copy-source", "/b/secret")))
    with pytest.raises(e.AccessDenied, match="not signed") as info:
        verify_request(req, STORE, NOW)
    assert info.value.extra["HeadersNotSigned"] == "x-amz-copy-source"


@pytest.mark.parametrize(("offset", "ok"), [(-14 * 60, True), (14 * 60, True),
                                             (-16 * 60, False), (16 * 60, False)])
def test_clock_skew_limit(offset, ok):
    req = header_signed("GET", URL)
    if ok:
        assert verify_request(req, STORE, NOW + offset) is not None
    else:
        with pytest.raises(e.RequestTimeTooSkewed) as info:
            verify_request(req, STORE, NOW + offset)
        assert info.value.status == 403
        assert info.value.extra["MaxAllowedSkewMilliseconds"] == "900000"


def test_wrong_region_is_malformed_header_naming_ours():
    req = header_signed("GET", URL, region="eu-west-1")
    with pytest.raises(e.AuthorizationHeaderMalformed) as info:
        verify_request(req, STORE, NOW)
    assert info.value.extra["Region"] == "us-east-1"
    assert verify_request(req, STORE, NOW, SigV4Config(region="eu-west-1")) is not None


def test_anonymous_request_is_none():
    assert verify_request(S3Request.build("GET", "/b/k", [("Host", "h")]), STORE, NOW) is None


BROKEN_AUTH = [
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260115/us-east-1/s3/aws4_request",
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260115/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=abc",
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260115/us-east-1/s3, SignedHeaders=host, "
    "Signature=" + "0" * 64,
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260115/us-east-1/s3/aws4_request, "
    "SignedHeaders=x-amz-date, Signature=" + "0" * 64,  # no host
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260115/us-east-1/s3/aws4_request, "
    "SignedHeaders=x-amz-date;host, Signature=" + "0" * 64,  # unsorted
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2026011/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=" + "0" * 64,  # bad date
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260114/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=" + "0" * 64,  # date differs from x-amz-date
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260115/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=" + "0" * 64 + ", Signature=" + "0" * 64,
    "AWS4-HMAC-SHA256 " + "x" * 5000,
]


@pytest.mark.parametrize("value", BROKEN_AUTH)
def test_malformed_authorization_headers(value):
    req = S3Request.build("GET", "/b/k", [("Host", "h"), ("x-amz-date", "20260115T123000Z"),
                                          ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                                          ("Authorization", value)])
    with pytest.raises(e.AuthorizationHeaderMalformed) as info:
        verify_request(req, STORE, NOW)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("value", "error"),
    [("AWS AKIDEXAMPLE:c2lnbmF0dXJl", e.InvalidRequest),
     ("AWS4-ECDSA-P256-SHA256 Credential=x", e.InvalidArgument)],
)
def test_other_auth_schemes_are_refused(value, error):
    req = S3Request.build("GET", "/b/k", [("Host", "h"), ("Authorization", value)])
    with pytest.raises(error):
        verify_request(req, STORE, NOW)


def test_missing_date_and_content_sha():
    req = header_signed("GET", URL)
    no_date = dataclasses.replace(req, headers=tuple(
        (k, v) for k, v in req.headers if k.lower() != "x-amz-date"))
    with pytest.raises(e.AccessDenied, match="Date"):
        verify_request(no_date, STORE, NOW)
    no_sha = dataclasses.replace(req, headers=tuple(
        (k, v) for k, v in req.headers if k.lower() != "x-amz-content-sha256"))
    with pytest.raises(e.InvalidRequest, match="x-amz-content-sha256"):
        verify_request(no_sha, STORE, NOW)
    bad_sha = _with_header(req, "x-amz-content-sha256", "whatever")
    with pytest.raises(e.InvalidArgument):
        verify_request(bad_sha, STORE, NOW)


# --- presigned URLs ---------------------------------------------------------------------


def test_presigned_get_within_its_lifetime():
    req = presigned("GET", URL, expires=600)
    assert "X-Amz-Signature" in req.raw_query
    auth = verify_request(req, STORE, NOW + 599)
    assert auth.presigned and auth.payload_mode is PayloadMode.UNSIGNED


def test_expired_presigned_url_is_access_denied():
    req = presigned("GET", URL, expires=600)
    with pytest.raises(e.ExpiredPresignedUrl) as info:
        verify_request(req, STORE, NOW + 601)
    assert (info.value.code, info.value.status) == ("AccessDenied", 403)
    assert "expired" in info.value.message


def test_presigned_url_from_the_future_is_refused():
    req = presigned("GET", URL, at=T0 + dt.timedelta(hours=1))
    with pytest.raises(e.AccessDenied, match="not valid yet"):
        verify_request(req, STORE, NOW)


@pytest.mark.parametrize("how", ["path", "expires", "query", "method", "signature"])
def test_presigned_tampering(how):
    req = presigned("GET", URL + "?response-content-type=text%2Fplain", expires=600)
    if how == "path":
        req = dataclasses.replace(req, raw_path="/bucket/other")
    elif how == "expires":
        req = dataclasses.replace(req, raw_query=req.raw_query.replace(
            "X-Amz-Expires=600", "X-Amz-Expires=6000"))
    elif how == "query":
        req = dataclasses.replace(req, raw_query=req.raw_query.replace(
            "text%2Fplain", "text%2Fhtml"))
    elif how == "method":
        req = dataclasses.replace(req, method="PUT")
    else:
        last = req.raw_query[-1]
        req = dataclasses.replace(req, raw_query=req.raw_query[:-1] + (
            "0" if last != "0" else "1"))
    with pytest.raises(e.SignatureDoesNotMatch):
        verify_request(req, STORE, NOW + 1)


def test_presigned_expiry_over_a_week_is_refused():
    req = presigned("GET", URL, expires=604801)
    with pytest.raises(e.AuthorizationQueryParametersError) as info:
        verify_request(req, STORE, NOW)
    assert info.value.status == 403  # as S3: refused like an expired URL, not a 400


@pytest.mark.parametrize("value", ["-7", "abc", "", "1e3", "99999999999"])
def test_presigned_expiry_that_is_not_a_number_of_seconds_is_403(value):
    req = presigned("GET", URL, expires=600)
    req = dataclasses.replace(req, raw_query=req.raw_query.replace(
        "X-Amz-Expires=600", f"X-Amz-Expires={value}"))
    with pytest.raises(e.AuthorizationQueryParametersError) as info:
        verify_request(req, STORE, NOW)
    assert (info.value.code, info.value.status) == ("AuthorizationQueryParametersError", 403)


@pytest.mark.parametrize("cut", [1, 10, 64])
def test_presigned_signature_of_the_wrong_length_does_not_match(cut):
    req = presigned("GET", URL, expires=600)
    query = req.raw_query
    start = query.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    end = query.find("&", start)
    end = len(query) if end < 0 else end
    for tampered in (query[:end - cut] + query[end:], query[:end] + "ab"[:cut % 2 + 1]
                     + query[end:]):
        with pytest.raises(e.SignatureDoesNotMatch) as info:
            verify_request(dataclasses.replace(req, raw_query=tampered), STORE, NOW + 1)
        assert info.value.status == 403


@pytest.mark.parametrize("param", ["X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                                   "X-Amz-SignedHeaders", "X-Amz-Signature"])
def test_presigned_missing_parameter(param):
    req = presigned("GET", URL)
    query = "&".join(p for p in req.raw_query.split("&") if not p.startswith(param + "="))
    with pytest.raises(e.AuthorizationQueryParametersError):
        verify_request(dataclasses.replace(req, raw_query=query), STORE, NOW)


def test_presigned_with_an_authorization_header_too():
    req = presigned("GET", URL)
    req = dataclasses.replace(req, headers=(*req.headers, ("Authorization", "AWS4-HMAC-SHA256 x")))
    with pytest.raises(e.InvalidArgument, match="one auth mechanism"):
        verify_request(req, STORE, NOW)


def test_presigned_with_unsigned_amz_header():
    req = presigned("GET", URL)
    req = dataclasses.replace(req, headers=(*req.headers, ("x-amz-meta-a", "b")))
    with pytest.raises(e.AccessDenied, match="not signed"):
        verify_request(req, STORE, NOW)


def test_boto3_generate_presigned_url_verifies():
    import boto3
    import botocore.config

    from tests.blobstore.s3.signing import SECRET, frozen, to_s3request

    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                          aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                          config=botocore.config.Config(
                              signature_version="s3v4", s3={"addressing_style": "path"}))
    with frozen():
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": "bucket", "Key": "dir/ünï code+ key.txt"},
            ExpiresIn=3600)
    req = to_s3request("GET", url, {})
    auth = verify_request(req, STORE, NOW + 3599)
    assert auth.presigned
    with pytest.raises(e.ExpiredPresignedUrl):
        verify_request(req, STORE, NOW + 3601)


@pytest.mark.parametrize("date", ["", "yesterday", "Mon, 99 Foo", "Thu, 01 Jan 2026 25:61:00 GMT"])
def test_garbage_date_header_is_access_denied(date):
    req = header_signed("GET", URL, {"Date": "x"})
    req = _with_header(req, "Date", date)
    with pytest.raises(e.AccessDenied):
        verify_request(req, STORE, NOW)
