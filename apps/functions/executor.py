"""Runs function instances on this node: one fork server per (function, version) under
the function's own uid, warm instances reused, per-invocation deadline, scale to zero.

The agent holds one end of each instance's socket; an instance serves one invocation at a
time, so ``concurrency`` is the most instances of a version on this node. A deadline
that passes kills the instance (SIGKILL) and the caller gets ``timeout``; an instance
that dies mid-invocation (an rlimit, a crash) gives ``crashed``; a handler that runs out
of memory answers ``memory`` and exits.
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from apps.functions.bundle import unpack
from apps.functions.containers import ContainerInvokeError, ContainerPool
from apps.functions.messages import FunctionVersion
from apps.functions.zygote import SOURCE
from meshcloud.errors import MeshError

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
"""Seconds for a fork server to import the handler's module."""
FILES = 256
FSIZE = 64 << 20
EXTRA_PROCESSES = 8
"""RLIMIT_NPROC of an instance: the version's concurrency plus this (its fork server,
a few children of its own); a fork bomb stops there."""
REQUIREMENTS = "requirements.txt"
PIP_TIMEOUT = 600.0
"""Seconds one ``pip install`` of a bundle's requirements may take."""
RETRY_FAILED_INSTALL = 60.0
"""Seconds a failed install is remembered (calls fail at once) before it is tried again."""
PIP_OUTPUT_TAIL = 12
"""Lines of pip's output quoted in the error of a failed install."""


class InvokeFailed(MeshError):
    """An invocation did not return; ``code`` says why (timeout, memory, crashed, error,
    start_failed)."""

    code = "invoke_failed"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


async def _no_secrets(name: str) -> dict[str, str]:
    await trio.lowlevel.checkpoint()
    return {}


def _no_spawn(job: Callable[[], Awaitable[None]]) -> None:
    log.warning("no nursery for a background stop: %r", job)


