"""The backup repository of a node starts (TLS front, key) only once the mesh holds a
database: an agent without one loads no ``cryptography`` and makes no certificate."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import trio
import trio.testing

from apps.db import pgbr
from apps.db.repo import Repo


class _Blobs:
    s3_urls = ["http://127.0.0.1:9"]
    objects = None  # storage still starting: ensure_key fails, the repo tries again
    index = None


def _repo(root: Path, asked: trio.Event) -> Repo:
    state = SimpleNamespace(get=lambda table, key: asked.set())  # the key's row: none
    service = SimpleNamespace(root=root, state=state,
                              node=SimpleNamespace(mesh=SimpleNamespace(mesh_id=b"m" * 16)))
    return Repo(service, _Blobs())  # type: ignore[arg-type]


async def test_the_repository_waits_for_a_database_before_making_its_front(
        nursery, tmp_path, monkeypatch):
    made: list[Path] = []
    real = pgbr.ensure_tls

    def ensure_tls(directory: Path) -> tuple[Path, Path, Path]:
        made.append(directory)
        return real(directory)

    monkeypatch.setattr(pgbr, "ensure_tls", ensure_tls)
    asked = trio.Event()  # the repository looks for its key: the front is up
    repo = _repo(tmp_path, asked)
    await nursery.start(repo.run)
    await trio.testing.wait_all_tasks_blocked()  # the repository waits: nothing made
    assert made == [] and repo.front_port == 0 and not (tmp_path / ".tls").exists()
    assert not repo.ready()
    repo.want()
    with trio.fail_after(60):
        await asked.wait()
    assert repo.front_port > 0
    assert made == [tmp_path / ".tls"] and repo.ca_file == tmp_path / ".tls" / "front-ca.pem"
    assert repo.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert not repo.ready()  # no key yet: storage is still starting
