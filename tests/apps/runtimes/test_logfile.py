"""Log tailing, following through truncation, copytruncate rotation, CRI records."""

from __future__ import annotations

from pathlib import Path

import trio

from apps.runtimes.logfile import CriJoiner, last_lines, read_log, rotate, rotated_files


def test_last_lines_reads_backwards_across_blocks(tmp_path: Path):
    path = tmp_path / "x.log"
    path.write_bytes(b"".join(b"line %d %s\n" % (i, b"x" * 1000) for i in range(300)))
    lines, end = last_lines(path, 3)
    assert [x.split()[1] for x in lines] == ["297", "298", "299"]
    assert end == path.stat().st_size


def test_last_lines_leaves_an_unfinished_line_to_the_follower(tmp_path: Path):
    path = tmp_path / "x.log"
    path.write_bytes(b"a\nb\npart")
    lines, end = last_lines(path, 5)
    assert lines == ["a", "b"]
    assert end == 4


def test_cri_joiner():
    j = CriJoiner()
    assert j.feed("2024-01-01T00:00:00Z stdout F hello world") == "hello world"
    assert j.feed("2024-01-01T00:00:00Z stdout P abc") is None
    assert j.feed("2024-01-01T00:00:00Z stderr F def") == "abcdef"
    assert j.feed("2024-01-01T00:00:00Z stdout F ") == ""
    assert j.feed("not cri") == "not cri"


def test_rotate_copytruncate_keeps_n(tmp_path: Path):
    path = tmp_path / "output.log"
    for gen in range(5):
        path.write_bytes(b"gen %d\n" % gen * 1000)
        assert rotate(path, max_bytes=4096, keep=2)
    assert path.stat().st_size == 0
    assert rotated_files(path, 2) == (tmp_path / "output.log.1", tmp_path / "output.log.2")
    assert (tmp_path / "output.log.1").read_bytes().startswith(b"gen 4")
    assert (tmp_path / "output.log.2").read_bytes().startswith(b"gen 3")
    assert not (tmp_path / "output.log.3").exists()
    path.write_bytes(b"small\n")
    assert not rotate(path, max_bytes=4096, keep=2)


async def test_read_all_includes_rotated_files_oldest_first(tmp_path: Path):
    path = tmp_path / "output.log"
    (tmp_path / "output.log.2").write_text("one\n")
    (tmp_path / "output.log.1").write_text("two\n")
    path.write_text("three\nfour")

    async def dead() -> bool:
        return False

    got = [x async for x in read_log(path, tail=None, follow=False, alive=dead,
                                     rotated=rotated_files(path, 3))]
    assert got == ["one", "two", "three", "four"]


async def test_follow_survives_truncation_and_ends_with_the_writer(tmp_path: Path):
    path = tmp_path / "output.log"
    path.write_text("old\n")
    writer_alive = True

    async def alive() -> bool:
        return writer_alive

    got: list[str] = []

    async def follow() -> None:
        async for line in read_log(path, tail=1, follow=True, alive=alive,
                                   poll_interval=0.01):
            got.append(line)

    async def wait_got(n: int) -> None:
        while len(got) < n:
            await trio.sleep(0.01)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await wait_got(1)
            with open(path, "a") as f:
                f.write("new 1\nnew ")
            await wait_got(2)
            with open(path, "a") as f:
                f.write("2\n")
            await wait_got(3)
            with open(path, "r+") as f:  # rotation by copytruncate
                f.truncate(0)
            with open(path, "a") as f:
                f.write("after\nlast")
            await wait_got(4)
            writer_alive = False
    assert got == ["old", "new 1", "new 2", "after", "last"]
