"""The plain request parser of the ingress (:mod:`apps.ingress.requesthead`): what it
accepts, h11 reads the same way; everything else it leaves to h11."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.ingress.requesthead import MAX_BODY, MAX_HEAD, plain_request


def h11_reading(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], int] | None:
    """(method, target, headers, body length) as h11 reads the request at the start of
    ``data``; None if h11 refuses it or needs more bytes."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD + 4)
    conn.receive_data(data)
    try:
        request = conn.next_event()
        if not isinstance(request, h11.Request):
            return None
        length = 0
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                length += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    return request.method, request.target, list(request.headers), length


def test_a_plain_request_is_read_as_h11_reads_it():
    data = (b"POST /a/b?c=1 HTTP/1.1\r\nHost: shop.home\r\nX-Two:  two  words \t\r\n"
            b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhelloGET /next")
    request = plain_request(data)
    assert request is not None
    assert (request.method, request.target, request.length) == (b"POST", b"/a/b?c=1", 5)
    assert request.headers == [(b"host", b"shop.home"), (b"x-two", b"two  words"),
                               (b"content-length", b"5"), (b"connection", b"keep-alive")]
    assert data[request.head_size:request.size] == b"hello"
    assert h11_reading(data) == (request.method, request.target, request.headers, 5)


@pytest.mark.parametrize("data", [
    # framing h11 must decide (request smuggling), or refuse
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1),
    # what h11 answers or frames itself
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    # Host: none or two
    b"GET / HTTP/1.1\r\nX: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    # lines h11 might read differently
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n",
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    # not complete, or too large to be parsed here
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * MAX_HEAD + b"\r\n\r\n",
])
def test_anything_but_a_plain_request_goes_to_h11(data):
    assert plain_request(data) is None


_TOKEN = st.sampled_from([b"host", b"Host", b"HOST", b"content-length", b"Content-Length",
                          b"transfer-encoding", b"connection", b"expect", b"upgrade",
                          b"x-a", b"X-Forwarded-For", b"te", b"bad name", b"", b"x:y"])
_VALUE = st.one_of(
    st.sampled_from([b"a", b"shop.home", b"0", b"5", b"12", b"chunked", b"keep-alive",
                     b"close", b"keep-alive, close", b"100-continue", b" padded \t", b"",
                     b"5, 5", b"+5", b"websocket"]),
    st.binary(max_size=12))
_LINE = st.tuples(_TOKEN, st.sampled_from([b":", b": ", b" :", b":\t"]), _VALUE).map(
    lambda t: t[0] + t[1] + t[2])
_REQUEST_LINE = st.tuples(
    st.sampled_from([b"GET", b"POST", b"PUT", b"get", b"CONNECT", b"G\x00T"]),
    st.sampled_from([b"/", b"/a?b=c", b"*", b"http://a/", b"/a b", b"/\xff", b""]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]),
).map(lambda t: b" ".join(t))


_PLAIN_LINE = st.tuples(
    st.sampled_from([b"x-a", b"X-Forwarded-For", b"content-length", b"connection", b"accept"]),
    st.sampled_from([b": ", b":"]),
    st.sampled_from([b"0", b"7", b"keep-alive", b"text/html, */*", b"a  b", b""]),
).map(lambda t: b"".join(t))


def test_what_is_accepted_h11_reads_the_same_way():
    accepted = []

    @settings(max_examples=400, deadline=None)
    @given(first=st.one_of(st.just(b"GET / HTTP/1.1"), st.just(b"POST /a?b=c HTTP/1.1"),
                           _REQUEST_LINE),
           host=st.sampled_from([[b"Host: shop.home"], [b"host:a"], []]),
           lines=st.lists(st.one_of(_PLAIN_LINE, _PLAIN_LINE, _LINE), max_size=4),
           ending=st.sampled_from([b"\r\n", b"\r\n", b"\n"]), body=st.binary(max_size=20))
    def check(first, host, lines, ending, body):
        data = ending.join([first, *host, *lines]) + ending + ending + body
        request = plain_request(data)
        if request is None or len(data) < request.size:
            return  # h11's (a body not all there yet goes to h11 too)
        accepted.append(request)
        assert h11_reading(data[:request.size]) == (request.method, request.target,
                                                    request.headers, request.length)

    check()
    assert len(accepted) >= 20  # the comparison was made, many times (≈ 40 of 400)
