"""Node and mesh identities, membership certificates and invites (Ed25519, pynacl)."""
