"""A short scheduler slice for a userspace tunnel's threads (wireguard-go's).

Each packet through wireguard-go wakes one of its threads, which then runs for tens of
microseconds and sleeps again. On a busy host that thread competes with whatever is
running; Linux's fair scheduler (EEVDF, 6.6+) picks the task with the earliest virtual
deadline, a task's deadline being its slice ahead, so a thread that asks for a short
slice (Linux 6.12+: ``sched_setattr`` with ``sched_runtime`` under ``SCHED_OTHER``) is
run sooner after it wakes, and is preempted sooner if it runs long. Its share of the CPU
does not change (that is its weight, its nice value), so it cannot starve anything.
Older kernels ignore the field. Measured on a 2-CPU VM under load 24-38: the mean V-Net
ping 1.09 ms instead of 1.69 (docs/benchmarks.md).

The agent sets it on every thread of the process (:func:`shorten`); threads the process
makes later inherit it from the thread that made them, and the plane calls it again on
each pass for any it missed. Only that process changes: no host-wide setting is touched.
:func:`sched_attr` and :func:`slice_from_env` are the pure parts.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Mapping

from vnet.plane import PlaneError

SLICE_NS = 100_000
"""The slice asked for, 0.1 ms: the shortest Linux grants, and longer than the work one
packet takes (15-45 µs here)."""
SLICE_ENV = "MESHCLOUD_WG_SLICE_US"
"""Overrides :data:`SLICE_NS` (microseconds; 0 leaves the kernel's default)."""
SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
"""``sched_setattr`` and ``sched_getattr`` by machine (elsewhere nothing is set)."""
FAIR_POLICIES = (0, 3)
"""SCHED_OTHER, SCHED_BATCH: the policies a custom slice applies to."""
ATTR = struct.Struct("IIQiIQQQII")
"""``struct sched_attr`` (size, policy, flags, nice, priority, runtime, deadline, period,
util_min, util_max): 56 bytes."""
RUNTIME = 5
"""Index of ``sched_runtime`` (the slice, in ns, for the fair policies) in :data:`ATTR`."""


def slice_from_env(env: Mapping[str, str]) -> int:
    """The slice to give, in ns, from :data:`SLICE_ENV` (default :data:`SLICE_NS`; 0:
    none). Bad values raise :class:`PlaneError`."""
    text = env.get(SLICE_ENV, "").strip()
    if not text:
        return SLICE_NS
    if not text.isdigit() or not (int(text) == 0 or 100 <= int(text) <= 100_000):
        raise PlaneError(f"${SLICE_ENV} must be 0 or 100..100000 (µs), not {text!r}")
    return int(text) * 1000


def sched_attr(current: bytes, slice_ns: int) -> bytes | None:
    """``current`` (a thread's ``sched_attr``) with its slice set to ``slice_ns``, its
    policy and nice value kept; None when its policy is not a fair one (real-time or
    idle threads are left as they are) or it already has that slice."""
    fields = list(ATTR.unpack(current[:ATTR.size].ljust(ATTR.size, b"\0")))
    if fields[1] not in FAIR_POLICIES or fields[RUNTIME] == slice_ns:
        return None
    fields[0] = ATTR.size
    fields[2] = 0  # sched_flags: none (no reset-on-fork, no utilisation clamps)
    fields[RUNTIME] = slice_ns
    return ATTR.pack(*fields)


def thread_ids(pid: int) -> set[int]:
    """The ids of ``pid``'s threads (none for a process that is gone)."""
    try:
        return {int(name) for name in os.listdir(f"/proc/{pid}/task") if name.isdigit()}
    except FileNotFoundError:
        return set()


def current_slice(tid: int) -> int | None:
    """Thread ``tid``'s slice in ns as the kernel reports it (Linux 6.12+ for the fair
    policies), None when it cannot be read."""
    calls = SYSCALLS.get(platform.machine())
    if calls is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(ATTR.size)
    if libc.syscall(calls[1], tid, buf, ATTR.size, 0) != 0:
        return None
    return int(ATTR.unpack(buf.raw)[RUNTIME])


def shorten(pid: int, slice_ns: int = SLICE_NS, *,
            done: frozenset[int] = frozenset()) -> set[int]:
    """Give every thread of ``pid`` (but those in ``done``) a ``slice_ns`` slice; the
    threads it looked at (a thread that ended meanwhile is skipped; none on a machine
    not in :data:`SYSCALLS`, or for a ``slice_ns`` of 0). Raises OSError when the kernel
    refuses."""
    calls = SYSCALLS.get(platform.machine())
    if calls is None or not slice_ns:
        return set()
    setattr_call, getattr_call = calls
    libc = ctypes.CDLL(None, use_errno=True)
    seen: set[int] = set()
    for tid in sorted(thread_ids(pid) - done):
        buf = ctypes.create_string_buffer(ATTR.size)
        if libc.syscall(getattr_call, tid, buf, ATTR.size, 0) != 0:
            errno = ctypes.get_errno()
            if errno == 3:  # ESRCH: the thread ended
                continue
            raise OSError(errno, f"sched_getattr: {os.strerror(errno)}")
        wanted = sched_attr(buf.raw, slice_ns)
        if wanted is not None:
            attr = ctypes.create_string_buffer(wanted, ATTR.size)
            if libc.syscall(setattr_call, tid, attr, 0) != 0:
                errno = ctypes.get_errno()
                if errno != 3:
                    raise OSError(errno, f"sched_setattr: {os.strerror(errno)}")
        seen.add(tid)
    return seen
