"""The backup side of the database service on one node: the S3 bucket and key, the local
TLS front, each copy's pgBackRest configuration, backups, the daily schedule and
point-in-time restores."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from apps.db import pg, pgbr
from apps.db.backup import (
    BACKUP_TYPES,
    BUCKET,
    Backup,
    access_key_id,
    archive_command,
    is_stanza_of,
    parse_info,
    repo_conf,
    repo_roots,
    scheduled_kind,
    stanza,
)
from apps.db.core import DbError
from apps.db.messages import DbBackups, DbSpec
from apps.db.tables import DB_BACKUPS

if TYPE_CHECKING:
    from apps.db.service import DbService

log = logging.getLogger(__name__)

LOOK_EVERY = 600.0
"""Seconds between two looks at the repository by a primary (besides after a backup)."""


class Repo:
    def __init__(self, service: DbService, blobs: Any) -> None:
        self.service = service
        self.blobs = blobs
        self.front_port = 0
        self.ca_file: Path | None = None
        self.key: tuple[str, str] | None = None
        self.ready_stanzas: set[str] = set()
        self.running: dict[str, str] = {}
        """name → kind of the backup running on this node."""
        self.scopes: dict[str, trio.CancelScope] = {}
        """name → the scope of that backup (cancelled when the copy is dropped: no
        backup writes into a stanza after its database is gone)."""
        self.looked: dict[str, float] = {}
        self.locks: dict[str, trio.Lock] = {}
        self.error = ""
        self.wanted = trio.Event()
        """Set (by the controller) once the mesh holds a database or kept backups: only
        then does this node make its TLS front (``cryptography``, 7 MiB resident) and the
        backup key."""

    # --- infrastructure --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start the TLS front once the mesh has a database (:meth:`want`) and the node's
        S3 API listens; keep the key known."""
        task_status.started()
        if self.blobs is None:
            self.error = "no storage service on this node: backups unavailable"
            return
        await self.wanted.wait()
        while not getattr(self.blobs, "s3_urls", None):
            await trio.sleep(0.5)
        tls_dir = self.service.root / ".tls"
        ca, chain, key = await trio.to_thread.run_sync(pgbr.ensure_tls, tls_dir)
        self.ca_file = ca
        async with trio.open_nursery() as nursery:
            self.front_port = await nursery.start(pgbr.serve_tls_front,
                                                  self.blobs.s3_urls[0], chain, key)
            while True:
                try:
                    await self.ensure_key()
                    self.error = ""
                except Exception as exc:  # storage not ready yet: try again
                    self.error = f"backup repository not ready: {exc}"
                await trio.sleep(5 if self.key is None else 30)
                self._refresh_key()

    def want(self) -> None:
        """The mesh holds a database (or kept backups): bring the repository up."""
        self.wanted.set()

    async def ensure_key(self) -> tuple[str, str]:
        """The mesh's database-backup S3 key and bucket (made by the first node needing
        them).

        The key's id is the same on every node (:func:`access_key_id`), its secret is
        random: two nodes that make it at once write two secrets, and the row keeps one.
        So that this node never signs with a secret the row did not keep (every node's S3
        API would answer SignatureDoesNotMatch until it noticed), a node that lacks the
        row first asks its peers for it, and a node that made it reads it back from every
        live peer once its write is on all of them: a rival write made before ours
        reached its node is then merged here too, and the secret used is the one kept."""
        from blobstore.api import new_access_key
        from blobstore.records import S3KEYS, AccessKeyRecord

        state = self.service.state
        index = self.blobs.index
        key_id = access_key_id(self.service.node.mesh.mesh_id)
        if state.get(S3KEYS.name, key_id) is None:
            await index.fetch_missing(S3KEYS.name, (key_id,))
        record = state.get(S3KEYS.name, key_id)
        if record is None:
            _, secret = new_access_key()
            record = AccessKeyRecord(name="meshcloud databases", secret=secret,
                                     created_ms=self.service.node.clock.wall_ms(),
                                     buckets={BUCKET: "read,write"},
                                     creator=self.service.node.node_id)
            await index.put_everywhere(S3KEYS.name, (key_id,), record)
            await index.gather(S3KEYS.name, (key_id,))
            record = state.get(S3KEYS.name, key_id)
        objects = self.blobs.objects
        if objects is None:
            raise DbError("storage is starting", code="unavailable")
        await objects.ensure_service_bucket(BUCKET)
        self.key = (key_id, record.secret)
        return self.key

    def _refresh_key(self) -> None:
        """The key's secret as the state holds it now: two nodes that made the key at once
        each wrote their own secret, and the row keeps one of them (the other node learns
        it when the rows merge, and must not go on signing with its own)."""
        if self.key is None:
            return
        from blobstore.records import S3KEYS

        record = self.service.state.get(S3KEYS.name, self.key[0])
        if record is not None and record.secret != self.key[1]:
            self.key = (self.key[0], record.secret)

    def _pw(self, name: str, spec: DbSpec) -> dict[str, str]:
        return {"PGPASSWORD": self.service.pw(name, spec).password}

    def ready(self) -> bool:
        return self.front_port > 0 and self.ca_file is not None and self.key is not None

    # --- per copy ---------------------------------------------------------------------------

    def archive(self, inst: pg.Instance, spec: DbSpec, name: str) -> str:
        return archive_command(pgbr.PGBACKREST, str(pgbr.conf_paths(inst)[0]),
                               stanza(name, spec.created_ms), str(inst.data))

    def write_conf(self, inst: pg.Instance) -> bool:
        """(Re)write the copy's pgBackRest config when the key or front changed."""
        self._refresh_key()
        if not self.ready() or not inst.root.exists():
            return False
        assert self.key is not None and self.ca_file is not None
        pgbr.prepare(inst)
        conf, logs, lock, spool = pgbr.conf_paths(inst)
        text = repo_conf(key=self.key[0], secret=self.key[1], port=self.front_port,
                         ca_file=str(self.ca_file), log_path=str(logs),
                         lock_path=str(lock), spool_path=str(spool))
        try:
            if conf.read_text() == text:
                return True
        except OSError:
            pass
        pgbr.write_private(conf, text, inst.uid)
        return True

    async def on_primary(self, name: str, spec: DbSpec, inst: pg.Instance, port: int,
                         nursery: trio.Nursery) -> None:
        """Each round on the lease-holding primary: the stanza, the look, the schedule."""
        if not self.write_conf(inst):
            return
        st = stanza(name, spec.created_ms)
        if st not in self.ready_stanzas:
            await pgbr.run(inst, st, "stanza-create", env=self._pw(name, spec),
                           extra=(f"--pg1-port={port}", f"--pg1-user={name}"),
                           timeout=300)
            self.ready_stanzas.add(st)
            await self.look(name, spec, inst)
        now = trio.current_time()
        if now - self.looked.get(name, -LOOK_EVERY) >= LOOK_EVERY:
            await self.look(name, spec, inst)
        if spec.backup_every_s <= 0 or name in self.running:
            return
        row = self.service.state.get(DB_BACKUPS.name, (name,))
        backups = backups_of(row, st)
        kind = scheduled_kind(backups, self.service.node.clock.wall_ms() / 1000,
                              spec.backup_every_s)
        if kind is not None:
            nursery.start_soon(self._scheduled, name, spec, inst, port, kind)

    async def _scheduled(self, name: str, spec: DbSpec, inst: pg.Instance, port: int,
                         kind: str) -> None:
        try:
            await self.backup(name, spec, inst, port, kind)
        except (DbError, pg.PgFailed, OSError, trio.TooSlowError) as exc:
            log.warning("database %s: scheduled backup failed: %s", name, str(exc)[-300:])

    async def look(self, name: str, spec: DbSpec, inst: pg.Instance) -> list[Backup]:
        st = stanza(name, spec.created_ms)
        self.looked[name] = trio.current_time()
        out = await pgbr.run(inst, st, "info", extra=("--output=json",), timeout=120)
        backups = parse_info(out)
        self.service.state.put(DB_BACKUPS.name, (name,), DbBackups(
            stanza=st, backups=json.dumps([b.as_json() for b in backups]),
            updated_ms=self.service.node.clock.wall_ms()))
        return backups

    async def backup(self, name: str, spec: DbSpec, inst: pg.Instance, port: int,
                     kind: str) -> dict[str, Any]:
        if kind not in BACKUP_TYPES:
            raise DbError(f"backup type is one of {', '.join(BACKUP_TYPES)}",
                          code="bad_request")
        if not self.write_conf(inst):
            raise DbError(self.error or "the backup repository is not ready",
                          code="unavailable")
        st = stanza(name, spec.created_ms)
        lock = self.locks.setdefault(name, trio.Lock())
        async with lock:  # one at a time: a request waits for the running one
            self.running[name] = kind
            started = trio.current_time()
            scope = self.scopes[name] = trio.CancelScope()
            try:
                with scope:
                    await pgbr.run(inst, st, "backup", env=self._pw(name, spec),
                                   extra=(f"--pg1-port={port}", f"--pg1-user={name}",
                                          f"--type={kind}"))
            finally:
                del self.running[name]
                self.scopes.pop(name, None)
            if scope.cancelled_caught:
                raise DbError(f"database {name!r} was removed during its backup",
                              code="unavailable")
            seconds = trio.current_time() - started
        backups = await self.look(name, spec, inst)
        last = backups[-1].as_json() if backups else {}
        return {**last, "seconds": round(seconds, 3)}

    async def check(self, name: str, spec: DbSpec, inst: pg.Instance, port: int) -> None:
        """A transaction with an id (its commit record is timestamped), then ``pgbackrest
        check``: switches WAL and waits until it is in the repository (so a restore sees
        every commit made before it, and one after its target)."""
        if not self.write_conf(inst):
            raise DbError("the backup repository is not ready", code="unavailable")
        # a commit record after the restore target: recovery to a time stops at the first
        # commit past it, and ends in error when the archived WAL has none
        await pg.sql(inst, port, name, self.service.pw(name, spec).password,
                     "SELECT txid_current()", timeout=60)
        await pgbr.run(inst, stanza(name, spec.created_ms), "check", env=self._pw(name, spec),
                       extra=(f"--pg1-port={port}", f"--pg1-user={name}"), timeout=300)

    # --- removal ----------------------------------------------------------------------------

    def stop_backup(self, name: str) -> None:
        """End the backup of ``name`` running here (its process is killed)."""
        scope = self.scopes.get(name)
        if scope is not None:
            scope.cancel()

    async def delete_backups(self, name: str) -> int:
        """Delete from the bucket every object of the stanzas of databases named ``name``
        (each incarnation's backups and WAL archive), through the node's object store.
        Returns the objects deleted."""
        from blobstore.bucketlist import list_bucket
        from blobstore.s3.errors import NoSuchBucket

        objects = getattr(self.blobs, "objects", None)
        if objects is None:
            raise DbError("no storage on this node: the backups cannot be deleted from "
                          "here", code="unavailable")
        try:
            bucket_id = objects.bucket(BUCKET).bucket_id
        except NoSuchBucket:
            return 0

        async def walk(prefix: str, delimiter: str | None) -> list[str]:
            found: list[str] = []
            after = None
            while True:
                page = await list_bucket(objects.index, bucket_id, prefix=prefix,
                                         delimiter=delimiter, max_keys=1000, after=after)
                found += page.common_prefixes if delimiter else \
                    [k for k, _ in page.contents]
                if not page.is_truncated or page.last is None:
                    return found
                after = page.last

        deleted = 0
        for root in repo_roots():
            for prefix in await walk(root, "/"):
                if not is_stanza_of(prefix, root, name):
                    continue
                keys = await walk(prefix, None)
                for i in range(0, len(keys), 1000):
                    await objects.delete_many(BUCKET, keys[i:i + 1000])
                deleted += len(keys)
                log.warning("database %s: deleted %d objects under %s%s", name, len(keys),
                            BUCKET, "/" + prefix.lstrip("/"))
        return deleted

    # --- restore ----------------------------------------------------------------------------

    def node_instance(self) -> pg.Instance:
        """A pgBackRest config for looks from this node (run as the agent)."""
        return pg.Instance(self.service.root / ".repo", None)

    async def info(self, stanza_name: str) -> list[Backup]:
        inst = self.node_instance()
        inst.root.mkdir(mode=0o700, exist_ok=True)
        (inst.root / "sock").mkdir(mode=0o700, exist_ok=True)
        if not self.write_conf(inst):
            raise DbError(self.error or "the backup repository is not ready",
                          code="unavailable")
        out = await pgbr.run(inst, stanza_name, "info", extra=("--output=json",),
                             timeout=120)
        return parse_info(out)

    async def restore(self, name: str, spec: DbSpec, inst: pg.Instance) -> None:
        """Fill ``inst.data`` from the source stanza up to ``spec.restore_at``."""
        from apps.db.backup import parse_time, target_text

        pg.prepare(inst)
        if not self.write_conf(inst):
            raise DbError(self.error or "the backup repository is not ready",
                          code="unavailable")
        if inst.data.exists():
            await trio.to_thread.run_sync(shutil.rmtree, inst.data)
        inst.data.mkdir(mode=0o700)
        if inst.uid is not None:
            os.chown(inst.data, inst.uid, inst.uid)
        target = target_text(parse_time(spec.restore_at))
        await pgbr.run(inst, spec.restore_from, "restore",
                       extra=("--type=time", f"--target={target}",
                              "--target-action=promote"))


def backups_of(row: DbBackups | None, st: str) -> list[Backup]:
    """The backups a ``db_backups`` row lists for stanza ``st`` (the primary's last look)."""
    if row is None or row.stanza != st:
        return []
    try:
        return [Backup(label=b["label"], kind=b["type"], start=b["start"], stop=b["stop"],
                       size=b["size"], repo_size=b["repo_size"])
                for b in json.loads(row.backups)]
    except (ValueError, KeyError, TypeError):
        return []
