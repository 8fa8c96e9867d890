"""The error tree shared by every meshcloud package.

Every error a user or a peer can cause is a :class:`MeshError`. The split follows h11:
``Local…`` means we misused an API (a bug on this side), ``Remote…`` means the peer sent
something wrong. Each error carries a short machine ``code`` so the CLI, the HTTP API and
the wire can report it without parsing the message; packages subclass these
(``GossipError``, ``S3Error``...) and never raise bare ``Exception``.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every meshcloud error. ``code`` is stable; the message is for people."""

    code = "mesh_error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class LocalProtocolError(MeshError):
    """We were asked to do something the protocol forbids (our bug, or API misuse)."""

    code = "local_protocol_error"


class RemoteProtocolError(MeshError):
    """The peer sent something the protocol forbids."""

    code = "remote_protocol_error"


class CodecError(RemoteProtocolError):
    """Bytes that do not decode to a valid message: malformed, oversize, unknown tag."""

    code = "codec_error"


class AuthError(MeshError):
    """A peer, certificate, invite or token failed authentication."""

    code = "auth_error"


class InviteError(AuthError):
    """An invite that is forged, expired, revoked, used up, or for another mesh."""

    code = "invite_refused"


class ConfigError(MeshError):
    """A configuration file or value that cannot be used; the message names the field."""

    code = "config_error"


class NotFoundError(MeshError):
    """A named thing (node, workload, bucket...) that does not exist."""

    code = "not_found"


class TransportError(MeshError):
    """A connection or stream failed (peer gone, refused, timed out)."""

    code = "transport_error"


class StreamReset(TransportError):
    """The peer aborted the stream (as opposed to closing it cleanly)."""

    code = "stream_reset"


class ConnectionLost(TransportError):
    """The connection under a stream died: peer crashed, frozen or unreachable."""

    code = "connection_lost"


class DataDirError(MeshError):
    """The data directory is missing, unreadable, or holds files with unsafe modes."""

    code = "data_dir_error"
