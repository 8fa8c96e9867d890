"""The process runtime: replicas as supervised host processes (phones, nodes without podman).

Each replica is a command run under a tiny POSIX-shell wrapper, in its own session and
process group, with rlimits set before exec:

```
sh -c 'exec 9>&0 </dev/null; trap : TERM INT HUP; "$@" 9>&-; echo $? >&9' meshcloud-wrap cmd args...
```

The wrapper exists for one reason: to write the command's exit status to a file (opened
by the agent for writing and handed over as standard input, which the wrapper moves to
descriptor 9, closed for the command, which gets /dev/null), so a runtime made
after an agent restart can still tell EXITED from FAILED for a replica it did not start.
Its ``trap :`` keeps it alive through SIGTERM (a handler, not an ignore, so the command
does not inherit it) until the command has ended.

- **User**: a root agent runs each replica as its workload's own uid (no supplementary
  groups; :mod:`apps.runtimes.users`), in a directory of its own outside the data dir
  (:mod:`apps.runtimes.homes`), unless the spec says ``run_as_root`` (set only from the
  mesh's signed policy). An agent that is not root runs replicas as itself.
- **Limits**: memory → RLIMIT_AS (virtual memory: give runtimes like the JVM or Go
  headroom), ``cpu_time`` → RLIMIT_CPU (SIGXCPU at the limit, SIGKILL a second later),
  ``nofile`` → RLIMIT_NOFILE, ``pids`` → RLIMIT_NPROC (counted per user: each workload has
  its own uid, so the cap is its own; not enforced for root). ``cpu`` (cores) cannot be
  expressed as an rlimit and is only used by placement.
- **Files**: ``<data_dir>/runtimes/process/<name>/``: ``state.json`` (spec, pid, kernel start
  time, uid, counters; rewritten atomically), ``exit_code``, ``output.log`` (stdout and
  stderr, rotated by copytruncate). The working directory and ``HOME`` is
  ``<homes>/<name>/`` for a root agent, ``work/`` beside ``state.json`` otherwise; volumes
  appear as symlinks at their path inside it, and as ``VOLUME_<NAME>`` variables.
- **Network**: the host's, unless ``network`` (the V-Net hook, :mod:`.network`) gives the
  replica a namespace of its own: it is then entered between fork and exec, before the
  switch of user.
- **Ports**: in the host's network, the command listens on ``PORT`` (the first
  mapping's host port; ``PORT_<container port>`` for each, ``HOST`` the first host ip).
- **Stop**: SIGTERM to the process group, SIGKILL to the group after ``stop_timeout``.
- **Adoption**: a pid is trusted only with its recorded kernel start time
  (:mod:`apps.runtimes.pidfile`); adopted replicas are polled, not awaited.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from apps.runtimes import pidfile
from apps.runtimes.base import (
    ContainerSpec,
    ErrorCode,
    HealthKind,
    HealthState,
    ReplicaHandle,
    ReplicaState,
    ReplicaStatus,
    WorkloadRuntimeError,
    describe_exit,
    ended_state,
    injected_env,
)
from apps.runtimes.config import ProcessConfig, volume_dir
from apps.runtimes.health import HealthCore
from apps.runtimes.homes import Identity, ensure_owned_dir, ensure_root_dir, setup_inside
from apps.runtimes.logfile import read_log, rotate, rotated_files
from apps.runtimes.network import ReplicaNet, ReplicaNetwork, enter_netns, load_setns
from apps.runtimes.probes import Probe, health_loop, probe_http, probe_tcp
from apps.runtimes.process_state import ReplicaRecord, read_exit_file
from apps.runtimes.users import UidAllocator, can_switch_user
from meshcloud.clock import next_tick
from meshcloud.errors import MeshError

log = logging.getLogger(__name__)

KIND = "process"
WRAPPER = ('exec 9>&0 </dev/null; trap : TERM INT HUP; "$@" 9>&-; rc=$?; echo "$rc" >&9; '
           'exit "$rc"')
"""Runs the command in the foreground, then records its status in the file it got as
standard input (see module docstring; POSIX shells only know descriptors 0..9)."""
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "PREFIX", "LD_PRELOAD",
              "LD_LIBRARY_PATH", "ANDROID_ROOT", "ANDROID_DATA")
"""Agent variables a command inherits (Termux needs PREFIX and LD_PRELOAD for shebangs)."""
KILL_WAIT = 5.0
"""Seconds to wait for a process group to vanish after SIGKILL before reporting failure."""


@dataclass
class _Replica:
    """In-memory companion of a record: our child (if we started it), health, events."""

    dir: Path
    rec: ReplicaRecord
    proc: trio.Process | None = None
    ended: trio.Event = field(default_factory=trio.Event)
    health: HealthCore | None = None
    health_scope: trio.CancelScope | None = None

    @property
    def adopted(self) -> bool:
        return self.proc is None


class ProcessRuntime:
    """Runs replicas as host processes; see the module docstring. Start with ``run``."""

    kind = KIND

    def __init__(self, config: ProcessConfig, network: ReplicaNetwork | None = None) -> None:
        self.config = config
        self.network = network
        """Gives a replica a network namespace of its own (a V-Net's), or None."""
        self._replicas: dict[str, _Replica] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._nursery: trio.Nursery | None = None
        self.switch_users = can_switch_user()
        """A root agent runs replicas as their workloads' users (see module docstring)."""
        self.users = UidAllocator(config.data_dir)

    # -- lifecycle --------------------------------------------------------------------

    async def available(self) -> bool:
        return shutil.which(self.config.shell) is not None or Path(self.config.shell).exists()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Adopt replicas left by an earlier agent, then supervise until cancelled."""
        self.config.root.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._replicas.clear()
                self._adopt_all()
                task_status.started()
                while True:
                    await trio.sleep_until(next_tick(trio.current_time(),
                                                     self.config.supervise_interval))
                    await self._supervise()
        finally:
            self._nursery = None

    def _adopt_all(self) -> None:
        for state_file in sorted(self.config.root.glob("*/state.json")):
            try:
                rec = ReplicaRecord.load(state_file.parent)
            except (OSError, ValueError, KeyError, WorkloadRuntimeError) as exc:
                log.warning("ignoring unreadable %s: %s", state_file, exc)
                continue
            if rec.node != self.config.node_id:
                continue
            rep = _Replica(state_file.parent, rec)
            self._replicas[rec.spec.name] = rep
            if rec.ended:
                rep.ended.set()
            elif pidfile.is_alive(rec.ident):
                log.info("adopted %s (pid %s)", rec.spec.name, rec.pid)
                self._arm_health(rep)
            else:
                self._finish_adopted(rep)

    async def _supervise(self) -> None:
        for rep in list(self._replicas.values()):
            if not rep.rec.ended and rep.adopted and not pidfile.is_alive(rep.rec.ident):
                self._finish_adopted(rep)
            log_path = rep.dir / "output.log"
            await trio.to_thread.run_sync(
                lambda p=log_path: rotate(p, max_bytes=self.config.log_max_bytes,
                                          keep=self.config.log_keep))

    def _need_running(self) -> trio.Nursery:
        if self._nursery is None:
            raise WorkloadRuntimeError(
                ErrorCode.NOT_RUNNING,
                "process runtime is not running: `await nursery.start(runtime.run)` first")
        return self._nursery

    # -- images -----------------------------------------------------------------------

    async def ensure_image(self, image: str | None) -> None:
        await trio.lowlevel.checkpoint()
        if image is not None:
            raise WorkloadRuntimeError(
                ErrorCode.IMAGE_NOT_FOUND,
                f"image {image} not found locally: the process runtime runs host commands "
                "and has no images; run the workload on a node with podman, or give a "
                "command and image=None")

    # -- start ------------------------------------------------------------------------

    async def start(self, spec: ContainerSpec) -> ReplicaHandle:
        spec.validate(needs_image=False)
        await self.ensure_image(spec.image)
        nursery = self._need_running()
        async with self._locks[spec.name]:
            rep = self._replicas.get(spec.name)
            restarts = 0
            if rep is not None:
                self._refresh(rep)
                if not rep.rec.ended:
                    return self._already_running(rep, spec)
                restarts = rep.rec.restarts + 1
                self._forget(rep)
            rep = await self._spawn(spec, restarts)
            if rep.proc is not None:
                nursery.start_soon(self._reap, rep)
            self._arm_health(rep)
            return ReplicaHandle(name=spec.name, runtime=KIND, id=str(rep.rec.ident),
                                 spec_hash=spec.spec_hash())

    def _already_running(self, rep: _Replica, spec: ContainerSpec) -> ReplicaHandle:
        old = rep.rec.spec
        if spec.fencing_token < old.fencing_token:
            raise WorkloadRuntimeError(
                ErrorCode.FENCED,
                f"{spec.name} runs with fencing token {old.fencing_token}; "
                f"refusing token {spec.fencing_token}")
        if old.spec_hash() != spec.spec_hash():
            raise WorkloadRuntimeError(
                ErrorCode.ALREADY_RUNNING,
                f"{spec.name} is running with another spec; stop and remove it first")
        if spec.fencing_token > old.fencing_token:
            rep.rec.spec = spec
            self._save(rep)
        return ReplicaHandle(name=spec.name, runtime=KIND, id=str(rep.rec.ident),
                             spec_hash=spec.spec_hash(), adopted=True)

    def _environment(self, spec: ContainerSpec, work: Path,
                     volumes: dict[str, Path] | None = None) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["HOME"] = str(work)
        env.update(injected_env(spec, self.config.node_id))
        if spec.ports:
            env["PORT"] = str(spec.ports[0].host_port)
            env["HOST"] = spec.ports[0].host_ip
            for m in spec.ports:
                env[f"PORT_{m.container_port}"] = str(m.host_port)
        for v in spec.volumes:
            key = "VOLUME_" + v.name.upper().replace("-", "_").replace(".", "_")
            path = (volumes or {}).get(v.name) or volume_dir(self.config.data_dir, v.name)
            env[key] = str(path)
        env.update(spec.env)
        return env

    def identity(self, spec: ContainerSpec) -> Identity | None:
        """The user ``spec`` runs as (None: the agent's own)."""
        if not self.switch_users or spec.run_as_root:
            return None
        base = self.users.base_for(spec.workload or spec.name)
        return Identity(base, base)

    def _layout(self, spec: ContainerSpec, rdir: Path, ident: Identity | None
                ) -> tuple[Path, dict[str, Path]]:
        """The replica's home and its volumes' directories, made (see :mod:`.homes`)."""
        if not self.switch_users:
            volumes = {}
            for v in spec.volumes:
                volumes[v.name] = volume_dir(self.config.data_dir, v.name)
                volumes[v.name].mkdir(parents=True, exist_ok=True)
            home = rdir / "work"
            home.mkdir(parents=True, exist_ok=True)
            return home, volumes
        homes = self.config.homes_root
        ensure_root_dir(homes)
        home = homes / spec.name
        ensure_owned_dir(home, ident, what="home", keep_foreign=False)
        volumes = {}
        if spec.volumes:
            ensure_root_dir(homes / "volumes")
        for v in spec.volumes:
            path = homes / "volumes" / v.name
            if not path.exists() and volume_dir(self.config.data_dir, v.name).exists():
                log.warning("volume %s: %s is no longer used by process replicas of a root "
                            "agent; move its contents to %s", v.name,
                            volume_dir(self.config.data_dir, v.name), path)
            ensure_owned_dir(path, ident, what="volume", keep_foreign=True)
            volumes[v.name] = path
        return home, volumes

    @staticmethod
    def _inside(spec: ContainerSpec, home: Path, volumes: dict[str, Path]
                ) -> tuple[list[tuple[str, str]], str]:
        links = [(str(home / v.path.lstrip("/")), str(volumes[v.name])) for v in spec.volumes]
        cwd = home / spec.working_dir.lstrip("/") if spec.working_dir else home
        return links, str(cwd)

    def _rlimits(self, spec: ContainerSpec) -> list[tuple[int, tuple[int, int]]]:
        limits: list[tuple[int, tuple[int, int]]] = []
        if spec.memory is not None:
            limits.append((resource.RLIMIT_AS, (spec.memory, spec.memory)))
        if spec.cpu_time is not None:
            limits.append((resource.RLIMIT_CPU, (spec.cpu_time, spec.cpu_time + 1)))
        if spec.pids is not None:
            limits.append((resource.RLIMIT_NPROC, (spec.pids, spec.pids)))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = spec.nofile or self.config.default_nofile
        if hard != resource.RLIM_INFINITY:
            nofile = min(nofile, hard)
        limits.append((resource.RLIMIT_NOFILE, (nofile, nofile)))
        return limits

    async def _spawn(self, spec: ContainerSpec, restarts: int) -> _Replica:
        rdir = self.config.root / spec.name
        rdir.mkdir(parents=True, exist_ok=True)
        try:
            ident = self.identity(spec)
            home, volumes = self._layout(spec, rdir, ident)
        except OSError as exc:
            raise WorkloadRuntimeError(
                ErrorCode.START_FAILED, f"{spec.name}: cannot prepare its directory: {exc}"
            ) from exc
        links, cwd = self._inside(spec, home, volumes)
        if ident is None:  # the agent's own user (or root by policy): no one to fear
            setup_inside(str(home), links, cwd, enter=False)
        limits = self._rlimits(spec)
        placed = await self._place(spec)
        netns_fd = -1
        if placed is not None:
            load_setns()
            try:
                netns_fd = os.open(placed.netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise WorkloadRuntimeError(
                    ErrorCode.START_FAILED, f"{spec.name}: its network namespace "
                    f"{placed.netns}: {exc.strerror or exc}") from exc

        def in_child() -> None:  # between fork and exec, after the switch of user
            if netns_fd >= 0:  # its own network: enter it as root, then switch user
                enter_netns(netns_fd)
                if ident is not None:
                    os.setgroups([])
                    os.setgid(ident.gid)
                    os.setuid(ident.uid)
            for which, value in limits:
                resource.setrlimit(which, value)
            if ident is not None:
                setup_inside(str(home), links, cwd)

        exit_fd = os.open(rdir / "exit_code", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd = os.open(rdir / "output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        argv = [self.config.shell, "-c", WRAPPER, "meshcloud-wrap",
                *spec.command, *spec.args]
        user: dict[str, object] = {}
        if ident is not None and netns_fd < 0:
            user = {"user": ident.uid, "group": ident.gid, "extra_groups": []}
        env = self._environment(spec, home, volumes)
        if placed is not None:
            env.update(placed.env)
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=exit_fd, stdout=fd, stderr=fd,
                cwd=str(home) if ident is not None else cwd, env=env,
                start_new_session=True, preexec_fn=in_child, **user)
        except (OSError, subprocess.SubprocessError) as exc:
            raise WorkloadRuntimeError(
                ErrorCode.START_FAILED, f"{spec.name}: cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(fd)
            os.close(exit_fd)
            if netns_fd >= 0:
                os.close(netns_fd)
        # our unreaped child cannot be replaced under its pid: its start time is safe to read
        rec = ReplicaRecord(node=self.config.node_id, spec=spec, pid=proc.pid,
                            start_ticks=pidfile.start_ticks(proc.pid), started_at=time.time(),
                            restarts=restarts, uid=None if ident is None else ident.uid,
                            home="" if home == rdir / "work" else str(home))
        rep = _Replica(rdir, rec, proc=proc)
        self._replicas[spec.name] = rep
        self._save(rep)
        log.info("started %s (pid %d, uid %s)", spec.name, proc.pid,
                 os.geteuid() if ident is None else ident.uid)
        return rep

    async def _place(self, spec: ContainerSpec) -> ReplicaNet | None:
        """The network namespace the replica runs in (None: the host's), from
        ``self.network`` (the V-Nets it is attached to)."""
        if self.network is None:
            return None
        try:
            return await self.network.prepare(spec)
        except (OSError, MeshError) as exc:
            raise WorkloadRuntimeError(
                ErrorCode.START_FAILED, f"{spec.name}: its network: {exc}") from exc

    # -- ending -----------------------------------------------------------------------

    async def _reap(self, rep: _Replica) -> None:
        assert rep.proc is not None
        code = await rep.proc.wait()
        if rep.rec.ended:
            return
        _kill_group(rep.rec.pid, signal.SIGKILL)  # stragglers; the zombie-free pgid is ours
        recorded = read_exit_file(rep.dir)
        if recorded is None:
            recorded = 128 - code if code < 0 else code
        self._finish(rep, recorded)

    def _finish_adopted(self, rep: _Replica) -> None:
        """An adopted (or abandoned) process is gone: find out how it ended."""
        code = read_exit_file(rep.dir)
        try:  # our own unreaped child, left by an earlier runtime object in this process
            pid, status = os.waitpid(rep.rec.pid, os.WNOHANG)
            if pid == rep.rec.pid and code is None:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
        except ChildProcessError:
            pass
        if code is None and rep.rec.killed:
            code = 128 + signal.SIGKILL
        self._finish(rep, code)

    def _finish(self, rep: _Replica, code: int | None) -> None:
        rec = rep.rec
        rec.ended, rec.exit_code, rec.finished_at = True, code, time.time()
        rec.message = describe_exit(code)
        if code is None:
            rec.message += ": the process ended while no agent watched it"
        self._save(rep)
        if rep.health_scope is not None:
            rep.health_scope.cancel()
        rep.ended.set()
        log.info("%s ended: %s", rec.spec.name, rec.message)

    def _refresh(self, rep: _Replica) -> None:
        if not rep.rec.ended and rep.adopted and not pidfile.is_alive(rep.rec.ident):
            self._finish_adopted(rep)

    async def _wait_ended(self, rep: _Replica) -> None:
        while not rep.ended.is_set():
            if rep.adopted:
                self._refresh(rep)
                if rep.ended.is_set():
                    return
                await trio.sleep(self.config.poll_interval)
            else:
                await rep.ended.wait()

    async def stop(self, name: str, stop_timeout: float | None = None) -> None:
        rep = self._replicas.get(name)
        if rep is None:
            await trio.lowlevel.checkpoint()
            return
        async with self._locks[name]:
            self._refresh(rep)
            if rep.rec.ended:
                return
            grace = rep.rec.spec.stop_timeout if stop_timeout is None else stop_timeout
            rep.rec.stop_requested = True
            self._save(rep)
            if not self._signal(rep, signal.SIGTERM):
                await self._wait_ended(rep)
                return
            with trio.move_on_after(grace):
                await self._wait_ended(rep)
            if rep.ended.is_set():
                return
            rep.rec.killed = True
            self._save(rep)
            self._signal(rep, signal.SIGKILL)
            with trio.move_on_after(KILL_WAIT):
                await self._wait_ended(rep)
            if not rep.ended.is_set():
                raise WorkloadRuntimeError(
                    ErrorCode.STOP_FAILED, f"{name}: pid {rep.rec.pid} survived SIGKILL")

    def _signal(self, rep: _Replica, sig: signal.Signals) -> bool:
        """Signal the replica's process group if its leader is still the recorded process."""
        if rep.adopted and not pidfile.is_alive(rep.rec.ident):
            return False
        return _kill_group(rep.rec.pid, sig)

    async def remove(self, name: str) -> None:
        rep = self._replicas.get(name)
        if rep is None:
            await trio.lowlevel.checkpoint()
            return
        await self.stop(name, 0)
        async with self._locks[name]:
            self._forget(rep)
            await trio.to_thread.run_sync(shutil.rmtree, rep.dir, True)
            if rep.rec.home:  # its home (volumes stay)
                await trio.to_thread.run_sync(shutil.rmtree, rep.rec.home, True)

    def _forget(self, rep: _Replica) -> None:
        if rep.health_scope is not None:
            rep.health_scope.cancel()
        self._replicas.pop(rep.rec.spec.name, None)

    # -- reporting --------------------------------------------------------------------

    def _get(self, name: str) -> _Replica:
        rep = self._replicas.get(name)
        if rep is None:
            raise WorkloadRuntimeError(ErrorCode.NOT_FOUND,
                                       f"no replica named {name!r} on this node")
        return rep

    async def status(self, name: str) -> ReplicaStatus:
        await trio.lowlevel.checkpoint()
        rep = self._get(name)
        self._refresh(rep)
        return self._status(rep)

    def _status(self, rep: _Replica) -> ReplicaStatus:
        rec, spec = rep.rec, rep.rec.spec
        health, detail = HealthState.NONE, ""
        if rep.health is not None:
            health, detail = rep.health.state, rep.health.detail
        if rec.ended:
            state = ended_state(rec.exit_code, stop_requested=rec.stop_requested)
        elif health is HealthState.UNHEALTHY:
            state = ReplicaState.UNHEALTHY
        else:
            state = ReplicaState.RUNNING
        return ReplicaStatus(
            name=spec.name, runtime=KIND, state=state, id=str(rec.ident),
            exit_code=rec.exit_code, started_at=rec.started_at, finished_at=rec.finished_at,
            restarts=rec.restarts, health=health, health_detail=detail,
            workload=spec.workload, replica=spec.replica, fencing_token=spec.fencing_token,
            spec_hash=self._as_run(rep).spec_hash(), image=None, message=rec.message)

    def _as_run(self, rep: _Replica) -> ContainerSpec:
        """The spec as the replica really runs: one a root agent of an earlier version
        started (no uid recorded) runs as root, and says so, so the reconciler restarts it
        under its workload's user unless the policy allows root."""
        spec = rep.rec.spec
        if self.switch_users and rep.rec.uid is None and not spec.run_as_root:
            return replace(spec, run_as_root=True)
        return spec

    async def list(self) -> list[ReplicaStatus]:
        await trio.lowlevel.checkpoint()
        out = []
        for name in sorted(self._replicas):
            rep = self._replicas[name]
            self._refresh(rep)
            out.append(self._status(rep))
        return out

    async def wait_exit(self, name: str) -> ReplicaStatus:
        rep = self._get(name)
        await self._wait_ended(rep)
        return self._status(rep)

    async def logs(self, name: str, *, follow: bool = False, tail: int | None = None
                   ) -> AsyncIterator[str]:
        rep = self._get(name)
        path = rep.dir / "output.log"

        async def alive() -> bool:
            self._refresh(rep)
            return not rep.rec.ended

        async for line in read_log(path, tail=tail, follow=follow, alive=alive,
                                   poll_interval=self.config.log_poll_interval,
                                   rotated=rotated_files(path, self.config.log_keep)):
            yield line

    # -- health -----------------------------------------------------------------------

    def _arm_health(self, rep: _Replica) -> None:
        check = rep.rec.spec.health
        if check is None or self._nursery is None:
            return
        rep.health = HealthCore(check, trio.current_time())
        scope = trio.CancelScope()
        rep.health_scope = scope
        probe = self._probe_for(rep)

        async def loop() -> None:
            with scope:
                await health_loop(rep.health, probe)  # type: ignore[arg-type]

        self._nursery.start_soon(loop)

    def _probe_for(self, rep: _Replica) -> Probe:
        spec = rep.rec.spec
        check = spec.health
        assert check is not None
        if check.kind is HealthKind.COMMAND:
            cwd = Path(rep.rec.home) if rep.rec.home else rep.dir / "work"
            user: dict[str, object] = {}
            if rep.rec.uid is not None:  # the probe runs as the replica's user too
                user = {"user": rep.rec.uid, "group": rep.rec.uid, "extra_groups": []}
            volumes = {v.name: cwd.parent / "volumes" / v.name for v in spec.volumes
                       } if rep.rec.home else None

            async def probe_command() -> tuple[bool, str]:
                try:
                    res = await trio.run_process(
                        list(check.command), check=False, cwd=str(cwd), **user,
                        env=self._environment(spec, cwd, volumes), stdin=subprocess.DEVNULL,
                        capture_stdout=True, capture_stderr=True)
                except OSError as exc:
                    return False, f"command: {exc}"
                tail = (res.stdout + res.stderr).decode(errors="replace").strip()[-200:]
                return res.returncode == 0, f"command exit {res.returncode} {tail}".strip()

            return probe_command
        mapping = next(m for m in spec.ports if m.container_port == check.port)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(mapping.host_ip, mapping.host_ip)
        if check.kind is HealthKind.TCP:
            return lambda: probe_tcp(host, mapping.host_port)
        return lambda: probe_http(host, mapping.host_port, check.path)

    # -- persistence ------------------------------------------------------------------

    def _save(self, rep: _Replica) -> None:
        rep.rec.save(rep.dir)


def _kill_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("no permission to signal process group %d", pgid)
        return False
    return True
