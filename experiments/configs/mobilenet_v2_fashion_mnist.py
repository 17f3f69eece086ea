"""MobileNetV2 (×0.35, CIFAR-size strides) + MobilePrune (prox-SGD) on Fashion-MNIST padded to 32×32.

The offline stand-in for the phones' model family: full Fashion-MNIST from Debian's
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), images zero-padded to
32×32, one input channel. The depthwise kernels are grouped per channel (``groups.rules_for_model``)
and surgery cuts each expand → depthwise → project chain together. ``get_config("quick")`` is a
CPU-sized run (a train step of this model takes ~2.8 s at batch 128 on 2 CPU cores): the first
5,000 training and 2,000 test images, 2 + 1 + 1 epochs (what ``experiments/results/mobilenet_v2.md``
reports).
"""

import ml_collections


def get_config(arg: str = "full"):
  if arg not in ("full", "quick"):
    raise ValueError(f"argument must be 'full' or 'quick', got {arg!r}")
  c = ml_collections.ConfigDict()
  c.name = f"mobilenet_v2_fashion_mnist_{arg}"
  c.dataset = "fashion_mnist_idx"
  c.pad_to = 32
  c.model = "mobilenet_v2"
  c.model_kwargs = dict(width=0.35, in_channels=1)
  c.method = "mobileprune"
  c.mode = "prox_sgd"
  c.batch_size = 128
  c.pretrain = dict(epochs=8, optimizer="adam", lr=2e-3, schedule="cosine")
  c.prune = dict(iterations=2, epochs=2, lr=0.05, momentum=0.9)
  c.retrain = dict(epochs=2, optimizer="adam", lr=5e-4)
  c.coef = dict(l0=1e-4, neuron=1e-2, channel=2e-2, shape=2e-3, coupled=False)  # per-layer, as mobilenet_v2.md
  if arg == "quick":
    c.train_subset, c.test_subset = 5_000, 2_000
    c.pretrain = dict(epochs=2, optimizer="adam", lr=2e-3, schedule="cosine")
    c.prune = dict(iterations=1, epochs=1, lr=0.05, momentum=0.9)
    c.retrain = dict(epochs=1, optimizer="adam", lr=5e-4)
  return c
