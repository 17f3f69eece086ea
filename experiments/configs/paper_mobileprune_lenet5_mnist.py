"""MobilePrune, LeNet-5 / MNIST (Table B.2: λ0 2e-4, λn 2e-4, λc 1e-3, λs 1e-3; P 10 epochs, R 30, T 102, wd 1e-5, batch 600)."""

from . import common


def get_config():
  return common.paper_mobileprune("lenet5", "mnist", l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3, prune_epochs=10,
                                  retrain_epochs=30, iterations=102, weight_decay=1e-5, batch_size=600, retrain_optimizer="adam")
