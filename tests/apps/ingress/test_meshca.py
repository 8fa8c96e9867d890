"""The mesh CA core: certificates it issues pass a real TLS handshake with the CA as the
only trust root, expired ones are not served, sealed keys open only with the right node
key, and domains and day counts are checked (property tests)."""

from __future__ import annotations

import datetime as dt
import string

import nacl.public
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.ingress import meshca
from apps.ingress.meshca import CertError
from apps.ingress.sitecerts import file_of_host
from apps.ingress.tls import CertStore, certificate_end, host_of_file
from tests.apps.ingress.test_tls import Clock, served

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
"""Real time: the client side of a handshake checks validity against the real clock."""


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return meshca.make_ca("home", NOW)


def install(directory, host: str, chain: bytes, key: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / file_of_host(host)).write_bytes(chain + key)


def test_an_issued_certificate_is_served_by_sni_and_verifies_against_the_ca(tmp_path, ca):
    ca_key, ca_cert = ca
    chain, key = meshca.issue(ca_key, ca_cert, "blog.home", 30, NOW)
    assert chain.endswith(ca_cert)  # the chain carries the CA for clients that need it
    assert meshca.not_after(chain) == (NOW + dt.timedelta(days=30)).timestamp()
    install(tmp_path, "blog.home", chain, key)
    store = CertStore(tmp_path, clock=Clock(), wall=lambda: NOW.timestamp())
    assert served(store, "blog.home", ca_cert) == "blog.home"
    # a name no certificate covers and no default: a clean handshake failure
    assert served(store, "other.home", ca_cert).startswith("error")
    # another CA's certificate does not verify against this CA
    _, other_cert = meshca.make_ca("elsewhere", NOW)
    assert served(store, "blog.home", other_cert).startswith("error")


def test_a_wildcard_and_the_default(tmp_path, ca):
    ca_key, ca_cert = ca
    # (clients accept a wildcard only over two labels or more: *.lab.home, not *.home)
    install(tmp_path, "*.lab.home", *meshca.issue(ca_key, ca_cert, "*.lab.home", 30, NOW))
    install(tmp_path, "default", *meshca.issue(ca_key, ca_cert, "default.home", 30, NOW))
    assert file_of_host("*.home") == "_.home.pem"
    assert host_of_file(tmp_path / "_.home.pem") == "*.home"
    store = CertStore(tmp_path, clock=Clock(), wall=lambda: NOW.timestamp())
    assert served(store, "shop.lab.home", ca_cert) == "*.lab.home"
    assert served(store, "x.example", ca_cert, check=False) == "default.home"


def test_an_expired_certificate_is_not_served(tmp_path, ca):
    ca_key, ca_cert = ca
    install(tmp_path, "old.home", *meshca.issue(ca_key, ca_cert, "old.home", 0, NOW))
    install(tmp_path, "soon.home", *meshca.issue(ca_key, ca_cert, "soon.home", 2, NOW))
    wall = [NOW.timestamp() + 1]
    store = CertStore(tmp_path, clock=Clock(), wall=lambda: wall[0])
    assert served(store, "old.home", ca_cert).startswith("error")
    assert "expired" in store.status()["errors"]["old.home"]  # type: ignore[index]
    assert served(store, "soon.home", ca_cert) == "soon.home"
    assert store.covers("soon.home")
    wall[0] = NOW.timestamp() + 3 * 86400  # expires while loaded: no reload needed
    assert served(store, "soon.home", ca_cert).startswith("error")
    assert not store.covers("soon.home")


def test_certificate_end_reads_the_first_certificate(ca):
    ca_key, ca_cert = ca
    chain, key = meshca.issue(ca_key, ca_cert, "a.home", 5, NOW)
    assert certificate_end(chain + key) == (NOW + dt.timedelta(days=5)).timestamp()
    with pytest.raises(ValueError):
        certificate_end(key)
    with pytest.raises(CertError):
        meshca.not_after(b"junk")


def test_a_sealed_key_opens_only_with_its_node_key():
    mine, other = nacl.public.PrivateKey.generate(), nacl.public.PrivateKey.generate()
    box = meshca.seal(meshca.curve_public(bytes(mine)), b"secret key pem")
    assert box.find(b"secret") < 0
    assert meshca.unseal(bytes(mine), box) == b"secret key pem"
    with pytest.raises(CertError):
        meshca.unseal(bytes(other), box)
    with pytest.raises(CertError):
        meshca.unseal(bytes(mine), box[:-1] + bytes([box[-1] ^ 1]))


def test_the_signed_bytes_bind_mesh_host_and_certificate():
    base = meshca.signed_bytes(b"m" * 32, "a.home", b"PEM")
    assert base != meshca.signed_bytes(b"n" * 32, "a.home", b"PEM")
    assert base != meshca.signed_bytes(b"m" * 32, "b.home", b"PEM")
    assert base != meshca.signed_bytes(b"m" * 32, "a.home", b"PEM2")


LABEL = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=20)


@given(st.lists(LABEL, min_size=1, max_size=5), st.booleans(), st.booleans())
def test_valid_domains_are_accepted_lower_cased(labels, wildcard, upper):
    name = ".".join(labels)
    if wildcard:
        name = "*." + name
    text = name.upper() if upper else name
    assert meshca.check_domain(text + ".") == name


@given(st.one_of(st.text(max_size=80), st.integers(), st.none(), st.binary(max_size=10)))
def test_any_input_is_a_domain_or_one_clear_error(value):
    try:
        name = meshca.check_domain(value)
    except CertError as exc:
        assert exc.code == "bad_request"
        return
    assert isinstance(name, str) and name == name.lower()
    assert all(c in string.ascii_lowercase + string.digits + "-.*" for c in name)


@given(st.one_of(st.integers(-10, 5000), st.booleans(), st.floats(), st.text(max_size=3)))
def test_days_are_a_whole_number_in_range(value):
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 3650
    if ok:
        assert meshca.check_days(value) == value
    else:
        with pytest.raises(CertError):
            meshca.check_days(value)
