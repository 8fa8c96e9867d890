"""The round trips the V-Net benches read from ``ping`` (median and mean)."""

import statistics

from bench._ping import ping_times

OUTPUT = """PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.
64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=0.412 ms
64 bytes from 10.77.0.2: icmp_seq=2 ttl=64 time=0.398 ms
64 bytes from 10.77.0.2: icmp_seq=4 ttl=64 time=12.9 ms
64 bytes from 10.77.0.2: icmp_seq=5 ttl=64 time=1.05 ms

--- 10.77.0.2 ping statistics ---
5 packets transmitted, 4 received, 20% packet loss, time 201ms
rtt min/avg/max/mdev = 0.398/3.690/12.900/5.322 ms
"""


def test_every_reply_is_read_and_the_summary_line_is_not() -> None:
    assert ping_times(OUTPUT) == [0.412, 0.398, 12.9, 1.05]


def test_one_late_reply_moves_the_mean_not_the_median() -> None:
    times = ping_times(OUTPUT)
    assert statistics.median(times) == (0.412 + 1.05) / 2
    assert statistics.fmean(times) > 3


def test_no_reply_gives_no_times() -> None:
    assert ping_times("5 packets transmitted, 0 received, 100% packet loss") == []
