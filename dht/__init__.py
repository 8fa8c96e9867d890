"""Kademlia discovery for meshcloud: routing table, iterative lookups, signed records.

The protocol lives in sans-IO modules (:mod:`dht.core` and what it uses); :mod:`dht.driver`
runs it over the transport with trio; :mod:`sim.dhtmesh` drives thousands of cores in
one process for benchmarks and the simulator. See ``docs/architecture.md`` ("Discovery").
"""
