"""The ingress: named endpoints of workloads, forwarding over the mesh, TCP ports."""
