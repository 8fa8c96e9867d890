"""Podman on demand: the node starts its podman runtime only when it has a use for it.

Starting podman is not free: an API service process, and containers/storage bind-mounts
the store onto itself — a mount that outlives a killed agent and stops its data dir from
being deleted like a directory. Most agents of a test run, and a node nobody gives a
container, need none of it. So the service wraps the podman runtime in
:class:`OnDemandRuntime`:

* at boot podman starts at once only if the store already holds containers (replicas to
  adopt); otherwise it waits for the first use that needs it (starting a replica, building
  an image);
* until then the wrapper answers from disk what it can: no replicas (the store has no
  containers and nothing else creates them), and the images of the store, read from
  containers/storage's ``overlay-images/images.json`` (written atomically by podman; no
  mount, no process).

It also loads images pushed to the mesh (:mod:`apps.workloads.catalogue`): before a replica
starts, an image missing from the store is fetched with ``fetch`` (from the blobstore, to a
file) and loaded — no registry needed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from apps.runtimes.base import (
    ContainerSpec,
    ErrorCode,
    ReplicaHandle,
    ReplicaStatus,
    Runtime,
    WorkloadRuntimeError,
)


def graph_root(runtime: Any) -> Path | None:
    service = getattr(runtime, "service", None)
    root = getattr(service, "graph_root", None)
    return Path(root) if root is not None else None


def _json_list(path: Path) -> list[Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return value if isinstance(value, list) else []


def images_on_disk(root: Path) -> list[str]:
    """Tagged images of a containers/storage store, without podman."""
    names = {str(n) for image in _json_list(root / "overlay-images" / "images.json")
             if isinstance(image, dict) for n in image.get("names") or []}
    return sorted(names)


def has_containers(root: Path) -> bool:
    return bool(_json_list(root / "overlay-containers" / "containers.json"))


class OnDemandRuntime:
    """A runtime started by ``start_inner`` on first need (see the module docstring)."""

    def __init__(self, inner: Runtime, start_inner: Callable[[], Awaitable[None]], *,
                 fetch: Callable[[str], Awaitable[Path | None]] | None = None,
                 started: bool = False) -> None:
        self.inner = inner
        self.kind = inner.kind
        self._start_inner = start_inner
        self._lock = trio.Lock()
        self._load_lock = trio.Lock()
        self.started = started
        self.fetch = fetch
        self.loaded: list[str] = []
        """Images this wrapper loaded from the mesh (newest last)."""

    @property
    def service(self) -> Any:
        return getattr(self.inner, "service", None)

    async def ensure_started(self) -> None:
        async with self._lock:
            if not self.started:
                await self._start_inner()
                self.started = True

    async def available(self) -> bool:
        return await self.inner.available()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        raise WorkloadRuntimeError(ErrorCode.BACKEND, "an on-demand runtime starts itself")

    async def ensure_image(self, image: str | None) -> None:
        await self.ensure_started()
        await self.load_from_mesh(image)
        await self.inner.ensure_image(image)

    async def start(self, spec: ContainerSpec) -> ReplicaHandle:
        await self.ensure_started()
        await self.load_from_mesh(spec.image)
        return await self.inner.start(spec)

    async def load_from_mesh(self, image: str | None) -> None:
        """Load ``image`` from the mesh's archives if the store lacks it (no-op otherwise,
        or when the mesh has no such image: the runtime then says it is missing)."""
        if not image or self.fetch is None:
            return
        async with self._load_lock:
            if image in await self.inner.list_images():  # type: ignore[attr-defined]
                return
            path = await self.fetch(image)
            if path is None:
                return
            try:
                await self.inner.load_image(path)  # type: ignore[attr-defined]
            finally:
                await trio.Path(path).unlink(missing_ok=True)
            self.loaded.append(image)

    async def stop(self, name: str, stop_timeout: float | None = None) -> None:
        if self.started:
            await self.inner.stop(name, stop_timeout)
        else:
            await trio.lowlevel.checkpoint()

    async def remove(self, name: str) -> None:
        if self.started:
            await self.inner.remove(name)
        else:
            await trio.lowlevel.checkpoint()

    async def status(self, name: str) -> ReplicaStatus:
        if not self.started:
            await trio.lowlevel.checkpoint()
            raise WorkloadRuntimeError(ErrorCode.NOT_FOUND,
                                       f"no replica named {name!r} on this node")
        return await self.inner.status(name)

    async def list(self) -> list[ReplicaStatus]:
        if not self.started:
            await trio.lowlevel.checkpoint()
            return []
        return await self.inner.list()

    async def logs(self, name: str, *, follow: bool = False, tail: int | None = None
                   ) -> AsyncIterator[str]:
        if not self.started:
            raise WorkloadRuntimeError(ErrorCode.NOT_FOUND,
                                       f"no replica named {name!r} on this node")
        async for line in self.inner.logs(name, follow=follow, tail=tail):
            yield line

    async def wait_exit(self, name: str) -> ReplicaStatus:
        await self.ensure_started()
        return await self.inner.wait_exit(name)

    async def list_images(self) -> list[str]:
        if self.started:
            return list(await self.inner.list_images())  # type: ignore[attr-defined]
        await trio.lowlevel.checkpoint()
        root = graph_root(self.inner)
        return images_on_disk(root) if root is not None else []

    async def build_with(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``fn(inner runtime)`` once started (image builds need the service)."""
        await self.ensure_started()
        return await fn(self.inner)
