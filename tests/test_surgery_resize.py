"""U-Net style blocks: channels read only through ``jax.image.resize`` are removable.

The removable channels are counted by hand from the zero pattern; the shrunk model must match the
original's outputs and have exactly the hand-counted parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import surgery


class TinyUNet(nnx.Module):
  """enc (3→8) → pool → mid (8→16) → resize ×2 → concat with enc → dec (24→8) → head (8→2)."""

  def __init__(self, method: str, rngs: nnx.Rngs):
    self.method = method
    self.enc = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.mid = nnx.Conv(8, 16, (3, 3), rngs=rngs)
    self.dec = nnx.Conv(24, 8, (3, 3), rngs=rngs)
    self.head = nnx.Conv(8, 2, (1, 1), rngs=rngs)

  def __call__(self, x):
    e = nnx.relu(self.enc(x))
    m = nnx.relu(self.mid(nnx.avg_pool(e, (2, 2), (2, 2))))
    b, h, w, c = m.shape
    up = jax.image.resize(m, (b, 2 * h, 2 * w, c), self.method)
    return self.head(nnx.relu(self.dec(jnp.concatenate([e, up], axis=-1))))


def _params(model):
  return sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("method", ["bilinear", "nearest", "linear", "cubic"])
@pytest.mark.slow
def test_channels_read_only_through_resize_are_removed(method):
  model = TinyUNet(method, nnx.Rngs(0))
  dead_mid = [1, 4, 9]  # dec reads none of these upsampled channels (concat offset 8)
  k = np.asarray(model.dec.kernel[...]).copy()
  k[:, :, [8 + c for c in dead_mid], :] = 0
  model.dec.kernel[...] = jnp.asarray(k)
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert small.mid.kernel.shape == (3, 3, 8, 13) and small.dec.kernel.shape == (3, 3, 21, 8)
  # by hand: mid loses 3 filters (3·3·8 weights + bias each), dec loses 3 input slices (3·3·8 each)
  assert _params(small) == _params(model) - 3 * (3 * 3 * 8 + 1) - 3 * (3 * 3 * 8)
  assert report.max_abs_diff <= 1e-5
  np.testing.assert_allclose(small(x), model(x), atol=1e-5)
  assert not [n for n in report.notes if "several channels" in n or "not understood" in n], report.notes


def test_a_constant_matrix_that_mixes_channels_keeps_them_and_says_why():
  class Mix(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(4, 6, rngs=rngs)
      self.b = nnx.Linear(6, 3, rngs=rngs)
    def __call__(self, x):
      mix = jnp.asarray(np.eye(6, dtype=np.float32)[::-1] + 0.5)  # fixed, not a parameter: mixes every channel
      return self.b(nnx.relu(self.a(x)) @ mix)

  model = Mix(nnx.Rngs(0))
  k = np.asarray(model.b.kernel[...]).copy()
  k[0] = 0  # row 0 of b is dead, but the mixed feature 0 carries every channel of a
  model.b.kernel[...] = jnp.asarray(k)
  x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert small.a.kernel.shape == (4, 6)  # nothing of a can go
  assert any("constant matrix mixes channels" in n for n in report.notes), report.notes
  np.testing.assert_allclose(small(x), model(x), atol=1e-5)


def test_gather_with_constant_indices_moves_channels():
  class Pick(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(4, 6, rngs=rngs)
      self.b = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      return self.b(nnx.relu(self.a(x))[:, jnp.array([5, 0, 2, 2])])  # channels 1, 3, 4 are never read

  model = Pick(nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert report.max_abs_diff <= 1e-5
  np.testing.assert_allclose(small(x), model(x), atol=1e-5)
  # the indices are constants naming channel positions: cutting the unread channels 1, 3, 4 would shift
  # them, so every channel of the gathered axis stays (the model stays exact)
  assert small.a.kernel.shape == (4, 6)
  assert any("gather at constant indices along a channel axis" in n for n in report.notes), report.notes
