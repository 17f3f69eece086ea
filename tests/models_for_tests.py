"""Small Flax models used by the transform and grouping tests."""

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx


class SmallCNN(nnx.Module):
  """conv → BN → relu → conv → relu → flatten → dense → dense."""

  def __init__(self, rngs: nnx.Rngs, c1: int = 6, c2: int = 8, hidden: int = 16, classes: int = 4):
    self.conv1 = nnx.Conv(3, c1, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(c1, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), rngs=rngs)
    self.fc1 = nnx.Linear(c2 * 4 * 4, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.conv2(x))
    x = x.reshape(x.shape[0], -1)
    return self.fc2(nnx.relu(self.fc1(x)))


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(12)(x))
    x = nn.LayerNorm()(x)
    return nn.Dense(3)(x)


def small_batch(seed: int = 0, n: int = 32, classes: int = 4):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(k1, (n, 4, 4, 3))
  y = jax.random.randint(k2, (n,), 0, classes)
  return x, y


def xent(logits, labels):
  return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
