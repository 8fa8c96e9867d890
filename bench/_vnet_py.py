"""The Python plane's throughput and round trip, between two network namespaces.

:func:`measure` builds two namespaces joined by a veth pair, runs a Python plane helper in
each (:class:`vnet.pyplane.lab.PlaneLab`), then ``iperf3`` (TCP, one stream) and ``ping``
across the V-Net. ``python -m bench vnet`` calls it; ``python -m bench._vnet_py
[SECONDS]`` runs it alone. Needs root, ``iperf3`` and ``ping``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench._ping import ping_times
from vnet.plane import PlaneError
from vnet.pyplane.lab import PlaneLab, wait_output


def rtt_ms(lab: PlaneLab, count: int = 20) -> float:
    """The median ping round trip across the V-Net (after one ping that handshakes), as
    ``vnet_rtt_ms`` of the WireGuard plane."""
    a, b = lab.sides
    subprocess.run(a.exec("ping", "-c", "1", "-W", "10", b.address), capture_output=True,
                   check=True, timeout=30)
    out = subprocess.run(a.exec("ping", "-c", str(count), "-i", "0.05", "-W", "5",
                                b.address), capture_output=True, text=True, check=True,
                         timeout=60).stdout
    times = ping_times(out)
    if not times:
        raise PlaneError(f"no ping reply in {out!r}")
    return statistics.median(times)


def tcp_mb_s(lab: PlaneLab, seconds: float) -> float:
    """iperf3, one TCP stream from the first namespace to the second, in MB/s received."""
    a, b = lab.sides
    server = subprocess.Popen(b.exec("iperf3", "-s", "-1", "--forceflush", "-B", b.address),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_output(server, "listening", 30)
        result = subprocess.run(a.exec("iperf3", "-c", b.address, "-t", f"{seconds:g}",
                                       "-J"), capture_output=True, text=True,
                                timeout=seconds + 60)
        report = json.loads(result.stdout)
        if "error" in report:
            raise PlaneError(f"iperf3: {report['error']}")
        return float(report["end"]["sum_received"]["bits_per_second"]) / 8e6
    finally:
        server.kill()
        server.wait()


def measure(seconds: float = 10) -> dict[str, float]:
    with PlaneLab() as lab:
        lab.start_planes()
        rtt = rtt_ms(lab)
        mb_s = tcp_mb_s(lab, seconds)
    return {"py_tcp_mb_s": round(mb_s, 1), "py_rtt_ms": round(rtt, 3)}


if __name__ == "__main__":
    print(json.dumps(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 10)))
