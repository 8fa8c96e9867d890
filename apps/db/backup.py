"""Pure parts of the database backups (pgBackRest into the mesh's own S3 API): the
repository settings, the WAL archive command, reading ``pgbackrest info``, the daily
schedule and the checks of a point-in-time restore (no I/O)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apps.db.core import DbError

BUCKET = "meshcloud-db"
"""The blobstore bucket every database's pgBackRest repository lives in (one path each)."""
S3_HOST = "localhost"
"""The name pgBackRest uses for the S3 endpoint (the certificate of the node's local TLS
front names it); it connects to 127.0.0.1."""
REGION = "us-east-1"
DAY_S = 86_400
FULL_EVERY_S = 7 * DAY_S
"""A scheduled backup is full when the last full one is older than this, else incremental."""
RETENTION_FULL = 2
"""Full backups kept (with their incrementals and the WAL they need)."""
BACKUP_TYPES = ("full", "incr", "diff")
REPO_PATH = "/pgbackrest"
"""``repo1-path``: each stanza's objects are under ``pgbackrest/archive/STANZA/`` (the WAL)
and ``pgbackrest/backup/STANZA/`` (the base backups) in :data:`BUCKET`."""


def access_key_id(mesh_id: bytes) -> str:
    """The access key the database service uses: one per mesh, the same id on every node
    (its secret is the ``s3keys`` row's, whoever wrote it first)."""
    digest = hashlib.blake2b(mesh_id, digest_size=15, person=b"meshcloud-db-s3").digest()
    return "MC" + base64.b32encode(digest).decode()[:18]


def stanza(name: str, created_ms: int) -> str:
    """One repository per database incarnation: a database removed and created again under
    the same name never mixes its WAL with the old one's."""
    return f"{name}-{created_ms}"


def repo_conf(*, key: str, secret: str, port: int, ca_file: str, log_path: str,
              lock_path: str, spool_path: str, process_max: int = 4) -> str:
    """pgBackRest's ``[global]`` section: an S3 repository in :data:`BUCKET`, path-style
    URIs, over TLS to the node's local front (verified against its own CA). Small files
    are bundled (``repo1-bundle``): one S3 object per file would cost a quorum write
    each."""
    lines = [
        "[global]",
        "repo1-type=s3",
        f"repo1-s3-bucket={BUCKET}",
        f"repo1-s3-endpoint={S3_HOST}",
        "repo1-storage-host=127.0.0.1",
        f"repo1-storage-port={int(port)}",
        "repo1-s3-uri-style=path",
        f"repo1-s3-region={REGION}",
        f"repo1-s3-key={key}",
        f"repo1-s3-key-secret={secret}",
        "repo1-storage-verify-tls=y",
        f"repo1-storage-ca-file={ca_file}",
        f"repo1-path={REPO_PATH}",
        f"repo1-retention-full={RETENTION_FULL}",
        "repo1-bundle=y",
        "start-fast=y",
        "compress-type=lz4",
        f"process-max={int(process_max)}",
        f"log-path={log_path}",
        f"lock-path={lock_path}",
        f"spool-path={spool_path}",
        "log-level-console=warn",
        "log-level-file=info",
    ]
    for line in lines:
        if "\n" in line:
            raise DbError("a newline in a pgBackRest setting", code="bad_request")
    return "\n".join(lines) + "\n"


def repo_roots() -> tuple[str, ...]:
    """The key prefixes under which the stanzas' directories are (with and without the
    leading slash: the repository path is absolute, S3 keys are not)."""
    base = REPO_PATH.strip("/")
    return tuple(f"{lead}{base}/{kind}/" for lead in ("", "/") for kind in ("archive", "backup"))


def is_stanza_of(prefix: str, root: str, name: str) -> bool:
    """Whether the listed directory ``prefix`` (under ``root``) is a stanza of a database
    named ``name`` (``NAME-CREATED_MS/``: any incarnation, never another name's)."""
    if not prefix.startswith(root):
        return False
    rest = prefix[len(root):]
    head, dash, tail = rest.rpartition("-")
    digits = tail[:-1]
    return bool(dash) and head == name and tail.endswith("/") and digits.isascii() \
        and digits.isdigit()


