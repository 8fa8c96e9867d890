"""What an attacker holding only an invite token can try against real agents.

Run as ``python -m tests.realproc.attacks forge TOKEN ADDRESS`` (every certificate a token
holder can build alone, each shown at a handshake; prints one line per attempt:
``admitted`` or ``refused: why``) or ``... redeem TOKEN ADDRESS`` (ask that member for a
certificate; prints ``certificate`` or ``refused: why``).
"""

from __future__ import annotations

import dataclasses
import sys

import trio

from meshcloud.agent.net import tcp_transport
from meshcloud.auth import MeshAuthenticator
from meshcloud.clock import SystemClock
from meshcloud.config import NodeConfig
from meshcloud.errors import MeshError
from meshcloud.identity.certs import CertLink, MeshCert, issue_cert, make_join_proof
from meshcloud.identity.invites import InviteToken
from meshcloud.identity.keys import SigningKey
from meshcloud.join import request_certificate
from meshcloud.membership import MemoryMembershipRecords


def forgeries(token: InviteToken, key: SigningKey) -> dict[str, MeshCert]:
    """Every certificate a token holder can sign alone (no member's, no root key)."""
    body = token.invite.body
    back_dated = body.created_at + 1  # inside the invite's life, whatever the time now
    proof = dataclasses.replace(make_join_proof(token, key, now=back_dated))
    own = issue_cert(proof, key, None, now=back_dated)  # "issued" by its own key as if root
    link = own.links[0]
    helper = SigningKey.generate()  # a second key of the attacker posing as a member
    helper_proof = make_join_proof(token, helper, now=back_dated)
    helper_cert = issue_cert(helper_proof, helper, None, now=back_dated)
    chained = issue_cert(proof, helper, helper_cert, now=back_dated)
    unsigned = CertLink(proof=proof, issued_at=back_dated, issuer_public=body.root_public,
                        issuer_signature=link.issuer_signature)
    return {
        "self-issued": own,
        "self-issued twice (the old sponsor trick)": MeshCert(links=(link, link)),
        "issued by a second attacker key": chained,
        "claims the root key issued it": MeshCert(links=(unsigned,)),
    }


async def try_dial(cert: MeshCert, key: SigningKey, root_public: bytes, address: str) -> str:
    auth = MeshAuthenticator(root_public, MemoryMembershipRecords(), SystemClock().wall_ms,
                             cert)
    transport = tcp_transport(key, auth, NodeConfig(listen=["127.0.0.1:0"]))
    outcome = "timeout"
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            with trio.fail_after(10):
                await transport.dial(address)
            outcome = "admitted"
        except MeshError as exc:
            outcome = f"refused: {exc}"
        except trio.TooSlowError:
            pass
        nursery.cancel_scope.cancel()
    return outcome


async def forge(token_text: str, address: str) -> None:
    token = InviteToken.decode(token_text)
    key = SigningKey.generate()
    for name, cert in forgeries(token, key).items():
        outcome = await try_dial(cert, key, token.invite.body.root_public, address)
        print(f"{name}: {outcome}", flush=True)


async def redeem(token_text: str, address: str) -> None:
    token = InviteToken.decode(token_text)
    key = SigningKey.generate()
    proof = make_join_proof(token, key, now=SystemClock().wall_ms())
    auth = MeshAuthenticator(token.invite.body.root_public, MemoryMembershipRecords(),
                             SystemClock().wall_ms, None, proof)
    transport = tcp_transport(key, auth, NodeConfig(listen=["127.0.0.1:0"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        try:
            accepted = await request_certificate(transport, [address])
            print(f"certificate issued by {accepted.cert.issuer_id.hex()[:12]}", flush=True)
        except MeshError as exc:
            print(f"refused: {exc}", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    verb, token_arg, address_arg = sys.argv[1:4]
    trio.run({"forge": forge, "redeem": redeem}[verb], token_arg, address_arg)
