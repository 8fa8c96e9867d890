"""sysinfo: readers on real files shaped like /proc and /sys, and on this machine."""

from __future__ import annotations

from pathlib import Path

from gossip.capacity import Capacity
from gossip.sysinfo import (
    default_route_is_cellular,
    disk_free,
    read_capacity,
    read_memory,
    read_power,
    read_termux_battery,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_meminfo_total_and_available(tmp_path):
    write(tmp_path / "meminfo", "MemTotal:       8000000 kB\nMemFree:  100 kB\n"
                                "MemAvailable:   3000000 kB\nBuffers: 5 kB\n")
    assert read_memory(tmp_path / "meminfo") == (8_000_000 * 1024, 3_000_000 * 1024)
    write(tmp_path / "old", "MemTotal: 2000 kB\nMemFree: 500 kB\n")  # no MemAvailable
    assert read_memory(tmp_path / "old") == (2000 * 1024, 500 * 1024)
    assert read_memory(tmp_path / "missing") == (0, 0)


def test_laptop_battery_and_mains(tmp_path):
    supply = tmp_path / "power_supply"
    write(supply / "BAT0" / "type", "Battery\n")
    write(supply / "BAT0" / "capacity", "57\n")
    write(supply / "BAT0" / "status", "Discharging\n")
    write(supply / "AC" / "type", "Mains\n")
    write(supply / "AC" / "online", "0\n")
    assert read_power(supply) == (57, False)
    write(supply / "AC" / "online", "1\n")
    assert read_power(supply) == (57, True)


def test_battery_without_a_mains_supply_uses_its_status(tmp_path):
    supply = tmp_path / "power_supply"
    write(supply / "battery" / "type", "Battery")
    write(supply / "battery" / "capacity", "90")
    write(supply / "battery" / "status", "Charging")
    assert read_power(supply) == (90, True)


def test_desktop_without_power_supply_is_unknown(tmp_path):
    assert read_power(tmp_path / "nothing") == (-1, None)
    (tmp_path / "empty").mkdir()
    assert read_power(tmp_path / "empty") == (-1, None)


def test_metered_when_the_default_route_is_cellular(tmp_path):
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    write(tmp_path / "wifi", header + "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n")
    write(tmp_path / "cell", header + "wlan0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                                      "rmnet_data0\t00000000\t01000A0A\t0003\t0\t0\t0\t0\n")
    assert not default_route_is_cellular(tmp_path / "wifi")
    assert default_route_is_cellular(tmp_path / "cell")
    assert not default_route_is_cellular(tmp_path / "missing")


def test_this_machine_gives_a_valid_capacity(tmp_path):
    cap = read_capacity(tmp_path, labels={"zone": "test"}, use_termux=False)
    assert isinstance(cap, Capacity)
    assert cap.cpu_cores >= 1 and cap.ram_total > 0 and 0 < cap.ram_free <= cap.ram_total
    # other programs write to the same file system between the two readings
    assert cap.disk_free > 0 and abs(cap.disk_free - disk_free(tmp_path)) < 1 << 30
    assert "process" in cap.runtimes and cap.arch
    assert cap.label_map() == {"zone": "test"}


def test_fake_proc_and_sys_roots(tmp_path):
    write(tmp_path / "proc" / "meminfo", "MemTotal: 1000 kB\nMemAvailable: 250 kB\n")
    write(tmp_path / "proc" / "net" / "route",
          "Iface\tDestination\n" "ccmni0\t00000000\t0\t3\t0\t0\t0\t0\n")
    write(tmp_path / "sys" / "class" / "power_supply" / "b" / "type", "Battery")
    write(tmp_path / "sys" / "class" / "power_supply" / "b" / "capacity", "12")
    cap = read_capacity(tmp_path, proc=tmp_path / "proc", sysfs=tmp_path / "sys",
                        use_termux=False)
    assert (cap.ram_total, cap.ram_free) == (1000 * 1024, 250 * 1024)
    assert cap.battery == 12 and cap.metered is True
    assert read_capacity(tmp_path, proc=tmp_path / "proc", sysfs=tmp_path / "sys",
                         metered=False, use_termux=False).metered is False


def test_termux_battery_status_is_read_when_the_command_exists(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "termux-battery-status"
    write(script, "#!/bin/sh\n"
                  "echo '{\"health\": \"GOOD\", \"percentage\": 42, "
                  "\"plugged\": \"UNPLUGGED\", \"status\": \"DISCHARGING\"}'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(script.parent))
    assert read_termux_battery() == (42, False)
    write(script, "#!/bin/sh\necho '{\"percentage\": 100, \"plugged\": \"PLUGGED_AC\"}'\n")
    assert read_termux_battery() == (100, True)
    write(script, "#!/bin/sh\necho 'not json'\n")
    assert read_termux_battery() == (-1, None)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert read_termux_battery() == (-1, None)
