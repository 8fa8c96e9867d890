"""Benchmarks: `python -m bench NAME` prints figures and, last, one JSON line of them."""
