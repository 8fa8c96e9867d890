"""Read this machine's capacity: cpu, load, RAM, disk, battery, power, network, runtimes.

Driver side only (it reads files and may run ``termux-battery-status``); the core gets a
plain :class:`~gossip.capacity.Capacity`. Every reader is tolerant: a file that is missing
or unreadable gives the "unknown" value (0, -1, None), never an exception, because the
same agent runs on a server, a laptop, a Raspberry Pi and an Android phone.

Sources:

* cores: ``os.sched_getaffinity`` (what we may use), else ``os.cpu_count``;
* load: ``os.getloadavg`` (1 minute);
* RAM: ``/proc/meminfo`` ``MemTotal`` and ``MemAvailable`` (what new work can get);
* disk: ``os.statvfs`` of the data directory (``f_bavail``: what we may write);
* battery and power: ``termux-battery-status`` (JSON, Termux:API) when it is on PATH
  (sysfs is closed to apps on recent Android), else Linux sysfs
  ``/sys/class/power_supply/*`` (``type`` Battery with ``capacity``; Mains/USB/AC with
  ``online``);
* low power: battery known, below ``low_battery`` percent and not charging;
* metered: ``termux-telephony-deviceinfo`` says mobile data is connected while the
  default route is not Wi-Fi, or the default route's interface (``/proc/net/route``) is a
  cellular one (``rmnet*``, ``ccmni*``, ``wwan*``...), unless the user says otherwise;
* arch: ``platform.machine()``; runtimes: ``process`` always, ``podman`` if on PATH.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from gossip.capacity import MAX_LABELS, Capacity

CELLULAR_PREFIXES = ("rmnet", "ccmni", "wwan", "pdp", "ppp", "v4-rmnet")
"""Interface names of mobile data links (Qualcomm, MediaTek, modems, tethering)."""

TERMUX_TIMEOUT = 5.0
"""Seconds to wait for ``termux-battery-status`` (it asks an Android service)."""

LOW_BATTERY = 30
"""Default threshold (percent) under which a node on battery stops taking work."""

WIFI_PREFIXES = ("wlan", "wlp", "wifi")


def read_capacity(data_dir: Path, *, labels: dict[str, str] | None = None,
                  metered: bool | None = None, proc: Path = Path("/proc"),
                  sysfs: Path = Path("/sys"), use_termux: bool = True,
                  low_battery: int = LOW_BATTERY, disk_quota: int = 0) -> Capacity:
    """One reading of this machine's capacity. ``metered=None`` means auto-detect;
    ``low_battery`` is the percentage under which, not charging, the node is low on power
    (0: never); ``disk_quota`` caps the free disk announced to what the shard store under
    ``data_dir/state/blobs`` may still grow by (0: no quota)."""
    total, available = read_memory(proc / "meminfo")
    battery, on_ac = read_termux_battery() if use_termux else (-1, None)
    if battery < 0 and on_ac is None:
        battery, on_ac = read_power(sysfs / "class" / "power_supply")
    if metered is None:
        route = proc / "net" / "route"
        metered = default_route_is_cellular(route) or (
            use_termux and termux_mobile_data() and not default_route_is_wifi(route))
    pairs = sorted((labels or {}).items())[:MAX_LABELS]
    return Capacity(
        cpu_cores=cpu_cores(),
        load=read_load(),
        ram_total=total,
        ram_free=available,
        disk_free=quota_free(data_dir, disk_quota),
        battery=battery,
        on_ac=on_ac,
        metered=metered,
        arch=platform.machine()[:32],
        runtimes=available_runtimes(),
        labels=tuple(pairs),
        machine=machine_fingerprint(),
        low_power=is_low_power(battery, on_ac, low_battery),
    )


def is_low_power(battery: int, on_ac: bool | None, threshold: int = LOW_BATTERY) -> bool:
    """A known battery level under ``threshold`` while the node is not charging (an
    unknown power source counts as not charging only when the level is known)."""
    return 0 <= battery < threshold and on_ac is not True


def machine_fingerprint(paths: tuple[Path, ...] = (Path("/etc/machine-id"),
                                                   Path("/var/lib/dbus/machine-id"))) -> str:
    """16 hex digits of a hash of the machine id (the id itself is not shown around), or
    of the host name where there is none (Termux)."""
    import hashlib
    import socket

    for path in paths:
        text = _read(path).strip()
        if text:
            break
    else:
        text = socket.gethostname()
    return hashlib.blake2b(text.encode(), digest_size=8, person=b"mc-machine").hexdigest()


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def read_load() -> float:
    try:
        return round(max(0.0, os.getloadavg()[0]), 2)
    except (AttributeError, OSError):
        return 0.0


def read_memory(meminfo: Path) -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo; (0, 0) when unreadable."""
    try:
        text = meminfo.read_text()
    except OSError:
        return 0, 0
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
            values[name.strip()] = int(parts[0]) * scale
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return total, min(available, total) if total else available


