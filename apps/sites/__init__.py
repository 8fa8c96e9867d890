"""Static sites served from the mesh's own bucket by every node's ingress."""
