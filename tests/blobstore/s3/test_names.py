from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.s3 import errors as e
from blobstore.s3.names import (
    MAX_KEY_BYTES,
    decode_key,
    parse_target,
    validate_bucket_name,
    validate_key,
)


@pytest.mark.parametrize("name", ["abc", "my-bucket", "my.bucket.name", "a" * 63, "0ab1"])
def test_valid_bucket_names(name):
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize("name", ["ab", "a" * 64, "My-Bucket", "-abc", "abc-", "a..b",
                                  "192.168.1.1", "xn--abc", "sthree-x", "abc-s3alias",
                                  "abc--ol-s3", "a_b", "a b", "ab/c", ""])
def test_invalid_bucket_names(name):
    with pytest.raises(e.InvalidBucketName) as info:
        validate_bucket_name(name)
    assert (info.value.code, info.value.status) == ("InvalidBucketName", 400)


@pytest.mark.parametrize("key", ["a", "dir/file.txt", "a..b", "...", "a/.../b", "/leading",
                                 "a//b", "trailing/", "ünïcödé/ключ/键", "a b+c=d&e?f#g",
                                 "x" * MAX_KEY_BYTES, ".hidden", "a/.b"])
def test_acceptable_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["..", "../etc/passwd", "a/../b", "a/..", ".", "./a", "a/./b",
                                 "a\x00b", "nul\x00", "tab\tkey", "new\nline", "del\x7f",
                                 "c1\x85", "bad\ufffe", ""])
def test_refused_keys_are_invalid_argument(key):
    with pytest.raises(e.InvalidObjectKey) as info:
        validate_key(key)
    assert (info.value.code, info.value.status) == ("InvalidArgument", 400)


def test_overlong_keys_are_key_too_long():
    with pytest.raises(e.KeyTooLongError) as info:
        validate_key("x" * (MAX_KEY_BYTES + 1))
    assert info.value.status == 400 and info.value.extra["Size"] == "1025"
    with pytest.raises(e.KeyTooLongError):
        validate_key("é" * 513)  # 1026 bytes in UTF-8, 513 characters


@pytest.mark.parametrize(("raw", "error"), [
    ("a%00b", e.InvalidObjectKey), ("%2e%2e/x", e.InvalidObjectKey),
    ("a/%2E%2E", e.InvalidObjectKey), ("%ff%fe", e.InvalidObjectKey),
    ("%C0%AE%C0%AE/x", e.InvalidObjectKey),  # overlong UTF-8 for '..'
    ("x" * 1025, e.KeyTooLongError), ("%41" * 1025, e.KeyTooLongError),
])
def test_hostile_encoded_keys(raw, error):
    with pytest.raises(error):
        decode_key(raw)


def test_keys_are_decoded_exactly_once():
    assert decode_key("a%252e%252e") == "a%2e%2e"
    assert decode_key("a%2Fb%20c+d") == "a/b c+d"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_validate_key_never_crashes_and_accepts_only_safe_keys(key):
    try:
        validate_key(key)
    except (e.InvalidObjectKey, e.KeyTooLongError):
        return
    assert key and "\x00" not in key
    assert not {".", ".."} & set(key.split("/"))
    assert all(ord(c) >= 0x20 for c in key)


@pytest.mark.parametrize(("host", "path", "expect"), [
    ("127.0.0.1:9000", "/", (None, None, False)),
    ("127.0.0.1:9000", "/bucket", ("bucket", None, False)),
    ("127.0.0.1:9000", "/bucket/", ("bucket", None, False)),
    ("127.0.0.1:9000", "/bucket/a/b%20c", ("bucket", "a/b c", False)),
    ("127.0.0.1:9000", "/bucket//x", ("bucket", "/x", False)),
    ("photos.s3.mesh.local", "/", ("photos", None, True)),
    ("photos.s3.mesh.local:8080", "/2026/a.jpg", ("photos", "2026/a.jpg", True)),
    ("my.dotted.bucket.s3.mesh.local", "/k", ("my.dotted.bucket", "k", True)),
    ("S3.MESH.LOCAL", "/bucket/k", ("bucket", "k", False)),
    ("[::1]:9000", "/bucket/k", ("bucket", "k", False)),
])
def test_addressing(host, path, expect):
    t = parse_target(host, path, base_domains=["s3.mesh.local"])
    assert (t.bucket, t.key, t.virtual_host) == expect


@pytest.mark.parametrize(("host", "path", "error"), [
    ("h", "/Bad_Bucket/k", e.InvalidBucketName),
    ("BAD_bucket.s3.mesh.local", "/k", e.InvalidBucketName),
    ("h", "/bucket/../../etc/passwd", e.InvalidObjectKey),
    ("h", "/bucket/a%00", e.InvalidObjectKey),
    ("h", "//key", e.InvalidBucketName),
    ("h", "no-slash", e.InvalidArgument),
])
def test_hostile_targets(host, path, error):
    with pytest.raises(error):
        parse_target(host, path, base_domains=["s3.mesh.local"])
