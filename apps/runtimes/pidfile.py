"""Knowing a process again after an agent restart: pid plus kernel start time.

A pid alone is not an identity: after the process dies the kernel hands the number to the
next process. Linux records each process's start time in clock ticks since boot
(``/proc/<pid>/stat`` field 22, proc(5)); the pair (pid, start time) is unique until
reboot. We store both when starting a child and, before adopting or signalling a pid,
check that the process there still has the recorded start time.

On systems without ``/proc`` (a laptop running macOS) the start time is None and only
``kill(pid, 0)`` is checked: weaker, and said so in the status message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    pid: int
    start_ticks: int | None

    def __str__(self) -> str:
        return f"{self.pid}:{self.start_ticks if self.start_ticks is not None else '?'}"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 is index 0)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the name (field 2) is in parentheses and may itself hold spaces and parentheses
    return raw[raw.rfind(b")") + 2:].decode("ascii", "replace").split()


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of the live process ``pid``, or None if there is none."""
    if PROC.joinpath("self", "stat").exists():
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return None
        return ProcessIdentity(pid, int(fields[19]))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ProcessIdentity(pid, None)


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` even if it is a zombie (for our own unreaped children)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def is_alive(ident: ProcessIdentity) -> bool:
    """True when ``ident``'s process still runs (a zombie or a reused pid is not it)."""
    now = identify(ident.pid)
    if now is None:
        return False
    return ident.start_ticks is None or now.start_ticks == ident.start_ticks


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "Z"
