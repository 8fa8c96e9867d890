"""How a site answers one request: a pure function from the request and the version's
manifest to a :class:`Plan` (status, headers, which bytes of which file). The service
fetches the bytes; nothing here does I/O.

* ``/`` and ``dir/`` serve ``index.html``; ``dir`` redirects (301) to ``dir/`` when
  ``dir/index.html`` exists; a missing path serves the site's ``404.html`` (status 404)
  or, for a single-page app (``spa``), ``index.html`` for page-like paths (no file
  extension, or an ``Accept`` asking for HTML).
* ``ETag`` (the file's SHA-256), ``Last-Modified`` (when the site last switched version),
  ``304`` on ``If-None-Match`` (weak comparison) or else ``If-Modified-Since``;
  ``Cache-Control``: HTML ``no-cache``, other files ``public, max-age=N``.
* One byte range (``206``, ``416`` when unsatisfiable, ``If-Range``); several ranges or a
  malformed header get the whole file (allowed by RFC 9110).
* ``file.br`` / ``file.gz`` siblings are served for ``file`` with ``Content-Encoding``
  when ``Accept-Encoding`` takes them (``br`` first); such files carry
  ``Vary: Accept-Encoding``.
* GET and HEAD; other methods get 405.
"""

from __future__ import annotations

import email.utils
import functools
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from apps.sites.messages import ManifestEntry, SiteRecord
from apps.sites.paths import BadTarget, RequestPath, parse_target

Headers = list[tuple[bytes, bytes]]
INDEX = "index.html"
NOT_FOUND = "404.html"
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))


@dataclass(frozen=True, slots=True)
class Plan:
    status: int
    headers: Headers = field(default_factory=list)
    entry: ManifestEntry | None = None
    """The file whose bytes [start, end) are the body (none for HEAD and 304)."""
    start: int = 0
    end: int = 0
    body: bytes = b""
    outcome: str = "ok"
    """For the counters: ``ok``, ``not_found`` or ``bad``."""


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    values = [v.decode("latin-1") for n, v in headers if n.lower() == name]
    return ", ".join(values) if values else None


def etag_of(entry: ManifestEntry) -> str:
    return f'"{entry.etag[:32]}"'


