"""Certificates of the HTTPS ingress: PEM files the user supplies, chosen by SNI, reloaded
when they change.

``DATA_DIR/ingress/certs/HOST.pem`` holds the certificate chain and the private key for
``HOST`` (``_.home.pem`` is ``*.home``; ``default.pem`` answers a client without SNI or
with a name no file matches). The directory is looked at again at most once a second, on
the next handshake: a changed, added or removed file takes effect without a restart; a
file that does not load keeps its previous certificate (if any) and its error is reported
in ``meshcloud status``. An expired certificate is not served (it is skipped at load
and dropped once its end passes). Certificates of the mesh CA are written here by
:mod:`apps.ingress.sitecerts`; an ACME client would write here too (the seam for it).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

RESCAN_EVERY = 1.0


def host_of_file(path: Path) -> str:
    name = path.stem.lower()
    return "*." + name[2:] if name.startswith("_.") else name


def certificate_end(pem: bytes) -> float:
    """The end of validity (Unix seconds) of the first certificate in ``pem``."""
    from cryptography import x509

    start = pem.find(b"-----BEGIN CERTIFICATE-----")
    if start < 0:
        raise ValueError("no certificate in the file")
    return x509.load_pem_x509_certificate(pem[start:]).not_valid_after_utc.timestamp()


def server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class CertStore:
    def __init__(self, directory: Path, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.clock = clock
        self.wall = wall
        self.not_after: dict[str, float] = {}
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.errors: dict[str, str] = {}
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._checked = float("-inf")

    def refresh(self, force: bool = False) -> None:
        """Reload the directory if a file changed (at most once per ``RESCAN_EVERY``)."""
        now = self.clock()
        if not force and now - self._checked < RESCAN_EVERY:
            return
        self._checked = now
        try:
            files = sorted(p for p in self.directory.glob("*.pem") if p.is_file())
            signature = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        except OSError as exc:
            self.errors["(directory)"] = str(exc)
            return
        if signature == self._signature:
            return
        self._signature = signature
        contexts: dict[str, ssl.SSLContext] = {}
        errors: dict[str, str] = {}
        ends: dict[str, float] = {}
        for path in files:
            host = host_of_file(path)
            ctx = server_context()
            try:
                ctx.load_cert_chain(path)
                ends[host] = certificate_end(path.read_bytes())
                if ends[host] <= self.wall():
                    raise ValueError("the certificate has expired")
            except (OSError, ssl.SSLError, ValueError) as exc:
                errors[host] = f"{path.name}: {exc}"
                if host in self.contexts:
                    contexts[host] = self.contexts[host]
                log.warning("certificate %s not loaded: %s", path, exc)
                continue
            contexts[host] = ctx
        self.contexts, self.errors, self.not_after = contexts, errors, ends

    def _live(self, host: str) -> ssl.SSLContext | None:
        ctx = self.contexts.get(host)
        if ctx is not None and self.not_after.get(host, float("inf")) <= self.wall():
            return None
        return ctx

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        self.refresh()
        if server_name:
            name = server_name.lower().rstrip(".")
            exact = self._live(name)
            if exact is not None:
                return exact
            _, dot, parent = name.partition(".")
            wild = self._live(f"*.{parent}") if dot else None
            if wild is not None:
                return wild
        return self._live("default")

    def covers(self, host: str) -> bool:
        """A certificate of this very name (or a wildcard over it) is installed (the
        default one does not count: it would not match the name)."""
        self.refresh()
        _, dot, parent = host.partition(".")
        return self._live(host) is not None or bool(dot and self._live(f"*.{parent}"))

    def listener_context(self) -> ssl.SSLContext:
        """The context a listener starts handshakes with: SNI picks the certificate."""
        ctx = server_context()

        def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
                 ) -> int | None:
            chosen = self.context_for(server_name)
            if chosen is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sock.context = chosen
            return None

        ctx.sni_callback = pick  # type: ignore[assignment]
        return ctx

    def status(self) -> dict[str, object]:
        return {"hosts": sorted(self.contexts), "errors": dict(self.errors)}
