"""A short CPU-sized run (LeNet-5 + MobilePrune prox-SGD, fixed coefficients, embedded MNIST, under a minute): the
base the tests and ``experiments/scripts/budget_matrix.py`` override; the README job is ``lenet5_mobileprune.py``."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "lenet5_mobileprune_quick"
  c.dataset = "mnist_subset"
  c.model = "lenet5"
  c.method = "mobileprune"
  c.mode = "prox_sgd"
  c.batch_size = 100
  c.pretrain = dict(epochs=6, optimizer="adam", lr=1e-3)
  c.prune = dict(iterations=3, epochs=2, lr=0.05, momentum=0.9)
  c.retrain = dict(epochs=2, optimizer="adam", lr=5e-4)
  c.coef = dict(l0=5e-4, neuron=5e-2, channel=0.1, shape=2e-2)
  return c
