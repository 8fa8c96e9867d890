"""Run one Python plane as a helper process: ``python -m vnet.pyplane``.

The first line of stdin is the config as JSON (keys hex-encoded, see
:func:`parse_config`); the helper applies it, prints ``ready PORT``, applies each further
line the same way (printing ``applied``) and runs until stdin closes or it gets
SIGTERM/SIGINT, then closes the plane (the interface goes with it). Tests and the
benchmark run one inside each network namespace. ``VNET_PY_THREADS=0`` runs the packet
loops on trio, ``VNET_PY_OFFLOAD=0`` turns the TUN offload off, ``VNET_PY_GSO=N`` caps
offloaded packets at N bytes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys
from typing import Any

import trio

from vnet.plane import PeerConfig, PlaneConfig, PlaneError
from vnet.pyplane.driver import GSO_MAX_SIZE, PyPlane


def parse_config(text: str) -> PlaneConfig:
    raw: dict[str, Any] = json.loads(text)
    peers = tuple(
        PeerConfig(public_key=bytes.fromhex(p["public_key"]),
                   endpoint=(str(p["endpoint"][0]), int(p["endpoint"][1]))
                   if p.get("endpoint") else None,
                   allowed_ips=tuple(ipaddress.IPv4Network(n) for n in p["allowed_ips"]))
        for p in raw.get("peers", ()))
    return PlaneConfig(vnet=raw.get("vnet", "vnet"), interface=raw["interface"],
                       address=ipaddress.IPv4Interface(raw["address"]),
                       private_key=bytes.fromhex(raw["private_key"]),
                       listen_port=int(raw.get("listen_port", 0)), peers=peers,
                       mtu=int(raw.get("mtu", 1420)))


async def main() -> int:
    line = await trio.to_thread.run_sync(sys.stdin.readline)
    try:
        config = parse_config(line)
    except (ValueError, KeyError, TypeError) as exc:
        print(f"error bad config: {exc}", flush=True)
        return 2
    async with trio.open_nursery() as nursery:
        plane = PyPlane(nursery, threads=os.environ.get("VNET_PY_THREADS", "1") == "1",
                        offload=os.environ.get("VNET_PY_OFFLOAD", "1") == "1",
                        gso_max_size=int(os.environ.get("VNET_PY_GSO", str(GSO_MAX_SIZE))))
        try:
            await plane.apply(config)
        except PlaneError as exc:
            print(f"error {exc}", flush=True)
            nursery.cancel_scope.cancel()
            return 1
        print(f"ready {plane.listen_port()}", flush=True)

        async def apply_each_line_until_stdin_closes() -> None:
            while line := await trio.to_thread.run_sync(sys.stdin.readline,
                                                        abandon_on_cancel=True):
                if not line.strip():
                    continue
                try:
                    await plane.apply(parse_config(line))
                except (PlaneError, ValueError, KeyError, TypeError) as exc:
                    print(f"error {exc}", flush=True)
                else:
                    print("applied", flush=True)
            nursery.cancel_scope.cancel()

        async def until_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        nursery.start_soon(apply_each_line_until_stdin_closes)
        nursery.start_soon(until_signal)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                print(f"drops {json.dumps(plane.drops)}", file=sys.stderr, flush=True)
                await plane.close()
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
