"""The DHT's errors: one root, and the peer's fault kept apart from "nothing found"."""

from __future__ import annotations

from meshcloud.errors import MeshError, NotFoundError, RemoteProtocolError


class DhtError(MeshError):
    """Root of the DHT's errors (for example: no seed answered a bootstrap)."""

    code = "dht_error"


class RecordError(DhtError, RemoteProtocolError):
    """A peer or provider record that is forged, expired, stale, oversize or unstorable.

    ``code`` says which: ``forged``, ``expired``, ``too_far``, ``too_large``, ``stale``,
    ``store_full``.
    """

    code = "record_refused"


class PeerNotFound(DhtError, NotFoundError):
    """A lookup ended without the node or a valid record of it."""

    code = "peer_not_found"
