"""Round trips read from ``ping -n`` output (the V-Net benches report their median)."""

from __future__ import annotations

import re


def ping_times(output: str) -> list[float]:
    """The round trips (ms) of the replies in ``ping -n`` output, in order."""
    return [float(m) for m in re.findall(r"\btime=([\d.]+) ms", output)]
