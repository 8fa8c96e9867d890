"""Wire encoding: bounded CBOR, typed messages with tags and versions, length-prefixed frames."""
