"""Where unprivileged process replicas live, and the file permissions that fence them in.

A root agent runs process replicas as their workload's own uid (:mod:`apps.runtimes.users`).
Such a user cannot pass through the agent's data dir (mode 0700, and often under
``/root``), so replicas' directories live in a *homes* root of their own::

    <homes>/                  root, 0711: users may pass, not list
    <homes>/<replica>/        the replica's uid, 0700: working directory and HOME
    <homes>/volumes/          root, 0711
    <homes>/volumes/<volume>/ the uid of the first workload using it, 0700

``<homes>`` defaults to ``/var/lib/meshcloud/homes/<12 hex of the data dir>``. What the
agent keeps about a replica (``state.json``, ``output.log``, ``exit_code``) stays in the
data dir, out of the workload's reach: the log and the exit code file are opened by the
agent and handed to the replica as file descriptors. A workload can therefore write only
its own directory, its volumes, and world-writable places such as ``/tmp``.

The agent (root) never follows paths inside a directory a workload owns: it creates the
replica's directory and volumes in root-owned parents, and everything *inside* them (the
working directory, the volume links) is made by the replica's own process after it has
dropped to its uid (:func:`setup_inside`), so a planted symlink can only lead the workload
where it could already go.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_HOMES = Path("/var/lib/meshcloud/homes")
SHIFTABLE = 1 << 16
"""Ids a container's user namespace maps (0..65535)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The host user a replica runs as."""

    uid: int
    gid: int


def default_homes(data_dir: Path) -> Path:
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return DEFAULT_HOMES / digest


def ensure_root_dir(path: Path) -> None:
    """A root-owned directory others may pass through but not list or write (0711).

    Directories made on the way get 0711 too (whatever the umask); an existing ancestor
    others cannot pass through is an error that says which one.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        os.chmod(p, 0o711)
    for p in path.parents:
        if not p.stat().st_mode & stat.S_IXOTH:
            raise OSError(f"workload users cannot reach {path}: {p} is not searchable by "
                          "others (chmod o+x it, or choose another homes directory)")
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != 0 or st.st_gid != 0:
        os.lchown(path, 0, 0)
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(path, 0o711)


def chown_tree(path: Path, ident: Identity, *, shift: bool = False) -> None:
    """Give a tree that root owned (so nobody could have planted links in it) to ``ident``.

    ``shift``: a host id ``n`` below 65536 becomes ``ident + n`` instead of ``ident``
    (a container's user namespace: files of its uid 999 stay its uid 999's).
    """
    def give(p: str) -> None:
        if shift:
            st = os.lstat(p)
            uid = ident.uid + st.st_uid if st.st_uid < SHIFTABLE else ident.uid
            gid = ident.gid + st.st_gid if st.st_gid < SHIFTABLE else ident.gid
            os.lchown(p, uid, gid)
        else:
            os.lchown(p, ident.uid, ident.gid)

    give(str(path))
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in (*dirs, *files):
            give(os.path.join(top, name))


def ensure_owned_dir(path: Path, ident: Identity | None, *, what: str,
                     keep_foreign: bool) -> None:
    """Make ``path`` (in a root-owned parent) a 0700 directory of ``ident`` (None: root).

    A directory root owned is handed over with its contents. One owned by another user
    is removed (``keep_foreign=False``, a replica's scratch directory) or left alone with
    a warning (``keep_foreign=True``: a volume holds data; the workload will get EACCES).
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        path.mkdir(mode=0o700)
        st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):  # a file or link where the directory should be
        path.unlink()
        path.mkdir(mode=0o700)
        st = path.lstat()
    want = 0 if ident is None else ident.uid
    if st.st_uid != want:
        if st.st_uid == 0 and ident is not None:
            chown_tree(path, ident)
        elif keep_foreign:
            log.warning("%s %s belongs to uid %d, not %d: left as it is", what, path,
                        st.st_uid, want)
            return
        else:
            shutil.rmtree(path)  # fd-based on Linux: safe against links planted inside
            path.mkdir(mode=0o700)
            if ident is not None:
                os.lchown(path, ident.uid, ident.gid)
    os.chmod(path, 0o700)


def setup_inside(home: str, links: list[tuple[str, str]], cwd: str, *,
                 enter: bool = True) -> None:
    """Inside ``home``: the volume links and the working directory; then ``chdir`` there
    when ``enter`` (only ever in the replica's own process).

    Runs in the replica's process after it switched user, or in the agent with
    ``enter=False`` when the replica runs as the agent's own user (the agent must never
    change its own working directory: a later removal of that home would leave it in a
    deleted directory). Plain ``os`` calls: it may run between fork and exec.
    """
    for link, target in links:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.islink(link):
            if os.readlink(link) == target:
                continue
            os.unlink(link)
        elif os.path.isdir(link):
            shutil.rmtree(link)
        elif os.path.exists(link):
            os.unlink(link)
        os.symlink(target, link, target_is_directory=True)
    os.makedirs(cwd, exist_ok=True)
    if enter:
        os.chdir(cwd)
