"""The PostgreSQL driver: initdb, pg_basebackup, pg_ctl start/stop/status, each run as the
database's own unprivileged uid (when the agent is root) on its own data directory."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from apps.db.core import HBA, DbError, conf_text
from meshcloud import priority

log = logging.getLogger(__name__)

BIN = Path(os.environ.get("MESHCLOUD_PG_BIN", "/usr/lib/postgresql/15/bin"))
NSS_WRAPPER = "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so"
"""PostgreSQL refuses to run as a uid without a passwd entry; rather than add users to the
host's /etc/passwd, each database's tools see a passwd file of their own (nss_wrapper)."""
START_TIMEOUT = 60.0


class PgFailed(DbError):
    """A PostgreSQL (or pgBackRest) tool exited non-zero (its output is in the message)."""

    code = "pg_failed"


@dataclass(frozen=True, slots=True)
class Instance:
    """One database's directory on this node: ``<root>/<name>/`` owned by its uid."""

    root: Path
    uid: int | None
    """None when the agent is not root (tests as a normal user): run as ourselves."""

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sock(self) -> Path:
        return self.root / "sock"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    def exists(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def is_standby(self) -> bool:
        return (self.data / "standby.signal").exists()


def prepare(inst: Instance) -> None:
    """Create ``<root>`` (0700, owned by the database's uid) and its socket directory."""
    inst.root.mkdir(mode=0o700, parents=False, exist_ok=True)
    inst.sock.mkdir(mode=0o700, exist_ok=True)
    if inst.uid is not None:
        uid = inst.uid
        inst.passwd.write_text(f"mcdb:x:{uid}:{uid}:meshcloud db:{inst.root}:/bin/false\n")
        inst.passwd.with_name("group").write_text(f"mcdb:x:{uid}:\n")
        for path in (inst.root, inst.sock):
            os.chown(path, inst.uid, inst.uid)


async def _run(inst: Instance, args: list[str], *, env: dict[str, str] | None = None,
               timeout: float = 120.0, stdin: bytes | None = None,
               hide: tuple[str, ...] = ()) -> str:
    """Run a tool as the instance's uid; its output (an error when it fails). A password
    in ``env`` (``PGPASSWORD``) or in ``hide`` never appears in the error."""
    base = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(inst.root), "LC_ALL": "C.UTF-8",
            "PGTZ": "UTC"}
    uid = inst.uid
    if uid is not None:
        base |= {"LD_PRELOAD": NSS_WRAPPER, "NSS_WRAPPER_PASSWD": str(inst.passwd),
                 "NSS_WRAPPER_GROUP": str(inst.passwd.with_name("group"))}
    with trio.fail_after(timeout):
        done = await trio.run_process(
            args, capture_stdout=True, capture_stderr=True, check=False,
            env={**base, **(env or {})}, cwd=str(inst.root),
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            user=uid, group=uid, extra_groups=[] if uid is not None else None)
    out = bytes(done.stdout + done.stderr).decode(errors="replace")
    if done.returncode != 0:
        for secret in (*hide, (env or {}).get("PGPASSWORD", "")):
            if secret:
                out = out.replace(secret, "********")
        raise PgFailed(f"{Path(args[0]).name} exited {done.returncode}: {out[-2000:]}")
    return out


def write_conf(inst: Instance, text: str) -> None:
    """(Re)write meshcloud.conf and pg_hba.conf; postgresql.conf includes the former."""
    conf = inst.data / "postgresql.conf"
    include = "include_if_exists = 'meshcloud.conf'\n"
    current = conf.read_text()
    if include not in current:
        _write_as(inst, conf, current + "\n" + include)
    _write_as(inst, inst.data / "meshcloud.conf", text)
    _write_as(inst, inst.data / "pg_hba.conf", HBA)


