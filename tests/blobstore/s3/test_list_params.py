"""The query both listings (ListObjects v1/v2, ListObjectVersions) read, parsed once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from blobstore.s3 import errors as e
from blobstore.s3http.handlers import _list_params


def _call(bucket: str, query: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(bucket=bucket, query=lambda: dict(query))


def _app(known: set[str]) -> SimpleNamespace:
    def bucket(name: str) -> str:
        if name not in known:
            raise e.NoSuchBucket(BucketName=name)
        return f"record:{name}"

    return SimpleNamespace(store=SimpleNamespace(bucket=bucket))


def test_the_listing_query_is_read_with_its_defaults():
    name, record, q, prefix, delimiter, encoding, max_keys = _list_params(
        _app({"b"}), _call("b", {}))
    assert (name, record, q, prefix, delimiter, encoding, max_keys) == (
        "b", "record:b", {}, "", None, None, 1000)
    got = _list_params(_app({"b"}), _call("b", {"prefix": "p/", "delimiter": "/",
                                               "encoding-type": "url", "max-keys": "7"}))
    assert got[3:] == ("p/", "/", "url", 7)


def test_an_unknown_encoding_or_bucket_is_refused():
    with pytest.raises(e.InvalidArgument):
        _list_params(_app({"b"}), _call("b", {"encoding-type": "base64"}))
    with pytest.raises(e.NoSuchBucket):
        _list_params(_app({"b"}), _call("nope", {}))
