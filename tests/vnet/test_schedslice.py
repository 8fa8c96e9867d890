"""wireguard-go's short scheduler slice: the ``sched_attr`` it sets, the override, and
the syscalls on a real child process (Linux 6.12+ reports a thread's slice back)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vnet import schedslice
from vnet.plane import PlaneError
from vnet.schedslice import ATTR, RUNTIME, SLICE_ENV, SLICE_NS, sched_attr, slice_from_env


def attr(policy: int = 0, nice: int = 0, runtime: int = 2_800_000, flags: int = 0) -> bytes:
    return ATTR.pack(ATTR.size, policy, flags, nice, 0, runtime, 0, 0, 0, 1024)


@given(st.sampled_from([0, 3]), st.integers(-20, 19), st.integers(0, 10**9),
       st.integers(100_000, 100_000_000))
def test_the_slice_changes_and_nothing_else(policy, nice, runtime, wanted):
    new = sched_attr(attr(policy, nice, runtime, flags=1), wanted)
    if runtime == wanted:
        assert new is None
        return
    assert new is not None
    fields = ATTR.unpack(new)
    assert fields[RUNTIME] == wanted
    assert fields[:2] == (ATTR.size, policy) and fields[3] == nice  # policy and nice kept
    assert fields[2] == 0  # no reset-on-fork: the threads it makes inherit the slice


@pytest.mark.parametrize("policy", [1, 2, 5, 6])  # FIFO, RR, IDLE, DEADLINE: left alone
def test_other_policies_are_left_alone(policy):
    assert sched_attr(attr(policy), SLICE_NS) is None


@pytest.mark.parametrize(("env", "expected"), [
    ({}, SLICE_NS), ({SLICE_ENV: ""}, SLICE_NS), ({SLICE_ENV: "0"}, 0),
    ({SLICE_ENV: " 300 "}, 300_000), ({SLICE_ENV: "100000"}, 100_000_000)])
def test_slice_from_env(env, expected):
    assert slice_from_env(env) == expected


@pytest.mark.parametrize("bad", ["-1", "50", "100001", "0.1", "fast"])
def test_slice_from_env_refuses_nonsense(bad):
    with pytest.raises(PlaneError, match=SLICE_ENV):
        slice_from_env({SLICE_ENV: bad})


def kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


@pytest.mark.skipif(platform.machine() not in schedslice.SYSCALLS
                    or not kernel_at_least(6, 12),
                    reason="custom slices of fair tasks: Linux 6.12+ on x86_64/aarch64")
def test_every_thread_of_a_child_gets_the_slice_and_keeps_its_nice():
    # a child with three threads, niced, that waits on its stdin (no sleep)
    code = ("import os, sys, threading\n"
            "os.nice(3)\n"
            "for _ in range(2): threading.Thread(target=sys.stdin.read, daemon=True).start()\n"
            "print('ready', flush=True); sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        tids = schedslice.thread_ids(child.pid)
        assert len(tids) == 3
        assert schedslice.shorten(child.pid, 200_000) == tids
        for tid in tids:
            fields = read_attr(tid)
            assert fields[RUNTIME] == 200_000 and fields[3] == 3  # its nice is kept
            assert schedslice.current_slice(tid) == 200_000
        # done threads are not looked at again
        assert schedslice.shorten(child.pid, 300_000, done=frozenset(tids)) == set()
        assert all(schedslice.current_slice(tid) == 200_000 for tid in tids)
    finally:
        child.kill()
        child.wait()
    assert schedslice.shorten(child.pid) == set()  # gone: nothing to do, no error


def read_attr(tid: int) -> tuple[int, ...]:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(ATTR.size)
    assert libc.syscall(schedslice.SYSCALLS[platform.machine()][1], tid, buf, ATTR.size,
                        0) == 0, os.strerror(ctypes.get_errno())
    return ATTR.unpack(buf.raw)
