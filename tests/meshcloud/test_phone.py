"""Phones as nodes: low-power capacity, heavy work, the phone profile's settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.workloads.messages import NodeOffer
from apps.workloads.planner import PlanItem, place
from apps.workloads.spec import parse_spec
from apps.workloads.view import build_view, node_info
from blobstore.picker import node_infos
from gossip.capacity import Capacity, static_change
from gossip.sysinfo import is_low_power, quota_free, read_capacity
from meshcloud.codec.messages import decode_message, encode_message
from meshcloud.config import PHONE_QUOTA, NodeConfig, parse_size
from meshcloud.errors import ConfigError
from meshcloud.placement import Constraints, NodeInfo, rank

OFFER = NodeOffer(runtimes=("process",), images=(), arch="x86_64", cpus=4.0, ram_mb=4096,
                  labels=(), metered=False, updated_ms=0)


def fake_termux(bin_dir: Path, battery: dict[str, object], telephony: dict[str, object]
                ) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (("termux-battery-status", battery),
                       ("termux-telephony-deviceinfo", telephony)):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho '{json.dumps(data)}'\n")
        script.chmod(0o755)


# --- reading the phone ------------------------------------------------------------------------


@pytest.mark.parametrize(("battery", "on_ac", "low"), [
    (29, False, True), (30, False, False), (5, True, False), (5, None, True),
    (-1, False, False), (0, False, True), (100, False, False),
])
def test_low_power_is_a_known_level_under_the_threshold_not_charging(battery, on_ac, low):
    assert is_low_power(battery, on_ac, 30) is low


def test_threshold_zero_never_drains():
    assert not is_low_power(0, False, 0)


def test_termux_is_read_before_sysfs_and_sets_low_power(tmp_path, monkeypatch):
    sysfs = tmp_path / "sys" / "class" / "power_supply" / "BAT0"
    sysfs.mkdir(parents=True)
    (sysfs / "type").write_text("Battery\n")
    (sysfs / "capacity").write_text("90\n")
    (sysfs / "status").write_text("Charging\n")
    fake_termux(tmp_path / "bin", {"percentage": 20, "plugged": "UNPLUGGED",
                                   "status": "DISCHARGING"}, {"data_state": "connected"})
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "route").write_text(
        "Iface\tDestination\tGateway\nwlan0\t00000000\t0101A8C0\n")
    cap = read_capacity(tmp_path, proc=proc, sysfs=tmp_path / "sys")
    assert (cap.battery, cap.on_ac, cap.low_power) == (20, False, True)
    assert cap.metered is False  # mobile data is up, but the default route is Wi-Fi
    (proc / "net" / "route").write_text("Iface\tDestination\tGateway\n")
    assert read_capacity(tmp_path, proc=proc, sysfs=tmp_path / "sys").metered is True
    fake_termux(tmp_path / "bin", {"percentage": 20, "plugged": "PLUGGED_USB"},
                {"data_state": "disconnected"})
    cap = read_capacity(tmp_path, proc=proc, sysfs=tmp_path / "sys", low_battery=30)
    assert (cap.on_ac, cap.low_power, cap.metered) == (True, False, False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    cap = read_capacity(tmp_path, proc=proc, sysfs=tmp_path / "sys")
    assert (cap.battery, cap.on_ac, cap.low_power) == (90, True, False)


def test_quota_caps_the_free_disk_announced(tmp_path):
    blobs = tmp_path / "state" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "data.mdb").write_bytes(b"x" * (1 << 20))
    assert quota_free(tmp_path, 0) > 4 << 20
    left = quota_free(tmp_path, 4 << 20)
    assert (3 << 20) - 8192 <= left <= 3 << 20
    assert quota_free(tmp_path, 1 << 19) == 0


# --- the wire ---------------------------------------------------------------------------------


@given(st.booleans(), st.integers(-1, 100), st.sampled_from([None, True, False]))
def test_low_power_survives_the_wire(low, battery, on_ac):
    cap = Capacity(battery=battery, on_ac=on_ac, low_power=low)
    assert decode_message(encode_message(cap), Capacity) == cap


def test_a_capacity_from_before_low_power_decodes_as_not_low():
    old = encode_message(Capacity(battery=50))
    # the previous version ended at ``machine``: drop the last field, say version 2
    import cbor2

    fields = cbor2.loads(old)
    fields[1] = 2
    decoded = decode_message(cbor2.dumps(fields[:-1]), Capacity)
    assert decoded.low_power is False and decoded.battery == 50


def test_going_low_is_announced_soon():
    assert static_change(Capacity(battery=31), Capacity(battery=29, low_power=True))
    assert not static_change(Capacity(battery=35), Capacity(battery=31))


# --- placement --------------------------------------------------------------------------------


def test_a_low_power_node_counts_as_draining_for_workloads_and_shards():
    phone, pc = b"\x01" * 32, b"\x02" * 32
    view = build_view({phone, pc}, {phone: OFFER, pc: OFFER},
                      {phone: {"on_ac": False, "battery": 20, "low_power": True}})
    assert [n.draining for n in view] == [True, False]
    members = [{"id": phone.hex(), "capacity": {"low_power": True, "disk_free": 1 << 40}},
               {"id": pc.hex(), "capacity": {"disk_free": 1 << 30}}]
    infos = {n.node_id: n for n in node_infos({phone, pc}, members)}
    assert infos[phone].draining and not infos[pc].draining


def test_the_planner_moves_replicas_off_a_node_that_goes_low():
    nodes = [bytes([i]) * 32 for i in range(1, 4)]
    item = PlanItem("app", 2, Constraints(runtime="process"), False, frozenset())
    before = place(build_view(nodes, dict.fromkeys(nodes, OFFER), {}), [item])["app"]
    low = before[0]
    after = place(build_view(nodes, dict.fromkeys(nodes, OFFER),
                            {low: {"on_ac": False, "battery": 10, "low_power": True}}),
                 [item])["app"]
    assert low not in after and len(after) == 2


def test_heavy_work_never_lands_on_battery_or_metered_nodes():
    phone = NodeInfo(b"\x01" * 32, on_battery=True)
    mobile = NodeInfo(b"\x02" * 32, metered=True)
    pc = NodeInfo(b"\x03" * 32)
    heavy = Constraints(heavy=True, avoid_battery=True, avoid_metered=True)
    for i in range(50):
        assert rank([phone, mobile, pc], b"db%d" % i, heavy) == [pc.node_id]
    assert rank([phone, mobile], b"x", heavy) == []
    # light work keeps them as a last resort
    light = Constraints(avoid_battery=True, avoid_metered=True)
    assert rank([phone, mobile, pc], b"x", light)[0] == pc.node_id
    assert len(rank([phone, mobile, pc], b"x", light)) == 3
    # asked: heavy work allowed on battery
    asked = Constraints(heavy=True, avoid_battery=False, avoid_metered=True)
    assert set(rank([phone, mobile, pc], b"x", asked)) == {phone.node_id, pc.node_id}


def test_heavy_spec_defaults_to_avoiding_metered_links_and_round_trips():
    spec = parse_spec({"name": "build", "command": ["make"],
                       "constraints": {"heavy": True}})
    rule = spec.placement_constraints()
    assert rule.heavy and rule.avoid_battery and rule.avoid_metered
    assert parse_spec(spec.to_dict()) == spec
    plain = parse_spec({"name": "web", "command": ["serve"]})
    assert "heavy" not in plain.to_dict()["constraints"]
    assert not plain.placement_constraints().heavy
    with pytest.raises(Exception, match="heavy"):
        parse_spec({"name": "x", "command": ["y"], "constraints": {"heavy": "yes"}})


def test_node_info_reads_on_battery_from_on_ac():
    info = node_info(b"\x01" * 32, OFFER, {"on_ac": False, "metered": True})
    assert info.on_battery and info.metered and not info.draining


# --- configuration ----------------------------------------------------------------------------


def test_phone_profile_has_a_storage_quota_by_default():
    assert NodeConfig(profile="phone").quota_bytes() == PHONE_QUOTA
    assert NodeConfig().quota_bytes() == 0
    assert NodeConfig(storage_quota="512m").quota_bytes() == 512 << 20
    assert parse_size("1.5GiB") == 3 << 29


@pytest.mark.parametrize("bad", [{"battery_threshold": 101}, {"battery_threshold": -1},
                                 {"storage_quota": "lots"}, {"storage_quota": "0"}])
def test_bad_phone_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        NodeConfig(**bad)
