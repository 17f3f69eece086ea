"""MobilePrune, 1-D CNN / uci_har (docs/algorithms.md §F). Argument: `palm` (default) or `paper_code`; see _har_paper.py.

    python -m mobileprune_jax run --config experiments/configs/paper_mobileprune_uci_har_har.py:paper_code \\
        --config.data_dir=DIR --workdir runs/uci_har
"""

from . import _har_paper


def get_config(mode=None):
  return _har_paper.har_config("uci_har", mode)
