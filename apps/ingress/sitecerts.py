"""Site certificates of the mesh CA on a node (the driver around :mod:`apps.ingress.meshca`).

* every node publishes its X25519 key in ``ingress_keys`` and installs the rows of
  ``site_certs`` signed by the root key, sealed to it and not expired, as
  ``DATA_DIR/ingress/certs/HOST.pem`` (0600), where :class:`~apps.ingress.tls.CertStore`
  picks them up; a host whose row went away or expired is removed again;
* the admin node (the one holding the root key) keeps the CA (``ingress/mesh-ca.key``,
  0600, made on first use), issues certificates and seals each key to nodes that joined
  after it was issued.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING

from apps.ingress import meshca
from apps.ingress.messages import NodeSealKey, SiteCert
from apps.ingress.tables import INGRESS_KEYS, SITE_CERTS, seal_keys, site_certs
from meshcloud.errors import MeshError
from meshcloud.identity.keys import read_secret, verify, write_secret

if TYPE_CHECKING:
    from meshcloud.kit.service import NodeContext

log = logging.getLogger(__name__)


def file_of_host(host: str) -> str:
    return host.replace("*", "_") + ".pem"


class SiteCerts:
    def __init__(self, node: NodeContext) -> None:
        self.node = node
        node.state.open_table(INGRESS_KEYS)
        node.state.open_table(SITE_CERTS)
        base = node.datadir.path / "ingress"
        self.certs_dir = base / "certs"
        self.ca_key_path = base / "mesh-ca.key"
        self.ca_cert_path = base / "mesh-ca.pem"
        self.installed_path = base / "mesh-certs.json"
        self.curve_private = node.datadir.node_key().to_curve25519_private()
        self.curve_public = meshca.curve_public(self.curve_private)
        self.errors: dict[str, str] = {}
        self._opened: dict[str, tuple[bytes, bytes]] = {}
        """host -> (row signature, installed PEM): a row seen before is not opened again."""

    def now(self) -> float:
        return self.node.clock.wall_ms() / 1000

    # --- every node -------------------------------------------------------------------------

    def publish_key(self) -> None:
        me = self.node.node_id
        if seal_keys(self.node.state).get(me) != self.curve_public:
            self.node.state.put(INGRESS_KEYS.name, (me,),
                                NodeSealKey(curve_public=self.curve_public))

    def valid(self, host: str, row: SiteCert) -> bool:
        mesh = self.node.mesh
        return verify(mesh.root_public, meshca.signed_bytes(mesh.mesh_id, host, row.cert_pem),
                      row.signature)

    def installed(self) -> set[str]:
        try:
            return set(json.loads(self.installed_path.read_text()))
        except (OSError, ValueError, TypeError):
            return set()

    def sync(self) -> None:
        """Install this node's certificates; reseal keys for new nodes on the admin."""
        self.publish_key()
        rows = site_certs(self.node.state)
        now = self.now()
        me = self.node.node_id
        wanted: dict[str, bytes] = {}
        errors: dict[str, str] = {}
        for host, row in rows.items():
            if row.not_after <= now:
                errors[host] = "expired"
                continue
            seen = self._opened.get(host)
            if seen is not None and seen[0] == row.signature:
                wanted[host] = seen[1]
                continue
            if not self.valid(host, row):
                errors[host] = "row not signed by the mesh root key"
                continue
            box = dict(row.sealed).get(me)
            if box is None:
                errors[host] = "key not yet sealed to this node"
                continue
            try:
                wanted[host] = row.cert_pem + meshca.unseal(self.curve_private, box)
            except MeshError as exc:
                errors[host] = exc.message
                continue
            self._opened[host] = (row.signature, wanted[host])
        self._opened = {h: v for h, v in self._opened.items() if h in wanted}
        self.errors = errors
        before = self.installed()
        for host, pem in wanted.items():
            path = self.certs_dir / file_of_host(host)
            try:
                current = path.read_bytes()
            except OSError:
                current = b""
            if current != pem:
                write_secret(path, pem)
        for host in before - set(wanted):
            (self.certs_dir / file_of_host(host)).unlink(missing_ok=True)
        if set(wanted) != before:
            write_secret(self.installed_path, json.dumps(sorted(wanted)).encode())
        if self.node.root_key is not None:
            self.reseal(rows, now)

    # --- admin node -------------------------------------------------------------------------

    def sealable_keys(self) -> dict[bytes, bytes]:
        """The published node keys, less those of revoked nodes."""
        revoked = {subject for kind, subject, _ in self.node.records.revocations()
                   if kind == "node"}
        return {n: k for n, k in seal_keys(self.node.state).items() if n not in revoked}

    def ca(self) -> tuple[bytes, bytes]:
        """The CA (key PEM, certificate PEM), made on first use; only on the admin node."""
        if self.node.root_key is None:
            raise MeshError("only the admin node (the one that ran `init`) holds the mesh "
                            "CA; run this there", code="not_admin")
        if not self.ca_key_path.exists():
            key, cert = meshca.make_ca(self.node.mesh.mesh_name,
                                       dt.datetime.fromtimestamp(self.now(), dt.UTC))
            write_secret(self.ca_key_path, key)
            self.ca_cert_path.write_bytes(cert)
        return read_secret(self.ca_key_path), self.ca_cert_path.read_bytes()

    def ca_pem(self) -> bytes:
        """The CA certificate: the admin's file, else the one carried by any row."""
        if self.node.root_key is not None:
            return self.ca()[1]
        for row in site_certs(self.node.state).values():
            if row.ca_pem:
                return row.ca_pem
        raise MeshError("the mesh CA has not issued anything yet; run `meshcloud site ca` "
                        "on the admin node", code="not_found")

    def issue(self, domain: object, days: object) -> dict[str, object]:
        host = meshca.check_domain(domain)
        count = meshca.check_days(days) if days is not None else meshca.DEFAULT_DAYS
        return self.issue_checked(host, count)

    def issue_checked(self, host: str, days: int) -> dict[str, object]:
        """Issue (``days`` ≤ 0 only from tests: an already expired certificate)."""
        ca_key, ca_cert = self.ca()
        root = self.node.root_key
        assert root is not None
        now = dt.datetime.fromtimestamp(self.now(), dt.UTC)
        cert_pem, key_pem = meshca.issue(ca_key, ca_cert, host, days, now)
        keys = self.sealable_keys()
        keys[self.node.node_id] = self.curve_public
        sealed = tuple(sorted((n, meshca.seal(pub, key_pem)) for n, pub in keys.items()))
        mesh = self.node.mesh
        row = SiteCert(cert_pem=cert_pem, not_after=meshca.not_after(cert_pem),
                       sealed=sealed, ca_pem=ca_cert,
                       signature=root.sign(meshca.signed_bytes(mesh.mesh_id, host, cert_pem)))
        self.node.state.put(SITE_CERTS.name, (host,), row)
        return {"host": host, "not_after": row.not_after, "nodes": len(sealed),
                "serial": format(_serial(cert_pem), "x")}

    def reseal(self, rows: dict[str, SiteCert], now: float) -> None:
        keys = self.sealable_keys()
        me = self.node.node_id
        for host, row in rows.items():
            boxes = dict(row.sealed)
            missing = {n: pub for n, pub in keys.items() if n not in boxes}
            if not missing or row.not_after <= now or me not in boxes \
                    or not self.valid(host, row):
                continue
            try:
                key_pem = meshca.unseal(self.curve_private, boxes[me])
            except MeshError:
                continue
            boxes.update({n: meshca.seal(pub, key_pem) for n, pub in missing.items()})
            self.node.state.put(SITE_CERTS.name, (host,), SiteCert(
                cert_pem=row.cert_pem, not_after=row.not_after, sealed=tuple(sorted(
                    boxes.items())), signature=row.signature, ca_pem=row.ca_pem))

    def overview(self) -> list[dict[str, object]]:
        return [{"host": h, "not_after": r.not_after, "nodes": len(r.sealed),
                 "installed": h in self.installed(), "error": self.errors.get(h, "")}
                for h, r in sorted(site_certs(self.node.state).items())]


def _serial(cert_pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_pem).serial_number


__all__ = ["SiteCerts", "file_of_host"]
