"""The Python data plane: TUN + UDP + ChaCha20-Poly1305, for hosts without WireGuard.

The sans-IO part (:mod:`.crypto`, :mod:`.replay`, :mod:`.messages`, :mod:`.handshake`,
:mod:`.session`, :mod:`.core`) holds every rule: the handshake, keys, counters, replay
window, rekeying and routing by allowed IPs. :mod:`.driver` is the thin trio driver that
feeds it a TUN device and a UDP socket (:class:`.driver.PyPlane`).
"""