def _write_as(inst: Instance, path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    if inst.uid is not None:
        os.chown(tmp, inst.uid, inst.uid)
    os.replace(tmp, path)


async def initdb(inst: Instance, user: str, password: str, *, port: int, standbys: int,
                 archive: str = "", params: Sequence[str] = ()) -> None:
    prepare(inst)
    if inst.data.exists():
        await trio.to_thread.run_sync(shutil.rmtree, inst.data)
    pwfile = inst.root / ".pw"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    if inst.uid is not None:
        os.chown(pwfile, inst.uid, inst.uid)
    try:
        await _run(inst, [str(BIN / "initdb"), "-D", str(inst.data), "-U", user,
                          f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                          "--no-instructions"])
    finally:
        pwfile.unlink(missing_ok=True)
    write_conf(inst, conf_text(port=port, socket_dir=str(inst.sock), standbys=standbys,
                               archive=archive, params=params))


@functools.lru_cache(maxsize=1)
def describe_config() -> dict[str, tuple[str, str, str, str]]:
    """The server's settings: name → (context, type, min, max), from ``postgres
    --describe-config`` (empty when the server is not installed here)."""
    try:
        out = priority.run([str(BIN / "postgres"), "--describe-config"], check=True,
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            found[cols[0].lower()] = (cols[1], cols[3], cols[5], cols[6])
    return found


async def basebackup(inst: Instance, *, host: str, port: int, user: str, password: str,
                     my_port: int, standbys: int, archive: str = "",
                     app_name: str = "standby", params: Sequence[str] = ()) -> None:
    """Clone the primary reached at ``host:port`` into a fresh data dir, as a standby."""
    prepare(inst)
    if inst.data.exists():
        await trio.to_thread.run_sync(shutil.rmtree, inst.data)
    await _run(inst, [str(BIN / "pg_basebackup"), "-D", str(inst.data), "-h", host,
                      "-p", str(port), "-U", user, "-X", "stream", "-c", "fast",
                      "--no-password"], env={"PGPASSWORD": password}, timeout=600)
    conninfo = f"host={host} port={port} user={user} password={password} " \
               f"application_name={app_name}"
    write_conf(inst, conf_text(port=my_port, socket_dir=str(inst.sock), standbys=standbys,
                               standby_of=conninfo, archive=archive, params=params))
    _write_as(inst, inst.data / "standby.signal", "")


async def start(inst: Instance) -> None:
    await _run(inst, [str(BIN / "pg_ctl"), "start", "-D", str(inst.data), "-l",
                      str(inst.log), "-w", "-t", str(int(START_TIMEOUT)), "-s"],
               timeout=START_TIMEOUT + 10)


async def running(inst: Instance) -> bool:
    try:
        await _run(inst, [str(BIN / "pg_ctl"), "status", "-D", str(inst.data)], timeout=20)
    except (PgFailed, OSError, trio.TooSlowError):
        return False
    return True


async def stop(inst: Instance, mode: str = "fast") -> None:
    try:
        await _run(inst, [str(BIN / "pg_ctl"), "stop", "-D", str(inst.data), "-m", mode,
                          "-w", "-s"], timeout=60)
    except PgFailed as exc:
        log.info("pg_ctl stop: %s", exc)


async def promote(inst: Instance) -> None:
    await _run(inst, [str(BIN / "pg_ctl"), "promote", "-D", str(inst.data), "-w"],
               timeout=60)


async def sql(inst: Instance, port: int, user: str, password: str, query: str, *,
              database: str = "postgres", timeout: float = 60,
              hide: tuple[str, ...] = ()) -> str:
    """Run ``query`` through the instance's socket as ``user``; the unaligned output.
    A query holding a password (``hide``) goes on psql's standard input, not its
    command line (which every local user can read), and never into an error."""
    args = [str(BIN / "psql"), "-h", str(inst.sock), "-p", str(port), "-U", user, "-d",
            database, "-XAtq", "-v", "ON_ERROR_STOP=1"]
    if hide:
        return await _run(inst, args, env={"PGPASSWORD": password}, timeout=timeout,
                          stdin=query.encode(), hide=hide)
    return await _run(inst, [*args, "-c", query], env={"PGPASSWORD": password},
                      timeout=timeout)


async def reload(inst: Instance) -> None:
    await _run(inst, [str(BIN / "pg_ctl"), "reload", "-D", str(inst.data), "-s"], timeout=30)