@functools.lru_cache(maxsize=256)
def http_date(ms: int) -> str:
    return email.utils.formatdate(ms // 1000, usegmt=True)


def _text(status: int, text: str, outcome: str, extra: Headers | None = None) -> Plan:
    body = text.encode()
    return Plan(status, [(b"content-type", b"text/plain; charset=utf-8"),
                         (b"content-length", str(len(body)).encode()),
                         (b"cache-control", b"no-store"), *(extra or [])],
                body=body, outcome=outcome)


def accepted_encodings(value: str | None) -> set[str]:
    """Content codings ``Accept-Encoding`` takes (q > 0), of the ones we serve."""
    if not value:
        return set()
    q: dict[str, float] = {}
    for item in value.split(","):
        name, *params = [p.strip() for p in item.split(";")]
        weight = 1.0
        for param in params:
            key, _, number = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 0.0
        if name:
            q[name.lower()] = weight
    star = q.get("*")
    out = set()
    for coding, aliases in (("br", ("br",)), ("gzip", ("gzip", "x-gzip"))):
        weights = [q[a] for a in aliases if a in q]
        weight = max(weights) if weights else star
        if weight is not None and weight > 0:
            out.add(coding)
    return out


def parse_range(value: str, size: int) -> tuple[int, int] | bool | None:
    """``bytes=a-b`` → (start, end exclusive); None to ignore the header (malformed or
    several ranges); False when unsatisfiable."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if len(first) > 19 or len(last) > 19:
        return None
    if first == "":
        if last == "":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return False
    return start, end


def _matches(value: str, etag: str) -> bool:
    """``If-None-Match``: weak comparison against a list (or ``*``)."""
    if value.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in value.split(","))


def _not_modified(headers: Headers, etag: str, modified_ms: int) -> bool:
    inm = header(headers, b"if-none-match")
    if inm is not None:
        return _matches(inm, etag)
    ims = header(headers, b"if-modified-since")
    if ims is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError):
        return False
    if since is None or since.tzinfo is None:
        return False
    return modified_ms // 1000 <= int(since.timestamp())


def _if_range_ok(value: str, etag: str, modified_ms: int) -> bool:
    value = value.strip()
    if value.startswith('"'):
        return value == etag  # strong comparison
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return False
    return when is not None and int(when.timestamp()) == modified_ms // 1000


def _is_html(entry: ManifestEntry) -> bool:
    return entry.content_type.startswith("text/html")


def resolve(path: RequestPath, files: Mapping[str, ManifestEntry], site: SiteRecord,
            accept: str | None) -> tuple[str, ManifestEntry | None, int]:
    """``("file", entry, 200)``, ``("redirect", None, 301)`` or ``("missing", entry or
    None, status)``."""
    key = path.key
    if not path.segments or path.trailing_slash:
        found = files.get(f"{key}/{INDEX}" if key else INDEX)
        if found is not None:
            return "file", found, 200
    elif key in files:
        return "file", files[key], 200
    elif f"{key}/{INDEX}" in files:
        return "redirect", None, 301
    last = path.segments[-1] if path.segments else ""
    page_like = "." not in last or "text/html" in (accept or "")
    if site.spa and page_like and INDEX in files:
        return "file", files[INDEX], 200
    return "missing", files.get(NOT_FOUND), 404


def plan(method: str, target: str, headers: Headers, files: Mapping[str, ManifestEntry],
         site: SiteRecord) -> Plan:
    if method not in ("GET", "HEAD"):
        return _text(405, "only GET and HEAD\n", "bad", [(b"allow", b"GET, HEAD")])
    try:
        path = parse_target(target)
    except BadTarget as exc:
        return _text(400, f"bad request: {exc}\n", "bad")
    kind, entry, status = resolve(path, files, site, header(headers, b"accept"))
    if kind == "redirect":
        location = "/" + urllib.parse.quote(path.key) + "/"
        if path.query:
            location += "?" + path.query
        return _text(301, f"moved to {location}\n", "ok",
                     [(b"location", location.encode("latin-1", "replace"))])
    if entry is None:
        return _text(404, "not found\n", "not_found")
    modified = http_date(site.switched_ms).encode()
    cache = (b"no-cache" if _is_html(entry) or status != 200
             else f"public, max-age={site.max_age}".encode())
    sent = entry
    out: Headers = [(b"content-type", entry.content_type.encode("latin-1", "replace"))]
    variants = [(coding, files[entry.path + ext]) for coding, ext in ENCODINGS
                if entry.path + ext in files]
    if variants:
        out.append((b"vary", b"Accept-Encoding"))
        taken = accepted_encodings(header(headers, b"accept-encoding"))
        for coding, variant in variants:
            if coding in taken:
                sent = variant
                out.append((b"content-encoding", coding.encode()))
                break
    etag = etag_of(sent)
    out += [(b"etag", etag.encode()), (b"last-modified", modified),
            (b"cache-control", cache)]
    outcome = "ok" if status == 200 else "not_found"
    if status == 200:
        out.append((b"accept-ranges", b"bytes"))
        if _not_modified(headers, etag, site.switched_ms):
            return Plan(304, [(n, v) for n, v in out if n != b"content-type"],
                        outcome=outcome)
    start, end = 0, sent.size
    requested = header(headers, b"range") if status == 200 and method == "GET" else None
    if requested is not None:
        if_range = header(headers, b"if-range")
        if if_range is None or _if_range_ok(if_range, etag, site.switched_ms):
            chosen = parse_range(requested, sent.size)
            if chosen is False:
                return _text(416, "range not satisfiable\n", "bad",
                             [(b"content-range", f"bytes */{sent.size}".encode()),
                              (b"accept-ranges", b"bytes")])
            if isinstance(chosen, tuple):
                start, end = chosen
                status = 206
                out.append((b"content-range",
                            f"bytes {start}-{end - 1}/{sent.size}".encode()))
    out.append((b"content-length", str(end - start).encode()))
    return Plan(status, out, entry=sent, start=start, end=end, outcome=outcome)
