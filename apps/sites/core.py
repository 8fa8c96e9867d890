"""The sites logic on a node, with its storage and state injected: deploy (upload what
is missing, commit a version), rollback, remove, and answering requests.

A deploy is two phases. The client uploads each file the site does not already hold
(stored once per site by SHA-256, checked while it streams in), then commits the list of
``path → sha256``. The commit checks every file is stored with its size, writes the
version's manifest as an object, and only then switches the site's row (``current``) in
the replicated ``sites`` table: one LWW write, so every node moves from the old version
to the new one whole, never to a mix. Rollback rewrites the same field.

Serving reads the site's row from the local copy of the table on every request, the
version's manifest once (kept in memory), and each file's bytes from the blobstore or
from the in-memory LRU of hot files. A request can only name a manifest entry
(:mod:`apps.sites.paths`), so nothing outside the site's version is ever read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import trio

from apps.ingress.targets import HostRequest, HostResponse
from apps.sites.cache import ByteLru
from apps.sites.manifest import (
    KEEP_VERSIONS,
    MAX_MANIFEST_BYTES,
    SiteError,
    build_manifest,
    check_domains,
    check_files,
    check_name,
    decode_manifest,
    encode_manifest,
    file_key,
    manifest_key,
    site_prefix,
)
from apps.sites.messages import ManifestEntry, SiteRecord, SiteStats, SiteVersion
from apps.sites.serve import Plan, plan
from apps.sites.storage import Storage
from apps.sites.tables import SITE_STATS, SITES, all_sites, site_stats
from meshcloud.errors import MeshError, NotFoundError

log = logging.getLogger(__name__)

CACHE_ENV = "MESHCLOUD_SITES_CACHE"
DEFAULT_CACHE = 64 << 20
MAX_CACHED_FILE = 4 << 20
STORAGE_TIMEOUT = 15.0
DOMAIN_REFRESH = 0.25
"""Seconds the domain → site index is reused before it is read again from the table."""
RECORD_REFRESH = 0.25
"""Seconds a site's row is reused by requests before it is read again from the table."""
MAX_MAX_AGE = 365 * 86400

Files = dict[str, ManifestEntry]


def cache_bytes_from_env() -> int:
    text = os.environ.get(CACHE_ENV, "")
    return int(text) if text.isdigit() else DEFAULT_CACHE


class Counters:
    __slots__ = ("bytes_sent", "errors", "not_found", "requests")

    def __init__(self) -> None:
        self.requests = self.not_found = self.errors = self.bytes_sent = 0

    def as_record(self, now_ms: int) -> SiteStats:
        return SiteStats(requests=self.requests, not_found=self.not_found,
                         errors=self.errors, bytes_sent=self.bytes_sent, updated_ms=now_ms)


