"""The HTTPS ingress's certificate store: SNI choice, wildcard and default, hot reload,
and a broken file that keeps the previous certificate (real certificates from openssl,
real TLS handshakes in memory)."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

from apps.ingress.tls import CertStore, host_of_file


def make_cert(path: Path, host: str) -> bytes:
    """A self-signed certificate for ``host`` with its key, in one PEM at ``path``;
    returns the certificate PEM (what a client trusts)."""
    key, crt = path.with_suffix(".key.tmp"), path.with_suffix(".crt.tmp")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "2", "-subj", f"/CN={host}", "-addext",
                    f"subjectAltName=DNS:{host}"], check=True, capture_output=True)
    cert = crt.read_bytes()
    tmp = path.with_suffix(".new")
    tmp.write_bytes(cert + key.read_bytes())
    os.replace(tmp, path)
    key.unlink()
    crt.unlink()
    return cert


def served(store: CertStore, server_name: str | None, trust: bytes, check: bool = True
           ) -> str:
    """Handshake in memory against the store's listener context: the CN the server sent
    (verified against ``trust``), or the error."""
    server_ctx = store.listener_context()
    client_ctx = ssl.create_default_context(cadata=trust.decode())
    client_ctx.check_hostname = check and server_name is not None
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, into in ((client, c_out, s_in), (server, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return f"error {exc.reason}"
            into.write(out.read())
    subject = dict(x[0] for x in client.getpeercert()["subject"])
    return subject["commonName"]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sni_picks_the_file_of_the_host_then_wildcard_then_default(tmp_path):
    shop = make_cert(tmp_path / "shop.home.pem", "shop.home")
    wild = make_cert(tmp_path / "_.blog.home.pem", "*.blog.home")
    default = make_cert(tmp_path / "default.pem", "fallback.home")
    store = CertStore(tmp_path)
    assert served(store, "shop.home", shop) == "shop.home"
    assert served(store, "SHOP.home", shop) == "shop.home"
    assert served(store, "a.blog.home", wild) == "*.blog.home"
    assert served(store, "other.home", default, check=False) == "fallback.home"
    assert served(store, None, default) == "fallback.home"
    assert host_of_file(Path("_.x.home.pem")) == "*.x.home"
    assert store.covers("shop.home") and store.covers("a.blog.home")
    assert not store.covers("other.home") and not store.covers("blog.home")
    assert store.status() == {"hosts": ["*.blog.home", "default", "shop.home"], "errors": {}}


def test_no_match_and_no_default_is_refused(tmp_path):
    shop = make_cert(tmp_path / "shop.home.pem", "shop.home")
    store = CertStore(tmp_path)
    assert served(store, "other.home", shop).startswith("error")


def test_a_changed_file_is_served_after_the_rescan_and_a_broken_one_keeps_the_old(tmp_path):
    clock = Clock()
    first = make_cert(tmp_path / "shop.home.pem", "shop.home")
    store = CertStore(tmp_path, clock=clock)
    assert served(store, "shop.home", first) == "shop.home"
    second = make_cert(tmp_path / "shop.home.pem", "shop.home")
    assert served(store, "shop.home", second).startswith("error")  # not rescanned yet
    clock.now += 1.5
    assert served(store, "shop.home", second) == "shop.home"
    (tmp_path / "shop.home.pem").write_text("not a certificate\n")
    clock.now += 1.5
    assert served(store, "shop.home", second) == "shop.home"
    assert "shop.home" in store.status()["errors"]
