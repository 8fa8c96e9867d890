"""Errors of the replicated state package."""

from __future__ import annotations

from meshcloud.errors import LocalProtocolError, MeshError


class StateError(MeshError):
    """Cluster state cannot do what was asked (the message says why)."""

    code = "state_error"


class UnknownTableError(StateError, LocalProtocolError):
    """A table that was never opened on this node."""

    code = "unknown_table"


class ValueTooLargeError(StateError, LocalProtocolError):
    """A value whose encoding exceeds its table's ``max_value_bytes``."""

    code = "value_too_large"


class StoreFullError(StateError):
    """The state store cannot grow (disk full, or its map at ``max_map_size``).

    Raised by the write that did not fit; that write is rolled back and everything stored
    before it is intact. Free disk space (or raise ``max_map_size``) and retry."""

    code = "store_full"


class StoreError(StateError):
    """The state store failed for another reason (corrupt file, I/O error)."""

    code = "store_error"
