"""pgBackRest driver: the node's local TLS front to its S3 API, the repository
configuration files and the pgbackrest commands (run as the database's own uid).

pgBackRest speaks S3 only over HTTPS, and the node's S3 API is plain HTTP on 127.0.0.1.
Each node therefore runs a small TLS front on an ephemeral 127.0.0.1 port, with a
certificate for ``localhost`` signed by a CA of its own (made once, kept in
``<db root>/.tls``, 0600); pgBackRest verifies it against that CA
(``repo1-storage-verify-tls=y``, ``repo1-storage-ca-file``): no verification is turned
off and the bytes never leave the machine in clear."""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import trio

from apps.db import pg
from apps.db.backup import S3_HOST

log = logging.getLogger(__name__)

PGBACKREST = "/usr/bin/pgbackrest"


def ensure_tls(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server chain, server key) of this node's front, made once."""
    from apps.ingress.meshca import make_ca

    directory.mkdir(mode=0o711, exist_ok=True)
    ca, chain, key = (directory / "front-ca.pem", directory / "front.pem",
                      directory / "front.key")
    if not (ca.exists() and chain.exists() and key.exists()):
        now = dt.datetime.now(dt.UTC)
        ca_key, ca_cert = make_ca("db backups", now)
        cert, cert_key = _issue(ca_key, ca_cert, now)
        for path, data, mode in ((key, cert_key, 0o600), (chain, cert, 0o644),
                                 (ca, ca_cert, 0o644)):
            tmp = path.with_name(path.name + ".new")
            tmp.write_bytes(data)
            os.chmod(tmp, mode)
            tmp.replace(path)
    return ca, chain, key


def _issue(ca_key_pem: bytes, ca_cert_pem: bytes, now: dt.datetime) -> tuple[bytes, bytes]:
    """The front's certificate: ``localhost`` and 127.0.0.1 (pgBackRest checks the name
    it connects to, ``repo1-storage-host``, against the DNS names only)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, S3_HOST)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(S3_HOST), x509.DNSName("127.0.0.1"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM) + ca_cert_pem, key_pem


async def serve_tls_front(s3_url: str, chain: Path, key: Path, *,
                          task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Accept TLS on 127.0.0.1 (port given to ``task_status``) and carry each connection
    to the plain-HTTP S3 API at ``s3_url``."""
    target = urlsplit(s3_url)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(chain), str(key))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]

    async def handle(client: trio.SocketStream) -> None:
        tls = trio.SSLStream(client, ctx, server_side=True)
        try:
            with trio.fail_after(20):
                await tls.do_handshake()
            upstream = await trio.open_tcp_stream(host, port)
        except (trio.BrokenResourceError, trio.TooSlowError, OSError):
            await trio.aclose_forcefully(tls)
            return
        async with upstream:
            await _pipe(tls, upstream)
        await trio.aclose_forcefully(tls)

    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)


async def _pipe(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    async def one_way(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_way, a, b)
        nursery.start_soon(one_way, b, a)


def write_private(path: Path, text: str, uid: int | None) -> None:
    """Write ``text`` 0600, owned by ``uid`` when given (the repository key is in it)."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if uid is not None:
        os.chown(tmp, uid, uid)
    tmp.replace(path)


def conf_paths(inst: pg.Instance) -> tuple[Path, Path, Path, Path]:
    """(config file, log dir, lock dir, spool dir) of one database copy."""
    base = inst.root / "pgbackrest"
    return base / "pgbackrest.conf", base / "log", base / "lock", base / "spool"


def prepare(inst: pg.Instance) -> None:
    conf, *dirs = conf_paths(inst)
    for d in (conf.parent, *dirs):
        d.mkdir(mode=0o700, exist_ok=True)
        if inst.uid is not None:
            os.chown(d, inst.uid, inst.uid)


async def run(inst: pg.Instance, stanza_name: str, command: str, *,
              extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
              timeout: float = 3600.0) -> str:
    """``pgbackrest --stanza=S [EXTRA] COMMAND`` as the database's uid, with its config."""
    conf = conf_paths(inst)[0]
    args = [PGBACKREST, f"--config={conf}", f"--stanza={stanza_name}"]
    if command not in ("info", "expire"):
        args.append(f"--pg1-path={inst.data}")
    if command not in ("info", "expire", "restore"):
        args.append(f"--pg1-socket-path={inst.sock}")
    args += [*extra, command]
    return await pg._run(inst, args, env=env, timeout=timeout)
