"""Experiments: run configs, the offline grid (``reproduce.py``), results, notebooks."""
