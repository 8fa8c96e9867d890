"""A function's code bundle: a deterministic tar of a directory (same files, same bytes,
same SHA-256), and its safe unpacking on a node (regular files and directories only, no
path leaving the target, root-owned and read-only to the function's user)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from apps.functions.core import MAX_BUNDLE, FunctionError

SKIP = {".git", ".hg", ".svn", "__pycache__", ".venv"}


def pack(root: Path) -> bytes:
    """Every regular file under ``root`` (sorted, mtime 0, owner 0) as one tar."""
    if not root.is_dir():
        raise FunctionError(f"{root} is not a directory")
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP)
            for name in sorted(names):
                file = Path(folder) / name
                if not file.is_file() or file.is_symlink():
                    continue
                data = file.read_bytes()
                info = tarfile.TarInfo(file.relative_to(root).as_posix())
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
                count += 1
                if buf.tell() > MAX_BUNDLE:
                    raise FunctionError(f"{root} is larger than {MAX_BUNDLE >> 20} MiB")
    if not count:
        raise FunctionError(f"{root} holds no files")
    return buf.getvalue()


def unpack(data: bytes, target: Path) -> None:
    """Extract ``data`` into the new directory ``target`` (made atomically: a partial
    extraction is never visible under ``target``)."""
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
