"""The node's local HTTP API (JSON) and the web UI, served by hypercorn on trio."""
