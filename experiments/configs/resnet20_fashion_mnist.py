"""ResNet-20 (16/32/64, 1×1 projection shortcuts) + MobilePrune (prox-SGD) on Fashion-MNIST padded to 32×32.

The residual net of the coupled-units comparison (``experiments/scripts/coupled_vs_per_layer.py``): its three
residual streams shrink only when the penalty's groups are the coupled units (``coef.coupled=True``). Full
Fashion-MNIST from Debian's ``dataset-fashion-mnist``. ``get_config("quick")`` is the CPU-sized schedule the
comparison runs (a train step takes ~2–4 s at batch 128 on 2 shared CPU cores): the first 2,500 training and
2,000 test images, 3 pretraining + 3 pruning (prox-SGD at lr 0.02) + 1 retraining epochs, pruned to 50 % of the
parameters (at 20 % with 2 pruning epochs at lr 0.05 both groupings fell to chance accuracy).
"""

import ml_collections


def get_config(arg: str = "full"):
  if arg not in ("full", "quick"):
    raise ValueError(f"argument must be 'full' or 'quick', got {arg!r}")
  c = ml_collections.ConfigDict()
  c.name = f"resnet20_fashion_mnist_{arg}"
  c.dataset = "fashion_mnist_idx"
  c.pad_to = 32
  c.model = "resnet20"
  c.model_kwargs = dict(in_channels=1)
  c.method = "mobileprune"
  c.mode = "prox_sgd"
  c.batch_size = 128
  c.pretrain = dict(epochs=15, optimizer="adam", lr=2e-3, schedule="cosine")
  c.prune = dict(iterations=2, epochs=3, lr=0.05, momentum=0.9)
  c.retrain = dict(epochs=3, optimizer="adam", lr=5e-4, schedule="cosine")
  c.coef = dict(l0=1e-4, neuron=1e-2, channel=2e-2, shape=2e-3, coupled=True)
  c.budget = dict(params=0.2)
  if arg == "quick":
    c.train_subset, c.test_subset = 2_500, 2_000
    c.pretrain = dict(epochs=3, optimizer="adam", lr=2e-3, schedule="cosine")
    c.prune = dict(iterations=1, epochs=3, lr=0.02, momentum=0.9)
    c.budget = dict(params=0.5)
    c.retrain = dict(epochs=1, optimizer="adam", lr=5e-4, schedule="cosine")
  return c
