"""Workload runtimes: podman containers and supervised host processes (see ``base.py``)."""
