"""The V-Net round-trip breakdown of ``python -m bench vnet_rtt``: tcpdump lines of the
two hosts into the seven stages of each ping (captured lines, written out here)."""

from __future__ import annotations

import pytest

from bench.vnet_rtt import parse, round_trips, summary, underlay_us

A = """\
100.000000 mc-bench Out IP 10.77.0.1 > 10.77.0.2: ICMP echo request, id 7, seq 1, length 64
100.000200 eth0  Out IP 10.213.5.10.4000 > 10.213.5.11.5000: UDP, length 128
100.000250 eth0  Out IP 10.213.5.10.4000 > 10.213.5.11.5000: UDP, length 32
100.000700 eth0  In  IP 10.213.5.11.5000 > 10.213.5.10.4000: UDP, length 128
100.000800 mc-bench In  IP 10.77.0.2 > 10.77.0.1: ICMP echo reply, id 7, seq 1, length 64
100.050000 mc-bench Out IP 10.77.0.1 > 10.77.0.2: ICMP echo request, id 7, seq 2, length 64
100.050100 eth0  Out IP 10.213.5.10.4000 > 10.213.5.11.5000: UDP, length 128
"""
B = """\
100.000230 eth0  In  IP 10.213.5.10.4000 > 10.213.5.11.5000: UDP, length 128
100.000260 eth0  In  IP 10.213.5.10.4000 > 10.213.5.11.5000: UDP, length 148
100.000400 mc-bench In  IP 10.77.0.1 > 10.77.0.2: ICMP echo request, id 7, seq 1, length 64
100.000420 mc-bench Out IP 10.77.0.2 > 10.77.0.1: ICMP echo reply, id 7, seq 1, length 64
100.000600 eth0  Out IP 10.213.5.11.5000 > 10.213.5.10.4000: UDP, length 128
"""


def test_a_ping_splits_into_seven_stages_and_a_lost_one_is_left_out():
    a, b = parse(A.splitlines(), "mc-bench"), parse(B.splitlines(), "mc-bench")
    assert [e.kind for e in b] == ["udp", "request", "reply", "udp"]  # no handshake
    trips = round_trips(a, b)
    assert len(trips) == 1  # seq 2 never reached B
    expected = {"a_encrypt": 200, "wire_out": 30, "b_decrypt": 170, "b_kernel": 20,
                "b_encrypt": 180, "wire_back": 100, "a_decrypt": 100, "total": 800}
    assert {k: round(v * 1e6) for k, v in trips[0].items()} == expected
    figures = summary(trips)
    assert figures["a_encrypt_us"] == pytest.approx(200, abs=0.1)
    assert figures["total_us"] == figures["total_mean_us"] == pytest.approx(800, abs=0.1)


def test_no_whole_trip_gives_no_figures():
    assert summary(round_trips(parse(A.splitlines(), "mc-bench"), [])) == {}


def test_the_underlay_round_trip_is_request_to_reply_on_the_wire():
    lines = [
        "200.000000 eth0  Out IP 10.213.5.10 > 10.213.5.11: ICMP echo request, id 9, "
        "seq 1, length 64",
        "200.000060 eth0  In  IP 10.213.5.11 > 10.213.5.10: ICMP echo reply, id 9, "
        "seq 1, length 64",
        "200.050000 eth0  Out IP 10.213.5.10 > 10.213.5.11: ICMP echo request, id 9, "
        "seq 2, length 64",
        "200.050040 eth0  In  IP 10.213.5.11 > 10.213.5.10: ICMP echo reply, id 9, "
        "seq 2, length 64",
        "200.060000 mc-bench Out IP 10.77.0.1 > 10.77.0.2: ICMP echo request, id 7, "
        "seq 3, length 64",
    ]
    assert underlay_us(lines, "10.213.5.11") == pytest.approx(50.0)
