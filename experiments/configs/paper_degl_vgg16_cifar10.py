"""DEGL, VGG-16 / CIFAR-10 (Table 2: 300 epochs, γ 1e-5, λ 1e-6; t_th 1e-4, 1e-3, 1e-2 for DEGL1..3).

Argument: the table row, ``DEGL1``..``DEGL3`` (default DEGL3), ``EGL<i>`` or ``GL<i>``.
"""

from . import common


def get_config(row="DEGL3"):
  return common.paper_degl("vgg_like", "cifar10", epochs=300, gamma=1e-5, lam=1e-6, thresholds=(1e-4, 1e-3, 1e-2), row=row,
                           batch_size=256)
