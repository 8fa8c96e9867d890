"""Local images without a registry: small images built from a rootfs tarball.

This machine reaches no container registry, so meshcloud builds what it needs itself: a
root filesystem made of a statically linked busybox (Debian's ``busybox-static``: one
2 MB binary giving ``/bin/sh``, ``httpd``, ``wget`` and ~400 other applets), written as a
deterministic tarball in memory and handed to ``podman import`` (through the node's API
service). Two images come out of :func:`build_demo_images`:

- ``localhost/meshcloud/busybox:1``: a shell and the busybox tools (``CMD ["/bin/sh"]``);
- ``localhost/meshcloud/web:1``: the same plus ``/bin/meshcloud-web``, which writes a page
  naming the container's hostname, workload, replica and node, and serves it with
  ``busybox httpd`` on ``$PORT`` (default 8080, ``EXPOSE 8080``).

Builds are idempotent: each image carries the label ``meshcloud.recipe`` = a digest of
everything that went into it (busybox bytes, files, config changes); when the image is
present with that label, nothing is built (one API call). Users *with* a registry use real
images instead (docs/operations.md, section "Images"); ``python -m apps.images`` offers
``build-demo``, ``load`` (a ``podman save`` archive) and ``podman`` (any podman command
against the node's own store).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from apps.runtimes.base import ErrorCode, WorkloadRuntimeError
from meshcloud import priority

DEMO_BASE_IMAGE = "localhost/meshcloud/busybox:1"
DEMO_WEB_IMAGE = "localhost/meshcloud/web:1"
DEMO_WEB_PORT = 8080
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox-static/busybox")
RECIPE_LABEL = "meshcloud.recipe"
PT_INTERP = 3
"""ELF program header type naming the dynamic loader: its absence means a static binary."""

WEB_SCRIPT = """#!/bin/sh
# meshcloud demo web server: one page naming this container, served by busybox httpd.
port="${PORT:-8080}"
host="$(hostname)"
mkdir -p /tmp/www
cat > /tmp/www/index.html <<EOF
<!doctype html>
<html><head><meta charset="utf-8"><title>meshcloud demo: ${host}</title></head>
<body><h1>meshcloud demo</h1>
<p>host: <b id="host">${host}</b></p>
<p>workload: <span id="workload">${MESHCLOUD_WORKLOAD:-?}</span>,
replica: <span id="replica">${MESHCLOUD_REPLICA:-?}</span>,
node: <span id="node">${MESHCLOUD_NODE:-?}</span></p>
</body></html>
EOF
echo "meshcloud-web: serving ${host} on port ${port}"
exec httpd -f -v -p "${port}" -h /tmp/www
"""

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


@dataclass(frozen=True)
class ImageRecipe:
    """Everything an image is made of; its :meth:`digest` names the build."""

    reference: str
    busybox: Path
    applets: tuple[str, ...]
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    """path in the image -> (content, mode)"""
    changes: tuple[str, ...] = ()
    """Dockerfile-style instructions for ``podman import --change`` (CMD, ENV, EXPOSE...)."""

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.reference.encode())
        h.update(hashlib.sha256(self.busybox.read_bytes()).digest())
        h.update("\n".join(self.applets).encode())
        for path in sorted(self.files):
            content, mode = self.files[path]
            h.update(f"{path}\0{mode}\0{len(content)}\0".encode())
            h.update(content)
        h.update("\n".join(self.changes).encode())
        return h.hexdigest()[:24]


@dataclass(frozen=True)
class BuildResult:
    reference: str
    built: bool
    """False when the image was already there with the same recipe."""
    seconds: float
    image_id: str = ""


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF":
            return False
        is64, little = ident[4] == 2, ident[5] == 1
        end = "<" if little else ">"
        if is64:
            phoff, = struct.unpack_from(end + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
        else:
            phoff, = struct.unpack_from(end + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack(end + "I", f.read(4))
            if p_type == PT_INTERP:
                return False
    return True


def find_static_busybox() -> Path:
    """The machine's static busybox, or an error saying how to get one."""
    for candidate in BUSYBOX_PATHS:
        path = Path(candidate)
        if path.is_file() and is_static_elf(path):
            return path
    raise WorkloadRuntimeError(
        ErrorCode.IMAGE_BUILD_FAILED,
        "no statically linked busybox found (looked at " + ", ".join(BUSYBOX_PATHS) +
        "); install it with `apt-get install busybox-static` (./dev setup does)")


def busybox_applets(busybox: Path) -> tuple[str, ...]:
    out = priority.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
    return tuple(sorted(a for a in out.stdout.split() if a and "/" not in a and a != "busybox"))


def base_recipe(reference: str = DEMO_BASE_IMAGE, *, busybox: Path | None = None
                ) -> ImageRecipe:
    bb = busybox or find_static_busybox()
    return ImageRecipe(
        reference=reference, busybox=bb, applets=busybox_applets(bb),
        files={"/etc/passwd": (PASSWD.encode(), 0o644), "/etc/group": (GROUP.encode(), 0o644)},
        changes=('CMD ["/bin/sh"]', "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin", "WORKDIR /"))


def web_recipe(reference: str = DEMO_WEB_IMAGE, *, busybox: Path | None = None
               ) -> ImageRecipe:
    base = base_recipe(reference, busybox=busybox)
    return ImageRecipe(
        reference=reference, busybox=base.busybox, applets=base.applets,
        files={**base.files, "/bin/meshcloud-web": (WEB_SCRIPT.encode(), 0o755)},
        changes=('CMD ["/bin/meshcloud-web"]', "ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin",
                 f"EXPOSE {DEMO_WEB_PORT}", "WORKDIR /"))


