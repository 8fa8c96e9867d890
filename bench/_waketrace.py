"""Which task wakes an idle agent: ``python -m bench._waketrace -m meshcloud ARGS...``.

Runs ``python -m meshcloud ARGS...`` with a trio instrument that counts every time the
run loop actually slept in the kernel and woke up (an ``epoll_wait`` with a timeout), and
names the first task stepped after it: the sleeper whose deadline expired (``timer``) or
the reader whose socket became ready (``io``). Every ~2 s it writes the counts as JSON to
the file named by ``MESHCLOUD_WAKE_TRACE``; ``python -m bench phone --trace`` diffs two
snapshots taken around the idle window and prints the sources, most frequent first.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from collections import Counter
from typing import Any

import trio

DUMP_EVERY = 2.0


class WakeTrace(trio.abc.Instrument):
    def __init__(self, path: str) -> None:
        self.path = path
        self.wakes: Counter[str] = Counter()
        self.total = 0
        self._slept: float | None = None
        self._timeout = 0.0
        self._kind: str | None = None
        self._dumped = time.monotonic()

    def before_io_wait(self, timeout: float) -> None:
        self._slept = time.monotonic() if timeout > 0 else None
        self._timeout = timeout

    def after_io_wait(self, timeout: float) -> None:
        if self._slept is None:
            return
        now = time.monotonic()
        self.total += 1
        self._kind = "timer" if now - self._slept >= self._timeout - 0.001 else "io"
        if now - self._dumped >= DUMP_EVERY:
            self._dumped = now
            self.dump()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._kind is not None:
            self.wakes[f"{self._kind} {task.name}"] += 1
            self._kind = None

    def dump(self) -> None:
        data = {"total": self.total, "wakes": dict(self.wakes), "at": time.monotonic()}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.path)


def read(path: str) -> dict[str, Any]:
    with open(path) as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Wake-ups per second by source between two snapshots, most frequent first."""
    seconds = max(after["at"] - before["at"], 1e-9)
    wakes = Counter(after["wakes"])
    wakes.subtract(before["wakes"])
    per_s = {k: round(v / seconds, 3) for k, v in wakes.most_common() if v > 0}
    return {"seconds": round(seconds, 1),
            "loop_wakeups_per_s": round((after["total"] - before["total"]) / seconds, 2),
            "sources": per_s}


def main() -> None:
    args = sys.argv[1:]
    if args[:2] != ["-m", "meshcloud"]:
        raise SystemExit("usage: python -m bench._waketrace -m meshcloud ARGS...")
    trace = WakeTrace(os.environ["MESHCLOUD_WAKE_TRACE"])
    real_run = trio.run

    def traced_run(*a: Any, **kw: Any) -> Any:
        kw["instruments"] = [*kw.get("instruments", ()), trace]
        return real_run(*a, **kw)

    trio.run = traced_run  # type: ignore[assignment]
    sys.argv = ["meshcloud", *args[2:]]
    runpy.run_module("meshcloud", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
