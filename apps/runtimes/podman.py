"""The podman runtime: each replica is a container in the node's own podman store.

The runtime talks to a ``podman system service`` it starts and supervises itself
(:mod:`apps.runtimes.podman_service`) through podman-py. podman-py is synchronous, so
every call runs in a worker thread (``trio.to_thread.run_sync``) under a capacity limiter
(``PodmanConfig.api_threads``).

Why the API service and not the CLI: measured here (``python -m bench.runtimes``), status
and list take ~3 ms through the service and ~27 ms through the CLI (process start-up,
more on a Raspberry Pi), and ``list()`` runs on every reconcile tick. Why podman-py and
not only raw HTTP: its create call maps Docker-style arguments onto podman's
SpecGenerator. Where podman-py 5.x and podman 4.3 disagree we use its raw ``client.api``
instead and say so: list filters given as a list or dict silently match nothing
(``_list_raw`` sends the JSON filter itself); ``nano_cpus`` is dropped (we send
``cpu_quota``/``cpu_period``); logs are read from conmon's ``k8s-file`` (a following
podman-py log stream would pin a thread that cancellation cannot free).

Containers are named ``meshcloud-<name>`` and labelled (``meshcloud.node``, ``.name``,
``.workload``, ``.replica``, ``.fence``, ``.spec_hash``, ``.restarts``, ``.spec``); ``list()``
filters on ``meshcloud.node``. A little state that cannot live in immutable labels (stop
requested, a raised fencing token) sits in ``<data_dir>/runtimes/podman/replicas/<name>.json``.
Every container runs with ``--init`` (catatonit as pid 1: signals forwarded, zombies
reaped), the configured ulimits, no restart policy, and memory+swap = memory (no swap).
Under a root agent every container has a user namespace: container uids and gids
``0..65535`` are host ``base..base+65535``, the range of its workload
(:mod:`apps.runtimes.users`; ``--uidmap 0:base:65536 --gidmap 0:base:65536``), so root in a
container is an unprivileged user on the host; its volumes are handed to ``base`` on first
use (ids shifted: a file of host uid 999 becomes the container's 999). Only a spec with
``run_as_root`` (set from the mesh's signed policy) runs without one.
Health checks are run by the runtime (podman's own need systemd timers, absent here):
TCP/HTTP probes from the host to the published port, command probes with ``runc exec``
(the OCI runtime's own exec: ~30 ms, no podman exec session left behind).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from apps.runtimes.base import (
    ContainerSpec,
    ErrorCode,
    HealthKind,
    HealthState,
    ReplicaHandle,
    ReplicaStatus,
    WorkloadRuntimeError,
    injected_env,
)
from apps.runtimes.config import PodmanConfig, volume_dir
from apps.runtimes.health import HealthCore
from apps.runtimes.homes import Identity, chown_tree
from apps.runtimes.logfile import read_log
from apps.runtimes.network import ReplicaNetwork
from apps.runtimes.podman_service import PodmanService, podman_unavailable_reason
from apps.runtimes.podman_status import (
    LABEL,
    NAME_PREFIX,
    ContainerView,
    is_alive,
    replica_status,
    spec_of,
    view_from_inspect,
    view_from_list,
)
from apps.runtimes.probes import Probe, health_loop, probe_http, probe_tcp
from apps.runtimes.users import SLOT_SIZE, UidAllocator, can_switch_user
from meshcloud.errors import MeshError

log = logging.getLogger(__name__)

KIND = "podman"
CPU_PERIOD = 100_000
"""Microseconds; the CFS period podman uses for ``--cpus``."""
HOW_TO_GET_IMAGES = (
    "build the demo images with `meshcloud images --build-demo`, "
    "or pull it on a machine with a registry and push it to the mesh: "
    "`podman pull IMAGE && podman save -o image.tar IMAGE`, then "
    "`meshcloud images push image.tar` (docs/operations.md, Images)")

T = TypeVar("T")


def container_name(name: str) -> str:
    return NAME_PREFIX + name


REMOVE_BUSY_RETRIES = (0.1, 0.2, 0.4, 0.8, 1.5, 3.0)
"""Pauses between removals a busy root file system refused (about 6 s in all)."""


class PodmanRuntime:
    """Runs replicas as podman containers; see the module docstring. Start with ``run``."""

    kind = KIND

    def __init__(self, config: PodmanConfig, network: ReplicaNetwork | None = None) -> None:
        self.config = config
        self.network = network
        """Told of each started container's process (the V-Nets wire its namespace)."""
        self.service = PodmanService(config)
        self.api_calls = 0
        """podman API calls made so far (tests check that refused specs make none)."""
        self._client: Any = None
        self._limiter = trio.CapacityLimiter(config.api_threads)
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._health: dict[str, tuple[HealthCore, trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None
        self.notes_dir = config.root / "replicas"
        self.users = UidAllocator(config.data_dir)
        self.map_users = can_switch_user()
        """Rootful podman: give containers a user namespace (rootless podman has one)."""

    # -- lifecycle --------------------------------------------------------------------

    async def available(self) -> bool:
        await trio.lowlevel.checkpoint()
        if podman_unavailable_reason(self.config.podman, self.config.runtime) is not None:
            return False
        from meshcloud.extras import has

        if not has("podman"):
            log.warning("podman is installed but podman-py is not: "
                        "pip install 'meshcloud[containers]' to run containers")
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start the API service, re-arm health checks of adopted replicas, then wait."""
        from meshcloud.extras import require

        # deferred: nodes without podman never import podman-py
        podman = require("podman", "the podman runtime")

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.service.run)
                self._client = podman.PodmanClient(base_url=self.service.url)
                self._nursery = nursery
                self.notes_dir.mkdir(parents=True, exist_ok=True)
                for info in await self._list_raw():
                    if info.get("State") == "running":
                        spec = spec_of(info.get("Labels") or {})
                        if spec is not None:
                            self._arm_health(spec, info["Id"])
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for _, scope in self._health.values():
                scope.cancel()
            self._health.clear()
            if self._client is not None:
                self._client.close()
                self._client = None

    def _need_running(self) -> Any:
        if self._client is None:
            raise WorkloadRuntimeError(
                ErrorCode.NOT_RUNNING,
                "podman runtime is not running: `await nursery.start(runtime.run)` first")
        return self._client

    async def _api(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one podman-py call in a worker thread; map its failures to our errors."""
        from podman.errors import APIError, NotFound
        from requests.exceptions import ConnectionError as RequestsConnectionError

        self._need_running()
        await self.service.ready.wait()
        self.api_calls += 1
        try:
            return await trio.to_thread.run_sync(partial(fn, *args, **kwargs),
                                                 limiter=self._limiter)
        except NotFound:
            raise
        except RequestsConnectionError as exc:
            raise WorkloadRuntimeError(
                ErrorCode.BACKEND, f"podman service unreachable at {self.service.url}: {exc}"
            ) from exc
        except APIError as exc:
            raise WorkloadRuntimeError(ErrorCode.BACKEND, _api_message(exc)) from exc

    # -- images -----------------------------------------------------------------------

    async def image_exists(self, image: str) -> bool:
        client = self._need_running()
        resp = await self._api(client.api.get, f"/images/{image}/exists")
        return resp.status_code == 204

    async def ensure_image(self, image: str | None) -> None:
        if not image:
            raise WorkloadRuntimeError(ErrorCode.IMAGE_NOT_FOUND,
                                       "the podman runtime needs an image")
        if not await self.image_exists(image):
            raise WorkloadRuntimeError(
                ErrorCode.IMAGE_NOT_FOUND,
                f"image {image} not found locally; {HOW_TO_GET_IMAGES}")

    async def image_labels(self, image: str) -> dict[str, str] | None:
        """Labels of a local image, or None if it is not here."""
        from podman.errors import NotFound

        client = self._need_running()
        try:
            resp = await self._api(client.api.get, f"/images/{image}/json")
            resp.raise_for_status()
        except NotFound:
            return None
        return dict((resp.json().get("Config") or {}).get("Labels") or {})

    async def list_images(self) -> list[str]:
        """Every tagged image reference in the node's store (``repo:tag``), sorted."""
        client = self._need_running()
        resp = await self._api(client.api.get, "/images/json")
        if resp.status_code != 200:
            raise WorkloadRuntimeError(ErrorCode.BACKEND,
                                       f"image list failed: {resp.text[:300]}")
        names = {str(tag) for image in resp.json() or []
                 for tag in image.get("RepoTags") or image.get("Names") or []
                 if tag and not str(tag).startswith("<none>")}
        return sorted(names)

    async def import_image(self, rootfs_tar: bytes, reference: str,
                           changes: list[str]) -> str:
        """``podman import``: a rootfs tarball becomes image ``reference``; returns its id."""
        client = self._need_running()
        resp = await self._api(client.api.post, "/images/import",
                               params={"reference": reference, "changes": changes},
                               data=rootfs_tar, headers={"Content-Type": "application/x-tar"})
        if resp.status_code != 200:
            raise WorkloadRuntimeError(ErrorCode.IMAGE_BUILD_FAILED,
                                       f"import of {reference} failed: {resp.text[:300]}")
        return str(resp.json().get("Id", ""))

    async def load_image(self, archive: Path) -> list[str]:
        """``podman load`` of a ``podman save`` / ``docker save`` archive (streamed from
        disk, not read into memory); returns the names it brought."""
        client = self._need_running()
        if not await trio.Path(archive).is_file():
            raise WorkloadRuntimeError(ErrorCode.IMAGE_NOT_FOUND,
                                       f"image archive {archive} not found")

        def load() -> Any:
            with open(archive, "rb") as f:
                return client.api.post("/images/load", data=f,
                                       headers={"Content-Type": "application/x-tar"})

        resp = await self._api(load)
        if resp.status_code != 200:
            raise WorkloadRuntimeError(ErrorCode.IMAGE_BUILD_FAILED,
                                       f"load of {archive} failed: {resp.text[:300]}")
        return [str(n) for n in resp.json().get("Names") or []]

    # -- start ------------------------------------------------------------------------

    async def start(self, spec: ContainerSpec) -> ReplicaHandle:
        spec.validate(needs_image=True)
        self._need_running()
        async with self._locks[spec.name]:
            await self.ensure_image(spec.image)
            info = await self._inspect(spec.name)
            restarts = 0
            if info is not None:
                labels = info["Config"].get("Labels") or {}
                if labels.get(LABEL + "node") != self.config.node_id:
                    raise WorkloadRuntimeError(
                        ErrorCode.START_FAILED,
                        f"a container named {container_name(spec.name)} exists that this "
                        "node does not own; remove it by hand")
                if is_alive(info["State"].get("Status", "")):
                    return self._already_running(info, spec)
                restarts = int(labels.get(LABEL + "restarts", "0")) + 1
                await self._remove_container(spec.name)
            self._write_note(spec.name, {"fence": spec.fencing_token, "stop_requested": False})
            cid = await self._create_and_start(spec, restarts)
            self._arm_health(spec, cid)
            return ReplicaHandle(name=spec.name, runtime=KIND, id=cid,
                                 spec_hash=spec.spec_hash())

    def _already_running(self, info: dict[str, Any], spec: ContainerSpec) -> ReplicaHandle:
        labels = info["Config"].get("Labels") or {}
        fence = self._fence(spec.name, labels)
        if spec.fencing_token < fence:
            raise WorkloadRuntimeError(
                ErrorCode.FENCED, f"{spec.name} runs with fencing token {fence}; "
                f"refusing token {spec.fencing_token}")
        if labels.get(LABEL + "spec_hash") != spec.spec_hash():
            raise WorkloadRuntimeError(
                ErrorCode.ALREADY_RUNNING,
                f"{spec.name} is running with another spec; stop and remove it first")
        if spec.fencing_token > fence:
            note = self._read_note(spec.name)
            self._write_note(spec.name, {**note, "fence": spec.fencing_token})
        return ReplicaHandle(name=spec.name, runtime=KIND, id=info["Id"],
                             spec_hash=spec.spec_hash(), adopted=True)

    def _create_args(self, spec: ContainerSpec, restarts: int) -> dict[str, Any]:
        base = self.host_base(spec)
        labels = {**spec.labels,
                  LABEL + "node": self.config.node_id, LABEL + "name": spec.name,
                  LABEL + "workload": spec.workload, LABEL + "replica": str(spec.replica),
                  LABEL + "fence": str(spec.fencing_token),
                  LABEL + "spec_hash": spec.spec_hash(), LABEL + "restarts": str(restarts),
                  LABEL + "userns": "host" if base is None else str(base),
                  LABEL + "spec": spec.to_json()}
        ulimits = [{"Name": "nofile", "Soft": spec.nofile or self.config.nofile,
                    "Hard": spec.nofile or self.config.nofile},
                   {"Name": "nproc", "Soft": self.config.nproc, "Hard": self.config.nproc}]
        if spec.cpu_time is not None:
            ulimits.append({"Name": "cpu", "Soft": spec.cpu_time, "Hard": spec.cpu_time + 1})
        args: dict[str, Any] = {
            "image": spec.image, "name": container_name(spec.name), "hostname": spec.name,
            "environment": {**injected_env(spec, self.config.node_id), **spec.env},
            "labels": labels, "init": True, "ulimits": ulimits,
            "ports": {f"{m.container_port}/{m.protocol}": (m.host_ip, m.host_port)
                      for m in spec.ports},
            "mounts": [{"type": "bind", "source": str(self._volume(v.name, base)),
                        "target": v.path, "read_only": v.read_only} for v in spec.volumes],
            "stop_timeout": int(spec.stop_timeout),
        }
        if spec.command:
            args["entrypoint"] = list(spec.command)
            args["command"] = list(spec.args)
        elif spec.args:
            args["command"] = list(spec.args)
        if spec.memory is not None:
            args["mem_limit"] = spec.memory
            args["memswap_limit"] = spec.memory
        if spec.pids is not None:
            args["pids_limit"] = spec.pids
        if spec.cpu is not None:
            args["cpu_period"] = CPU_PERIOD
            args["cpu_quota"] = max(1000, round(spec.cpu * CPU_PERIOD))
        if spec.working_dir:
            args["working_dir"] = spec.working_dir
        if base is not None:
            mapping = [{"container_id": 0, "host_id": base, "size": SLOT_SIZE}]
            args["idmappings"] = {"UIDMap": mapping, "GIDMap": mapping}
            args["userns_mode"] = "private"
        return args

    def host_base(self, spec: ContainerSpec) -> int | None:
        """The host uid of the container's root (None: host root, no user namespace)."""
        if not self.map_users or spec.run_as_root:
            return None
        return self.users.base_for(spec.workload or spec.name)

    def _volume(self, name: str, base: int | None = None) -> Path:
        path = volume_dir(self.config.data_dir, name)
        path.mkdir(parents=True, exist_ok=True)
        owner = path.stat().st_uid
        if base is not None and owner == 0:  # fresh, or written by root before
            chown_tree(path, Identity(base, base), shift=True)
        elif base is not None and owner != base:
            log.warning("volume %s belongs to uid %d, not to this workload's %d: left as "
                        "it is", name, owner, base)
        return path

    async def _create_and_start(self, spec: ContainerSpec, restarts: int) -> str:
        client = self._need_running()
        try:
            container = await self._api(client.containers.create,
                                        **self._create_args(spec, restarts))
        except WorkloadRuntimeError as exc:
            raise WorkloadRuntimeError(ErrorCode.START_FAILED,
                                       f"{spec.name}: create failed: {exc.message}") from exc
        try:
            await self._api(container.start)
        except WorkloadRuntimeError as exc:
            await self._remove_container(spec.name)
            raise WorkloadRuntimeError(ErrorCode.START_FAILED,
                                       f"{spec.name}: start failed: {exc.message}") from exc
        log.info("started %s (%s)", spec.name, container.id[:12])
        await self._join_network(spec)
        return str(container.id)

    async def _join_network(self, spec: ContainerSpec) -> None:
        """Tell ``self.network`` the container's process (a failure is logged: the
        container runs, without its V-Net interfaces until the next start)."""
        if self.network is None:
            return
        try:
            info = await self._inspect(spec.name)
            pid = int((info or {}).get("State", {}).get("Pid") or 0)
            if pid > 0:
                await self.network.joined(spec, pid)
        except (OSError, ValueError, MeshError) as exc:
            log.warning("%s: its V-Net interfaces: %s", spec.name, exc)

    # -- ending -----------------------------------------------------------------------

    async def stop(self, name: str, stop_timeout: float | None = None) -> None:
        async with self._locks[name]:
            info = await self._inspect(name)
            if info is None or not self._owned(info):
                return
            self._stop_health(name)
            if not is_alive(info["State"].get("Status", "")):
                return
            spec = spec_of(info["Config"].get("Labels") or {})
            grace = stop_timeout if stop_timeout is not None else (
                spec.stop_timeout if spec is not None else 10.0)
            self._write_note(name, {**self._read_note(name), "stop_requested": True})
            client = self._need_running()
            resp = await self._api(client.api.post,
                                   f"/containers/{container_name(name)}/stop",
                                   params={"timeout": max(0, round(grace))})
            if resp.status_code not in (204, 304):
                raise WorkloadRuntimeError(ErrorCode.STOP_FAILED,
                                           f"{name}: stop failed: {resp.text[:300]}")

    async def remove(self, name: str) -> None:
        async with self._locks[name]:
            info = await self._inspect(name)
            self._stop_health(name)
            if info is not None and self._owned(info):
                await self._remove_container(name)
            (self.notes_dir / f"{name}.json").unlink(missing_ok=True)

    async def _remove_container(self, name: str) -> None:
        client = self._need_running()
        # right after a container died (an OOM kill) its cleanup may still hold the root
        # file system mounted: podman answers "device or resource busy"; that passes
        for pause in REMOVE_BUSY_RETRIES:
            resp = await self._api(client.api.delete, f"/containers/{container_name(name)}",
                                   params={"force": True, "timeout": 0})
            if resp.status_code in (200, 204, 404):
                return
            if "resource busy" not in resp.text:
                break
            await trio.sleep(pause)
        raise WorkloadRuntimeError(ErrorCode.BACKEND,
                                   f"{name}: remove failed: {resp.text[:300]}")

    # -- reporting --------------------------------------------------------------------

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        client = self._need_running()
        resp = await self._api(client.api.get, f"/containers/{container_name(name)}/json")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise WorkloadRuntimeError(ErrorCode.BACKEND,
                                       f"inspect {name} failed: {resp.text[:300]}")
        return dict(resp.json())

    async def _list_raw(self) -> list[dict[str, Any]]:
        client = self._need_running()
        filters = json.dumps({"label": [f"{LABEL}node={self.config.node_id}"]})
        resp = await self._api(client.api.get, "/containers/json",
                               params={"all": "true", "filters": filters})
        if resp.status_code != 200:
            raise WorkloadRuntimeError(ErrorCode.BACKEND, f"list failed: {resp.text[:300]}")
        return [c for c in resp.json() or []
                if any(n.startswith(NAME_PREFIX) for n in c.get("Names") or [])]

    def _owned(self, info: dict[str, Any]) -> bool:
        return (info["Config"].get("Labels") or {}).get(LABEL + "node") == self.config.node_id

    async def status(self, name: str) -> ReplicaStatus:
        info = await self._inspect(name)
        if info is None or not self._owned(info):
            raise WorkloadRuntimeError(ErrorCode.NOT_FOUND,
                                       f"no replica named {name!r} on this node")
        return self._status(view_from_inspect(info))

    async def list(self) -> list[ReplicaStatus]:
        views = [view_from_list(c) for c in await self._list_raw()]
        return sorted((self._status(v) for v in views), key=lambda s: s.name)

    def _status(self, view: ContainerView) -> ReplicaStatus:
        note = self._read_note(view.name)
        health: tuple[HealthState, str] | None = None
        if view.name in self._health:
            core = self._health[view.name][0]
            health = (core.state, core.detail)
        status = replica_status(view, stop_requested=bool(note.get("stop_requested")),
                                fence=self._fence(view.name, view.labels), health=health)
        spec = spec_of(view.labels)
        if self.map_users and LABEL + "userns" not in view.labels and spec is not None \
                and not spec.run_as_root:
            # made by an agent before user namespaces: it runs as host root and says so,
            # so the reconciler replaces it unless the policy allows root
            status = replace(status, spec_hash=replace(spec, run_as_root=True).spec_hash())
        return status

    async def wait_exit(self, name: str) -> ReplicaStatus:
        while True:
            st = await self.status(name)
            if not st.alive:
                return st
            await trio.sleep(self.config.poll_interval)

    async def logs(self, name: str, *, follow: bool = False, tail: int | None = None
                   ) -> AsyncIterator[str]:
        info = await self._inspect(name)
        if info is None or not self._owned(info):
            raise WorkloadRuntimeError(ErrorCode.NOT_FOUND,
                                       f"no replica named {name!r} on this node")
        log_cfg = info.get("HostConfig", {}).get("LogConfig") or {}
        path = log_cfg.get("Path") or info.get("LogPath")
        if not path or log_cfg.get("Type", "k8s-file") != "k8s-file":
            raise WorkloadRuntimeError(ErrorCode.BACKEND,
                                       f"{name}: no k8s-file log (log driver {log_cfg})")
        cid = info["Id"]

        async def alive() -> bool:
            now = await self._inspect(name)
            return now is not None and now["Id"] == cid and is_alive(now["State"]["Status"])

        async for line in read_log(Path(path), tail=tail, follow=follow, alive=alive,
                                   poll_interval=self.config.log_poll_interval, cri=True):
            yield line

    # -- health -----------------------------------------------------------------------

    def _arm_health(self, spec: ContainerSpec, cid: str) -> None:
        self._stop_health(spec.name)
        if spec.health is None or self._nursery is None:
            return
        core = HealthCore(spec.health, trio.current_time())
        scope = trio.CancelScope()
        self._health[spec.name] = (core, scope)
        probe = self._probe_for(spec, cid)

        async def loop() -> None:
            with scope:
                await health_loop(core, probe)

        self._nursery.start_soon(loop)

    def _stop_health(self, name: str) -> None:
        entry = self._health.pop(name, None)
        if entry is not None:
            entry[1].cancel()

    def _probe_for(self, spec: ContainerSpec, cid: str) -> Probe:
        check = spec.health
        assert check is not None
        if check.kind is HealthKind.COMMAND:
            argv = [self.config.runtime, "exec", cid, *check.command]

            async def probe_command() -> tuple[bool, str]:
                # the OCI runtime directly: ~30 ms, and no podman exec session whose conmon
                # lingers (exit_command_delay) and re-opens the store after we are gone
                try:
                    res = await trio.run_process(argv, check=False, capture_stdout=True,
                                                 capture_stderr=True,
                                                 stdin=subprocess.DEVNULL)
                except OSError as exc:
                    return False, f"exec: {exc}"
                text = (res.stdout + res.stderr).decode(errors="replace").strip()[-200:]
                return res.returncode == 0, f"command exit {res.returncode} {text}".strip()

            return probe_command
        mapping = next(m for m in spec.ports if m.container_port == check.port)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(mapping.host_ip, mapping.host_ip)
        if check.kind is HealthKind.TCP:
            return partial(probe_tcp, host, mapping.host_port)
        return partial(probe_http, host, mapping.host_port, check.path)

    # -- notes ------------------------------------------------------------------------

    def _read_note(self, name: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self.notes_dir / f"{name}.json").read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _write_note(self, name: str, note: dict[str, Any]) -> None:
        self.notes_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.notes_dir / f"{name}.json.tmp"
        tmp.write_text(json.dumps(note))
        tmp.replace(self.notes_dir / f"{name}.json")

    def _fence(self, name: str, labels: dict[str, str]) -> int:
        return max(int(labels.get(LABEL + "fence", "0")),
                   int(self._read_note(name).get("fence", 0)))


def _api_message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
