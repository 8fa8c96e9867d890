"""Records of the sites service: the ``sites`` table rows, the version manifests kept as
objects of the bucket ``meshcloud-sites``, and per-node request counters."""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock


@message(TagBlock.APPS + 70)
@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestEntry:
    """One file of a version: ``path`` (relative, ``/``-separated) is stored as object
    ``key``; ``etag`` is the hex SHA-256 of its bytes."""

    path: str
    key: str
    size: int
    etag: str
    content_type: str


@message(TagBlock.APPS + 71)
@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    site: str
    version: int
    files: tuple[ManifestEntry, ...]


@message(TagBlock.APPS + 72)
@dataclass(frozen=True, slots=True, kw_only=True)
class SiteVersion:
    version: int
    manifest_key: str
    created_ms: int
    files: int
    size: int


@message(TagBlock.APPS + 73)
@dataclass(frozen=True, slots=True, kw_only=True)
class SiteRecord:
    """A site (``sites`` table, key: its name). ``current`` is the version every node
    serves; switching it is one write of this row, so a deploy or rollback is atomic.
    ``switched_ms`` (the time of the last switch) is the ``Last-Modified`` of every file:
    it only grows, so a rollback never makes a client keep a newer copy."""

    domains: tuple[str, ...]
    current: int
    versions: tuple[SiteVersion, ...]
    switched_ms: int
    created_ms: int = 0
    spa: bool = False
    max_age: int = 300
    """``Cache-Control: max-age`` of files other than HTML (HTML is always revalidated)."""


@message(TagBlock.APPS + 74)
@dataclass(frozen=True, slots=True, kw_only=True)
class SiteStats:
    """One node's counters for one site (``site_stats`` table, key: site, node)."""

    requests: int = 0
    not_found: int = 0
    errors: int = 0
    bytes_sent: int = 0
    updated_ms: int = 0
