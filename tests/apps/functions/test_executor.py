"""The executor with real fork servers and instances (as a function's own uid when the
tests run as root): warm reuse, timeout, memory, process and file limits, crash, import
errors, scale to zero."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from apps.functions.bundle import pack
from apps.functions.core import build_version
from apps.functions.executor import Executor, InvokeFailed

HANDLER = '''
import json, os, time
def handle(event, context):
    event = event or {}
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("alloc_mb"):
        hog = bytearray(event["alloc_mb"] << 20)
    if event.get("forks"):
        made = 0
        try:
            for _ in range(event["forks"]):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                made += 1
        except OSError as exc:
            return {"forks": made, "error": str(exc)}
        return {"forks": made}
    if event.get("write"):
        try:
            open(event["write"], "w").write("x")
            return {"wrote": True}
        except OSError as exc:
            return {"wrote": False, "error": str(exc)}
    if event.get("exit"):
        os._exit(3)
    if event.get("raise"):
        raise ValueError("asked to fail")
    context.logger.info("handled %s", context.request_id)
    return {"pid": os.getpid(), "uid": os.getuid(), "id": context.request_id,
            "policy": os.sched_getscheduler(0),
            "left": context.remaining_ms(), "echo": event}
'''
UID = (1 << 30) + 4242


@pytest.fixture
def root():
    # a world-passable directory: the function's uid must reach its code
    path = Path(tempfile.mkdtemp(prefix="fn-test-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make(root: Path, source: str = HANDLER, **kw):
    src = root / "src"
    src.mkdir(exist_ok=True)
    (src / "main.py").write_text(source)
    data = pack(src)
    spec = build_version({"sha256": hashlib.sha256(data).hexdigest(), "timeout": "1s",
                          "memory": "64M", "concurrency": 2, **kw},
                         version=1, size=len(data), now_ms=0)
    reads = []

    async def read(key: str) -> bytes:
        reads.append(key)
        return data

    as_root = os.geteuid() == 0
    ex = Executor(root / "run", read, lambda name: (UID, UID) if as_root else None)
    return ex, spec, reads


async def call(ex, spec, payload: bytes, rid: str = "r"):
    import json

    result = await ex.invoke("f", spec, payload, rid)
    return json.loads(result.body), result.cold


async def test_warm_reuse_context_and_unprivileged_user(root):
    ex, spec, reads = make(root)
    try:
        first, cold = await call(ex, spec, b'{"a": 1}', "req-1")
        assert cold and first["echo"] == {"a": 1} and first["id"] == "req-1"
        assert 0 < first["left"] <= 1000
        assert first["policy"] == os.SCHED_BATCH  # never preempts the agent waking it
        again, cold = await call(ex, spec, b"", "req-2")
        assert not cold and again["pid"] == first["pid"] and again["echo"] == {}
        if os.geteuid() == 0:
            assert first["uid"] == UID
        assert len(reads) == 1  # the bundle is fetched once per node
        pool = ex.pools[("f", 1)]
        assert pool.cold_starts == 1 and pool.invocations == 2
        log = root / "run" / "logs" / "f.log"
        assert "handled req-1" in log.read_text()  # context.logger
        assert log.stat().st_mode & 0o777 == 0o600
        assert log.parent.stat().st_mode & 0o777 == 0o700
        tail = ex.log_tail("f", 1)
        assert tail.count("\n") == 1 and "handled req-2" in tail
        # every line an invocation writes starts with its id: one invocation's lines
        one = ex.log_tail("f", 100, request_id="req-1")
        assert one.startswith("req-1 | ") and "handled req-1" in one
        assert "req-2" not in one and all(line.startswith("req-1 | ")
                                          for line in one.splitlines())
        assert ex.log_tail("f", 100, request_id="req-9") == ""
        assert ex.log_tail("nosuch", 10) == ""
    finally:
        ex.close()


async def test_timeout_kills_the_instance_and_the_next_call_works(root):
    ex, spec, _ = make(root)
    try:
        warm, _ = await call(ex, spec, b"{}")
        with pytest.raises(InvokeFailed, match="timeout of 1 s") as info:
            await call(ex, spec, b'{"sleep": 20}')
        assert info.value.code == "timeout"
        assert ex.pools[("f", 1)].instances == 0  # the killed one is not kept
        after, cold = await call(ex, spec, b"{}")
        assert cold and after["pid"] != warm["pid"]
    finally:
        ex.close()


async def test_memory_limit_crash_and_handler_error_are_clear(root):
    ex, spec, _ = make(root)
    try:
        with pytest.raises(InvokeFailed, match="memory limit of 64 MiB") as info:
            await call(ex, spec, b'{"alloc_mb": 200}')
        assert info.value.code == "memory"
        with pytest.raises(InvokeFailed, match="died during the invocation") as info:
            await call(ex, spec, b'{"exit": true}')
        assert info.value.code == "crashed"
        with pytest.raises(InvokeFailed, match="ValueError: asked to fail") as info:
            await call(ex, spec, b'{"raise": true}')
        assert info.value.code == "error"
        ok, _ = await call(ex, spec, b'{"n": 5}')
        assert ok["echo"] == {"n": 5}
    finally:
        ex.close()


async def test_instance_rlimits(root):
    ex, spec, _ = make(root)
    try:
        got, _ = await call(ex, spec, b"{}")
        limits = {}
        for line in Path(f"/proc/{got['pid']}/limits").read_text().splitlines()[1:]:
            name = line[:26].strip()
            limits[name] = line[26:].split()[:2]
        assert limits["Max address space"] == [str(64 << 20)] * 2
        assert limits["Max open files"] == ["256", "256"]
        assert limits["Max file size"] == [str(64 << 20)] * 2
        assert limits["Max cpu time"] == ["2", "unlimited"]  # spent 0 s + timeout 1 s + 1
        if os.geteuid() == 0:
            assert limits["Max processes"] == ["10", "10"]  # concurrency 2 + 8
    finally:
        ex.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="process and file fences need a root agent")
async def test_fork_bomb_and_writes_outside_are_fenced(root):
    ex, spec, _ = make(root)
    try:
        got, _ = await call(ex, spec, b'{"forks": 200}')
        assert got["forks"] < 2 + 8 and "Resource temporarily unavailable" in got["error"]
        got, _ = await call(ex, spec, b'{"write": "/etc/fn-test-owned"}')
        assert got["wrote"] is False and not os.path.exists("/etc/fn-test-owned")
        got, _ = await call(ex, spec, b'{"write": "main.py"}')
        assert got["wrote"] is False  # its own code is read-only to it
    finally:
        ex.close()


async def test_import_error_is_start_failed(root):
    ex, spec, _ = make(root, source="import no_such_module_here\n")
    try:
        with pytest.raises(InvokeFailed, match=r"No.*no_such_module_here") as info:
            await call(ex, spec, b"{}")
        assert info.value.code == "start_failed"
    finally:
        ex.close()


async def test_scale_to_zero_then_cold_start(root):
    now = [100.0]
    ex, spec, _ = make(root, idle="5s")
    ex.monotonic = lambda: now[0]
    try:
        await call(ex, spec, b"{}")
        ex.pools[("f", 1)].monotonic = ex.monotonic
        second, _ = await call(ex, spec, b"{}")
        now[0] += 4.9
        assert ex.scale_down() == 0
        now[0] += 0.2
        assert ex.scale_down() == 1
        assert ex.pools[("f", 1)].instances == 0
        third, cold = await call(ex, spec, b"{}")
        assert cold and third["pid"] != second["pid"]
        ex.retire({})
        assert ex.pools == {}
    finally:
        ex.close()


def test_log_read_follows_whole_lines_and_restarts_a_new_log(tmp_path):
    async def read(key: str) -> bytes:
        raise AssertionError("no bundle needed")

    ex = Executor(tmp_path, read, lambda name: None)
    assert ex.log_read("f", 0) == ("", 0) and ex.log_end("f") == 0
    log = tmp_path / "logs" / "f.log"
    log.parent.mkdir()
    log.write_bytes(b"one\ntwo\nhal")
    text, end = ex.log_read("f", 0)
    assert text == "one\ntwo\n" and end == 8  # the half line waits for its end
    assert ex.log_read("f", end) == ("", 8)
    with open(log, "ab") as fh:
        fh.write(b"f\nthree\n")
    assert ex.log_read("f", end) == ("half\nthree\n", 19)
    assert ex.log_end("f") == 19
    log.write_bytes(b"new\n")  # a new log, shorter than the offset: from its start
    assert ex.log_read("f", 19) == ("new\n", 4)
    log.write_bytes(b"x" * 100)  # one line longer than a read: given as it is
    assert ex.log_read("f", 0, max_bytes=10) == ("x" * 10, 10)


async def test_new_secrets_replace_the_pool_without_failing_calls_in_flight(root):
    """New secret values close the pool: a call already running finishes on its
    instance, a call that picked the old pool runs on the new one, and the same values
    again close nothing (an unchanged secret never restarts the fork server)."""
    import trio

    ex, spec, _ = make(root, timeout="5s")
    values = {"TOKEN": "one"}

    async def secret_env(name: str) -> dict[str, str]:
        return dict(values)

    ex.secret_env = secret_env
    try:
        first, _ = await call(ex, spec, b"{}")
        old = ex.pools[("f", 1)]
        assert ex.drop("f", {"TOKEN": "one"}) == 0 and ex.pools[("f", 1)] is old
        results = []

        async def slow() -> None:
            results.append(await call(ex, spec, b'{"sleep": 0.5}'))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            with trio.fail_after(5):
                while not old.busy:
                    await trio.sleep(0.01)
            values["TOKEN"] = "two"
            assert ex.drop("f", dict(values)) == 1 and old.closed
            after, cold = await call(ex, spec, b"{}")  # a new pool, new fork server
            assert cold and after["pid"] != first["pid"]
        assert results and results[0][0]["echo"] == {"sleep": 0.5}  # not cut short
        assert old.instances == 0 and old.proc is None  # all of the old pool stopped
        with pytest.raises(InvokeFailed) as info:
            await old.invoke(b"{}", "late", 1)
        assert info.value.code == "unavailable"
        assert ex.pools[("f", 1)] is not old and ex.pools[("f", 1)].secrets == values
    finally:
        ex.close()
