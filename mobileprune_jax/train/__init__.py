"""Training: jitted steps, PALM, and the resumable prune/retrain pipelines."""
