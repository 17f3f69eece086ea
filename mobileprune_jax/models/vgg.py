"""VGG networks with BatchNorm: the CIFAR "VGG-like" (VGG-16) and VGG-16/19 for 64×64 inputs."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from mobileprune_jax.models.layers import avg_pool, flatten, max_pool_2x2

M = "M"
CFG_VGG16 = (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M)
CFG_VGG16_TINY = (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512)
CFG_VGG19_TINY = (64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512)


class VGG(nnx.Module):
  """conv3×3 + BN + ReLU stacks from ``cfg`` ("M" = 2×2 max pool), then a classifier head.

  Args:
    cfg: channel widths and "M" pools.
    hidden: widths of hidden FC layers (each Linear + BN + ReLU + dropout); () for none.
    final_pool: average-pool window before the head (1 = none).
  """

  def __init__(self, cfg: Sequence[int | str] = CFG_VGG16, num_classes: int = 10, hidden: Sequence[int] = (512,),
               in_channels: int = 3, image_size: int = 32, final_pool: int = 1, dropout: float = 0.0,
               *, rngs: nnx.Rngs):
    self.cfg = tuple(cfg)
    convs, bns = [], []
    cin, side = in_channels, image_size
    for item in self.cfg:
      if item == M:
        side //= 2
        continue
      convs.append(nnx.Conv(cin, int(item), (3, 3), padding="SAME", use_bias=False, rngs=rngs))
      bns.append(nnx.BatchNorm(int(item), momentum=0.9, rngs=rngs))
      cin = int(item)
    self.convs = nnx.List(convs)
    self.bns = nnx.List(bns)
    self.final_pool = final_pool
    side //= final_pool
    features = side * side * cin
    fcs, fc_bns = [], []
    for width in hidden:
      fcs.append(nnx.Linear(features, width, rngs=rngs))
      fc_bns.append(nnx.BatchNorm(width, momentum=0.9, rngs=rngs))
      features = width
    self.fcs = nnx.List(fcs)
    self.fc_bns = nnx.List(fc_bns)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    i = 0
    for item in self.cfg:
      if item == M:
        x = max_pool_2x2(x)
      else:
        x = nnx.relu(self.bns[i](self.convs[i](x), use_running_average=not train))
        i += 1
    if self.final_pool > 1:
      x = avg_pool(x, self.final_pool)
    x = flatten(x)
    for fc, bn in zip(self.fcs, self.fc_bns):
      x = self.dropout(nnx.relu(bn(fc(x), use_running_average=not train)), deterministic=not train)
    return self.head(x)


def vgg_like_cifar(num_classes: int = 10, width: float = 1.0, *, rngs: nnx.Rngs) -> VGG:
  """The CIFAR "VGG-like" (VGG-16 + BN, FC 512→512→10): ≈15.0M params, 313.5M MACs."""
  cfg = tuple(c if c == M else max(1, int(c * width)) for c in CFG_VGG16)
  return VGG(cfg, num_classes, hidden=(max(1, int(512 * width)),), rngs=rngs)


def vgg_tiny_imagenet(depth: int = 19, num_classes: int = 200, *, rngs: nnx.Rngs) -> VGG:
  """VGG-16/19 for 64×64 inputs (EigenDamage cfg): AvgPool(4) and a single FC."""
  cfg = {16: CFG_VGG16_TINY, 19: CFG_VGG19_TINY}[depth]
  return VGG(cfg, num_classes, hidden=(), image_size=64, final_pool=4, rngs=rngs)
