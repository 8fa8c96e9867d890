"""Reading replica output from log files: tail, follow, rotation, podman's CRI format.

Both runtimes keep a replica's output in a file that outlives the agent (the process
runtime points the child's stdout/stderr at it; podman's conmon writes ``k8s-file`` logs),
so logs survive an agent restart and are read the same way:

- ``tail`` reads backwards in blocks until it has the last N lines;
- ``follow`` polls the file (``poll_interval``): no inotify on Termux, and polling a
  local file every 0.2 s costs nothing measurable. A file that shrank was truncated
  (rotation by copytruncate, or conmon's ``log_size_max``): reading restarts at 0; a file
  whose inode changed is reopened. Following ends once the replica is no longer alive and
  the file is drained.
- rotation is *copytruncate*: copy ``x.log`` to ``x.log.1`` (older ones shift), then
  truncate ``x.log``; the writer holds an ``O_APPEND`` descriptor, so it carries on at the
  new end. Lines written between copy and truncate are lost: the price of never making the
  child reopen its output (it may be adopted by another agent process).

File reads are plain blocking reads of at most ``READ_BLOCK`` bytes on a local disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

READ_BLOCK = 64 * 1024
"""Bytes per read when tailing or following."""
MAX_LINE = 64 * 1024
"""A line longer than this is cut into pieces (a runaway writer must not eat memory)."""


class CriJoiner:
    """Turns CRI log lines (``<time> <stream> <P|F> <text>``) into whole output lines.

    conmon splits long lines into ``P`` (partial) records ending with one ``F`` (full).
    Lines not in that format pass through unchanged.
    """

    def __init__(self) -> None:
        self._partial: list[str] = []

    def feed(self, raw: str) -> str | None:
        parts = raw.split(" ", 3)
        if len(parts) < 3 or parts[1] not in ("stdout", "stderr") or parts[2] not in ("P", "F"):
            return raw
        text = parts[3] if len(parts) == 4 else ""
        if parts[2] == "P":
            self._partial.append(text)
            return None
        whole = "".join([*self._partial, text])
        self._partial.clear()
        return whole


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def last_lines(path: Path, n: int) -> tuple[list[str], int]:
    """The last ``n`` complete lines of ``path`` and the offset just after them.

    An unfinished last line is not returned: it starts at the returned offset, where a
    follower picks it up once it is complete (or at the end, as it is).
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            pos, buf = size, b""
            while pos > 0 and buf.count(b"\n") <= n:
                step = min(READ_BLOCK, pos)
                pos -= step
                f.seek(pos)
                buf = f.read(step) + buf
    except FileNotFoundError:
        return [], 0
    lines = buf.split(b"\n")
    partial = lines.pop()
    if pos > 0 and lines:
        lines = lines[1:]  # the first piece may be a cut line
    return ([_decode(x) for x in lines[-n:]] if n > 0 else []), size - len(partial)


class _Reader:
    """Incremental line reader over one path that survives truncation and replacement."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path = path
        self.offset = offset
        self._inode: int | None = None
        self._rest = b""

    def read_new(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if self._inode is not None and st.st_ino != self._inode:
            self.offset, self._rest = 0, b""
        self._inode = st.st_ino
        if st.st_size < self.offset:
            self.offset, self._rest = 0, b""
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(min(st.st_size - self.offset, 16 * READ_BLOCK))
        self.offset += len(data)
        data = self._rest + data
        *whole, self._rest = data.split(b"\n")
        if len(self._rest) > MAX_LINE:
            whole.append(self._rest)
            self._rest = b""
        return [_decode(x) for x in whole]

    def flush(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return [_decode(rest)] if rest else []


async def read_log(path: Path, *, tail: int | None, follow: bool,
                   alive: Callable[[], Awaitable[bool]], poll_interval: float = 0.2,
                   rotated: tuple[Path, ...] = (), cri: bool = False) -> AsyncIterator[str]:
    """Yield output lines of ``path`` (``rotated`` = older files, newest first).

    ``tail=None`` means everything still on disk (rotated files first); ``follow`` keeps
    going until ``alive()`` is false and the file holds nothing new.
    """
    joiner = CriJoiner() if cri else None

    def out(lines: list[str]) -> list[str]:
        if joiner is None:
            return lines
        return [w for w in (joiner.feed(x) for x in lines) if w is not None]

    if tail is None:
        for old in reversed(rotated):
            reader = _Reader(old, 0)
            while batch := reader.read_new():
                for line in out(batch):
                    yield line
            for line in out(reader.flush()):
                yield line
        reader = _Reader(path, 0)
    else:
        lines, size = last_lines(path, max(tail, 0))
        for line in out(lines):
            yield line
        reader = _Reader(path, size)
    while True:
        batch = reader.read_new()
        for line in out(batch):
            yield line
        if batch:
            await trio.lowlevel.checkpoint()
            continue
        if not follow or not await alive():
            # drain: the writer may have flushed between our read and its exit
            for line in out(reader.read_new() + reader.flush()):
                yield line
            return
        await trio.sleep(poll_interval)


def rotate(path: Path, *, max_bytes: int, keep: int) -> bool:
    """Copytruncate ``path`` if it is larger than ``max_bytes``; keep ``keep`` old files."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(keep, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if i == keep:
            older.unlink(missing_ok=True)
        elif older.exists():
            older.rename(path.with_name(f"{path.name}.{i + 1}"))
    if keep > 0:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as f:
        f.truncate(0)
    return True


def rotated_files(path: Path, keep: int) -> tuple[Path, ...]:
    """Existing rotated files of ``path``, newest first."""
    return tuple(p for i in range(1, keep + 1)
                 if (p := path.with_name(f"{path.name}.{i}")).exists())
