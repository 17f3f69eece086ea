"""CIFAR ResNets: the widened ResNet-32 of MobilePrune and the standard ResNet-56 of DEGL."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mobileprune_jax.models.layers import ConvBN, global_avg_pool


class BasicBlock(nnx.Module):
  """Two 3×3 ConvBN; the shortcut is identity, a 1×1 ConvBN projection, or (option A) a
  strided slice with zero-padded channels when the shape changes."""

  def __init__(self, cin: int, cout: int, stride: int, shortcut: str, *, rngs: nnx.Rngs):
    self.conv1 = ConvBN(cin, cout, 3, stride, rngs=rngs)
    self.conv2 = ConvBN(cout, cout, 3, 1, relu=False, rngs=rngs)
    self.stride = stride
    self.pad = 0
    self.proj = nnx.data(None)
    if stride != 1 or cin != cout:
      if shortcut == "projection":
        self.proj = nnx.data(ConvBN(cin, cout, 1, stride, relu=False, rngs=rngs))
      elif shortcut == "pad":
        self.pad = cout - cin
      else:
        raise ValueError(f"shortcut must be 'projection' or 'pad', got {shortcut!r}")

  def __call__(self, x, train: bool = False):
    out = self.conv2(self.conv1(x, train), train)
    if self.proj is not None:
      short = self.proj(x, train)
    elif self.stride != 1 or self.pad:
      short = x[:, :: self.stride, :: self.stride, :]
      short = jnp.pad(short, ((0, 0), (0, 0), (0, 0), (self.pad // 2, self.pad - self.pad // 2)))
    else:
      short = x
    return nnx.relu(out + short)


class ResNetCifar(nnx.Module):
  """conv3×3 → 3 stages of ``blocks`` BasicBlocks (strides 1, 2, 2) → global avg pool → FC."""

  def __init__(self, blocks: int, widths: tuple[int, int, int], num_classes: int = 10, shortcut: str = "projection",
               in_channels: int = 3, *, rngs: nnx.Rngs):
    self.stem = ConvBN(in_channels, widths[0], 3, rngs=rngs)
    layers = []
    cin = widths[0]
    for stage, width in enumerate(widths):
      for b in range(blocks):
        stride = 2 if (stage > 0 and b == 0) else 1
        layers.append(BasicBlock(cin, width, stride, shortcut, rngs=rngs))
        cin = width
    self.blocks = nnx.List(layers)
    self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = self.stem(x, train)
    for block in self.blocks:
      x = block(x, train)
    return self.fc(global_avg_pool(x))


def resnet32_wide(num_classes: int = 10, *, rngs: nnx.Rngs) -> ResNetCifar:
  """MobilePrune's ResNet-32 (EigenDamage): widths 64/128/256, projection shortcuts; 7.418M weights."""
  return ResNetCifar(5, (64, 128, 256), num_classes, shortcut="projection", rngs=rngs)


def resnet20(num_classes: int = 10, in_channels: int = 3, *, rngs: nnx.Rngs) -> ResNetCifar:
  """ResNet-20 (16/32/64, 3 blocks per stage) with 1×1-conv projection shortcuts: 0.27M params; its residual
  streams are what coupled units shrink."""
  return ResNetCifar(3, (16, 32, 64), num_classes, shortcut="projection", in_channels=in_channels, rngs=rngs)


def resnet56(num_classes: int = 10, *, rngs: nnx.Rngs) -> ResNetCifar:
  """The standard CIFAR ResNet-56 (16/32/64, option-A shortcuts): 0.85M params, 125M MACs."""
  return ResNetCifar(9, (16, 32, 64), num_classes, shortcut="pad", rngs=rngs)
