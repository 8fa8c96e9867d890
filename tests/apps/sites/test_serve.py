"""The pure response planner: index files, 404 page, SPA fallback, content types,
validators, conditional requests, ranges, precompressed siblings, methods."""

from __future__ import annotations

import email.utils
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.sites.manifest import build_manifest, content_type
from apps.sites.messages import SiteRecord, SiteVersion
from apps.sites.serve import accepted_encodings, parse_range, plan

SWITCHED_MS = 1_700_000_000_000


def files_of(paths: dict[str, bytes]):
    manifest = build_manifest("blog", 1, [(p, len(b), hashlib.sha256(b).hexdigest())
                                          for p, b in paths.items()])
    return {e.path: e for e in manifest.files}


def site(spa: bool = False, max_age: int = 300) -> SiteRecord:
    return SiteRecord(domains=("blog.home",), current=1, spa=spa, max_age=max_age,
                      switched_ms=SWITCHED_MS,
                      versions=(SiteVersion(version=1, manifest_key="k", created_ms=0,
                                            files=0, size=0),))


FILES = files_of({"index.html": b"<h1>home</h1>", "404.html": b"<h1>lost</h1>",
                  "docs/index.html": b"docs", "app.js": b"x" * 100,
                  "app.js.gz": b"g" * 40, "app.js.br": b"b" * 30, "img/logo.png": b"png",
                  "style.css": b"body{}"})


def h(p, name: bytes) -> bytes | None:
    return next((v for n, v in p.headers if n == name), None)


def get(target: str, *headers: tuple[bytes, bytes], method: str = "GET", spa: bool = False):
    return plan(method, target, list(headers), FILES, site(spa))


def test_index_files_and_directory_redirect() -> None:
    p = get("/")
    assert p.status == 200 and p.entry is not None and p.entry.path == "index.html"
    assert h(p, b"content-type") == b"text/html; charset=utf-8"
    assert h(p, b"cache-control") == b"no-cache"
    assert get("/docs/").entry.path == "docs/index.html"
    p = get("/docs?x=1")
    assert p.status == 301 and h(p, b"location") == b"/docs/?x=1"


def test_content_types_and_cache_control() -> None:
    p = get("/img/logo.png")
    assert h(p, b"content-type") == b"image/png"
    assert h(p, b"cache-control") == b"public, max-age=300"
    assert content_type("a.css") == "text/css; charset=utf-8"
    assert content_type("a.woff2") == "font/woff2"
    assert content_type("LICENSE") == "application/octet-stream"


def test_missing_path_serves_the_sites_404_page() -> None:
    p = get("/nope.html")
    assert p.status == 404 and p.entry.path == "404.html" and p.outcome == "not_found"
    bare = plan("GET", "/nope", [], {k: v for k, v in FILES.items() if k != "404.html"},
                site())
    assert bare.status == 404 and bare.entry is None and b"not found" in bare.body


def test_spa_fallback_only_for_page_like_paths() -> None:
    assert get("/app/settings", spa=True).entry.path == "index.html"
    assert get("/app/settings", spa=True).status == 200
    assert get("/missing.png", spa=True).status == 404
    assert get("/missing.png", (b"accept", b"text/html"), spa=True).status == 200
    assert get("/app/settings").status == 404


