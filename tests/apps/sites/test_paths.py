"""Request targets → site paths: hostile ones are refused, every accepted one names only
clean segments."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.sites.manifest import SiteError, check_path
from apps.sites.paths import MAX_TARGET, BadTarget, parse_target


@pytest.mark.parametrize("target", [
    "/../etc/passwd", "/a/../../b", "/%2e%2e/secret", "/%2E%2E/x", "/a/%2e%2e/%2e%2e/b",
    "/.%2e/x", "/a/./b", "/%2e/x", "/a%2fb", "/a%2Fb", "/..%2f..%2fetc", "/a%5cb",
    "/a\\b", "/\\..\\x", "/a%00b", "/a\x00b", "/a%0ab", "/%zz", "/%2", "/%",
    "/%ff%fe", "/a\n", "/a\t", "relative/path", "*", "/" + "a" * MAX_TARGET, "/caf\u00e9",
])
def test_hostile_targets_are_refused(target: str) -> None:
    with pytest.raises(BadTarget):
        parse_target(target)


@pytest.mark.parametrize(("target", "key", "slash", "query"), [
    ("/", "", False, ""),
    ("/index.html?x=1", "index.html", False, "x=1"),
    ("/docs/", "docs", True, ""),
    ("/docs//a.html", "docs/a.html", False, ""),
    ("/caf%C3%A9.html", "caf\u00e9.html", False, ""),
    ("/a%20b.txt#frag", "a b.txt", False, ""),
    ("http://blog.home/x/y.css", "x/y.css", False, ""),
    ("/..a/b..", "..a/b..", False, ""),
])
def test_clean_targets(target: str, key: str, slash: bool, query: str) -> None:
    parsed = parse_target(target)
    assert (parsed.key, parsed.trailing_slash, parsed.query) == (key, slash, query)


@given(st.text(max_size=80))
def test_any_target_gives_clean_segments_or_bad_target(text: str) -> None:
    try:
        parsed = parse_target("/" + text)
    except BadTarget:
        return
    for segment in parsed.segments:
        assert segment not in ("", ".", "..")
        assert "/" not in segment and "\\" not in segment and "\x00" not in segment
        assert all(ord(c) >= 0x20 for c in segment)


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                        max_size=12), min_size=1, max_size=5))
def test_a_deployable_path_round_trips_through_its_url(parts: list[str]) -> None:
    path = "/".join(parts)
    try:
        check_path(path)
    except SiteError:
        return
    target = "/" + urllib.parse.quote(path, safe="/")
    assert parse_target(target).key == path


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/../b", "./a", "a\\b", "a\x00b",
                                  "x" * 1025, "a/\x7f"])
def test_deploy_paths_are_checked(path: str) -> None:
    with pytest.raises(SiteError):
        check_path(path)
