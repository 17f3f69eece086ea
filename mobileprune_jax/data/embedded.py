"""The embedded MNIST subset that ships with the package (see data/README.md)."""

from __future__ import annotations

import pathlib

import numpy as np

PATH = pathlib.Path(__file__).with_name("mnist_subset.npz")


def load_mnist_subset() -> dict[str, np.ndarray]:
  """10,000 real MNIST digits: 8,000 train / 2,000 test, uint8 (N, 28, 28, 1) + uint8 labels."""
  with np.load(PATH) as f:
    return {k: f[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
