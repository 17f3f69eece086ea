"""Surgery on code that computes shapes from the channels it gets: a ShuffleNet channel shuffle, a gated MLP split
with ``jnp.split``, slices at fixed sizes. Expected sizes are counted by hand from the planted dead channels; the
outputs are compared with the unpruned model's."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import surgery
from mobileprune_jax.surgery import shape_sites

TOL = 1e-5


def _zero(var, index):
  value = np.asarray(var.get_value()).copy()
  value[index] = 0
  var.set_value(jnp.asarray(value))


def _shrink(model, x):
  new, report = surgery.shrink_with_report(model, x)
  assert report.max_abs_diff <= TOL, report
  assert surgery.max_output_diff(model, new, x, n=3, seed=5) <= TOL
  return new, report


def test_reshape_slice_and_varying_axes_by_hand():
  assert shape_sites.reshaped_axes((2, 4, 4, 50), (2, 800)) == [1, 2, 3]  # flatten
  assert shape_sites.reshaped_axes((2, 16), (2, 2, 8)) == [1]  # a channel axis split in groups
  assert shape_sites.reshaped_axes((2, 1, 16), (2, 16)) == []  # only a unit axis goes
  assert shape_sites.reshaped_axes((6, 16), (2, 3, 16)) == [0]  # the batch axis, not the channels
  assert shape_sites.reshaped_axes((2, 4, 4), (2, 2, 8)) == [1, 2]
  params = {"start_indices": (0, 0, 4), "limit_indices": (2, 5, 8), "strides": None}
  assert shape_sites.sliced_axes((2, 5, 16), params) == [2]
  ids = np.array([[[0, 1, 2], [0, 1, 2]]])  # (1, 2 positions, 3 channels): nodes vary along the channel axis only
  assert shape_sites.varying_nodes(ids, [1]).tolist() == []
  assert shape_sites.varying_nodes(ids, [2]).tolist() == [0, 1, 2]
  assert shape_sites.varying_nodes(np.array([[-1, 4]]), [1]).tolist() == [4]


class ShuffleUnit(nnx.Module):
  """A ShuffleNetV2 unit: split the channels in halves, a 1×1 → depthwise 3×3 → 1×1 branch on one, concatenate,
  shuffle the channels (reshape to (2, c/2), transpose, reshape back)."""

  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.pw1 = nnx.Conv(8, 8, (1, 1), rngs=rngs)
    self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
    self.pw2 = nnx.Conv(8, 8, (1, 1), rngs=rngs)
    self.head = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem(x))
    a, b = jnp.split(x, 2, axis=-1)
    b = nnx.relu(self.pw2(self.dw(nnx.relu(self.pw1(b)))))
    x = jnp.concatenate([a, b], -1)
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, 2, c // 2).transpose(0, 1, 2, 4, 3).reshape(n, h, w, c)
    return self.head(x.mean(axis=(1, 2)))


def test_channel_shuffle_keeps_the_shuffled_channels_and_cuts_inside_the_branch():
  model = ShuffleUnit(nnx.Rngs(0))
  dead = [0, 1, 2, 3]
  _zero(model.pw1.kernel, (..., dead))
  _zero(model.pw1.bias, dead)
  _zero(model.dw.bias, dead)  # the depthwise channels read zeros and add nothing: they go with pw1's filters
  _zero(model.pw2.kernel, (..., 2))  # pw2's output 2 is zero, but it is shuffled: cutting it changes the reshape
  _zero(model.pw2.bias, 2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  new, report = _shrink(model, x)
  # pw1 loses 4 filters (8 weights + a bias), dw 4 channels (9 + 1), pw2 4 input rows (8 weights each)
  assert surgery.count_params(new) == surgery.count_params(model) - 4 * 9 - 4 * 10 - 4 * 8
  assert new.pw2.kernel.shape == (1, 1, 4, 8) and new.stem.kernel.shape[-1] == 16
  assert any("reshape" in note for note in report.notes), report.notes


def test_the_budget_measure_counts_the_model_shrink_rebuilds_not_the_first_plan():
  """The controller measures with ``check=False``: the re-plan still runs where the code computes shapes."""
  from mobileprune_jax.train import budget

  model = ShuffleUnit(nnx.Rngs(0))
  _zero(model.pw1.kernel, (..., [0, 1, 2, 3]))
  _zero(model.pw1.bias, [0, 1, 2, 3])
  _zero(model.dw.bias, [0, 1, 2, 3])
  _zero(model.pw2.kernel, (..., 2))  # shuffled: the first plan cuts it, the rebuilt model keeps it
  _zero(model.pw2.bias, 2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  dense = budget.DenseSize.of(model, x)
  measured = budget.measure(model, x, dense)
  expected = surgery.count_params(model) - 4 * 9 - 4 * 10 - 4 * 8  # as the shrink test above counts by hand
  assert round(measured["params"] * dense.params) == expected
  first = surgery.count_params(surgery.apply_cuts(model, surgery.plan(model, x).cuts))
  assert first < expected  # the first plan alone also cuts the shuffled channel (what the measure counted before)


class GatedMLP(nnx.Module):
  """A gated MLP whose gate and up projections are one layer, split with ``jnp.split``."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(8, 16, rngs=rngs)
    self.gate_up = nnx.Linear(16, 64, rngs=rngs)
    self.down = nnx.Linear(32, 16, rngs=rngs)
    self.out = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.inp(x))
    gate, up = jnp.split(self.gate_up(h), 2, axis=-1)
    return self.out(h + self.down(up * nnx.silu(gate)))