def disk_free(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def quota_free(data_dir: Path, quota: int) -> int:
    """Free disk for shards: the file system's, capped by what ``quota`` leaves (the
    bytes the shard store's files really occupy are counted against it)."""
    free = disk_free(data_dir)
    if quota <= 0:
        return free
    used = 0
    try:
        for item in (data_dir / "state" / "blobs").iterdir():
            used += item.stat().st_blocks * 512
    except OSError:
        pass
    return max(0, min(free, quota - used))


def read_power(power_supply: Path) -> tuple[int, bool | None]:
    """(battery percent or -1, on mains power or None) from sysfs power_supply."""
    battery = -1
    on_ac: bool | None = None
    discharging: bool | None = None
    try:
        supplies = sorted(power_supply.iterdir())
    except OSError:
        return battery, on_ac
    for supply in supplies:
        kind = _read(supply / "type")
        if kind == "Battery":
            level = _read(supply / "capacity")
            if level.isdigit() and battery < 0:
                battery = min(int(level), 100)
                status = _read(supply / "status")
                if status:
                    discharging = status == "Discharging"
        elif kind in ("Mains", "USB", "USB_C", "USB_PD", "Wireless"):
            online = _read(supply / "online")
            if online in ("0", "1"):
                on_ac = bool(on_ac) or online == "1"
    if on_ac is None and discharging is not None:
        on_ac = not discharging
    return battery, on_ac


WHICH_TTL = 60.0
"""Seconds a PATH lookup is remembered (capacity is read every second or two; installing
podman or Termux:API is noticed within a minute)."""

_which_cache: dict[tuple[str, str], tuple[float, str | None]] = {}


def which(name: str) -> str | None:
    """``shutil.which`` remembered for :data:`WHICH_TTL` seconds (each lookup stats every
    PATH directory, on the capacity sampler's every turn otherwise)."""
    now, key = time.monotonic(), (name, os.environ.get("PATH", ""))
    hit = _which_cache.get(key)
    if hit is not None and now - hit[0] < WHICH_TTL:
        return hit[1]
    found = shutil.which(name)
    _which_cache[key] = (now, found)
    return found


def termux_json(name: str) -> dict[str, object]:
    """The JSON object a Termux:API command prints, or {} (not installed, no answer)."""
    command = which(name)
    if command is None:
        return {}
    try:
        done = subprocess.run([command], capture_output=True, timeout=TERMUX_TIMEOUT,
                              check=False)
        data = json.loads(done.stdout or b"{}")
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_termux_battery() -> tuple[int, bool | None]:
    """Battery through Termux:API, if installed; (-1, None) otherwise. ``plugged`` is
    ``UNPLUGGED`` or ``PLUGGED_AC``/``_USB``/``_WIRELESS``; ``status`` ``CHARGING`` also
    counts as on power."""
    data = termux_json("termux-battery-status")
    if not data:
        return -1, None
    percentage = data.get("percentage")
    plugged = data.get("plugged")
    battery = int(percentage) if isinstance(percentage, int | float) else -1
    on_ac = None if not isinstance(plugged, str) else plugged.upper() != "UNPLUGGED"
    if str(data.get("status", "")).upper() == "CHARGING":
        on_ac = True
    return max(-1, min(battery, 100)), on_ac


def termux_mobile_data() -> bool:
    """Termux:API says mobile data is connected (``data_state``)."""
    return str(termux_json("termux-telephony-deviceinfo").get("data_state", "")).lower() == (
        "connected")


def default_route_is_wifi(route: Path) -> bool:
    return _default_interface(route).startswith(WIFI_PREFIXES)


def default_route_is_cellular(route: Path) -> bool:
    """Is the IPv4 default route through a mobile data interface?"""
    interface = _default_interface(route)
    return bool(interface) and interface.startswith(CELLULAR_PREFIXES)


def _default_interface(route: Path) -> str:
    """The interface of the IPv4 default route ("" when unknown)."""
    try:
        lines = route.read_text().splitlines()[1:]
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return ""


def available_runtimes() -> tuple[str, ...]:
    runtimes = ["process"]
    if which("podman"):
        runtimes.insert(0, "podman")
    return tuple(runtimes)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
