"""The mesh CA: an ECDSA P-256 X.509 authority that signs site certificates (sans-IO).

The CA's key lives only on the admin node (``DATA_DIR/ingress/mesh-ca.key``, 0600); its
certificate is public (``meshcloud site ca``). A site certificate's key is a secret every
node needs (every node's ingress serves the site): it travels in the replicated
``site_certs`` table sealed (NaCl sealed box, X25519) to each node's key, one box per node,
and each row is signed by the mesh root key so a member cannot plant a certificate.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

import nacl.exceptions
import nacl.public

from meshcloud.errors import MeshError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (7 MiB resident) is imported by the functions that make or read
# certificates: a node that never does (a phone) does not load it

MAX_DAYS = 3650
DEFAULT_DAYS = 397
CA_DAYS = 3650
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class CertError(MeshError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="bad_request")


def check_domain(domain: object) -> str:
    """A host name (or ``*.parent``) a site certificate may name, lower-cased."""
    if not isinstance(domain, str) or not domain or len(domain) > 253:
        raise CertError("a domain is a host name such as blog.home")
    name = domain.lower().rstrip(".")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if not all(_LABEL.match(label) for label in labels):
        raise CertError(f"{domain!r} is not a valid host name")
    return name


def check_days(days: object) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise CertError(f"days must be a whole number from 1 to {MAX_DAYS}")
    return days


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(mesh_name: str, now: dt.datetime) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    """A new CA: (key PEM, certificate PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"meshcloud CA {mesh_name}"[:64])])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def issue(ca_key_pem: bytes, ca_cert_pem: bytes, domain: str, days: int,
          now: dt.datetime) -> tuple[bytes, bytes]:
    """A certificate for ``domain`` signed by the CA: (certificate chain PEM, key PEM).
    ``days`` may be 0 or negative only for tests of expiry (validity ends ``now + days``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertError("the mesh CA key is not an ECDSA key")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    start = now - dt.timedelta(minutes=5)
    if days <= 0:
        start = now + dt.timedelta(days=days - 1)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM) + ca_cert_pem, _key_pem(key)


def not_after(cert_pem: bytes) -> float:
    """The end of the first certificate's validity (Unix seconds)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertError(f"not a PEM certificate: {exc}") from None
    return cert.not_valid_after_utc.timestamp()


def seal(curve_public: bytes, secret: bytes) -> bytes:
    """``secret`` readable only by the holder of ``curve_public``'s private key."""
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(curve_public)).encrypt(secret))


def unseal(curve_private: bytes, box: bytes) -> bytes:
    try:
        return bytes(nacl.public.SealedBox(nacl.public.PrivateKey(curve_private)).decrypt(box))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise CertError("a sealed key does not open with this node's key") from None


def curve_public(curve_private: bytes) -> bytes:
    return bytes(nacl.public.PrivateKey(curve_private).public_key)


def signed_bytes(mesh_id: bytes, host: str, cert_pem: bytes) -> bytes:
    """What the root key signs for a ``site_certs`` row."""
    return b"meshcloud site cert\0" + mesh_id + b"\0" + host.encode() + b"\0" + cert_pem
