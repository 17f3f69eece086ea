"""MobilePrune, 1-D CNN / pamap2 (docs/algorithms.md §F). Argument: `palm` (default) or `paper_code`; see _har_paper.py.

    python -m mobileprune_jax run --config experiments/configs/paper_mobileprune_pamap2_har.py:paper_code \\
        --config.data_dir=DIR --workdir runs/pamap2
"""

from . import _har_paper


def get_config(mode=None):
  return _har_paper.har_config("pamap2", mode)
