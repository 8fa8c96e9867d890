"""The Spark master's recovery state, kept in a bucket so that the next master finds it.

The master runs with ``spark.deploy.recoveryMode=FILESYSTEM``: it writes one file per
registered application, worker and driver (``app_…``, ``worker_…``, ``driver_…``) into its
recovery directory, and a master that starts reads them back, tells those applications and
workers that the master changed, and keeps the ones that answer. The directory is on the
master's node, which may die; so the master's workload runs this helper beside it:

* ``pull DIR`` before the master starts: the directory becomes exactly the objects under
  ``$MESHCLOUD_RECOVERY_BUCKET/$MESHCLOUD_RECOVERY_PREFIX`` (through this node's S3 API,
  retried for :data:`PULL_DEADLINE` seconds, then exit 1 so the workload restarts);
* ``push DIR --watch PID`` while the master runs (starting from what ``pull`` wrote):
  every :data:`POLL` seconds a scan of the directory; a file is uploaded once it was seen
  unchanged by two scans in a row (Spark writes a file in one go, a half-written one is
  not sent), and the object of a file that disappeared is deleted. It exits when ``PID``
  (the master) is gone.

Window of loss: a change reaches the bucket at most about ``2 × POLL`` seconds plus one PUT
after Spark made it. An application that registered in that window before the master's
node died is not recovered (it fails as without recovery); a worker that registered in it
registers again by itself (workers reconnect to the mesh's master address); a removal lost
there leaves a stale entry that the next master drops after ``spark.deploy.recoveryTimeout``.

This file is also the module ``meshcloud_spark_recovery`` of the Spark dist directory, run
by the system's Python as the master's unprivileged user: it imports only the standard
library and the S3 client of the data source. The key it uses
(``MESHCLOUD_RECOVERY_KEY`` / ``_SECRET``) may only read and write the recovery bucket.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

try:  # in the dist directory, beside the data source
    from pyspark_meshcloud import S3, SourceError  # type: ignore[import-not-found]
except ImportError:
    from apps.spark.source import S3, SourceError

POLL = 0.25
PULL_DEADLINE = 60.0
MAX_FILE = 16 << 20
"""Larger files are not state Spark writes (refused, not uploaded)."""
MANIFEST = ".pulled"
"""Written by :func:`pull`: the versions of the files it wrote (the pusher's start)."""
NAME_RE = re.compile(r"^(app|worker|driver)_[A-Za-z0-9._\-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    mtime_ns: int


class Sync:
    """What to upload and delete after each scan of the directory (no I/O).

    ``pushed``: the version of each file the bucket holds; ``last``: the previous scan."""

    def __init__(self, pulled: Mapping[str, Stat] | None = None) -> None:
        self.pushed: dict[str, Stat] = dict(pulled or {})
        self.last: dict[str, Stat] = dict(pulled or {})

    def plan(self, scan: Mapping[str, Stat]) -> tuple[list[str], list[str]]:
        """(names to upload, names to delete) after ``scan``; report each done with
        :meth:`uploaded` / :meth:`deleted` (what is not reported is planned again)."""
        uploads = sorted(n for n, s in scan.items()
                         if self.last.get(n) == s and self.pushed.get(n) != s)
        deletes = sorted(n for n in self.pushed if n not in scan)
        self.last = dict(scan)
        return uploads, deletes

    def uploaded(self, name: str, stat: Stat) -> None:
        self.pushed[name] = stat

    def deleted(self, name: str) -> None:
        self.pushed.pop(name, None)


def state_name(name: str) -> bool:
    """Is ``name`` a file of Spark's recovery state (the only names synced)?"""
    return bool(NAME_RE.match(name))


# --- I/O -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    s3: S3
    bucket: str
    prefix: str

    @classmethod
    def from_env(cls) -> Place:
        env = os.environ
        need = ("MESHCLOUD_S3_URL", "MESHCLOUD_RECOVERY_KEY", "MESHCLOUD_RECOVERY_SECRET",
                "MESHCLOUD_RECOVERY_BUCKET")
        missing = [n for n in need if not env.get(n)]
        if missing:
            raise SourceError(f"recovery state: {', '.join(missing)} not set")
        prefix = env.get("MESHCLOUD_RECOVERY_PREFIX", "")
        return cls(S3(env["MESHCLOUD_S3_URL"].rstrip("/"), env["MESHCLOUD_RECOVERY_KEY"],
                      env["MESHCLOUD_RECOVERY_SECRET"]), env["MESHCLOUD_RECOVERY_BUCKET"],
                   prefix)


def scan(directory: Path) -> dict[str, Stat]:
    out: dict[str, Stat] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for entry in entries:
        if not state_name(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        out[entry.name] = Stat(st.st_size, st.st_mtime_ns)
    return out


def pull(place: Place, directory: Path) -> dict[str, Stat]:
    """Make ``directory`` hold exactly the state in the bucket; the files written."""
    remote = {}
    for ref in place.s3.list(place.bucket, place.prefix):
        name = ref.key[len(place.prefix):]
        if state_name(name) and 0 < ref.size <= MAX_FILE:
            remote[name] = place.s3.get(place.bucket, ref.key)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    for name in scan(directory):
        if name not in remote:
            (directory / name).unlink(missing_ok=True)
    for name, data in remote.items():
        tmp = directory / f".pull-{name}"
        tmp.write_bytes(data)
        os.replace(tmp, directory / name)
    got = {n: s for n, s in scan(directory).items() if n in remote}
    manifest = directory / ".pulled.tmp"
    manifest.write_text(json.dumps({n: [s.size, s.mtime_ns] for n, s in got.items()}))
    os.replace(manifest, directory / MANIFEST)
    return got


def pulled(directory: Path) -> dict[str, Stat]:
    """What the last :func:`pull` wrote (the bucket holds these versions already)."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        return {str(n): Stat(int(v[0]), int(v[1])) for n, v in data.items()
                if state_name(str(n))}
    except (OSError, ValueError, TypeError, AttributeError, IndexError):
        return {}


def push_once(place: Place, directory: Path, sync: Sync) -> int:
    """One scan and the uploads and deletions it calls for; the number of S3 errors
    (what failed is planned again at the next scan)."""
    uploads, deletes = sync.plan(scan(directory))
    errors = 0
    for name in uploads:
        path = directory / name
        try:
            before = path.stat()
            if before.st_size > MAX_FILE:
                continue
            data = path.read_bytes()
            place.s3.put(place.bucket, place.prefix + name, data)
        except FileNotFoundError:
            continue  # gone meanwhile: the next scan deletes it
        except (SourceError, OSError) as exc:
            errors += 1
            _say(f"cannot store {name}: {exc}")
            continue
        sync.uploaded(name, Stat(before.st_size, before.st_mtime_ns))
    for name in deletes:
        try:
            place.s3.request("DELETE", place.bucket, place.prefix + name)
        except SourceError as exc:
            if "NoSuchKey" not in str(exc):
                errors += 1
                _say(f"cannot delete {name}: {exc}")
                continue
        sync.deleted(name)
    return errors


def pull_with_retries(place: Place, directory: Path, deadline: float = PULL_DEADLINE,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> dict[str, Stat]:
    end = clock() + deadline
    delay = 0.5
    while True:
        try:
            return pull(place, directory)
        except (SourceError, OSError) as exc:
            if not retryable(exc) or clock() + delay > end:
                raise
            _say(f"reading the recovery state failed ({exc}); retrying")
            sleep(delay)
            delay = min(delay * 2, 5.0)


FATAL = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket")


def retryable(exc: Exception) -> bool:
    """Worth trying again (the node's S3 API not up yet, a read that failed), unlike a
    refused key or a missing bucket."""
    return not any(code in str(exc) for code in FATAL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def push_loop(place: Place, directory: Path, watch: int, pulled: Mapping[str, Stat]) -> None:
    sync = Sync(pulled)
    while alive(watch):
        try:
            push_once(place, directory, sync)
        except Exception as exc:  # one bad scan must not end the sync
            _say(f"sync failed: {exc!r}")
        time.sleep(POLL)
    push_once(place, directory, sync)


def _say(text: str) -> None:
    print(f"spark recovery: {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    usage = "usage: meshcloud_spark_recovery.py pull DIR | push DIR --watch PID"
    if len(argv) < 2 or argv[0] not in ("pull", "push"):
        _say(usage)
        return 2
    directory = Path(argv[1])
    try:
        place = Place.from_env()
        if argv[0] == "pull":
            got = pull_with_retries(place, directory)
            _say(f"{len(got)} state file(s) read from {place.bucket}/{place.prefix}")
            return 0
        if len(argv) != 4 or argv[2] != "--watch" or not argv[3].isdigit():
            _say(usage)
            return 2
        push_loop(place, directory, int(argv[3]), pulled(directory))
        return 0
    except (SourceError, OSError) as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
