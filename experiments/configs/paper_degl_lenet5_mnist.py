"""DEGL, LeNet-5 / MNIST (Table 1: 100 epochs, γ 5e-3, λ 1e-4; t_th 1e-5, 1e-4, 1e-3, 1e-2, 2.5e-2 for DEGL1..5).

Argument: the table row, ``DEGL1``..``DEGL5`` (default DEGL5), ``EGL<i>`` or ``GL<i>`` (ablations at the same threshold).
"""

from . import common


def get_config(row="DEGL5"):
  return common.paper_degl("lenet5", "mnist", epochs=100, gamma=5e-3, lam=1e-4, thresholds=(1e-5, 1e-4, 1e-3, 1e-2, 2.5e-2),
                           row=row, batch_size=256)
