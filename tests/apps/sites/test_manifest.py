"""Version manifests: CBOR round trip, refusal of garbage, names and domains."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.sites.manifest import (
    SiteError,
    build_manifest,
    check_domain,
    check_files,
    check_name,
    decode_manifest,
    encode_manifest,
)
from apps.sites.messages import SiteRecord, SiteVersion
from apps.sites.tables import SITES

paths = st.lists(st.text("abcXYZ019-_.é ", min_size=1, max_size=10), min_size=1,
                 max_size=4).map("/".join)
files = st.dictionaries(paths, st.tuples(st.integers(0, 1 << 40),
                                         st.binary(min_size=32, max_size=32).map(bytes.hex)),
                        min_size=1, max_size=20)


@given(files, st.integers(1, 1 << 30))
def test_manifest_round_trip(tree: dict[str, tuple[int, str]], version: int) -> None:
    listed = []
    for path, (size, digest) in tree.items():
        try:
            listed.append(check_files([{"path": path, "size": size, "sha256": digest}])[0])
        except SiteError:
            continue
    if not listed:
        return
    manifest = build_manifest("blog", version, listed)
    assert decode_manifest(encode_manifest(manifest)) == manifest
    assert [e.path for e in manifest.files] == sorted(p for p, _, _ in listed)


@given(st.binary(max_size=200))
def test_garbage_is_one_clear_error(data: bytes) -> None:
    try:
        decode_manifest(data)
    except SiteError:
        pass


def test_site_record_fits_its_table() -> None:
    versions = tuple(SiteVersion(version=n, manifest_key=f"blog/versions/{n}-abcdef12.cbor",
                                 created_ms=1 << 41, files=5000, size=1 << 40)
                     for n in range(1, 11))
    record = SiteRecord(domains=tuple(f"d{i}.example.home" for i in range(16)), current=10,
                        versions=versions, switched_ms=1 << 41)
    assert SITES.decode(SITES.encode(record)) == record
    from meshcloud.codec.cbor import encode

    assert len(encode(SITES.encode(record))) < SITES.max_value_bytes


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a" * 64, 3, None])
def test_bad_names(name: object) -> None:
    with pytest.raises(SiteError):
        check_name(name)


def test_domains() -> None:
    assert check_domain("Blog.Home.") == "blog.home"
    for bad in ["", "a..b", "-a.home", "a b", "x" * 64 + ".home", "a/b", "ä.home", 5]:
        with pytest.raises(SiteError):
            check_domain(bad)
