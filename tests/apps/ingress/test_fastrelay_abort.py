"""A forward the relay aborts never looks ended to the peer: no FIN record gets out
once it failed (the peer would take a cut forward for a clean end of the bytes)."""

from __future__ import annotations

import os
import socket
import threading

from apps.ingress.fastrelay import Pair
from apps.ingress.fastseal import Sealer, Unsealer

ROUNDS = 300
"""The race is narrow (a thread woken by one shutdown sending before the next): without
the order it guards, a few rounds in a few hundred let a FIN record out."""


class _Relay:
    def __init__(self) -> None:
        self.done = threading.Event()

    def finished(self, pair: Pair) -> None:
        self.done.set()


def test_an_aborted_forward_sends_no_fin_record():
    fins = 0
    for round_ in range(ROUNDS):
        plain, plain_peer = socket.socketpair()
        sealed, sealed_peer = socket.socketpair()
        key_out, key_in = os.urandom(32), os.urandom(32)
        relay = _Relay()
        pair = Pair(relay, round_, plain, sealed, Sealer(key_out), Unsealer(key_in), [])
        pair.start()
        pair.abort("test")
        assert relay.done.wait(10), "the pair's threads did not end"
        got = bytearray()
        while chunk := sealed_peer.recv(65536):
            got += chunk
        opener = Unsealer(key_out)
        if got:
            opener.feed(bytes(got))
        fins += opener.finished
        plain_peer.close()
        sealed_peer.close()
    assert fins == 0, f"{fins} of {ROUNDS} aborted forwards sent a FIN record"
