"""DEGL, ResNet-56 / CIFAR-10 (Table 3: γ, λ, epochs not given in the paper — VGG-16's values; t_th 1e-2 = DEGL3)."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402


def get_config():
  return common.paper_degl("resnet56", "cifar10", epochs=300, gamma=1e-5, lam=1e-6, t_th=1e-2, batch_size=256)
