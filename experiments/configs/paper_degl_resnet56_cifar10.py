"""DEGL, ResNet-56 / CIFAR-10 (Table 3: t_th 1e-4, 1e-3, 1e-2 for DEGL1..3; epochs, γ, λ unpublished: VGG-16's 300, 1e-5, 1e-6).

Argument: the table row, ``DEGL1``..``DEGL3`` (default DEGL3), ``EGL<i>`` or ``GL<i>``.
"""

from . import common


def get_config(row="DEGL3"):
  return common.paper_degl("resnet56", "cifar10", epochs=300, gamma=1e-5, lam=1e-6, thresholds=(1e-4, 1e-3, 1e-2), row=row,
                           batch_size=256)
