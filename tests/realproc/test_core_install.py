"""The core install (issue 20): no podman-py, no matplotlib, no pyspark.

For real: a fresh virtual environment with only the core dependencies and this checkout
installed (:mod:`tests.realproc.core_venv`, cached by the dependencies' hash) imports
everything a node uses without the extras, and an agent started from it joins a mesh of
ordinary agents, holds shards of an object written through it, reads one back, and runs
a replica of a process workload. Besides, in the shared environment, stub packages
first on ``PYTHONPATH`` (whose import records the attempt and raises ``ImportError``)
show which code paths try an extra at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.agents import LocalCluster, wait_until
from tests.realproc.core_venv import command_prefix, core_venv
from tests.workload_python import WORKLOAD_PYTHON

pytestmark = [pytest.mark.real, pytest.mark.slow]

EXTRAS = ("podman", "matplotlib", "pyspark")
STUB = """import os
with open(os.environ["MESHCLOUD_TEST_BLOCKED"], "a") as log:
    log.write(__name__ + "\\n")
raise ImportError("No module named " + repr(__name__) + " (blocked: core install test)")
"""


def blocked_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    root = tmp_path / "blocked"
    for name in EXTRAS:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(STUB)
    attempts = tmp_path / "import-attempts.txt"
    attempts.write_text("")
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "MESHCLOUD_TEST_BLOCKED": str(attempts)}, attempts


def test_importing_everything_a_node_uses_needs_no_extra(tmp_path):
    env, attempts = blocked_env(tmp_path)
    code = ("import meshcloud, meshcloud.cli, meshcloud.agent.node, meshcloud.agent.compose\n"
            "import meshcloud.api.server, apps.workloads.service, blobstore.node_service\n"
            "from meshcloud.agent.compose import load_cli_verbs\n"
            "load_cli_verbs()\n"
            "from meshcloud.extras import MissingExtraError, require\n"
            "for name in ('podman', 'matplotlib', 'pyspark'):\n"
            "    try:\n"
            "        require(name, 'a test')\n"
            "    except MissingExtraError as exc:\n"
            "        print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        "a test needs the optional package 'podman', not installed here: "
        "pip install 'meshcloud[containers]'",
        "a test needs the optional package 'matplotlib', not installed here: "
        "pip install 'meshcloud[sim]'",
        "a test needs the optional package 'pyspark', not installed here: "
        "pip install 'meshcloud[spark]'"]
    # the stubs were really in the way (only the three require() calls reached them)
    assert attempts.read_text().split() == list(EXTRAS)


IMPORTS = ("import meshcloud, meshcloud.cli, meshcloud.agent.node, meshcloud.agent.compose\n"
           "import meshcloud.api.server, apps.workloads.service, blobstore.node_service\n"
           "from meshcloud.agent.compose import load_cli_verbs\n"
           "load_cli_verbs()\n")


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return core_venv(tmp_path_factory.mktemp("core-venv"))


def test_a_fresh_core_venv_lacks_the_extras_and_imports_a_whole_node(fresh_python, tmp_path):
    code = ("import importlib.util, sys\n"
            "missing = [n for n in ('podman', 'matplotlib', 'pyspark')\n"
            "           if importlib.util.find_spec(n) is None]\n"
            + IMPORTS +
            "print(' '.join(missing))\n"
            "print(meshcloud.__file__)\n"
            "print(sys.prefix)\n")
    done = subprocess.run([str(fresh_python), "-I", "-c", code], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    missing, module, prefix = done.stdout.splitlines()
    assert missing.split() == ["podman", "matplotlib", "pyspark"]
    assert module.startswith(prefix) and "site-packages" in module  # installed, not the tree
    assert Path(prefix) == fresh_python.parent.parent


def test_a_fresh_core_agent_joins_stores_shards_and_runs_a_process(fresh_python, tmp_path):
    cluster = LocalCluster(tmp_path / "mesh", extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process"})
    try:
        a = cluster.init_first(listen="127.0.0.91:0")
        b = cluster.join(through=a, listen="127.0.0.92:0")
        core = cluster.new_agent("core", listen="127.0.0.93:0", env={},
                                 prefix=command_prefix(fresh_python))
        core.cli("join", cluster.invite(a), *core.node_flags())
        core.start()
        # the agent runs the fresh environment's interpreter and native modules
        maps = Path(f"/proc/{core.pid}/maps").read_text()
        assert str(fresh_python.parent.parent / "lib") in maps
        agents = (a, b, core)
        wait_until(lambda: all(sum(m["state"] == "alive" for m in x.get("/v1/members")) == 3
                               and len(x.get("/v1/images")["mesh"]) == 3
                               for x in agents), 90, message="three alive, offers known")
        assert core.get("/v1/images")["mesh"][core.node_id]["runtimes"] == ["process"]

        core.cli("bucket", "create", "docs")
        src = tmp_path / "data.bin"
        src.write_bytes(os.urandom(3 << 20))
        core.cli("cp", str(src), "s3://docs/data.bin")
        layout = a.get("/v1/storage/layout/docs/data.bin")
        holders = {s["node"] for c in layout["chunks"] for s in c["shards"]}
        assert core.node_id in holders and layout["complete"], layout
        back = tmp_path / "back.bin"
        a.cli("cp", "s3://docs/data.bin", str(back))
        assert back.read_bytes() == src.read_bytes()

        core.cli("run", "sleeper", "--replicas", "3", "--command",
                 f"{WORKLOAD_PYTHON} -c 'import time; time.sleep(3600)'")

        def running(node) -> list[str]:
            return [r["name"] for r in a.get(f"/v1/nodes/{node.node_id}/drain")["running"]]

        wait_until(lambda: len(running(core)) == 1, 90,
                   message="a replica runs on the fresh core agent")
        core.cli("rm", "sleeper")
        assert "Traceback" not in core.console_tail(100_000)
    finally:
        cluster.close()