def pip_failure(name: str, output: str) -> str:
    """One clear line (and pip's own last lines) for a failed install."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    tail = " / ".join(lines[-PIP_OUTPUT_TAIL:])[-1500:]
    text = output.lower()
    if any(word in text for word in ("connection", "network is unreachable",
                                     "name or service not known", "timed out",
                                     "temporary failure in name resolution")):
        cause = "the package index is unreachable from this node"
    elif "no matching distribution" in text or "could not find a version" in text:
        cause = "a package (or a wheel of it) is not on the package index"
    else:
        cause = "pip failed"
    return f"{name}: installing {REQUIREMENTS} failed: {cause}: {tail}"


def python_for_functions() -> str:
    return "/usr/bin/python3" if os.geteuid() == 0 and os.path.exists(
        "/usr/bin/python3") else sys.executable


@dataclass(slots=True)
class Result:
    body: bytes
    content_type: str
    cold: bool


@dataclass(slots=True, eq=False)
class Instance:
    pid: int
    sock: trio.socket.SocketType
    last_used: float = 0.0


async def _recv_exact(sock: trio.socket.SocketType, n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        part = await sock.recv(min(n, 1 << 20))
        if not part:
            raise EOFError
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


async def _recv_frame(sock: trio.socket.SocketType) -> tuple[dict[str, Any], bytes]:
    """One reply frame; a small one (the usual case) costs one ``recv``."""
    data = await sock.recv(1 << 16)
    if len(data) < 8:
        data += await _recv_exact(sock, 8 - len(data)) if data else b""
        if len(data) < 8:
            raise EOFError
    hl, bl = struct.unpack(">II", data[:8])
    missing = 8 + hl + bl - len(data)
    if missing > 0:
        data += await _recv_exact(sock, missing)
    header = json.loads(data[8:8 + hl])
    if not isinstance(header, dict):
        raise EOFError
    return header, data[8 + hl:8 + hl + bl]


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(eq=False)
class Pool:
    """The fork server and instances of one version of one function on this node."""

    name: str
    spec: FunctionVersion
    code_dir: Path
    log_path: Path
    identity: tuple[int, int] | None
    """(uid, gid) to run as; None keeps the agent's (an unprivileged agent)."""
    monotonic: Callable[[], float] = time.monotonic
    python: str = ""
    """The interpreter of the fork server: a requirements venv's, or the plain one."""
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Added to the fork server's environment (never logged)."""
    idle: list[Instance] = field(default_factory=list)
    busy: set[Instance] = field(default_factory=set)
    proc: Any = None
    ctl: Any = None
    cold_starts: int = 0
    invocations: int = 0
    closed: bool = False
    """Replaced (new secrets, a new version): no new invocation starts here; those in
    flight finish, then their instances and the fork server stop."""

    def __post_init__(self) -> None:
        self._forking = 0
        self._start_lock = trio.Lock()
        self._ctl_lock = trio.Lock()
        self._slots = trio.Semaphore(self.spec.concurrency)

    @property
    def instances(self) -> int:
        return len(self.idle) + len(self.busy)

    def limits(self) -> dict[str, int]:
        timeout_s = max(1, -(-self.spec.timeout_ms // 1000))
        return {"RLIMIT_AS": self.spec.memory_bytes, "RLIMIT_NOFILE": FILES,
                "RLIMIT_FSIZE": FSIZE, "cpu_seconds": timeout_s + 1,
                **({"RLIMIT_NPROC": self.spec.concurrency + EXTRA_PROCESSES}
                   if self.identity is not None else {})}

    async def start(self) -> None:
        async with self._start_lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self._stop_server()  # a fork server that died is started afresh
            await self._start()

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "HOME": str(self.code_dir), "PYTHONDONTWRITEBYTECODE": "1"}
        env.update(e.split("=", 1) for e in self.spec.env)  # type: ignore[misc]
        env.update(self.secrets)
        env.update(FN_CTL=str(theirs.fileno()), FN_HANDLER=self.spec.handler,
                   FN_LIMITS=json.dumps(self.limits()), FN_NAME=self.name,
                   FN_VERSION=str(self.spec.version))
        user: dict[str, Any] = {}
        if self.identity is not None:
            user = {"user": self.identity[0], "group": self.identity[1], "extra_groups": []}
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.log_path.parent, 0o700)  # logs may hold what handlers print
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as logfile:
            try:
                self.proc = await trio.lowlevel.open_process(
                    [self.python or python_for_functions(), "-I", "-c", SOURCE],
                    cwd=self.code_dir,
                    env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    stdout=logfile, stderr=logfile, start_new_session=True, **user)
            finally:
                theirs.close()
        self.ctl = trio.socket.from_stdlib_socket(ours)
        try:
            with trio.fail_after(START_TIMEOUT):
                first = await self.ctl.recv(4096)
        except trio.TooSlowError:
            self._stop_server()
            raise InvokeFailed("start_failed", f"{self.name}: the handler's module did not "
                                               f"load in {START_TIMEOUT:.0f} s") from None
        if first != b"R":
            self._stop_server()
            reason = first[1:].decode(errors="replace") if first else "it exited"
            raise InvokeFailed("start_failed", f"{self.name} v{self.spec.version} could not "
                                               f"load {self.spec.handler}: {reason}")
        log.info("function %s v%d: fork server pid %d ready", self.name, self.spec.version,
                 self.proc.pid)

    def _stop_server(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.proc is not None:
            if self.proc.poll() is None:
                kill(self.proc.pid)
            self.proc = None

    async def _fork(self) -> Instance:
        self._forking += 1
        try:
            return await self._fork_one()
        finally:
            self._forking -= 1
            if self.closed and not self._forking:
                self._stop_server()

    async def _fork_one(self) -> Instance:
        await self.start()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            async with self._ctl_lock:
                await self.ctl.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array("i", [theirs.fileno()]))])
                pid = struct.unpack(">I", await _recv_exact(self.ctl, 4))[0]
        except (OSError, EOFError, trio.ClosedResourceError) as exc:
            ours.close()
            self._stop_server()
            raise InvokeFailed("crashed", f"{self.name}: the fork server failed: {exc!r}"
                               ) from None
        finally:
            theirs.close()
        self.cold_starts += 1
        return Instance(pid, trio.socket.from_stdlib_socket(ours))

    async def invoke(self, payload: bytes, request_id: str, timeout_s: float) -> Result:
        async with self._slots:
            if self.closed:
                raise PoolClosed("unavailable", f"{self.name}: its instances were replaced")
            cold = not self.idle
            inst = self.idle.pop() if self.idle else await self._fork()
            self.busy.add(inst)
            self.invocations += 1
            retire = True
            try:
                head = json.dumps({"id": request_id,
                                   "deadline": time.time() + timeout_s}).encode()
                with trio.move_on_after(timeout_s) as scope:
                    await _send_all(inst.sock, struct.pack(">II", len(head), len(payload))
                                    + head + payload)
                    header, body = await _recv_frame(inst.sock)
                if scope.cancelled_caught:
                    raise InvokeFailed("timeout", f"{self.name} ran past its timeout of "
                                                  f"{timeout_s:g} s and was stopped")
                if header.get("ok"):
                    retire = False
                    return Result(body, str(header.get("type", "")), cold)
                code = str(header.get("code", "error"))
                retire = code == "memory"
                message = str(header.get("message", ""))
                if code == "memory":
                    message = (f"{self.name} exceeded its memory limit of "
                               f"{self.spec.memory_bytes >> 20} MiB and was stopped")
                raise InvokeFailed(code, message)
            except (EOFError, OSError) as exc:
                raise InvokeFailed("crashed", f"the {self.name} instance died during the "
                                   f"invocation ({type(exc).__name__}: a crash, or a limit: "
                                   f"memory {self.spec.memory_bytes >> 20} MiB, processes, "
                                   "CPU time)") from None
            finally:
                self.busy.discard(inst)
                if retire or self.closed:
                    kill(inst.pid)
                    inst.sock.close()
                else:
                    inst.last_used = self.monotonic()
                    self.idle.append(inst)

    def scale_down(self, now: float) -> int:
        """Stop instances idle longer than the version's idle period; how many."""
        limit = self.spec.idle_ms / 1000
        keep = [i for i in self.idle if now - i.last_used < limit]
        gone = [i for i in self.idle if now - i.last_used >= limit]
        self.idle = keep
        for inst in gone:
            kill(inst.pid)
            inst.sock.close()
        return len(gone)

    def close(self, now: bool = False) -> None:
        """Stop taking invocations. Idle instances stop at once; those in flight (and
        the fork server, while one forks) finish first, unless ``now``."""
        self.closed = True
        for inst in [*self.idle, *(self.busy if now else ())]:
            kill(inst.pid)
            inst.sock.close()
        self.idle.clear()
        if now or not self._forking:
            self._stop_server()


