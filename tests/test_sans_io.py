"""The sans-IO rule (ARCHITECTURE.md §3), checked: cores import no I/O, clock or global RNG."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CORE_GLOBS = [
    "meshcloud/codec/*.py",
    "meshcloud/identity/certs.py",
    "meshcloud/identity/invites.py",
    "meshcloud/transport/noise.py",
    "meshcloud/transport/mux*.py",
    "meshcloud/transport/channel.py",
    "meshcloud/transport/handshake.py",
    "meshcloud/transport/peers.py",
    "meshcloud/transport/natmessages.py",
    "meshcloud/transport/reachability.py",
    "meshcloud/transport/relaylimits.py",
    "meshcloud/transport/sealed.py",
    "meshcloud/clock.py",
    "meshcloud/rtguard.py",
    "meshcloud/placement.py",
    "meshcloud/state/crdt.py",
    "meshcloud/state/merkle.py",
    "meshcloud/state/sync.py",
    "meshcloud/state/gc.py",
    "meshcloud/state/table.py",
    "meshcloud/state/schema.py",
    "meshcloud/state/replication.py",
    "meshcloud/state/keys.py",
    "meshcloud/state/kv.py",
    "meshcloud/state/core.py",
    "meshcloud/state/background.py",
    "meshcloud/state/messages.py",
    "meshcloud/state/outputs.py",
    "meshcloud/state/config.py",
    "meshcloud/state/tables.py",
    "meshcloud/state/errors.py",
    "meshcloud/workers.py",
    "meshcloud/kit/sealed.py",
    "dht/*.py",
    "gossip/*.py",
    "blobstore/quorum.py",
    "blobstore/holders.py",
    "blobstore/erasure.py",
    "blobstore/crypto.py",
    "blobstore/chunker.py",
    "blobstore/shards.py",
    "blobstore/s3/sigv4.py",
    "blobstore/s3/*.py",
    "blobstore/manifest.py",
    "blobstore/fetch.py",
    "blobstore/repair.py",
    "blobstore/gc.py",
    "blobstore/scrub.py",
    "blobstore/errors.py",
    "blobstore/records.py",
    "blobstore/sortkeys.py",
    "blobstore/picker.py",
    "sim/blobs.py",
    "sim/blobchecks.py",
    "apps/runtimes/health.py",
    "apps/runtimes/spec.py",
    "apps/runtimes/errors.py",
    "apps/leases.py",
    "apps/workloads/admission.py",
    "apps/workloads/config.py",
    "apps/workloads/core.py",
    "apps/workloads/errors.py",
    "apps/workloads/messages.py",
    "apps/workloads/offers.py",
    "apps/workloads/outputs.py",
    "apps/workloads/planner.py",
    "apps/workloads/spec.py",
    "apps/workloads/view.py",
    "apps/workloads/tables.py",
    "apps/ingress/routing.py",
    "apps/ingress/fastseal.py",
    "apps/ingress/messages.py",
    "apps/ingress/tables.py",
    "apps/ingress/httpcore.py",
    "apps/db/core.py",
    "apps/db/messages.py",
    "apps/db/tables.py",
    "apps/db/sealing.py",
    "apps/spark/core.py",
    "apps/spark/messages.py",
    "apps/spark/tables.py",
    "apps/sites/cache.py",
    "apps/sites/manifest.py",
    "apps/sites/messages.py",
    "apps/sites/paths.py",
    "apps/sites/serve.py",
    "apps/sites/tables.py",
    "apps/functions/routing.py",
    "apps/functions/bucketevents.py",
    "apps/functions/schedule.py",
    "sim/workloads.py",
    "vnet/pyplane/core.py",
    "vnet/pyplane/crypto.py",
    "vnet/pyplane/handshake.py",
    "vnet/pyplane/messages.py",
    "vnet/pyplane/replay.py",
    "vnet/pyplane/session.py",
    "vnet/userspace/routing.py",
    "vnet/userspace/socks.py",
    "vnet/core.py",
    "vnet/ipam.py",
    "vnet/names.py",
    "vnet/wiring.py",
]
DRIVER_NAMES = {"driver.py", "sysinfo.py", "__main__.py"}
FORBIDDEN = {"trio", "socket", "lmdb", "asyncio", "select", "selectors", "threading",
             "subprocess", "anyio"}
CLOCK_ALLOWED_IN = {"meshcloud/clock.py"}  # defines SystemClock, the one real clock
RANDOM_CALLS_ALLOWED = {"Random"}


def core_files() -> list[Path]:
    files = set()
    for pattern in CORE_GLOBS:
        files.update(p for p in ROOT.glob(pattern) if p.name not in DRIVER_NAMES)
    return sorted(files)


def test_every_core_entry_names_existing_files():
    empty = [pattern for pattern in CORE_GLOBS
             if not [p for p in ROOT.glob(pattern) if p.name not in DRIVER_NAMES]]
    assert not empty, f"CORE_GLOBS entries that match no file (so check nothing): {empty}"


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_does_no_io(path: Path):
    rel = str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text(), filename=rel)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert top not in FORBIDDEN, f"{rel} imports {name}: cores do no I/O"
            if top == "time":
                assert rel in CLOCK_ALLOWED_IN, f"{rel} imports time: take `now` instead"
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "random"):
            assert node.func.attr in RANDOM_CALLS_ALLOWED, (
                f"{rel} calls random.{node.func.attr}: use the injected random.Random")


# Parts split out of a core call its public methods (which return their outputs); they never
# touch its private state (issue 14: "no module appends to another's private output list").
USES_ONLY_PUBLIC_API = ["meshcloud/state/background.py"]


@pytest.mark.parametrize("rel", USES_ONLY_PUBLIC_API)
def test_split_out_parts_use_only_the_public_api(rel: str):
    path = ROOT / rel
    assert path.exists(), f"{rel} does not exist"
    tree = ast.parse(path.read_text(), filename=rel)
    private = [f"{rel}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_")
               and not node.attr.startswith("__")
               and not (isinstance(node.value, ast.Name) and node.value.id == "self")]
    assert not private, "private state of another object:\n" + "\n".join(private)
