"""What the process runtime keeps on disk for each replica, to survive agent restarts.

``<data_dir>/runtimes/process/<name>/state.json`` holds a :class:`ReplicaRecord`: the spec,
the pid with its kernel start time (:mod:`apps.runtimes.pidfile`), wall-clock start and end,
the exit code once known, the restart counter, and whether a stop was requested or had to
SIGKILL. It is rewritten atomically (temporary file, then rename) on every change, so a
crash leaves the old or the new record, never half of one. ``exit_code`` beside it is
written by the replica's wrapper shell when the command ends (``process.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from apps.runtimes import pidfile
from apps.runtimes.spec import ContainerSpec, spec_from_dict

STATE_VERSION = 1
"""Version of state.json; a reader meeting a newer one refuses it (logs and skips)."""


@dataclass
class ReplicaRecord:
    """What ``state.json`` holds: enough to adopt, report and finish a replica."""

    node: str
    spec: ContainerSpec
    pid: int = 0
    start_ticks: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    ended: bool = False
    restarts: int = 0
    stop_requested: bool = False
    killed: bool = False
    message: str = ""
    uid: int | None = None
    """The host user it runs as (None: the agent's own user)."""
    home: str = ""
    """Its working directory root and HOME ("" = ``<replica dir>/work``, the layout of
    replicas run as the agent's own user)."""

    def to_json(self) -> str:
        return json.dumps({
            "version": STATE_VERSION, "node": self.node, "spec": json.loads(self.spec.to_json()),
            "pid": self.pid, "start_ticks": self.start_ticks, "started_at": self.started_at,
            "finished_at": self.finished_at, "exit_code": self.exit_code, "ended": self.ended,
            "restarts": self.restarts, "stop_requested": self.stop_requested,
            "killed": self.killed, "message": self.message, "uid": self.uid,
            "home": self.home}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReplicaRecord:
        d = json.loads(text)
        if d.get("version", 1) > STATE_VERSION:
            raise ValueError(f"state.json version {d['version']} is newer than this agent")
        return cls(node=d["node"], spec=spec_from_dict(d["spec"]), pid=d["pid"],
                   start_ticks=d["start_ticks"], started_at=d["started_at"],
                   finished_at=d["finished_at"], exit_code=d["exit_code"], ended=d["ended"],
                   restarts=d["restarts"], stop_requested=d["stop_requested"],
                   killed=d["killed"], message=d.get("message", ""), uid=d.get("uid"),
                   home=d.get("home", ""))

    @property
    def ident(self) -> pidfile.ProcessIdentity:
        return pidfile.ProcessIdentity(self.pid, self.start_ticks)

    def save(self, rdir: Path) -> None:
        tmp = rdir / "state.json.tmp"
        tmp.write_text(self.to_json())
        os.replace(tmp, rdir / "state.json")

    @classmethod
    def load(cls, rdir: Path) -> ReplicaRecord:
        return cls.from_json((rdir / "state.json").read_text())


def read_exit_file(rdir: Path) -> int | None:
    try:
        return int((rdir / "exit_code").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
