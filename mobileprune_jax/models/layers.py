"""Small building blocks shared by the model zoo."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2×2 max pool, stride 2, NHWC, as a reshape + max.

  Same outputs as ``nnx.max_pool(x, (2, 2), (2, 2))`` (odd trailing rows/cols dropped), and
  its gradient is 1.5–2× faster on XLA:CPU than reduce_window's.
  """
  n, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2, :]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def avg_pool(x: jax.Array, window: int) -> jax.Array:
  """window×window average pool, stride = window, NHWC (reshape + mean)."""
  n, h, w, c = x.shape
  x = x[:, : h - h % window, : w - w % window, :]
  return x.reshape(n, h // window, window, w // window, window, c).mean(axis=(2, 4))


def flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


class ConvBN(nnx.Module):
  """Conv (no bias) → BatchNorm → optional ReLU."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding="SAME", use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
    self.relu = relu

  def __call__(self, x, train: bool = False):
    x = self.bn(self.conv(x), use_running_average=not train)
    return nnx.relu(x) if self.relu else x
