from __future__ import annotations

import pytest

from blobstore.s3 import errors as e
from blobstore.s3.conditions import (
    Current,
    check_conditions,
    check_copy_source,
    parse_http_date,
)
from blobstore.s3.request import S3Request

T = 1_767_225_600.4  # 2026-01-01T00:00:00.4Z
CUR = Current("abc123", T)
BEFORE = "Wed, 31 Dec 2025 23:59:59 GMT"
AT = "Thu, 01 Jan 2026 00:00:00 GMT"
AFTER = "Thu, 01 Jan 2026 00:00:01 GMT"


def check(method: str, current=CUR, **headers):
    names = {"im": "If-Match", "inm": "If-None-Match", "ims": "If-Modified-Since",
             "ius": "If-Unmodified-Since"}
    req = S3Request.build(method, "/b/k", [(names[k], v) for k, v in headers.items()])
    check_conditions(req, current)


def raises(error, *args, **kw):
    with pytest.raises(error):
        check(*args, **kw)


def test_no_conditions_pass():
    check("GET")
    check("PUT", None)


@pytest.mark.parametrize("value", ['"abc123"', "abc123", '"x", "abc123"', "*"])
def test_if_match_passes(value):
    check("GET", im=value)


@pytest.mark.parametrize("value", ['"other"', 'W/"abc123"'])
def test_if_match_fails_412(value):
    raises(e.PreconditionFailed, "GET", im=value)


def test_if_none_match_is_304_on_reads_and_412_on_writes():
    raises(e.NotModified, "GET", inm='"abc123"')
    raises(e.NotModified, "HEAD", inm='W/"abc123"')  # weak comparison
    raises(e.PreconditionFailed, "PUT", inm="*")
    check("PUT", None, inm="*")  # create-only on a new key
    check("GET", inm='"other"')


def test_modified_since():
    raises(e.NotModified, "GET", ims=AT)  # sub-second part ignored: not modified
    raises(e.NotModified, "GET", ims=AFTER)
    check("GET", ims=BEFORE)
    check("PUT", ims=AT)  # only for GET/HEAD


def test_unmodified_since():
    raises(e.PreconditionFailed, "GET", ius=BEFORE)
    check("GET", ius=AT)


def test_s3_documented_combinations():
    # If-Match true and If-Unmodified-Since false: 200.
    check("GET", im='"abc123"', ius=BEFORE)
    # If-None-Match false and If-Modified-Since true: 304.
    raises(e.NotModified, "GET", inm='"abc123"', ims=BEFORE)


def test_if_match_on_missing_object_fails():
    raises(e.PreconditionFailed, "PUT", None, im='"abc123"')


@pytest.mark.parametrize("date", ["not a date", "", "Mon, 99 Foo 2026 99:99:99 GMT"])
def test_unparseable_dates_are_ignored(date):
    check("GET", ims=date)
    check("GET", ius=date)


def test_http_date_formats():
    assert parse_http_date(AT) == 1_767_225_600
    assert parse_http_date("Thursday, 01-Jan-26 00:00:00 GMT") in (1_767_225_600, None)
    assert parse_http_date("garbage") is None


def test_not_modified_has_no_body():
    assert e.NotModified().status == 304 and not e.NotModified().has_body


def copy_check(**headers):
    names = {"im": "x-amz-copy-source-if-match", "inm": "x-amz-copy-source-if-none-match",
             "ims": "x-amz-copy-source-if-modified-since",
             "ius": "x-amz-copy-source-if-unmodified-since"}
    req = S3Request.build("PUT", "/b/k2", [(names[k], v) for k, v in headers.items()])
    check_copy_source(req, CUR)


@pytest.mark.parametrize("headers", [
    {}, {"im": '"abc123"'}, {"im": "*"}, {"inm": '"other"'}, {"ims": BEFORE},
    {"ius": AT}, {"ius": AFTER},
    {"im": '"abc123"', "ius": BEFORE},  # if-match true wins over unmodified-since false
    {"inm": '"other"', "ims": AFTER},  # S3 evaluates if-modified-since only alone
])
def test_copy_source_conditions_that_pass(headers):
    copy_check(**headers)


@pytest.mark.parametrize("headers", [
    {"im": '"other"'}, {"inm": '"abc123"'}, {"inm": "*"}, {"ims": AT}, {"ims": AFTER},
    {"ius": BEFORE}, {"im": '"other"', "ius": AFTER},
])
def test_copy_source_conditions_that_fail_are_412_never_304(headers):
    with pytest.raises(e.PreconditionFailed) as info:
        copy_check(**headers)
    assert info.value.status == 412
