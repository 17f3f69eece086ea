"""lenet300 + mobileprune on the embedded MNIST subset (--config.dataset=fashion_mnist_idx for Fashion-MNIST)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import base  # noqa: E402


def get_config():
  return base("lenet300", "mobileprune")
