"""Two network namespaces joined by a veth pair, each running a Python plane helper process
(``python -m vnet.pyplane``): the rig of the real-process tests and of the benchmark.

Needs root. :class:`PlaneLab` removes everything it made on exit: the helpers are told to
stop (their interfaces go with them), then the namespaces are deleted.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nacl.utils

from vnet.plane import PlaneError
from vnet.pyplane.crypto import public_key

ROOT = Path(__file__).resolve().parents[2]
PORT = 51820


@dataclass
class Side:
    netns: str
    veth: str
    underlay: str
    address: str
    private_key: bytes
    process: subprocess.Popen[str] | None = None

    def exec(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd]


def _run(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PlaneError(f"{' '.join(cmd)}: {result.stderr.strip()}")


class PlaneLab:
    """Namespaces ``<prefix>a``/``<prefix>b`` on 10.214.N.1-2/24, V-Net 10.99.0.1-2/24."""

    def __init__(self, prefix: str | None = None, interface: str = "mcvpy0",
                 mtu: int = 1420) -> None:
        lab = os.getpid() % 200 + 20
        self.prefix = prefix or f"mcvp{lab}"
        self.interface = interface
        self.mtu = mtu
        self.sides = [
            Side(f"{self.prefix}a", f"{self.prefix}va", f"10.214.{lab}.1", "10.99.0.1",
                 nacl.utils.random(32)),
            Side(f"{self.prefix}b", f"{self.prefix}vb", f"10.214.{lab}.2", "10.99.0.2",
                 nacl.utils.random(32)),
        ]
        self._made: list[str] = []

    def __enter__(self) -> PlaneLab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        a, b = self.sides
        for side in self.sides:
            _run("ip", "netns", "add", side.netns)
            self._made.append(side.netns)
        _run("ip", "link", "add", a.veth, "netns", a.netns, "type", "veth", "peer", "name",
             b.veth, "netns", b.netns)
        for side in self.sides:
            _run(*side.exec("ip", "addr", "add", f"{side.underlay}/24", "dev", side.veth))
            _run(*side.exec("ip", "link", "set", side.veth, "up"))
            _run(*side.exec("ip", "link", "set", "lo", "up"))

    def config(self, side: Side, other: Side) -> dict[str, object]:
        return {"vnet": "lab", "interface": self.interface, "address": f"{side.address}/24",
                "private_key": side.private_key.hex(), "listen_port": PORT, "mtu": self.mtu,
                "peers": [{"public_key": public_key(other.private_key).hex(),
                           "endpoint": [other.underlay, PORT],
                           "allowed_ips": [f"{other.address}/32"]}]}

    def start_planes(self, timeout: float = 30.0, *, threads: bool = True,
                     offload: bool = True) -> None:
        a, b = self.sides
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VNET_PY_THREADS": str(int(threads)),
               "VNET_PY_OFFLOAD": str(int(offload))}
        for side, other in ((a, b), (b, a)):
            side.process = subprocess.Popen(
                side.exec(sys.executable, "-m", "vnet.pyplane"), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            assert side.process.stdin is not None
            side.process.stdin.write(json.dumps(self.config(side, other)) + "\n")
            side.process.stdin.flush()
        for side in self.sides:
            try:
                wait_output(side.process, "ready", timeout)
            except PlaneError as exc:
                raise PlaneError(f"plane in {side.netns} did not start: {exc}") from exc

    def apply(self, side: Side, config: dict[str, object], timeout: float = 30.0) -> None:
        """Hand a running helper a new config (it answers ``applied``)."""
        proc = side.process
        assert proc is not None and proc.stdin is not None
        proc.stdin.write(json.dumps(config) + "\n")
        proc.stdin.flush()
        wait_output(proc, "applied", timeout)

    def roam(self, side: Side, new_underlay: str) -> None:
        """Move ``side`` to another underlay address (its peers are not told)."""
        _run(*side.exec("ip", "addr", "flush", "dev", side.veth))
        _run(*side.exec("ip", "addr", "add", f"{new_underlay}/24", "dev", side.veth))
        side.underlay = new_underlay

    def stop_planes(self, timeout: float = 20.0) -> dict[str, str]:
        """Stop the helpers (closing their stdin); their stderr, by namespace."""
        out: dict[str, str] = {}
        for side in self.sides:
            proc, side.process = side.process, None
            if proc is None:
                continue
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            out[side.netns] = err
        return out

    def close(self) -> None:
        self.stop_planes()
        for netns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        self._made.clear()


def wait_output(proc: subprocess.Popen[str] | None, needle: str, timeout: float,
                stream: str = "stdout") -> str:
    """Read ``proc``'s stdout (or stderr) until a line holds ``needle``; that line.

    Reads the raw descriptor, so nothing sits in a Python buffer where a selector cannot
    see it; bytes after the matching line are discarded (the callers want one line)."""
    assert proc is not None
    pipe = getattr(proc, stream)
    assert pipe is not None
    fd = pipe.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = b""
    try:
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            for line in seen.decode(errors="replace").splitlines():
                if needle in line:
                    return line
    finally:
        selector.close()
    raise PlaneError(f"{needle!r} not seen from {proc.args!r} within {timeout} s "
                     f"(got {seen[-300:]!r})")
