"""MobilePrune, wide ResNet-32 / CIFAR-10 (Table B.2: λ0 1e-8, λc 5e-2, λn 0, λs 1e-4; P 2 minibatches, R 30, T 2, wd 1e-4, batch 300)."""

from . import common


def get_config():
  return common.paper_mobileprune("resnet32_wide", "cifar10", l0=1e-8, neuron=0.0, channel=5e-2, shape=1e-4, prune_steps=2,
                                  retrain_epochs=30, iterations=2, weight_decay=1e-4, batch_size=300, pretrain_epochs=200)
