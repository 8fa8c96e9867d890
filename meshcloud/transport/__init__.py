"""meshcloud's transport: the interface (base.py) and its implementations.

Imports nothing, so that ``meshcloud.transport.base`` can be used without pulling in the TCP
driver. See ``docs/architecture.md`` ("Transport").
"""
