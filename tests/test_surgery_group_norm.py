"""GroupNorm: a group's statistics mix only its own channels, so a whole group goes (``num_groups`` shrinks) and
part of one never does; a reduction mixing every channel (LayerNorm) or overlapping windows of channels still keeps
them. Widths by hand; outputs against the unpruned model's."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import regularisers, surgery
from mobileprune_jax.surgery.shrink import variables_by_path


class GroupNormNet(nnx.Module):
  def __init__(self, rngs, num_groups=4, use_scale=True, use_bias=True):
    self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.n1 = nnx.GroupNorm(16, num_groups=num_groups, use_scale=use_scale, use_bias=use_bias, rngs=rngs)
    self.c2 = nnx.Conv(16, 8, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(8, 5, rngs=rngs)

  def __call__(self, x):
    h = nnx.silu(self.n1(self.c1(x)))
    return self.fc(nnx.relu(self.c2(h)).mean((1, 2)))


class WindowNorm(nnx.Module):
  """Local response normalisation: each channel divided by a sum over itself and its neighbours (overlapping)."""

  def __init__(self, rngs):
    self.c1, self.c2 = nnx.Conv(3, 8, (3, 3), rngs=rngs), nnx.Conv(8, 4, (3, 3), rngs=rngs)

  def __call__(self, x):
    h = self.c1(x)
    local = jax.lax.reduce_window(h * h, 0.0, jax.lax.add, (1, 1, 1, 3), (1, 1, 1, 1), "SAME")
    return self.c2(h / (1 + local)).mean((1, 2))


X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)


def _zero_reads(model, channels):
  k = np.array(model.c2.kernel[...])
  k[:, :, channels, :] = 0
  model.c2.kernel[...] = jnp.asarray(k)


def _shrink(model):
  new, report = surgery.shrink_with_report(model, X)
  np.testing.assert_allclose(np.asarray(new(X)), np.asarray(model(X)), atol=1e-5)
  return new, report


def test_a_whole_group_goes_and_num_groups_shrinks():
  model = GroupNormNet(nnx.Rngs(0))
  _zero_reads(model, [4, 5, 6, 7])  # group 1 of 4 (channels 4…7): nothing reads it
  new, _ = _shrink(model)
  assert new.c1.kernel.shape == (3, 3, 3, 12) and new.n1.scale.shape == (12,) and new.n1.num_groups == 3
  assert new.c2.kernel.shape == (3, 3, 12, 8)
  assert surgery.count_params(new) == surgery.count_params(model) - 4 * (27 + 1) - 4 * 2 - 4 * 9 * 8


def test_part_of_a_group_stays_its_statistics_need_it():
  model = GroupNormNet(nnx.Rngs(0))
  _zero_reads(model, [4, 5, 8])  # half of group 1 and one channel of group 2
  new, _ = _shrink(model)
  assert new.c1.kernel.shape == (3, 3, 3, 16) and new.n1.num_groups == 4


def test_a_group_of_exact_zeros_goes_too():
  model = GroupNormNet(nnx.Rngs(0))
  variables = variables_by_path(model)
  for path in ("c1/kernel", "c1/bias"):  # group 2's channels are exactly zero, and so are its statistics
    value = np.array(variables[path].get_value())
    value[..., 8:12] = 0
    variables[path].set_value(jnp.asarray(value))
  _zero_reads(model, [8, 9, 10, 11])
  new, _ = _shrink(model)
  assert new.n1.num_groups == 3 and new.c1.kernel.shape == (3, 3, 3, 12)


def test_a_group_norm_without_parameters_keeps_its_groups():
  model = GroupNormNet(nnx.Rngs(0), use_scale=False, use_bias=False)  # nothing tells the new group count
  _zero_reads(model, [4, 5, 6, 7])
  new, report = _shrink(model)
  assert new.c1.kernel.shape == (3, 3, 3, 16) and report.kept_shape_sites > 0


def test_overlapping_windows_of_channels_keep_them():
  model = WindowNorm(nnx.Rngs(0))
  k = np.array(model.c2.kernel[...])
  k[:, :, [2, 3], :] = 0
  model.c2.kernel[...] = jnp.asarray(k)
  new, report = surgery.shrink_with_report(model, X)
  assert new.c1.kernel.shape == (3, 3, 3, 8)  # channel 2 feeds the statistics of channels 1 and 3
  assert any("across channels" in note for note in report.notes), report.notes


@pytest.mark.parametrize("make", [lambda: regularisers.group_lasso(neuron=0.1, channel=0.1),
                                  lambda: regularisers.elastic_group_lasso(gamma=0.1, lam=1e-3)])
def test_for_model_makes_one_unit_per_group(make):
  model = GroupNormNet(nnx.Rngs(0))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no warning: every kernel is understood
    reg = make().for_model(model, X)
  kernel = np.arange(3 * 3 * 16 * 8).reshape(3, 3, 16, 8)
  if reg.unit_side == "reader":  # group g: c2's taps of its 4 channels
    got = sorted(tuple(u["c2/kernel"]) for u in reg.units.units if "c2/kernel" in u)
    assert got == [tuple(np.sort(kernel[:, :, 4 * g:4 * g + 4].ravel())) for g in range(4)]
  else:  # group g: c1's filters of its 4 channels (27 entries each)
    c1 = np.arange(3 * 3 * 3 * 16).reshape(3, 3, 3, 16)
    got = sorted(tuple(u["c1/kernel"]) for u in reg.units.units if "c1/kernel" in u)
    assert got == [tuple(np.sort(c1[..., 4 * g:4 * g + 4].ravel())) for g in range(4)]


class Maxout(nnx.Module):
  """A maxout layer: the max over each group of 3 channels (non-overlapping windows along the channels)."""

  def __init__(self, rngs):
    self.fc1, self.fc2 = nnx.Linear(6, 12, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    h = self.fc1(x)
    return self.fc2(h.reshape(*h.shape[:-1], -1, 3).max(-1))


def test_a_maxout_unit_goes_with_its_three_channels():
  model = Maxout(nnx.Rngs(0))
  model.fc2.kernel[...] = model.fc2.kernel[...].at[2].set(0)  # nothing reads maxout unit 2 (fc1 channels 6, 7, 8)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.float32)
  new, _ = surgery.shrink_with_report(model, x)
  np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), atol=1e-6)
  assert new.fc1.kernel.shape == (6, 9) and new.fc2.kernel.shape == (3, 3)
  np.testing.assert_array_equal(np.asarray(new.fc1.kernel[...]), np.asarray(model.fc1.kernel[...])[:, [0, 1, 2, 3, 4, 5, 9, 10, 11]])


class QKNormAttention(nnx.Module):
  """Attention with a LayerNorm over head_dim on q and k (QK-norm): each head's statistics are its own."""

  def __init__(self, rngs, d=16, heads=4, head_dim=8):
    self.head_dim = head_dim
    self.q, self.k, self.v = (nnx.Linear(d, heads * head_dim, rngs=rngs) for _ in range(3))
    self.qn, self.kn = nnx.LayerNorm(head_dim, rngs=rngs), nnx.LayerNorm(head_dim, rngs=rngs)
    self.o = nnx.Linear(heads * head_dim, d, rngs=rngs)

  def __call__(self, x):
    b, t, _ = x.shape
    split = lambda h: h.reshape(b, t, -1, self.head_dim)
    q, k, v = self.qn(split(self.q(x))), self.kn(split(self.k(x))), split(self.v(x))
    a = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(self.head_dim), -1)
    return x + self.o(jnp.einsum("bhts,bshd->bthd", a, v).reshape(b, t, -1))


def test_a_head_goes_through_a_layer_norm_over_head_dim():
  model = QKNormAttention(nnx.Rngs(0))
  model.o.kernel[...] = model.o.kernel[...].at[8:16].set(0)  # nothing reads head 1
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 16)), jnp.float32)
  new, _ = surgery.shrink_with_report(model, x)
  np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), atol=1e-5)
  assert new.q.kernel.shape == new.k.kernel.shape == new.v.kernel.shape == (16, 24) and new.o.kernel.shape == (24, 16)
  assert new.qn.scale.shape == (8,)  # the norm's parameters are per head_dim entry: shared by the heads, kept