def archive_command(pgbackrest: str, conf: str, stanza_name: str, data: str) -> str:
    """``archive_command`` of a primary: each WAL segment goes to the repository before
    PostgreSQL recycles it."""
    return (f"{pgbackrest} --config={conf} --stanza={stanza_name} --pg1-path={data} "
            f"archive-push %p")


@dataclass(frozen=True, slots=True)
class Backup:
    label: str
    kind: str
    start: int
    """Unix seconds."""
    stop: int
    size: int
    """Bytes of the database the backup covers."""
    repo_size: int
    """Bytes stored in the repository (compressed, only what changed for incr/diff)."""

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "type": self.kind, "start": self.start,
                "stop": self.stop, "size": self.size, "repo_size": self.repo_size}


def parse_info(text: str) -> list[Backup]:
    """The backups of the one stanza ``pgbackrest info --output=json`` described, oldest
    first (an empty or missing stanza: no backups)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DbError(f"unreadable pgbackrest info: {exc}", code="backup_failed") from None
    out: list[Backup] = []
    for section in data if isinstance(data, list) else []:
        for b in section.get("backup", []) if isinstance(section, dict) else []:
            try:
                ts, info = b["timestamp"], b.get("info", {})
                repo = info.get("repository", {})
                out.append(Backup(label=str(b["label"]), kind=str(b["type"]),
                                  start=int(ts["start"]), stop=int(ts["stop"]),
                                  size=int(info.get("size", 0)),
                                  repo_size=int(repo.get("delta", 0))))
            except (KeyError, TypeError, ValueError):
                continue
    return sorted(out, key=lambda b: (b.stop, b.label))


def scheduled_kind(backups: list[Backup], now_s: float, every_s: float = DAY_S
                   ) -> str | None:
    """The type of backup the schedule wants now (None: not due)."""
    if not backups:
        return "full"
    if now_s - backups[-1].stop < every_s:
        return None
    fulls = [b for b in backups if b.kind == "full"]
    if not fulls or now_s - fulls[-1].stop >= FULL_EVERY_S:
        return "full"
    return "incr"


def parse_time(text: str) -> dt.datetime:
    """A restore target: ISO 8601 (``2026-12-07T05:10:00Z``, ``…+00:00``; no zone = UTC)
    or Unix seconds."""
    value = str(text).strip()
    try:
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DbError(f"bad time {text!r}: ISO 8601 (2026-12-07T05:10:00Z) or Unix "
                      f"seconds", code="bad_time") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def check_restore_time(target: dt.datetime, backups: list[Backup], now_s: float,
                       end: str = "") -> None:
    """A point in time can be restored when a backup had finished by then and it is not in
    the future (``end``: the WAL ends at ``now_s``, a removed database's kept backups:
    what to say of a later time)."""
    ts = target.timestamp()
    if not backups:
        raise DbError("no backup of this database yet (`meshcloud db backup NAME`)",
                      code="no_backup")
    if ts < backups[0].stop:
        first = dt.datetime.fromtimestamp(backups[0].stop, dt.UTC).isoformat()
        raise DbError(f"{target.isoformat()} is before the first backup (finished "
                      f"{first}): nothing to restore from", code="too_early")
    if ts >= now_s and end:
        last = dt.datetime.fromtimestamp(now_s, dt.UTC).isoformat()
        raise DbError(f"{target.isoformat()} is after the kept backups end ({end}, "
                      f"{last})", code="too_late")
    if ts >= now_s:
        raise DbError(f"{target.isoformat()} is not in the past", code="bad_time")


def target_text(target: dt.datetime) -> str:
    """``recovery_target_time`` as PostgreSQL reads it (UTC, microseconds)."""
    return target.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def last_backup(backups: list[Backup]) -> Mapping[str, Any] | None:
    return backups[-1].as_json() if backups else None
