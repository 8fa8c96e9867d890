from __future__ import annotations

import pytest

from blobstore.s3 import errors as e
from blobstore.s3.xml import render_error
from meshcloud.errors import MeshError

EXPECTED = [
    (e.NoSuchBucket, "NoSuchBucket", 404), (e.NoSuchKey, "NoSuchKey", 404),
    (e.SignatureDoesNotMatch, "SignatureDoesNotMatch", 403), (e.AccessDenied, "AccessDenied", 403),
    (e.InvalidArgument, "InvalidArgument", 400), (e.KeyTooLongError, "KeyTooLongError", 400),
    (e.BadDigest, "BadDigest", 400), (e.InvalidDigest, "InvalidDigest", 400),
    (e.IncompleteBody, "IncompleteBody", 400), (e.EntityTooLarge, "EntityTooLarge", 400),
    (e.InvalidRange, "InvalidRange", 416), (e.PreconditionFailed, "PreconditionFailed", 412),
    (e.NotModified, "NotModified", 304), (e.BucketNotEmpty, "BucketNotEmpty", 409),
    (e.BucketAlreadyOwnedByYou, "BucketAlreadyOwnedByYou", 409),
    (e.NoSuchUpload, "NoSuchUpload", 404), (e.InvalidPart, "InvalidPart", 400),
    (e.InvalidPartOrder, "InvalidPartOrder", 400), (e.EntityTooSmall, "EntityTooSmall", 400),
    (e.MalformedXML, "MalformedXML", 400), (e.RequestTimeTooSkewed, "RequestTimeTooSkewed", 403),
    (e.ExpiredPresignedUrl, "AccessDenied", 403), (e.ExpiredToken, "ExpiredToken", 400),
    (e.MethodNotAllowed, "MethodNotAllowed", 405), (e.InvalidBucketName, "InvalidBucketName", 400),
    (e.InvalidAccessKeyId, "InvalidAccessKeyId", 403),
    (e.ContentSha256Mismatch, "XAmzContentSHA256Mismatch", 400),
    (e.MissingContentLength, "MissingContentLength", 411),
    (e.NotImplementedS3, "NotImplemented", 501), (e.InternalError, "InternalError", 500),
    (e.InvalidObjectKey, "InvalidArgument", 400), (e.SlowDown, "SlowDown", 503),
]


@pytest.mark.parametrize(("cls", "code", "status"), EXPECTED,
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_each_error_knows_its_code_and_status(cls, code, status):
    err = cls()
    assert (err.code, err.status) == (code, status)
    assert isinstance(err, MeshError) and err.message


def test_every_class_has_a_sane_code_status_and_message():
    for cls in e.all_error_classes():
        err = cls()
        assert err.code and err.code[0].isupper(), cls
        assert 300 <= err.status < 600, cls
        assert err.message, cls
        assert render_error(err).startswith(b"<?xml")


def test_extra_fields_and_custom_message():
    err = e.NoSuchKey("gone", Key="a/b", resource="/bucket/a/b")
    assert err.message == "gone" and err.extra == {"Key": "a/b"} and err.resource == "/bucket/a/b"
    assert b"<Resource>/bucket/a/b</Resource>" in render_error(err)
