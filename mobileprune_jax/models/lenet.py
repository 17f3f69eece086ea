"""LeNet-300-100 and LeNet-5 (Caffe variant), as in both papers (docs/algorithms.md §G)."""

from __future__ import annotations

from flax import nnx

from mobileprune_jax.models.layers import flatten, max_pool_2x2


class LeNet300100(nnx.Module):
  """784-300-100-10 MLP with ReLU (266,610 parameters)."""

  def __init__(self, widths: tuple[int, int] = (300, 100), num_classes: int = 10, in_features: int = 784, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(in_features, widths[0], rngs=rngs)
    self.fc2 = nnx.Linear(widths[0], widths[1], rngs=rngs)
    self.fc3 = nnx.Linear(widths[1], num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = flatten(x)
    x = nnx.relu(self.fc1(x))
    x = nnx.relu(self.fc2(x))
    return self.fc3(x)


class LeNet5(nnx.Module):
  """conv5×5(20) → pool → conv5×5(50) → pool → FC 800→500 → FC 500→10 (431,080 parameters).

  Input 28×28×1 (NHWC). ReLU after both convs and FC1, as in the MobilePrune code.
  """

  def __init__(self, widths: tuple[int, int, int] = (20, 50, 500), num_classes: int = 10, in_channels: int = 1,
               image_size: int = 28, *, rngs: nnx.Rngs):
    c1, c2, hidden = widths
    self.conv1 = nnx.Conv(in_channels, c1, (5, 5), padding="VALID", rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (5, 5), padding="VALID", rngs=rngs)
    side = ((image_size - 4) // 2 - 4) // 2
    self.fc1 = nnx.Linear(side * side * c2, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = max_pool_2x2(nnx.relu(self.conv1(x)))
    x = max_pool_2x2(nnx.relu(self.conv2(x)))
    x = nnx.relu(self.fc1(flatten(x)))
    return self.fc2(x)
