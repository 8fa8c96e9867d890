"""meshcloud: a private cloud with no master.

This package holds both the bottom of the stack (codec, identity, transport) and the top
(node assembly, agent, API, CLI). It imports nothing here on purpose, so that ``gossip``
and ``dht`` can use ``meshcloud.codec`` without pulling in the node.
"""

__version__ = "0.1.0"
