"""MobilePrune, VGG-19 / Tiny-ImageNet (Table B.2: λ0 1e-10, λc 5e-2, λn 1e-2, λs 1e-4; P 1 minibatch, R 15, T 66, wd 1e-4, batch 400).

Dense pretraining as EigenDamage: SGD lr 0.1, wd 2e-4, 300 epochs (cosine here). Needs
``--config.data_dir`` = the unzipped tiny-imagenet-200 directory.
"""

from . import common


def get_config():
  c = common.paper_mobileprune("vgg19_tiny", "tiny_imagenet", l0=1e-10, neuron=1e-2, channel=5e-2, shape=1e-4,
                               prune_steps=1, retrain_epochs=15, iterations=66, weight_decay=1e-4, batch_size=400,
                               pretrain_epochs=300)
  c.pretrain.lr, c.pretrain.weight_decay = 0.1, 2e-4
  return c
