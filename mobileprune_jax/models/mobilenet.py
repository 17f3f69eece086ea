"""MobileNetV2 (Sandler et al. 2018) in Flax NNX, with a width multiplier and a CIFAR-size stem.

Inverted residual blocks: expand 1×1 (t×) → depthwise 3×3 → project 1×1 (linear), BatchNorm
after each conv, ReLU6 after the first two, residual add when the stride is 1 and the width is
unchanged. Widths are rounded to multiples of 8 as in the reference implementation; at width
1.0 on 224×224 inputs with 1000 classes the model has 3,504,872 parameters (torchvision's
``mobilenet_v2``). For 32×32 inputs (CIFAR, padded MNIST-like images) the stem and the second
stage use stride 1 (the common CIFAR variant), so the last feature map is 4×4.
"""

from __future__ import annotations

import jax
from flax import nnx

from mobileprune_jax.models.layers import global_avg_pool

# (expansion t, output channels c, repeats n, first stride s) of the reference network
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
  """``value`` rounded to the nearest multiple of ``divisor``, never below 90 % of it (reference rule)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nnx.Module):
  """Conv (no bias) → BatchNorm → optional ReLU6; ``groups`` = channels makes it depthwise."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True, *,
               rngs: nnx.Rngs):
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding="SAME",
                         feature_group_count=groups, use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.relu = relu

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.bn(self.conv(x), use_running_average=not train)
    return jax.nn.relu6(x) if self.relu else x


class InvertedResidual(nnx.Module):
  """expand 1×1 (skipped when t = 1) → depthwise 3×3 → linear project 1×1, + x when shapes match."""

  def __init__(self, cin: int, cout: int, stride: int, expansion: int, *, rngs: nnx.Rngs):
    hidden = cin * expansion
    self.expand = nnx.data(ConvBNReLU6(cin, hidden, 1, rngs=rngs) if expansion != 1 else None)
    self.depthwise = ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden, rngs=rngs)
    self.project = ConvBNReLU6(hidden, cout, 1, relu=False, rngs=rngs)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = self.expand(x, train) if self.expand is not None else x
    h = self.project(self.depthwise(h, train), train)
    return x + h if self.residual else h


class MobileNetV2(nnx.Module):
  """MobileNetV2.

  Args:
    num_classes: outputs of the classifier.
    width: the width multiplier α (0.35, 0.5, 0.75, 1.0, 1.4 in the paper).
    input_size: 224 (ImageNet strides) or 32 (CIFAR-size: stride 1 in the stem and stage 2).
    in_channels: input channels (3 for RGB, 1 for grayscale).
    dropout: dropout rate before the classifier (inactive in inference).
  """

  def __init__(self, num_classes: int = 1000, width: float = 1.0, input_size: int = 224, in_channels: int = 3,
               dropout: float = 0.2, *, rngs: nnx.Rngs):
    if input_size not in (32, 224):
      raise ValueError(f"input_size must be 32 (CIFAR-size strides) or 224 (ImageNet strides), got {input_size}")
    small = input_size == 32
    cin = make_divisible(32 * width)
    self.stem = ConvBNReLU6(in_channels, cin, 3, 1 if small else 2, rngs=rngs)
    blocks = []
    for stage, (t, c, n, s) in enumerate(SETTINGS):
      cout = make_divisible(c * width)
      for i in range(n):
        stride = (1 if small and stage == 1 else s) if i == 0 else 1
        blocks.append(InvertedResidual(cin, cout, stride, t, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.last = ConvBNReLU6(cin, make_divisible(1280 * max(1.0, width)), 1, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.classifier = nnx.Linear(make_divisible(1280 * max(1.0, width)), num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.stem(x, train)
    for block in self.blocks:
      x = block(x, train)
    x = global_avg_pool(self.last(x, train))
    return self.classifier(self.dropout(x, deterministic=not train))


def mobilenet_v2(num_classes: int = 10, width: float = 1.0, input_size: int = 32, in_channels: int = 3, *,
                 rngs: nnx.Rngs) -> MobileNetV2:
  """The zoo's ``mobilenet_v2``: CIFAR-size by default (``input_size=224`` for ImageNet strides)."""
  return MobileNetV2(num_classes, width, input_size, in_channels, rngs=rngs)


__all__ = ["SETTINGS", "ConvBNReLU6", "InvertedResidual", "MobileNetV2", "make_divisible", "mobilenet_v2"]
