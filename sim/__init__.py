"""The simulation harness: `python -m sim ...` (simulated and real-process modes)."""
