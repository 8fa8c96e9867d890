"""The ``offers`` table: what each node can run, published by the node itself.

There is no registry, so "is this image anywhere?" is answered from here: every node
writes one :class:`~apps.workloads.messages.NodeOffer` (runtimes available, images in its
store, arch, CPUs, RAM, labels) when its workload service starts and whenever that
changes. Full copy on every node, one row per node (key: node id), last writer wins —
and the only writer of a row is its node, so rows never conflict.

Also the one list of nodes every node agrees on once the state converges, which is what
singleton leases need to pick the same granters everywhere (:mod:`apps.workloads.leasing`).
"""

from __future__ import annotations

from typing import Any

from apps.workloads.messages import NodeOffer
from meshcloud.state.errors import UnknownTableError
from meshcloud.state.schema import TableSchema, record_codec

_enc, _dec = record_codec(NodeOffer)
OFFERS: TableSchema[NodeOffer] = TableSchema(
    "offers", partition=(bytes,), encode=_enc, decode=_dec, max_value_bytes=64 * 1024)


def own_offers(state: Any) -> dict[bytes, NodeOffer]:
    """Every node's offer, by node id, as the node published it."""
    return {key[0]: value for key, value in state.scan(OFFERS.name)
            if isinstance(key[0], bytes) and value is not None}


def all_offers(state: Any) -> dict[bytes, NodeOffer]:
    """Every node's offer, by node id, with the images pushed to the mesh counted on every
    podman node (they load on demand: :mod:`apps.workloads.catalogue`)."""
    from apps.workloads.catalogue import mesh_images, with_catalogue

    offers = own_offers(state)
    try:
        refs = set(mesh_images(state))
    except UnknownTableError:  # the images table is not open (a test's bare state)
        return offers
    return with_catalogue(offers, refs) if refs else offers

