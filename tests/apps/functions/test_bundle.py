"""Function bundles: deterministic packing, safe unpacking."""

from __future__ import annotations

import io
import tarfile

import pytest

from apps.functions.bundle import pack, unpack
from apps.functions.core import FunctionError


def tree(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_pack_is_deterministic_and_unpacks_the_same_files(tmp_path):
    files = {"main.py": b"def handle(e, c): return e\n", "lib/util.py": b"X = 1\n",
             "data/a.bin": bytes(range(256))}
    one = pack(tree(tmp_path / "a", files))
    two = pack(tree(tmp_path / "b", dict(reversed(list(files.items())))))
    assert one == two
    tree(tmp_path / "a", {"__pycache__/x.pyc": b"junk", ".git/HEAD": b"ref"})
    assert pack(tmp_path / "a") == one
    unpack(one, tmp_path / "out")
    got = {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
           for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert got == files
    assert not (tmp_path / "out.tmp").exists()
    assert (tmp_path / "out" / "main.py").stat().st_mode & 0o777 == 0o644


def test_pack_refuses_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FunctionError, match="no files"):
        pack(tmp_path / "empty")
    with pytest.raises(FunctionError, match="not a directory"):
        pack(tmp_path / "missing")


def evil(name, kind=tarfile.REGTYPE, data=b"x"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.mark.parametrize("bundle", [evil("../escape.py"), evil("/abs.py"),
                                    evil("link", tarfile.SYMTYPE), b"not a tar at all"])
def test_unpack_refuses_hostile_bundles_and_leaves_nothing(tmp_path, bundle):
    with pytest.raises(FunctionError):
        unpack(bundle, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def zipped(entries: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            z.writestr(info, data)
    return buf.getvalue()


def test_a_zipped_directory_is_the_same_bundle_as_the_directory(tmp_path):
    from apps.functions.bundle import from_zip

    files = {"main.py": b"def handle(e, c): return e\n", "lib/util.py": b"X = 1\n"}
    expected = pack(tree(tmp_path / "a", files))
    assert from_zip(zipped({"hello/" + k: v for k, v in files.items()})) == expected
    assert from_zip(zipped(files)) == expected  # files at the root of the archive
    assert from_zip(zipped({**files, "__pycache__/m.pyc": b"x"})) == expected


@pytest.mark.parametrize("entries, modes, reason", [
    ({"../evil.py": b"x"}, None, "refused"),
    ({"/etc/evil.py": b"x"}, None, "refused"),
    ({"a/../../evil.py": b"x"}, None, "refused"),
    ({"link": b"/etc/passwd"}, {"link": 0o120777}, "refused"),
    ({"main.py": b"x", "main.py/x": b"y"}, None, "twice"),
    ({}, None, "no files"),
])
def test_hostile_zips_are_refused(entries, modes, reason):
    from apps.functions.bundle import from_zip

    with pytest.raises(FunctionError, match=reason):
        from_zip(zipped(entries, modes))


def test_not_a_zip_and_a_zip_bomb_are_refused():
    from apps.functions.bundle import from_zip
    from apps.functions.core import MAX_BUNDLE

    with pytest.raises(FunctionError, match="not a zip archive"):
        from_zip(b"PK\x03\x04 but not really")
    bomb = zipped({"a.bin": bytes(MAX_BUNDLE // 2 + 1), "b.bin": bytes(MAX_BUNDLE // 2 + 1)})
    assert len(bomb) < 1 << 20  # small compressed, too large unpacked
    with pytest.raises(FunctionError, match="larger than"):
        from_zip(bomb)
