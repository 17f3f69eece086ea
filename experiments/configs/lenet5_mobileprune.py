"""README main job: LeNet-5 + MobilePrune (prox-SGD) on the embedded MNIST subset (offline, a few minutes on 2 CPU cores)."""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "lenet5_mobileprune_mnist_subset"
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
