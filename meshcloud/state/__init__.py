"""Replicated cluster state: CRDT tables, Merkle anti-entropy, tombstone GC.

Cores (no I/O): ``keys``, ``crdt``, ``schema``, ``kv`` (transaction interface and the
in-memory store), ``merkle``, ``table``, ``replication``, ``sync``, ``gc``,
``background``, ``core`` (``StateCore``), ``messages``, ``outputs``, ``config``,
``tables`` (the cluster's schemas); many cores on the simulator's event queue:
``sim.statemesh``. Driver side: ``store`` (LMDB) and ``driver`` (trio). See docs/architecture.md,
"Cluster state and placement". This ``__init__`` imports nothing.
"""
