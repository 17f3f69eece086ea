"""MobilePrune, LeNet-300-100 / MNIST (Table B.2: λ0 4e-4, λn 2e-4; P 10 epochs, R 30, T 74, wd 1e-4, batch 100)."""

from . import common


def get_config():
  return common.paper_mobileprune("lenet300", "mnist", l0=4e-4, neuron=2e-4, channel=0.0, shape=0.0, prune_epochs=10,
                                  retrain_epochs=30, iterations=74, weight_decay=1e-4, batch_size=100, retrain_optimizer="adam")
