"""The node's data directory: every file a node keeps, and who may read it.

Layout (default ``~/.meshcloud``; the directory itself is 0700)::

    node.key          Ed25519 seed of this node (0600)
    mesh-root.key     the mesh admin key; only on the machine that ran `init` (0600)
    mesh.cbor         mesh id, name, root public key, this node's certificate
    api.token         bearer token of the local HTTP API (0600)
    config.toml       optional settings (see meshcloud.config)
    membership.json   invite redemptions and revocations seen by this node
    state/            LMDB environments of the cluster state and the blobstore
    logs/agent.log    structured log lines (JSON)
    run/agent.json    written by a running agent: pid, API URL, listen addresses

Secrets are written atomically with mode 0600 and refused on load if others can read them.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from meshcloud.codec.messages import decode_message, encode_message, message
from meshcloud.codec.tags import TagBlock
from meshcloud.errors import CodecError, DataDirError
from meshcloud.identity.certs import MemberProof, MeshCert
from meshcloud.identity.keys import SigningKey, key_id, read_secret, write_secret

DEFAULT_DATA_DIR = Path("~/.meshcloud").expanduser()


@message(TagBlock.CORE + 10)
@dataclass(frozen=True, slots=True, kw_only=True)
class MeshInfo:
    """What a node knows of its mesh; written by `init` and `join`."""

    mesh_id: bytes
    mesh_name: str
    root_public: bytes
    cert: MeshCert | None = None
    pending_join: MemberProof | None = None
    bootstrap: tuple[str, ...] = ()


class DataDir:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path).expanduser() if path else DEFAULT_DATA_DIR

    # --- paths ----------------------------------------------------------------------------

    @property
    def node_key_path(self) -> Path:
        return self.path / "node.key"

    @property
    def root_key_path(self) -> Path:
        return self.path / "mesh-root.key"

    @property
    def mesh_path(self) -> Path:
        return self.path / "mesh.cbor"

    @property
    def token_path(self) -> Path:
        return self.path / "api.token"

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def membership_path(self) -> Path:
        return self.path / "membership.json"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def log_path(self) -> Path:
        return self.path / "logs" / "agent.log"

    @property
    def runtime_info_path(self) -> Path:
        return self.path / "run" / "agent.json"

    # --- life cycle -----------------------------------------------------------------------

    def exists(self) -> bool:
        return self.node_key_path.exists()

    def ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        for sub in ("state", "logs", "run"):
            (self.path / sub).mkdir(mode=0o700, exist_ok=True)

    def create_node_key(self) -> SigningKey:
        if self.node_key_path.exists():
            raise DataDirError(f"{self.path} already holds a node key; use another --data-dir")
        self.ensure()
        key = SigningKey.generate()
        key.save(self.node_key_path)
        self.new_api_token()
        return key

    def new_api_token(self) -> str:
        token = secrets.token_urlsafe(32)
        write_secret(self.token_path, token.encode() + b"\n")
        return token

    # --- reading --------------------------------------------------------------------------

    def require(self) -> None:
        if not self.exists():
            raise DataDirError(
                f"no meshcloud node in {self.path}: run `meshcloud init` (new mesh) or "
                f"`meshcloud join TOKEN` first"
            )

    def node_key(self) -> SigningKey:
        self.require()
        return SigningKey.load(self.node_key_path)

    def root_key(self) -> SigningKey | None:
        if not self.root_key_path.exists():
            return None
        return SigningKey.load(self.root_key_path)

    def api_token(self) -> str:
        self.require()
        return read_secret(self.token_path).decode().strip()

    def mesh(self) -> MeshInfo:
        self.require()
        try:
            info = decode_message(self.mesh_path.read_bytes(), MeshInfo)
        except FileNotFoundError:
            raise DataDirError(
                f"{self.path} has a node key but no mesh; run `meshcloud join`"
            ) from None
        except CodecError as exc:
            if "MeshCert version 1" in str(exc) or "InviteBody version 1" in str(exc):
                raise DataDirError(
                    f"{self.path} belongs to a mesh made by meshcloud 0.1, whose membership "
                    "certificates could be forged from any old invite token: create the mesh "
                    "again (`meshcloud init` in a new --data-dir on the admin machine, then "
                    "`meshcloud join` on the others; see docs/security.md)") from None
            raise DataDirError(f"{self.mesh_path} is damaged: {exc}") from None
        if key_id(info.root_public) != info.mesh_id:
            raise DataDirError(f"{self.mesh_path} is damaged: mesh id does not match its key")
        return info

    def save_mesh(self, info: MeshInfo) -> None:
        write_secret(self.mesh_path, encode_message(info))

    # --- the running agent ----------------------------------------------------------------

    def write_runtime_info(self, info: dict) -> None:
        self.runtime_info_path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = self.runtime_info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, self.runtime_info_path)

    def runtime_info(self) -> dict | None:
        try:
            return json.loads(self.runtime_info_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def clear_runtime_info(self) -> None:
        try:
            self.runtime_info_path.unlink()
        except FileNotFoundError:
            pass
