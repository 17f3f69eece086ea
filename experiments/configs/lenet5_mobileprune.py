"""README main job: LeNet-5 + MobilePrune (prox-SGD) on the embedded MNIST subset, pruned to ≤ 5 % of its parameters.

Offline, a few minutes on 2 CPU cores: a dense model (Adam, cosine decay, random shifts of ≤ 2 pixels, 800 of the
8,000 training digits held out for validation), then 3 × (6 prox-SGD pruning epochs + 10 masked retraining epochs)
with a budget controller that sets the penalty's strength so that the shrunk model keeps ≤ 5 % of the parameters
(the wanted size ramps from dense to the target over the whole first pruning phase).
The schedule was chosen by validation accuracy on the 800 held-out digits among three: 6 pruning + 6 retraining
epochs per iteration (98.00 %), 8 + 8 (98.12 %) and 6 + 10 (98.38 %), at commit 729f1ea (the landing then still
shrank the survivors; with today's support landing 6 + 10 gives 98.12 %). ``--config.budget.params=None`` prunes with
the fixed coefficients below instead.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "lenet5_mobileprune_mnist_subset"
  c.dataset = "mnist_subset"
  c.model = "lenet5"
  c.method = "mobileprune"
  c.mode = "prox_sgd"
  c.batch_size = 100
  c.val_fraction = 0.1
  c.augment_shift = 2
  c.pretrain = dict(epochs=20, optimizer="adam", lr=1e-3, schedule="cosine")
  c.prune = dict(iterations=3, epochs=6, lr=0.05, momentum=0.9)
  c.retrain = dict(epochs=10, optimizer="adam", lr=5e-4, schedule="cosine")
  c.coef = dict(l0=5e-4, neuron=5e-2, channel=0.1, shape=2e-2, coupled=False)  # per-layer: the numbers below
  c.budget = dict(params=0.05, ramp=1.0)
  return c