def rootfs_tar(recipe: ImageRecipe) -> bytes:
    """A deterministic tarball of the image's root filesystem (owner root, mtime 0)."""
    buf = io.BytesIO()

    def info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name.lstrip("/"))
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, 0, 0, 0
        return ti

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for d, mode in (("bin", 0o755), ("sbin", 0o755), ("etc", 0o755), ("dev", 0o755),
                        ("proc", 0o555), ("sys", 0o555), ("root", 0o700), ("tmp", 0o1777),
                        ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755),
                        ("var/www", 0o755), ("srv", 0o755), ("data", 0o755)):
            tar.addfile(info(d, tarfile.DIRTYPE, mode))
        data = recipe.busybox.read_bytes()
        ti = info("bin/busybox", tarfile.REGTYPE, 0o755)
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
        for applet in recipe.applets:
            if f"/bin/{applet}" in recipe.files:
                continue
            link = info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        for path in sorted(recipe.files):
            content, mode = recipe.files[path]
            ti = info(path, tarfile.REGTYPE, mode)
            ti.size = len(content)
            tar.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


async def build_image(runtime: object, recipe: ImageRecipe) -> BuildResult:
    """Import ``recipe`` into ``runtime``'s store unless the same build is already there."""
    import trio

    from apps.runtimes.podman import PodmanRuntime

    if not isinstance(runtime, PodmanRuntime):
        raise WorkloadRuntimeError(ErrorCode.IMAGE_BUILD_FAILED,
                                   f"images need the podman runtime, not {runtime!r}")
    begun = time.monotonic()
    digest = await trio.to_thread.run_sync(recipe.digest)
    labels = await runtime.image_labels(recipe.reference)
    if labels is not None and labels.get(RECIPE_LABEL) == digest:
        return BuildResult(recipe.reference, False, time.monotonic() - begun)
    tar = await trio.to_thread.run_sync(rootfs_tar, recipe)
    image_id = await runtime.import_image(
        tar, recipe.reference, [*recipe.changes, f"LABEL {RECIPE_LABEL}={digest}"])
    return BuildResult(recipe.reference, True, time.monotonic() - begun, image_id)


async def build_demo_images(runtime: object) -> list[BuildResult]:
    """Build (or find) the busybox and web demo images; fast when already built."""
    import trio

    busybox = await trio.to_thread.run_sync(find_static_busybox)
    recipes = await trio.to_thread.run_sync(
        lambda: [base_recipe(busybox=busybox), web_recipe(busybox=busybox)])
    return [await build_image(runtime, r) for r in recipes]


# -- command line -------------------------------------------------------------------------

def _runtime(args: argparse.Namespace) -> object:
    from apps.runtimes.config import PodmanConfig
    from apps.runtimes.podman import PodmanRuntime

    return PodmanRuntime(PodmanConfig(data_dir=Path(args.data_dir), node_id=args.node_id))


async def _with_runtime(args: argparse.Namespace) -> int:
    from apps.runtimes.base import running

    runtime = _runtime(args)
    async with running(runtime):  # type: ignore[arg-type]
        if args.verb == "build-demo":
            for r in await build_demo_images(runtime):
                print(f"{r.reference}: {'built' if r.built else 'up to date'} "
                      f"in {r.seconds:.3f}s")
        else:
            for tag in await runtime.load_image(Path(args.archive)):  # type: ignore[attr-defined]
                print(f"loaded {tag}")
    return 0


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", required=True, help="the node's data directory")
    common.add_argument("--node-id", default="cli", help=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="python -m apps.images",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("build-demo", parents=[common],
                   help="build localhost/meshcloud/{busybox,web}:1 (idempotent)")
    load = sub.add_parser("load", parents=[common],
                          help="load a `podman save` archive into the node's store")
    load.add_argument("archive")
    pod = sub.add_parser("podman", parents=[common],
                         help="run podman against the node's store "
                              "(e.g. `podman --data-dir D -- pull docker.io/library/nginx`)")
    pod.add_argument("podman_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.verb == "podman":
        from apps.runtimes.config import PodmanConfig
        from apps.runtimes.podman_service import PodmanService

        service = PodmanService(PodmanConfig(data_dir=Path(args.data_dir), node_id="cli"))
        service.prepare()
        extra = args.podman_args
        if extra[:1] == ["--"]:
            extra = extra[1:]
        os.execvpe(service.config.podman, [*service.cli_args(), *extra], service.env())
    import trio

    try:
        return trio.run(_with_runtime, args)
    except (WorkloadRuntimeError, BaseExceptionGroup) as exc:
        errors = _leaves(exc)
        if not errors:
            raise
        for err in errors:
            print(f"error ({err.code}): {err.message}", file=sys.stderr)
        return 1


def _leaves(exc: BaseException) -> list[WorkloadRuntimeError]:
    """The runtime errors inside ``exc`` (empty if anything else is in there too)."""
    if isinstance(exc, WorkloadRuntimeError):
        return [exc]
    if not isinstance(exc, BaseExceptionGroup):
        return []
    out: list[WorkloadRuntimeError] = []
    for inner in exc.exceptions:
        found = _leaves(inner)
        if not found:
            return []
        out.extend(found)
    return out


if __name__ == "__main__":
    sys.exit(main())
