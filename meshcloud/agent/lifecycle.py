"""Creating a mesh, joining one, and writing a node's settings: what `init` and `join` do."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from meshcloud.auth import MeshAuthenticator
from meshcloud.clock import SystemClock
from meshcloud.config import NodeConfig, load_config
from meshcloud.datadir import DataDir, MeshInfo
from meshcloud.errors import AuthError, DataDirError, InviteError, MeshError
from meshcloud.identity.certs import genesis_cert, make_join_proof
from meshcloud.identity.invites import InviteToken
from meshcloud.identity.keys import SigningKey
from meshcloud.join import JoinAccepted, request_certificate
from meshcloud.membership import MemoryMembershipRecords

if TYPE_CHECKING:
    from meshcloud.agent.net import TransportFactory

log = logging.getLogger(__name__)


def write_config(path: Path, settings: dict[str, object]) -> None:
    """Write the non-default settings given on the command line to ``config.toml``."""
    lines = []
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, list):
            items = ", ".join(f'"{v}"' for v in value)
            lines.append(f"{key} = [{items}]")
        elif isinstance(value, dict):
            items = ", ".join(f'{k} = "{v}"' for k, v in value.items())
            lines.append(f"{key} = {{ {items} }}")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f'{key} = "{value}"')
    if lines:
        path.write_text("\n".join(lines) + "\n")
        load_config(path)  # refuse now what `up` would refuse later


def init_mesh(datadir: DataDir, name: str, settings: dict[str, object]) -> MeshInfo:
    """A new mesh: root key, first node key, its certificate (issued by the root key)."""
    if datadir.exists():
        raise DataDirError(f"{datadir.path} already holds a node; use another --data-dir")
    clock = SystemClock()
    datadir.ensure()
    write_config(datadir.config_path, settings)
    node = datadir.create_node_key()
    root = SigningKey.generate()
    root.save(datadir.root_key_path)
    cert = genesis_cert(root, node, now=clock.wall_ms(), mesh_name=name)
    info = MeshInfo(mesh_id=root.id, mesh_name=name, root_public=root.public, cert=cert)
    datadir.save_mesh(info)
    return info


async def join_mesh(datadir: DataDir, token_text: str, settings: dict[str, object],
                    transport_factory: TransportFactory | None = None) -> JoinAccepted:
    """Trade an invite token for a certificate, through the invite's bootstrap nodes."""
    token = InviteToken.decode(token_text)
    body = token.invite.body
    clock = SystemClock()
    if datadir.exists():
        info = datadir.mesh() if datadir.mesh_path.exists() else None
        if info is not None and info.cert is not None:
            raise DataDirError(f"{datadir.path} is already a member of mesh "
                               f"{info.mesh_name or info.mesh_id.hex()[:12]}")
        key = datadir.node_key()
    else:
        datadir.ensure()
        write_config(datadir.config_path, settings)
        key = datadir.create_node_key()
    if clock.wall_ms() > body.expires_at:
        raise InviteError("invite has expired; ask an admin for a new one")
    if not body.bootstrap:
        raise InviteError("invite names no bootstrap address; create it with --bootstrap")
    proof = make_join_proof(token, key, now=clock.wall_ms())
    authenticator = MeshAuthenticator(body.root_public, MemoryMembershipRecords(),
                                      clock.wall_ms, None, proof)
    config = NodeConfig(listen=["127.0.0.1:0"], profile="lan")
    if transport_factory is None:
        from meshcloud.agent.net import tcp_transport

        transport_factory = tcp_transport
    transport = transport_factory(key, authenticator, config)
    failure: MeshError | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            accepted = await request_certificate(transport, list(body.bootstrap))
        except MeshError as exc:
            failure = exc  # raised below, outside the nursery, as itself
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    cert = accepted.cert
    try:
        cert.verify(body.root_public)
    except AuthError as exc:
        raise InviteError(f"the bootstrap node sent an invalid certificate: {exc}") from None
    if cert.node_public != key.public:
        raise InviteError("the bootstrap node sent a certificate for another key")
    contacts = []
    for peer in accepted.peers:
        contacts.extend(peer.addresses)
    info = MeshInfo(mesh_id=body.mesh_id, mesh_name=accepted.mesh_name or body.mesh_name,
                    root_public=body.root_public, cert=cert,
                    bootstrap=tuple(dict.fromkeys([*body.bootstrap, *contacts])))
    datadir.save_mesh(info)
    return accepted
