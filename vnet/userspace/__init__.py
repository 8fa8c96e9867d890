"""The userspace mode: V-Net access for nodes without root or TUN (phones).

No interface: a local SOCKS5 server (:mod:`.socks`, a sans-IO parser) and ``-L``-style
port forwards take TCP connections to V-Net addresses and carry each over one mesh stream
(``/meshcloud/vnet-tcp/1``, :mod:`.stream`) to the node the address belongs to, which
connects to it locally. :class:`.plane.UserspacePlane` is the DataPlane named
``userspace``.
"""
