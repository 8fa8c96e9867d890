"""The agent: the composition root (node wiring, daemon, peers, discovery, members)."""