class Sites:
    def __init__(self, state: Any, storage: Storage, *, node_id: bytes,
                 wall_ms: Callable[[], int], monotonic: Callable[[], float],
                 emit: Callable[..., Any] | None = None,
                 cache_bytes: int = DEFAULT_CACHE) -> None:
        self.state = state
        self.storage = storage
        self.node_id = node_id
        self.wall_ms = wall_ms
        self.monotonic = monotonic
        self.emit = emit
        self.cache = ByteLru(cache_bytes, min(MAX_CACHED_FILE, cache_bytes // 8))
        self.manifests: OrderedDict[str, Files] = OrderedDict()
        self.handles: OrderedDict[str, Any] = OrderedDict()
        self.counters: dict[str, Counters] = {}
        self._domains: dict[str, str] = {}
        self._domains_at = -1e9
        self._published: dict[str, SiteStats] = {}
        self._records: dict[str, tuple[float, SiteRecord | None]] = {}

    # --- reading the table --------------------------------------------------------------

    def site(self, name: str) -> SiteRecord:
        record = self.state.get(SITES.name, name)
        if record is None:
            raise NotFoundError(f"no site {name!r}")
        return record  # type: ignore[no-any-return]

    def domains(self) -> dict[str, str]:
        """{domain: site}, re-read at most every :data:`DOMAIN_REFRESH` seconds."""
        now = self.monotonic()
        if now - self._domains_at >= DOMAIN_REFRESH:
            index: dict[str, str] = {}
            for name, record in sorted(all_sites(self.state).items()):
                for domain in record.domains:
                    index.setdefault(domain, name)
            self._domains, self._domains_at = index, now
        return self._domains

    def site_for(self, host: str) -> str | None:
        return self.domains().get(host)

    # --- deploy -------------------------------------------------------------------------

    async def missing(self, name: str, files: Any, *, confirm: bool = False) -> list[str]:
        """The SHA-256 digests of ``files`` the site does not hold yet, from one listing
        of the site's files; with ``confirm``, each one the listing lacks is looked up
        by key as well (a commit must not refuse a file a lagging listing missed)."""
        check_name(name)
        wanted = {digest: size for _, size, digest in check_files(files)}
        await self.storage.ensure_bucket()
        listed = await self.storage.sizes(file_key(name, ""))
        candidates = {d: s for d, s in wanted.items() if listed.get(file_key(name, d)) != s}
        if not confirm:
            return sorted(candidates)
        missing: list[str] = []
        limiter = trio.CapacityLimiter(16)

        async def probe(digest: str, size: int) -> None:
            async with limiter:
                if await self.storage.size_of(file_key(name, digest)) != size:
                    missing.append(digest)

        async with trio.open_nursery() as nursery:
            for digest, size in candidates.items():
                nursery.start_soon(probe, digest, size)
        return sorted(missing)

    async def upload(self, name: str, digest: str, size: int,
                     source: AsyncIterable[bytes]) -> None:
        """Store one file; refused (nothing stored) unless its bytes hash to ``digest``
        and number ``size``."""
        check_name(name)
        check_files([{"path": "f", "size": size, "sha256": digest}])
        hasher = hashlib.sha256()
        count = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal count
            async for piece in source:
                count += len(piece)
                if count > size:
                    raise SiteError(f"file {digest[:12]}: more than the {size} bytes "
                                    "announced")
                hasher.update(piece)
                yield piece

        def check() -> None:
            if count != size:
                raise SiteError(f"file {digest[:12]}: {count} bytes, {size} announced")
            if hasher.hexdigest() != digest:
                raise SiteError(f"file {digest[:12]}: its bytes do not hash to its name")

        await self.storage.ensure_bucket()
        await self.storage.put(file_key(name, digest), counted(), size=size,
                               content_type="application/octet-stream", check=check)

    async def commit(self, name: str, body: Any) -> dict[str, Any]:
        """A new version from ``{"files": [...], "domains": [...], "spa": bool,
        "max_age": int}`` that becomes current at once; the site is created if new."""
        check_name(name)
        if not isinstance(body, dict):
            raise SiteError("body must be a JSON object")
        files = check_files(body.get("files"))
        old = self.state.get(SITES.name, name)
        domains = (check_domains(body["domains"]) if body.get("domains") is not None
                   else (old.domains if old is not None else ()))
        if not domains:
            raise SiteError(f"site {name!r} needs at least one domain (--domain)")
        taken = {d: s for d, s in self._fresh_domains().items() if s != name}
        clash = sorted(d for d in domains if d in taken)
        if clash:
            raise MeshError(f"domain {clash[0]} already serves site {taken[clash[0]]!r}",
                            code="conflict")
        spa = body.get("spa")
        spa = (old.spa if old is not None else False) if spa is None else spa
        max_age = body.get("max_age")
        max_age = (old.max_age if old is not None else 300) if max_age is None else max_age
        if not isinstance(spa, bool):
            raise SiteError("spa must be true or false")
        if not isinstance(max_age, int) or isinstance(max_age, bool) \
                or not 0 <= max_age <= MAX_MAX_AGE:
            raise SiteError(f"max_age must be 0..{MAX_MAX_AGE} seconds")
        missing = await self.missing(name, body.get("files"), confirm=True)
        if missing:
            raise SiteError(f"{len(missing)} file(s) are not uploaded yet (first: "
                            f"{missing[0][:12]}); upload them, then commit again")
        versions = old.versions if old is not None else ()
        number = max((v.version for v in versions), default=0) + 1
        manifest = build_manifest(name, number, files)
        data = encode_manifest(manifest)
        if len(data) > MAX_MANIFEST_BYTES:
            raise SiteError("the file list is too large for one version")
        key = manifest_key(name, number, secrets.token_hex(4))
        await self._put_bytes(key, data)
        now = self.wall_ms()
        version = SiteVersion(version=number, manifest_key=key, created_ms=now,
                              files=len(files), size=sum(s for _, s, _ in files))
        record = SiteRecord(domains=domains, current=number, versions=(*versions, version),
                            switched_ms=max(now, old.switched_ms + 1000 if old else 0),
                            created_ms=old.created_ms if old is not None else now,
                            spa=spa, max_age=max_age)
        record, dropped = prune(record)
        self.state.put(SITES.name, name, record)
        self._domains_at = -1e9
        self._records.pop(name, None)
        if self.emit is not None:
            self.emit("site.deployed", site=name, version=number, files=len(files))
        await self._forget(name, record, dropped)
        return site_json(name, record)

    async def rollback(self, name: str, to: int | None = None) -> dict[str, Any]:
        record = self.site(check_name(name))
        numbers = sorted(v.version for v in record.versions)
        if to is None:
            earlier = [n for n in numbers if n < record.current]
            if not earlier:
                raise SiteError(f"site {name!r} has no version before {record.current} "
                                f"(kept: {', '.join(map(str, numbers))})")
            to = earlier[-1]
        if to not in numbers:
            raise NotFoundError(f"site {name!r} keeps no version {to} (kept: "
                                f"{', '.join(map(str, numbers))})")
        switched = max(self.wall_ms(), record.switched_ms + 1000)
        record = replace(record, current=to, switched_ms=switched)
        self.state.put(SITES.name, name, record)
        self._records.pop(name, None)
        if self.emit is not None:
            self.emit("site.rolled_back", site=name, version=to)
        return site_json(name, record)

    async def remove(self, name: str) -> dict[str, Any]:
        """Delete the site's row (it stops being served at once), then its objects."""
        record = self.site(check_name(name))
        self.state.delete(SITES.name, name)
        self._domains_at = -1e9
        self._records.pop(name, None)
        self.forget_cached(name)
        for node, _ in site_stats(self.state).get(name, {}).items():
            if node == self.node_id:
                self.state.delete(SITE_STATS.name, (name, node))
        removed = 0
        try:
            for key in await self.storage.keys(site_prefix(name)):
                await self.storage.delete(key)
                removed += 1
        except MeshError as exc:
            log.warning("site %s: objects left behind: %s", name, exc)
        if self.emit is not None:
            self.emit("site.removed", site=name)
        return {"removed": name, "versions": len(record.versions), "objects": removed}

    def forget_cached(self, name: str) -> None:
        prefix = site_prefix(name)
        for table in (self.handles, self.manifests):
            for key in [k for k in table if k.startswith(prefix)]:
                del table[key]
        for key in [k for k in self.cache.items if str(k).startswith(prefix)]:
            self.cache.discard(key)

    def _fresh_domains(self) -> dict[str, str]:
        self._domains_at = -1e9
        return self.domains()

    async def _put_bytes(self, key: str, data: bytes) -> None:
        async def one() -> AsyncIterator[bytes]:
            yield data

        await self.storage.ensure_bucket()
        await self.storage.put(key, one(), size=len(data), content_type="application/cbor",
                               check=lambda: None)

    async def _forget(self, name: str, record: SiteRecord,
                      dropped: tuple[SiteVersion, ...]) -> None:
        """Delete the manifests of pruned versions and the files no kept version uses."""
        if not dropped:
            return
        try:
            kept: set[str] = set()
            for version in record.versions:
                kept |= {e.key for e in (await self.files(name, version)).values()}
            gone: set[str] = set()
            for version in dropped:
                gone |= {e.key for e in (await self.files(name, version)).values()}
            for key in sorted(gone - kept) + [v.manifest_key for v in dropped]:
                await self.storage.delete(key)
        except MeshError as exc:
            log.warning("site %s: old versions not cleaned up: %s", name, exc)

    # --- serving ------------------------------------------------------------------------

    async def files(self, name: str, version: SiteVersion) -> Files:
        """The manifest of ``version`` as {path: entry}, read once then kept."""
        cached = self.manifests.get(version.manifest_key)
        if cached is not None:
            self.manifests.move_to_end(version.manifest_key)
            return cached
        data = await self._read_all(version.manifest_key, MAX_MANIFEST_BYTES)
        manifest = decode_manifest(data)
        if manifest.site != name or manifest.version != version.version:
            raise SiteError(f"manifest {version.manifest_key} names another version")
        files = {e.path: e for e in manifest.files}
        self.manifests[version.manifest_key] = files
        while len(self.manifests) > 64:
            self.manifests.popitem(last=False)
        return files

    async def _handle(self, key: str) -> Any:
        found = self.handles.get(key)
        if found is None:
            found = await self.storage.handle(key)
            self.handles[key] = found
            while len(self.handles) > 4096:
                self.handles.popitem(last=False)
        return found

    async def _read_all(self, key: str, limit: int) -> bytes:
        handle = await self._handle(key)
        data = bytearray()
        async for piece in self.storage.read(handle, 0, limit + 1):
            data += piece
            if len(data) > limit:
                raise SiteError(f"object {key} is over {limit} bytes")
        return bytes(data)

    async def file_bytes(self, entry: ManifestEntry) -> bytes:
        """A small file's bytes, from the cache or the blobstore (checked)."""
        cached = self.cache.get(entry.key)
        if cached is not None:
            return cached
        data = await self._read_all(entry.key, entry.size)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.etag:
            self.handles.pop(entry.key, None)
            raise SiteError(f"stored file {entry.path!r} does not match its manifest")
        self.cache.put(entry.key, data)
        return data

    def counters_for(self, name: str) -> Counters:
        found = self.counters.get(name)
        if found is None:
            found = self.counters[name] = Counters()
        return found

    def record(self, name: str) -> SiteRecord | None:
        """The site's row, re-read at most every :data:`RECORD_REFRESH` seconds (decoding
        it is most of a cached request's cost); this node's own changes are seen at once."""
        now = self.monotonic()
        cached = self._records.get(name)
        if cached is not None and now - cached[0] < RECORD_REFRESH:
            return cached[1]
        record = self.state.get(SITES.name, name)
        self._records[name] = (now, record)
        if len(self._records) > 1024:
            self._records.clear()
        return record  # type: ignore[no-any-return]

    async def respond(self, name: str, request: HostRequest) -> HostResponse:
        counters = self.counters_for(name)
        counters.requests += 1
        try:
            return await self._respond(name, request, counters)
        except (MeshError, OSError, trio.TooSlowError) as exc:
            log.warning("site %s: %s %s failed: %r", name, request.method,
                        request.target[:200], exc)
            counters.errors += 1
            self.handles.clear()  # a stale object record (site removed and redeployed)
            body = b"the site's storage did not answer; try again\n"
            return HostResponse(503, [(b"content-type", b"text/plain; charset=utf-8"),
                                      (b"content-length", str(len(body)).encode()),
                                      (b"retry-after", b"2"), (b"cache-control", b"no-store")],
                                body if request.method != "HEAD" else b"")

    async def _respond(self, name: str, request: HostRequest,
                       counters: Counters) -> HostResponse:
        """Cached manifests and files answer without a storage call (and without a
        timeout scope); anything read from storage has :data:`STORAGE_TIMEOUT`."""
        record = self.record(name)
        version = next((v for v in record.versions if v.version == record.current),
                       None) if record is not None else None
        if record is None or version is None:
            counters.not_found += 1
            body = b"no such site\n"
            return HostResponse(404, [(b"content-type", b"text/plain; charset=utf-8"),
                                      (b"content-length", str(len(body)).encode())], body)
        files = self.manifests.get(version.manifest_key)
        if files is None:
            with trio.fail_after(STORAGE_TIMEOUT):
                files = await self.files(name, version)
        p = plan(request.method, request.target, request.headers, files, record)
        if p.outcome == "not_found":
            counters.not_found += 1
        head = request.method == "HEAD"
        if p.entry is None or head:
            counters.bytes_sent += 0 if head else len(p.body)
            return HostResponse(p.status, p.headers, b"" if head else p.body)
        counters.bytes_sent += p.end - p.start
        if self.cache.fits(p.entry.size):
            data = self.cache.get(p.entry.key)
            if data is None:
                with trio.fail_after(STORAGE_TIMEOUT):
                    data = await self.file_bytes(p.entry)
            return HostResponse(p.status, p.headers, data[p.start:p.end])
        with trio.fail_after(STORAGE_TIMEOUT):
            handle = await self._handle(p.entry.key)
        return HostResponse(p.status, p.headers, self._stream(handle, p))

    async def _stream(self, handle: Any, p: Plan) -> AsyncIterator[bytes]:
        async for piece in self.storage.read(handle, p.start, p.end):
            yield piece

    # --- counters -----------------------------------------------------------------------

    def publish_stats(self) -> int:
        """Write this node's changed counters to ``site_stats``; returns rows written."""
        sites = all_sites(self.state)
        written = 0
        now = self.wall_ms()
        for name, counters in self.counters.items():
            if name not in sites:
                continue
            row = counters.as_record(0)
            if self._published.get(name) == row:
                continue
            self.state.put(SITE_STATS.name, (name, self.node_id), counters.as_record(now))
            self._published[name] = row
            written += 1
        return written

    def overview(self) -> list[dict[str, Any]]:
        stats = site_stats(self.state)
        out = []
        for name, record in sorted(all_sites(self.state).items()):
            rows = stats.get(name, {})
            here = self.counters.get(name)
            mine = here.as_record(0) if here is not None else None
            totals = {"requests": 0, "not_found": 0, "errors": 0, "bytes_sent": 0}
            for node, row in rows.items():
                if node == self.node_id and mine is not None:
                    row = mine
                for field in totals:
                    totals[field] += getattr(row, field)
            if mine is not None and self.node_id not in rows:
                for field in totals:
                    totals[field] += getattr(mine, field)
            out.append({**site_json(name, record), "stats": totals})
        return out


def prune(record: SiteRecord) -> tuple[SiteRecord, tuple[SiteVersion, ...]]:
    """Keep the newest :data:`KEEP_VERSIONS` versions (and always the current one)."""
    ordered = sorted(record.versions, key=lambda v: v.version)
    keep = ordered[-KEEP_VERSIONS:]
    if all(v.version != record.current for v in keep):
        keep = [v for v in ordered if v.version == record.current] + keep[1:]
    dropped = tuple(v for v in ordered if v not in keep)
    return replace(record, versions=tuple(keep)), dropped


def site_json(name: str, record: SiteRecord) -> dict[str, Any]:
    current = next((v for v in record.versions if v.version == record.current), None)
    return {"name": name, "domains": list(record.domains), "current": record.current,
            "spa": record.spa, "max_age": record.max_age,
            "switched_ms": record.switched_ms, "created_ms": record.created_ms,
            "files": current.files if current else 0, "size": current.size if current else 0,
            "versions": [{"version": v.version, "created_ms": v.created_ms,
                          "files": v.files, "size": v.size,
                          "current": v.version == record.current}
                         for v in sorted(record.versions, key=lambda v: -v.version)]}
