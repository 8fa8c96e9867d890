"""Issue 15, the mesh CA with real agents: ``meshcloud site cert`` on the admin node, a
real TLS client (the ssl module, the mesh CA its only trust root) through another node's
HTTPS ingress, a node that joins later receives the certificate, a wrong SNI gets a clean
handshake failure and an expired certificate is not served.

Agents on their own loopback addresses (127.0.0.61 …), HTTPS ingress on ``mesh:PORT``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import socket
import ssl
import stat
from pathlib import Path

import pytest

from apps.ingress import meshca
from apps.ingress.ports import ephemeral_port
from sim.agents import Agent, AgentError, LocalCluster, wait_until

ADDRESSES = [f"127.0.0.{61 + i}" for i in range(3)]
HTTP_PORT = ephemeral_port()
HTTPS_PORT = ephemeral_port()
INDEX = b"<!doctype html><h1>secure blog</h1>\n"

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("site-certs")
    cluster = LocalCluster(root, extra_args=["--profile", "local"],
                           env={"MESHCLOUD_RUNTIMES": "process",
                                "MESHCLOUD_HTTP": f"mesh:{HTTP_PORT}",
                                "MESHCLOUD_HTTPS": f"mesh:{HTTPS_PORT}"})
    try:
        cluster.init_first(listen=f"{ADDRESSES[0]}:0")
        cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[1]}:0")
        wait_until(lambda: all(sum(m["state"] == "alive" for m in a.get("/v1/members")) >= 2
                               for a in cluster.agents),
                   60, interval=0.2, message="two members alive everywhere")
        site = root / "blog"
        site.mkdir()
        (site / "index.html").write_bytes(INDEX)
        cluster.agents[0].cli("site", "deploy", str(site), "--name", "blog",
                              "--domain", "blog.home")
        yield cluster
    finally:
        cluster.close()


def host_of(agent: Agent) -> str:
    return agent.address.rsplit(":", 1)[0]


def https_get(agent: Agent, server_name: str, trust: bytes, path: str = "/"
              ) -> tuple[int, bytes, dict]:
    context = ssl.create_default_context(cadata=trust.decode())
    with socket.create_connection((host_of(agent), HTTPS_PORT), timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        peer = tls.getpeercert()
        conn = http.client.HTTPConnection(server_name)
        conn.sock = tls
        conn.request("GET", path, headers={"Host": server_name})
        response = conn.getresponse()
        return response.status, response.read(), peer


def test_a_site_certificate_reaches_every_node_and_a_real_client_trusts_it(cluster):
    admin, other = cluster.agents[0], cluster.agents[1]
    # only the admin node holds the CA
    with pytest.raises(AgentError, match="admin"):
        other.cli("site", "cert", "blog.home")
    bad = admin.cli("site", "cert", "bad_name!.home", check=False)
    assert bad.returncode != 0 and "not a valid host name" in bad.stderr + bad.stdout
    out = admin.cli("site", "cert", "blog.home", "--days", "30").stdout
    assert "blog.home" in out
    ca_pem = admin.cli("site", "ca").stdout.encode()
    assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    ca_key = admin.data_dir / "ingress" / "mesh-ca.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert not (other.data_dir / "ingress" / "mesh-ca.key").exists()

    def served() -> bool:
        return https_get(other, "blog.home", ca_pem)[0] == 200

    wait_until(served, 30, interval=0.2, message="blog.home over HTTPS through node 2")
    status, body, peer = https_get(other, "blog.home", ca_pem)
    assert status == 200 and body == INDEX
    assert dict(x[0] for x in peer["subject"])["commonName"] == "blog.home"
    installed = other.data_dir / "ingress" / "certs" / "blog.home.pem"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o600
    # any node prints the same CA (carried by the replicated row)
    assert other.cli("site", "ca").stdout.encode() == ca_pem
    listed = other.get("/v1/ingress/certs")["certificates"]
    assert [(c["host"], c["installed"]) for c in listed] == [("blog.home", True)]

    # a name no certificate covers: a clean handshake failure, and the node serves on
    with pytest.raises(ssl.SSLError):
        https_get(other, "nothing.home", ca_pem)
    assert https_get(other, "blog.home", ca_pem)[0] == 200


def test_a_node_that_joins_later_gets_the_certificate(cluster):
    ca_pem = cluster.agents[0].cli("site", "ca").stdout.encode()
    late = cluster.join(through=cluster.agents[0], listen=f"{ADDRESSES[2]}:0")
    wait_until(lambda: https_get(late, "blog.home", ca_pem)[0] == 200, 60, interval=0.3,
               message="blog.home over HTTPS through the node that joined later")
    assert https_get(late, "blog.home", ca_pem)[1] == INDEX


def test_an_expired_certificate_is_not_served(cluster):
    admin, other = cluster.agents[0], cluster.agents[1]
    ca_pem = admin.cli("site", "ca").stdout.encode()
    ca_key = (admin.data_dir / "ingress" / "mesh-ca.key").read_bytes()
    now = dt.datetime.now(dt.UTC)
    certs: Path = other.data_dir / "ingress" / "certs"
    chain, key = meshca.issue(ca_key, ca_pem, "old.home", 0, now)
    (certs / "old.home.pem").write_bytes(chain + key)
    fresh, fresh_key = meshca.issue(ca_key, ca_pem, "new.home", 3, now)
    (certs / "new.home.pem").write_bytes(fresh + fresh_key)

    def handshake(name: str) -> str:
        """Without verification: the server's choice, not the client's, decides."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((host_of(other), HTTPS_PORT), timeout=20) as raw, \
                    context.wrap_socket(raw, server_hostname=name):
                return "served"
        except ssl.SSLError as exc:
            return f"refused {exc.reason}"

    # the fresh file is picked up, so the expired one written with it was looked at too
    wait_until(lambda: handshake("new.home") == "served", 20, interval=0.2,
               message="the fresh certificate served")
    assert handshake("old.home").startswith("refused")  # an alert or a closed socket
    assert https_get(other, "new.home", ca_pem)[0] in (404, 200)
    errors = other.get("/v1/ingress")["status"]["certificates"]["errors"]
    assert "expired" in errors["old.home"]
