"""Demo image recipes: static busybox detection, deterministic rootfs tarballs, digests.

Building into podman (and idempotency) is covered by tests/apps/runtimes/test_podman.py.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

from apps.images import (
    DEMO_WEB_IMAGE,
    base_recipe,
    find_static_busybox,
    is_static_elf,
    rootfs_tar,
    web_recipe,
)
from apps.runtimes.base import WorkloadRuntimeError

try:
    BUSYBOX: Path | None = find_static_busybox()
except WorkloadRuntimeError:
    BUSYBOX = None
needs_busybox = pytest.mark.skipif(BUSYBOX is None,
                                   reason="no static busybox (apt-get install busybox-static)")


def test_dynamic_and_non_elf_files_are_not_static(tmp_path: Path):
    assert not is_static_elf(Path(sys.executable).resolve())
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not is_static_elf(text)


@needs_busybox
def test_busybox_is_static():
    assert BUSYBOX is not None and is_static_elf(BUSYBOX)


@needs_busybox
def test_web_rootfs_has_shell_httpd_and_the_page_script():
    recipe = web_recipe(busybox=BUSYBOX)
    with tarfile.open(fileobj=io.BytesIO(rootfs_tar(recipe))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        script = tar.extractfile("bin/meshcloud-web").read().decode()
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["bin/httpd"].linkname == "busybox"
    assert members["bin/busybox"].mode == 0o755
    assert members["tmp"].mode == 0o1777
    assert "httpd -f" in script and "hostname" in script
    assert all(m.uid == 0 and m.mtime == 0 for m in members.values())
    assert 'CMD ["/bin/meshcloud-web"]' in recipe.changes
    assert recipe.reference == DEMO_WEB_IMAGE


@needs_busybox
def test_builds_are_deterministic_and_digests_name_the_content():
    a, b = web_recipe(busybox=BUSYBOX), web_recipe(busybox=BUSYBOX)
    assert rootfs_tar(a) == rootfs_tar(b)
    assert a.digest() == b.digest()
    assert a.digest() != base_recipe(busybox=BUSYBOX).digest()