def test_a_split_gated_projection_loses_gate_and_up_units_in_pairs():
  model = GatedMLP(nnx.Rngs(1))
  _zero(model.down.kernel, [1, 5])  # nothing reads hidden units 1 and 5: gate and up columns 1, 5, 33, 37 go
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8)), jnp.float32)
  new, _ = _shrink(model, x)
  assert new.gate_up.kernel.shape == (16, 60) and new.down.kernel.shape == (30, 16)
  assert surgery.count_params(new) == surgery.count_params(model) - 4 * 17 - 2 * 16


class FixedSlices(nnx.Module):
  """Channels sliced at sizes written into the code."""

  def __init__(self, rngs):
    self.c0 = nnx.Conv(3, 6, (3, 3), rngs=rngs)
    self.c1 = nnx.Conv(6, 16, (3, 3), rngs=rngs)
    self.fa = nnx.Linear(8, 5, rngs=rngs)
    self.fb = nnx.Linear(8, 5, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.c1(nnx.relu(self.c0(x)))).mean(axis=(1, 2))
    return self.fa(h[..., :8]) + self.fb(h[..., 8:16])


def test_channels_sliced_at_fixed_sizes_are_kept_and_the_rest_still_shrinks():
  model = FixedSlices(nnx.Rngs(2))
  _zero(model.fa.kernel, [0, 1, 2])  # unread, but cutting them moves the code's fixed slice bounds
  _zero(model.c0.kernel, (..., 5))
  _zero(model.c0.bias, 5)  # c0's channel 5 is zero: it goes, with c1's input rows
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
  new, report = _shrink(model, x)
  assert surgery.count_params(new) == surgery.count_params(model) - (27 + 1) - 9 * 16
  assert new.c1.kernel.shape == (3, 3, 5, 16)
  assert any("slice" in note and "kept" in note for note in report.notes), report.notes


class CustomConv(nnx.Module):
  """A conv written with ``lax.conv_general_dilated``, its group count a Python attribute surgery cannot update."""

  def __init__(self, cin, cout, rngs, groups=1):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 3, cin // groups, cout)) * 0.2)
    self.b = nnx.Param(jax.random.normal(rngs.params(), (cout,)) * 0.1)
    self.groups = groups

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(x, self.w[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=self.groups)
    return y + self.b[...]


class CustomSeparable(nnx.Module):
  def __init__(self, rngs):
    self.c1 = CustomConv(3, 16, rngs)
    self.dw = CustomConv(16, 16, rngs, groups=16)
    self.c2 = CustomConv(16, 12, rngs)
    self.fc = nnx.Linear(12, 5, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.c2(nnx.relu(self.dw(nnx.relu(self.c1(x))))))
    return self.fc(h.mean(axis=(1, 2)))


def test_a_custom_depthwise_conv_with_a_fixed_group_count_keeps_its_channels():
  model = CustomSeparable(nnx.Rngs(3))
  _zero(model.dw.w, (..., 2))
  _zero(model.dw.b, 2)  # depthwise channel 2 is zero: cutting it needs groups=15, which the code does not know
  _zero(model.c2.w, (..., 3))
  _zero(model.c2.b, 3)  # c2's output 3 is zero: it goes, with the head's row 3
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 3)), jnp.float32)
  new, report = _shrink(model, x)
  assert surgery.count_params(new) == surgery.count_params(model) - (9 * 16 + 1) - 5
  assert new.dw.w.shape == (3, 3, 1, 16) and new.c2.w.shape == (3, 3, 16, 11)
  assert any("grouped conv" in note for note in report.notes), report.notes