class PoolClosed(InvokeFailed):
    """The pool an invocation picked was replaced before it started: pick again."""


class Executor:
    """Every pool of this node. ``read_bundle(key)`` fetches a bundle's bytes;
    ``identity(name)`` gives the (uid, gid) a function runs as (None: the agent's)."""

    def __init__(self, root: Path, read_bundle: Callable[[str], Awaitable[bytes]],
                 identity: Callable[[str], tuple[int, int] | None],
                 monotonic: Callable[[], float] = time.monotonic,
                 containers: Callable[[], Any] | None = None) -> None:
        self.root = root
        self.containers = containers
        """The podman runtime for image functions (None, or returning None: none here)."""
        self.secret_env: Callable[[str], Awaitable[dict[str, str]]] = _no_secrets
        """A function's secrets, added to its instances' environment (the service sets
        it; an error when this node cannot open them)."""
        self.spawn: Callable[[Callable[[], Awaitable[None]]], None] = _no_spawn
        """Runs container stops in the background (the service sets its nursery's)."""
        self.read_bundle = read_bundle
        self.identity = identity
        self.monotonic = monotonic
        self.pools: dict[tuple[str, int], Pool | ContainerPool] = {}
        self._unpack_lock = trio.Lock()
        self._venv_locks: dict[str, trio.Lock] = {}
        self._venv_failed: dict[str, tuple[float, str]] = {}
        self.pip_options: tuple[str, ...] = ()
        """Extra ``pip install`` options (an index: ``--index-url URL``); pip also reads
        the agent's ``PIP_*`` environment and pip.conf."""
        self.venv_builds = 0
        self.preparing: dict[tuple[str, int], tuple[str, str]] = {}
        """(function, version) → (state, message) of its requirements install on this
        node: ``installing``, ``ready`` or ``failed``."""

    async def code_dir(self, spec: FunctionVersion) -> Path:
        target = self.root / "code" / spec.sha256
        if target.is_dir():
            return target
        async with self._unpack_lock:
            if not target.is_dir():
                data = await self.read_bundle(spec.bundle_key)
                if hashlib.sha256(data).hexdigest() != spec.sha256:
                    raise InvokeFailed("bad_bundle", f"bundle {spec.sha256[:12]} does not "
                                                     "match its digest")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(target.parent, 0o711)
                await trio.to_thread.run_sync(unpack, data, target)
        return target

    async def pool(self, name: str, spec: FunctionVersion) -> Pool | ContainerPool:
        key = (name, spec.version)
        pool = self.pools.get(key)
        if pool is not None and pool.spec == spec:
            return pool
        if pool is not None:
            pool.close()
        if spec.image:
            runtime = self.containers() if self.containers is not None else None
            if runtime is None:
                raise InvokeFailed("unavailable", f"{name} runs image {spec.image}: this "
                                                  "node has no podman runtime")
            secrets = await self._secrets(name)
            pool = ContainerPool(name, spec, runtime, self.spawn,
                                 env={**dict(e.split("=", 1) for e in spec.env), **secrets},
                                 secrets=secrets, monotonic=self.monotonic)
            self.pools[key] = pool
            return pool
        code = await self.code_dir(spec)
        python = await self.interpreter(name, spec, code)
        secrets = await self._secrets(name)
        pool = self.pools.get(key)
        if pool is None or pool.spec != spec:
            pool = Pool(name, spec, code, self.log_path(name), self.identity(name),
                        self.monotonic, python, secrets=secrets)
            self.pools[key] = pool
        return pool

    async def _secrets(self, name: str) -> dict[str, str]:
        try:
            return await self.secret_env(name)
        except MeshError as exc:
            raise InvokeFailed("unavailable", str(exc)) from None

    def drop(self, name: str, secrets: dict[str, str] | None = None) -> int:
        """Close the pools of ``name`` (its secrets changed: the next call starts
        afresh with the new ones); with ``secrets``, only those started with other
        values. Invocations in flight finish. Returns how many were closed."""
        keys = [k for k, p in self.pools.items() if k[0] == name
                and (secrets is None or p.secrets != secrets)]
        for key in keys:
            self.pools.pop(key).close()
        return len(keys)

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    async def interpreter(self, name: str, spec: FunctionVersion, code: Path) -> str:
        """The Python a version's fork server runs: with a ``requirements.txt`` in its
        bundle, the ``bin/python`` of a virtual environment holding them (built once
        per node for each distinct requirements file, kept under
        ``venvs/SHA256``), else the plain one."""
        wanted = code / REQUIREMENTS
        if not wanted.is_file():
            return ""
        digest = hashlib.sha256(wanted.read_bytes()).hexdigest()
        target = self.root / "venvs" / digest
        python = target / "bin" / "python"
        if (target / ".ready").exists():
            self.preparing[(name, spec.version)] = ("ready", "")
            return str(python)
        async with self._venv_locks.setdefault(digest, trio.Lock()):
            if (target / ".ready").exists():
                self.preparing[(name, spec.version)] = ("ready", "")
                return str(python)
            failed = self._venv_failed.get(digest)
            if failed is not None and self.monotonic() - failed[0] < RETRY_FAILED_INSTALL:
                raise InvokeFailed("requirements_failed", failed[1])
            self.preparing[(name, spec.version)] = ("installing", "")
            try:
                await self._build_venv(name, wanted, target)
            except InvokeFailed as exc:
                self._venv_failed[digest] = (self.monotonic(), exc.message)
                self.preparing[(name, spec.version)] = ("failed", exc.message)
                raise
            self._venv_failed.pop(digest, None)
            self.preparing[(name, spec.version)] = ("ready", "")
        return str(python)

    async def _build_venv(self, name: str, wanted: Path, target: Path) -> None:
        """``python -m venv`` then ``pip install -r`` into ``target`` (made atomically:
        a half-built venv is never used). Wheels only: nothing of a package runs at
        install time (the agent installs; functions only read). pip's output goes to
        the function's log (``requirements | `` lines)."""
        base = python_for_functions()
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o711)
        self.venv_builds += 1
        log_path = self.log_path(name)
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._log(log_path, f"installing {REQUIREMENTS} into a new environment")
        steps = [[base, "-m", "venv", "--without-pip", str(tmp)],
                 [base, "-m", "pip", "--python", str(tmp / "bin" / "python"), "install",
                  "--no-input", "--only-binary=:all:", "--progress-bar", "off",
                  "--no-warn-script-location", *self.pip_options, "-r", str(wanted)]]
        for argv in steps:
            try:
                with trio.fail_after(PIP_TIMEOUT):
                    done = await trio.run_process(argv, capture_stdout=True,
                                                  stderr=subprocess.STDOUT, check=False,
                                                  stdin=subprocess.DEVNULL)
            except trio.TooSlowError:
                shutil.rmtree(tmp, ignore_errors=True)
                message = (f"{name}: installing {REQUIREMENTS} took more than "
                           f"{PIP_TIMEOUT:.0f} s")
                self._log(log_path, message)
                raise InvokeFailed("requirements_failed", message) from None
            output = done.stdout.decode("utf-8", "replace")
            self._log(log_path, output)
            if done.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise InvokeFailed("requirements_failed", pip_failure(name, output))
        for folder, dirs, files in os.walk(tmp):  # readable by every function's uid
            for entry in dirs + files:
                path = os.path.join(folder, entry)
                if not os.path.islink(path):
                    os.chmod(path, 0o755 if entry in dirs or os.access(path, os.X_OK)
                             else 0o644)
        os.chmod(tmp, 0o755)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        (target / ".ready").touch()
        self._log(log_path, f"{REQUIREMENTS} installed")

    @staticmethod
    def _log(path: Path, text: str) -> None:
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "a", encoding="utf-8") as fh:
            fh.write("".join(f"requirements | {line}\n" for line in lines))

    async def invoke(self, name: str, spec: FunctionVersion, payload: bytes,
                     request_id: str) -> Result:
        for _ in range(3):
            try:
                return await self._invoke(name, spec, payload, request_id)
            except PoolClosed:
                continue  # its secrets changed as it started: the new pool runs it
        raise InvokeFailed("unavailable", f"{name}: its instances kept being replaced; "
                                          "try again")

    async def _invoke(self, name: str, spec: FunctionVersion, payload: bytes,
                      request_id: str) -> Result:
        pool = await self.pool(name, spec)
        if isinstance(pool, ContainerPool):
            try:
                body, ctype, cold = await pool.invoke(payload, request_id,
                                                      spec.timeout_ms / 1000)
            except ContainerInvokeError as exc:
                raise InvokeFailed(exc.code, exc.message) from None
            return Result(body, ctype, cold)
        return await pool.invoke(payload, request_id, spec.timeout_ms / 1000)

    def log_tail(self, name: str, lines: int, max_bytes: int = 256 << 10,
                 request_id: str = "") -> str:
        """The last ``lines`` lines of ``name``'s log on this node ("" if none); with
        ``request_id``, only the lines that invocation wrote (searched in the last
        ``4 * max_bytes``)."""
        path = self.root / "logs" / f"{name}.log"
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                window = max_bytes * (4 if request_id else 1)
                fh.seek(max(0, size - window))
                data = fh.read()
        except FileNotFoundError:
            return ""
        every = data.decode("utf-8", "replace").splitlines()
        if request_id:
            every = [line for line in every if line.startswith(request_id + " | ")]
        text = every[-lines:] if lines > 0 else []
        return "\n".join(text) + ("\n" if text else "")

    def log_read(self, name: str, offset: int, max_bytes: int = 1 << 20
                 ) -> tuple[str, int]:
        """Whole lines of ``name``'s log from byte ``offset`` (a log shorter than that
        was started afresh: from 0) and the offset after them."""
        path = self.root / "logs" / f"{name}.log"
        try:
            with open(path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                if offset > size:
                    offset = 0
                fh.seek(offset)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return "", 0
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < max_bytes:
            return "", offset  # half a line: wait for its end
        data = data[:cut] if cut else data
        return data.decode("utf-8", "replace"), offset + len(data)

    def log_end(self, name: str) -> int:
        try:
            return (self.root / "logs" / f"{name}.log").stat().st_size
        except FileNotFoundError:
            return 0

    def retire(self, live: dict[str, int]) -> None:
        """Close pools whose function is gone or whose version is no longer current."""
        for key in [k for k in self.pools if live.get(k[0]) != k[1]]:
            self.pools.pop(key).close()

    def scale_down(self) -> int:
        now = self.monotonic()
        return sum(p.scale_down(now) for p in self.pools.values())

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close(now=True)
        self.pools.clear()

    def stats(self) -> dict[str, Any]:
        return {f"{n}@{v}": {"instances": p.instances, "invocations": p.invocations,
                             "cold_starts": p.cold_starts, "image": p.spec.image,
                             "fork_server": p.proc is not None and p.proc.poll() is None}
                for (n, v), p in self.pools.items()}