def test_etag_and_last_modified_give_304() -> None:
    p = get("/style.css")
    etag = h(p, b"etag")
    assert etag == b'"' + FILES["style.css"].etag[:32].encode() + b'"'
    assert h(p, b"last-modified") == email.utils.formatdate(SWITCHED_MS // 1000,
                                                            usegmt=True).encode()
    assert get("/style.css", (b"if-none-match", etag)).status == 304
    assert get("/style.css", (b"if-none-match", b'W/' + etag)).status == 304
    assert get("/style.css", (b"if-none-match", b'"other", ' + etag)).status == 304
    assert get("/style.css", (b"if-none-match", b"*")).status == 304
    assert get("/style.css", (b"if-none-match", b'"other"')).status == 200
    later = email.utils.formatdate(SWITCHED_MS // 1000 + 10, usegmt=True).encode()
    earlier = email.utils.formatdate(SWITCHED_MS // 1000 - 10, usegmt=True).encode()
    assert get("/style.css", (b"if-modified-since", later)).status == 304
    assert get("/style.css", (b"if-modified-since", earlier)).status == 200
    assert get("/style.css", (b"if-modified-since", b"garbage")).status == 200
    # If-None-Match wins over If-Modified-Since
    assert get("/style.css", (b"if-none-match", b'"x"'),
               (b"if-modified-since", later)).status == 200
    not_modified = get("/style.css", (b"if-none-match", etag))
    assert not_modified.entry is None and h(not_modified, b"etag") == etag


def test_ranges() -> None:
    p = get("/app.js", (b"range", b"bytes=10-19"))
    assert (p.status, p.start, p.end) == (206, 10, 20)
    assert h(p, b"content-range") == b"bytes 10-19/100"
    assert h(p, b"content-length") == b"10"
    assert get("/app.js", (b"range", b"bytes=-5")).start == 95
    assert get("/app.js", (b"range", b"bytes=90-")).end == 100
    assert get("/app.js", (b"range", b"bytes=90-500")).end == 100
    unsatisfiable = get("/app.js", (b"range", b"bytes=100-"))
    assert unsatisfiable.status == 416
    assert h(unsatisfiable, b"content-range") == b"bytes */100"
    for ignored in (b"bytes=1-2,5-6", b"items=1-2", b"bytes=x-3", b"bytes=5-2"):
        assert get("/app.js", (b"range", ignored)).status == 200
    etag = h(get("/app.js"), b"etag")
    assert get("/app.js", (b"range", b"bytes=0-0"), (b"if-range", etag)).status == 206
    assert get("/app.js", (b"range", b"bytes=0-0"), (b"if-range", b'"old"')).status == 200
    assert get("/app.js", (b"range", b"bytes=0-0"), method="HEAD").status == 200


@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 200))
def test_a_satisfiable_range_stays_inside_the_file(first: int, last: int, size: int) -> None:
    chosen = parse_range(f"bytes={first}-{last}", size)
    if isinstance(chosen, tuple):
        start, end = chosen
        assert 0 <= start < end <= size and start == first
    elif chosen is False:
        assert first >= size


def test_precompressed_siblings() -> None:
    plain = get("/app.js")
    assert plain.entry.path == "app.js" and h(plain, b"vary") == b"Accept-Encoding"
    assert h(plain, b"content-encoding") is None
    gz = get("/app.js", (b"accept-encoding", b"gzip, deflate"))
    assert gz.entry.path == "app.js.gz" and h(gz, b"content-encoding") == b"gzip"
    assert h(gz, b"content-type") == b"text/javascript; charset=utf-8"
    assert h(gz, b"content-length") == b"40" and h(gz, b"etag") != h(plain, b"etag")
    br = get("/app.js", (b"accept-encoding", b"gzip, br"))
    assert br.entry.path == "app.js.br"
    assert get("/app.js", (b"accept-encoding", b"br;q=0, gzip")).entry.path == "app.js.gz"
    assert get("/app.js", (b"accept-encoding", b"*;q=0")).entry.path == "app.js"
    assert h(get("/style.css", (b"accept-encoding", b"gzip")), b"vary") is None


def test_accepted_encodings() -> None:
    assert accepted_encodings("gzip;q=0.5, br") == {"gzip", "br"}
    assert accepted_encodings("*") == {"gzip", "br"}
    assert accepted_encodings("identity") == set()
    assert accepted_encodings("x-gzip;q=bad") == set()


@pytest.mark.parametrize("target", ["/../index.html", "/%2e%2e/x", "/a%2fb", "/a%00"])
def test_hostile_targets_get_400(target: str) -> None:
    p = get(target)
    assert p.status == 400 and p.entry is None and p.outcome == "bad"


def test_methods() -> None:
    p = get("/", method="POST")
    assert p.status == 405 and h(p, b"allow") == b"GET, HEAD"
    head = get("/app.js", method="HEAD")
    assert head.status == 200 and h(head, b"content-length") == b"100"
