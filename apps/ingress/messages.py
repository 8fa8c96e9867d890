"""Wire messages and stored rows of the ingress (tags ``APPS + 50`` … ``APPS + 59``)."""

from __future__ import annotations

from dataclasses import dataclass

from meshcloud.codec.messages import message
from meshcloud.codec.tags import TagBlock

FORWARD_PROTOCOL = "/meshcloud/forward/1"
"""One stream = one TCP connection: ``ForwardOpen`` → ``ForwardReply``, then raw bytes
both ways (each stream message a chunk); a half-close of the stream is a TCP FIN."""


@message(TagBlock.APPS + 50)
@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointRecord:
    """A live replica of an endpoint, written only by the node that runs it.

    Key in ``endpoints``: (workload, endpoint, replica index)."""

    node: bytes
    port: int
    """The replica's host port on ``node`` (127.0.0.1), chosen by that node."""
    healthy: bool
    """The last TCP connect check passed; only healthy replicas are routable."""
    updated_ms: int = 0


@message(TagBlock.APPS + 51)
@dataclass(frozen=True, slots=True, kw_only=True)
class Exposure:
    """Every node listens on ``bind:port`` and forwards to ``workload:endpoint``.

    Key in ``exposures``: the port."""

    workload: str
    endpoint: str
    bind: str = "127.0.0.1"


@message(TagBlock.APPS + 52)
@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardOpen:
    """Connect me to replica ``index`` of ``workload:endpoint`` that you run. The port is
    the target's own record: a peer cannot make a node connect anywhere else."""

    workload: str
    endpoint: str
    index: int


@message(TagBlock.APPS + 53)
@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardReply:
    ok: bool
    code: str = ""
    message: str = ""


@message(TagBlock.APPS + 54)
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSealKey:
    """A node's X25519 public key (from its node key), to which site keys are sealed.

    Key in ``ingress_keys``: the node id."""

    curve_public: bytes


@message(TagBlock.APPS + 55)
@dataclass(frozen=True, slots=True, kw_only=True)
class SiteCert:
    """A site certificate issued by the mesh CA, written by the admin node.

    Key in ``site_certs``: the host. ``sealed`` holds (node id, sealed key PEM) pairs;
    ``signature`` is the root key's over :func:`apps.ingress.meshca.signed_bytes`."""

    cert_pem: bytes
    not_after: float
    sealed: tuple[tuple[bytes, bytes], ...]
    signature: bytes
    ca_pem: bytes = b""
