"""V-Nets: named private networks across nodes, carried in encrypted peer tunnels.

The control plane (addresses, members, keys) lives in the replicated state; each node
turns its share of it into a :class:`vnet.plane.PlaneConfig` and hands that to the data
plane it runs (WireGuard, the Python plane, or the userspace mode).
"""
