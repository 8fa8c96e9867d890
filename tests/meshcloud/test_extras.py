"""meshcloud.extras: looking for an optional package does not import it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meshcloud.extras import has

ROOT = str(Path(__file__).resolve().parents[2])


def run(code: str, path: str = "") -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, ROOT) if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    return done.stdout.strip()


def test_has_finds_an_installed_extra_without_importing_it():
    out = run("import sys\nfrom meshcloud.extras import has\n"
              "print(has('podman'), 'podman' in sys.modules, 'requests' in sys.modules)")
    assert out == "True False False"


def test_has_looks_for_the_package_and_its_metadata_without_running_it(tmp_path):
    assert not has("no_such_package_here")
    assert has("trio")  # imported already
    marker = tmp_path / "imported"
    package = tmp_path / "mc_extra_probe"
    package.mkdir()
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    code = "from meshcloud.extras import has\nprint(has('mc_extra_probe'))"
    # a directory without a distribution's metadata (a stub, a stray checkout): absent
    assert run(code, path=str(tmp_path)) == "False"
    meta = tmp_path / "mc_extra_probe-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: mc_extra_probe\nVersion: 1.0\n")
    assert run(code, path=str(tmp_path)) == "True"
    assert not marker.exists()  # found, never imported
