"""MobilePrune, 1-D CNN / wisdm (docs/algorithms.md §F). Argument: `palm` (default) or `paper_code`; see _har_paper.py.

    python -m mobileprune_jax run --config experiments/configs/paper_mobileprune_wisdm_har.py:paper_code \\
        --config.data_dir=DIR --workdir runs/wisdm
"""

from . import _har_paper


def get_config(mode=None):
  return _har_paper.har_config("wisdm", mode)
