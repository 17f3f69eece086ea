"""MobilePrune, VGG-like / CIFAR-10 (Table B.2: λ0 1e-6, λc 1e-3..1e-2, λn 1e-4, λs 1e-4; P 1 minibatch, R 20, T 63, wd 5e-4, batch 1000).

Argument: λc (the table gives a range whose note is lost; docs/algorithms.md §J.4 sweeps 1e-3, 3e-3, 1e-2), default 3e-3:
``--config experiments/configs/paper_mobileprune_vgglike_cifar10.py:1e-2``.
"""

from . import common


def get_config(channel="3e-3"):
  return common.paper_mobileprune("vgg_like", "cifar10", l0=1e-6, neuron=1e-4, channel=float(channel), shape=1e-4, prune_steps=1,
                                  retrain_epochs=20, iterations=63, weight_decay=5e-4, batch_size=1000, pretrain_epochs=200)
