"""Experiments: run configs, the budget-matched grid (``grid/``), results, notebooks, scripts."""
