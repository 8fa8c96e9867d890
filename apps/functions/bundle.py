"""A function's code bundle: a deterministic tar of a directory (same files, same bytes,
same SHA-256), and its safe unpacking on a node (regular files and directories only, no
path leaving the target, root-owned and read-only to the function's user)."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from apps.functions.core import MAX_BUNDLE, FunctionError

SKIP = {".git", ".hg", ".svn", "__pycache__", ".venv"}


def pack(root: Path) -> bytes:
    """Every regular file under ``root`` (sorted, mtime 0, owner 0) as one tar."""
    if not root.is_dir():
        raise FunctionError(f"{root} is not a directory")
    files: list[tuple[str, bytes]] = []
    total = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        for name in sorted(names):
            file = Path(folder) / name
            if not file.is_file() or file.is_symlink():
                continue
            data = file.read_bytes()
            total += len(data)
            if total > MAX_BUNDLE:
                raise FunctionError(f"{root} is larger than {MAX_BUNDLE >> 20} MiB")
            files.append((file.relative_to(root).as_posix(), data))
    if not files:
        raise FunctionError(f"{root} holds no files")
    return pack_files(files)


def pack_files(files: list[tuple[str, bytes]]) -> bytes:
    """``(relative path, bytes)`` pairs as the same deterministic tar :func:`pack`
    makes (sorted by path)."""
    names = {path for path, _ in files}
    folders = {str(parent) for path in names for parent in PurePosixPath(path).parents}
    if len(names) != len(files) or names & folders:
        raise FunctionError("a bundle names a file twice (or as a file and a folder)")
    import tarfile  # here: an agent without functions never imports it

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
            if buf.tell() > MAX_BUNDLE:
                raise FunctionError(f"a bundle is at most {MAX_BUNDLE >> 20} MiB")
    return buf.getvalue()


MAX_ZIP_ENTRIES = 10_000


def from_zip(data: bytes) -> bytes:
    """A bundle (tar) from a zip archive (the Functions page's upload): regular files
    only, no path leaving the archive, at most :data:`MAX_BUNDLE` unpacked; when every
    entry sits under one top folder (a zipped directory), that folder is the root."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FunctionError(f"not a zip archive: {exc}") from None
    if not infos:
        raise FunctionError("the zip archive holds no files")
    if len(infos) > MAX_ZIP_ENTRIES:
        raise FunctionError(f"a zip archive holds at most {MAX_ZIP_ENTRIES} files")
    paths: list[PurePosixPath] = []
    for info in infos:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        mode = (info.external_attr >> 16) & 0o170000
        if (path.is_absolute() or ".." in path.parts or not path.parts
                or "\0" in info.filename or mode not in (0, 0o100000)):
            raise FunctionError(f"zip entry {info.filename!r} refused")
        paths.append(path)
    tops = {p.parts[0] for p in paths}
    strip = 1 if len(tops) == 1 and all(len(p.parts) > 1 for p in paths) else 0
    files: list[tuple[str, bytes]] = []
    total = 0
    for info, path in zip(infos, paths, strict=True):
        if any(part in SKIP for part in path.parts):
            continue
        total += info.file_size
        if total > MAX_BUNDLE:
            raise FunctionError(f"the unpacked bundle is larger than {MAX_BUNDLE >> 20} MiB")
        try:
            with archive.open(info) as member:
                body = member.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, ValueError, RuntimeError,
                NotImplementedError) as exc:
            raise FunctionError(f"zip entry {info.filename!r} unreadable: {exc}") from None
        if len(body) != info.file_size:
            raise FunctionError(f"zip entry {info.filename!r} is not the size it declares")
        files.append((PurePosixPath(*path.parts[strip:]).as_posix(), body))
    if not files:
        raise FunctionError("the zip archive holds no files")
    return pack_files(files)


def unpack(data: bytes, target: Path) -> None:
    """Extract ``data`` into the new directory ``target`` (made atomically: a partial
    extraction is never visible under ``target``)."""
    import tarfile  # here: an agent without functions never imports it

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755)
    os.chmod(tmp, 0o755)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if (not member.isfile() or path.is_absolute() or ".." in path.parts
                        or not path.parts):
                    raise FunctionError(f"bundle entry {member.name!r} refused")
                dest = tmp.joinpath(*path.parts)
                for parent in reversed(dest.relative_to(tmp).parents):
                    d = tmp / parent
                    if not d.exists():
                        d.mkdir(mode=0o755)
                        os.chmod(d, 0o755)
                source = tar.extractfile(member)
                assert source is not None
                with open(dest, "xb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(dest, 0o644)
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FunctionError(f"bad bundle: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, target)
