"""Names, domains, file paths and manifests of a deploy: pure checks, one clear
:class:`SiteError` for the first problem, nothing stored before every check passed."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable
from typing import Any

from apps.sites.messages import Manifest, ManifestEntry
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.errors import MeshError

BUCKET = "meshcloud-sites"
"""The mesh's own bucket of site files and version manifests."""
MAX_FILES = 5_000
MAX_PATH_BYTES = 1024
MAX_DOMAINS = 16
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
KEEP_VERSIONS = 10
"""Versions a site keeps for rollback; older ones (and files only they use) are deleted."""

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

TYPES = {
    ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".json": "application/json",
    ".map": "application/json", ".txt": "text/plain; charset=utf-8",
    ".md": "text/markdown; charset=utf-8", ".xml": "application/xml",
    ".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".avif": "image/avif", ".ico": "image/x-icon", ".woff": "font/woff",
    ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".wasm": "application/wasm", ".pdf": "application/pdf", ".mp4": "video/mp4",
    ".webm": "video/webm", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
    ".webmanifest": "application/manifest+json", ".gz": "application/gzip",
    ".br": "application/x-brotli", ".zip": "application/zip", ".csv": "text/csv",
}


class SiteError(MeshError):
    code = "bad_request"


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise SiteError(f"site name {str(name)[:80]!r} must be 1-63 lowercase letters, "
                        "digits or '-' (not at either end)")
    return name


def check_domain(domain: Any) -> str:
    """A host name the ingress routes (lower case, no port, no trailing dot)."""
    if not isinstance(domain, str):
        raise SiteError("a domain must be a string")
    text = domain.strip().lower().rstrip(".")
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise SiteError(f"domain {domain[:80]!r} is not a host name (like blog.home)")
    return text


def check_domains(domains: Any) -> tuple[str, ...]:
    if not isinstance(domains, list) or len(domains) > MAX_DOMAINS:
        raise SiteError(f"domains must be a list of at most {MAX_DOMAINS} host names")
    return tuple(dict.fromkeys(check_domain(d) for d in domains))


def check_path(path: Any) -> str:
    """A file's path in a site: relative, ``/``-separated, no ``.``/``..``/empty segment,
    no backslash, NUL or control character, at most :data:`MAX_PATH_BYTES`."""
    if not isinstance(path, str) or not path:
        raise SiteError("a file path must be a non-empty string")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise SiteError(f"file path {path[:60]!r}... is over {MAX_PATH_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in path):
        raise SiteError(f"file path {path[:80]!r} has a control character or backslash")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise SiteError(f"file path {path[:80]!r} is not valid Unicode") from None
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise SiteError(f"file path {path[:80]!r} must be relative, without '.', '..' "
                        "or empty segments")
    return path


def content_type(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    ext = name[dot:] if dot > 0 else ""
    if ext in TYPES:
        return TYPES[ext]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed is None:
        return "application/octet-stream"
    return f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed


def file_key(site: str, sha256: str) -> str:
    """Files are stored once per site by content: a deploy uploads only what changed."""
    return f"{site}/files/{sha256}"


def site_prefix(site: str) -> str:
    return f"{site}/"


def check_files(files: Any) -> list[tuple[str, int, str]]:
    """``[{"path", "size", "sha256"}, ...]`` from a client → ``[(path, size, sha256)]``."""
    if not isinstance(files, list) or not files:
        raise SiteError("a deploy needs a non-empty list of files")
    if len(files) > MAX_FILES:
        raise SiteError(f"a site has at most {MAX_FILES} files ({len(files)} given)")
    out: list[tuple[str, int, str]] = []
    seen: set[str] = set()
    for item in files:
        if not isinstance(item, dict):
            raise SiteError("each file is an object {path, size, sha256}")
        path = check_path(item.get("path"))
        size, digest = item.get("size"), item.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SiteError(f"file {path!r}: size must be a non-negative integer")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise SiteError(f"file {path!r}: sha256 must be 64 lowercase hex digits")
        if path in seen:
            raise SiteError(f"file {path!r} is listed twice")
        seen.add(path)
        out.append((path, size, digest))
    return out


def build_manifest(site: str, version: int, files: Iterable[tuple[str, int, str]]
                   ) -> Manifest:
    entries = tuple(ManifestEntry(path=p, key=file_key(site, d), size=s, etag=d,
                                  content_type=content_type(p))
                    for p, s, d in sorted(files))
    return Manifest(site=site, version=version, files=entries)


def encode_manifest(manifest: Manifest) -> bytes:
    return encode_message(manifest)


def decode_manifest(data: bytes) -> Manifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise SiteError("a version manifest is over its size limit")
    try:
        manifest = decode_message(data, Manifest)
    except MeshError as exc:
        raise SiteError(f"a version manifest does not decode: {exc.message}") from None
    return manifest


def manifest_key(site: str, version: int, token: str) -> str:
    return f"{site}/versions/{version}-{token}.cbor"
