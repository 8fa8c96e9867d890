"""Functions in any language: a version deployed with an image runs as podman containers
(real podman, a local image built from busybox: no registry) that serve ``POST /`` on
``$PORT``; warm reuse, one container per concurrent invocation, scale to zero, errors,
timeouts and a missing image."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from apps.functions.core import build_version
from apps.functions.executor import Executor, InvokeFailed
from apps.images import ImageRecipe, base_recipe, build_image
from apps.runtimes.base import running
from apps.runtimes.config import PodmanConfig
from apps.runtimes.podman import PodmanRuntime
from apps.runtimes.podman_service import PodmanService, podman_unavailable_reason, release_store

pytestmark = [pytest.mark.podman]
if podman_unavailable_reason() is not None:
    pytestmark.append(pytest.mark.skip(reason=f"podman: {podman_unavailable_reason()}"))

IMAGE = "localhost/meshcloud/fn-echo:1"
SERVE = """#!/bin/sh
exec httpd -f -p "${PORT:-8080}" -h /www
"""
CGI = r"""#!/bin/sh
body=$(head -c "${CONTENT_LENGTH:-0}")
case "$body" in
  *fail*) printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n'
          printf 'asked to fail'; exit 0;;
  *sleep*) sleep 3;;
esac
printf 'Content-Type: application/json\r\n\r\n'
printf '{"echo": %s, "id": "%s", "host": "%s", "greeting": "%s"}' "${body:-null}" \
  "$HTTP_X_FN_REQUEST_ID" "$(hostname)" "$GREETING"
"""


def config(data_dir: Path) -> PodmanConfig:
    return PodmanConfig(data_dir=data_dir, node_id="fn-node", supervise_interval=0.1,
                        poll_interval=0.05, log_poll_interval=0.05)


def echo_recipe() -> ImageRecipe:
    base = base_recipe(IMAGE)
    return ImageRecipe(
        reference=IMAGE, busybox=base.busybox, applets=base.applets,
        files={**base.files, "/bin/fn-serve": (SERVE.encode(), 0o755),
               "/www/cgi-bin/index.cgi": (CGI.encode(), 0o755)},
        changes=('CMD ["/bin/fn-serve"]', "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin",
                 "EXPOSE 8080", "WORKDIR /"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("fn-podman")

    async def build() -> None:
        async with running(PodmanRuntime(config(path))) as runtime:
            await build_image(runtime, echo_recipe())

    trio.run(build)
    yield path
    service = PodmanService(config(path))
    subprocess.run([*service.cli_args(), "rm", "--all", "--force", "--time", "0"],
                   env=service.env(), capture_output=True, check=False)
    release_store(service.graph_root)
    shutil.rmtree(service.run_root, ignore_errors=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(image: str = IMAGE, **kw):
    return build_version({"image": image, "timeout": "2s", "memory": "64M",
                          "concurrency": 2, "env": ["GREETING=hi"], **kw},
                         version=1, size=0, now_ms=0)


async def containers(rt: PodmanRuntime) -> set[str]:
    return {st.name for st in await rt.list() if st.name.startswith("fn-")}


async def wait_containers(rt: PodmanRuntime, want: set[str]) -> None:
    with trio.fail_after(30):
        while await containers(rt) != want:
            await trio.sleep(0.05)


async def test_image_function_warm_concurrency_scale_to_zero(data_dir, tmp_path):
    clock = Clock()
    async with running(PodmanRuntime(config(data_dir))) as rt, trio.open_nursery() as bg:
        ex = Executor(tmp_path / "run", None, lambda name: None,  # type: ignore[arg-type]
                      monotonic=clock, containers=lambda: rt)
        ex.spawn = bg.start_soon
        version = spec(timeout="10s")
        result = await ex.invoke("echo", version, b'{"n": 1}', "req-1")
        first = json.loads(result.body)
        assert result.cold and result.content_type == "application/json"
        assert first == {"echo": {"n": 1}, "id": "req-1", "host": "fn-echo-0",
                         "greeting": "hi"}
        again = await ex.invoke("echo", version, b"[]", "req-2")
        assert not again.cold and json.loads(again.body)["host"] == "fn-echo-0"
        # two at once: a second container (one invocation per container)
        hosts = []

        async def slow(rid: str) -> None:
            hosts.append(json.loads((await ex.invoke("echo", version,
                                                     b'{"sleep": 3}', rid)).body)["host"])

        async with trio.open_nursery() as calls:
            calls.start_soon(slow, "a")
            calls.start_soon(slow, "b")
        assert sorted(hosts) == ["fn-echo-0", "fn-echo-1"]
        pool = ex.pools[("echo", 1)]
        assert pool.instances == 2 and pool.cold_starts == 2 and pool.invocations == 4
        assert await containers(rt) == {"fn-echo-0", "fn-echo-1"}
        # idle past the idle period: scaled to zero, the next call is a cold start
        clock.now += version.idle_ms / 1000 + 1
        assert ex.scale_down() == 2 and pool.instances == 0
        await wait_containers(rt, set())
        assert (await ex.invoke("echo", version, b"{}", "req-3")).cold
        ex.close()
        await wait_containers(rt, set())


async def test_image_function_errors_timeout_and_missing_image(data_dir, tmp_path):
    async with running(PodmanRuntime(config(data_dir))) as rt, trio.open_nursery() as bg:
        ex = Executor(tmp_path / "run", None, lambda name: None,  # type: ignore[arg-type]
                      containers=lambda: rt)
        ex.spawn = bg.start_soon
        version = spec()
        with pytest.raises(InvokeFailed, match="answered 500: asked to fail") as info:
            await ex.invoke("echo", version, b'{"fail": 1}', "r1")
        assert info.value.code == "error"
        assert ex.pools[("echo", 1)].instances == 1  # an error answer keeps it warm
        with pytest.raises(InvokeFailed, match="timeout of 1 s") as info:
            await ex.invoke("echo", spec(timeout="1s"), b'{"sleep": 3}', "r2")
        assert info.value.code == "timeout"
        await wait_containers(rt, set())  # the late container is removed
        with pytest.raises(InvokeFailed, match="not found") as info:
            await ex.invoke("ghost", spec("localhost/meshcloud/no-such:1"), b"{}", "r3")
        assert info.value.code == "start_failed"
        nowhere = Executor(tmp_path / "x", None, lambda name: None,  # type: ignore[arg-type]
                           containers=lambda: None)
        with pytest.raises(InvokeFailed, match="no podman runtime") as info:
            await nowhere.invoke("echo", version, b"{}", "r4")
        assert info.value.code == "unavailable"
        ex.close()
        await wait_containers(rt, set())
