"""``for_model`` and shapes the model's code fixes: a channel is a removable unit only if surgery removes it.

The reference is surgery itself on an independently zeroed model: each unit ``for_model`` presents is zeroed in a
copy (every reader slice, by hand from the architecture where stated) and ``surgery.shrink_with_report`` must then
rebuild a smaller model with equal outputs. Heads reshaped at sizes written in the code (``reshape(b, t, 4, 8)``)
and channels sliced at fixed bounds (``h[..., :8]``) cannot be cut, so they must not be units; the same heads
reshaped with -1, and a flatten with ``reshape(n, -1)``, can, so they must stay units.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import models, regularisers, surgery
from mobileprune_jax.surgery.shrink import variables_by_path

D, HEADS, HEAD_DIM = 16, 4, 8


class Attention(nnx.Module):
  """Multi-head self-attention and an MLP; ``fixed``: the head count is written into the reshapes."""

  def __init__(self, fixed: bool, rngs):
    self.fixed = fixed
    self.q, self.k, self.v = (nnx.Linear(D, HEADS * HEAD_DIM, rngs=rngs) for _ in range(3))
    self.o = nnx.Linear(HEADS * HEAD_DIM, D, rngs=rngs)
    self.f1, self.f2 = nnx.Linear(D, 12, rngs=rngs), nnx.Linear(12, D, rngs=rngs)

  def __call__(self, x):
    b, t, _ = x.shape
    heads = (b, t, HEADS, HEAD_DIM) if self.fixed else (b, t, -1, HEAD_DIM)
    q, k, v = (layer(x).reshape(heads) for layer in (self.q, self.k, self.v))
    a = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(HEAD_DIM), -1)
    out = jnp.einsum("bhts,bshd->bthd", a, v)
    x = x + self.o(out.reshape((b, t, HEADS * HEAD_DIM) if self.fixed else (b, t, -1)))
    return x + self.f2(nnx.relu(self.f1(x)))


class FixedSlices(nnx.Module):
  """c1's channels are sliced at bounds written in the code; c0's are read by c1 only."""

  def __init__(self, rngs):
    self.c0 = nnx.Conv(3, 6, (3, 3), rngs=rngs)
    self.c1 = nnx.Conv(6, 16, (3, 3), rngs=rngs)
    self.fa, self.fb = nnx.Linear(8, 5, rngs=rngs), nnx.Linear(8, 5, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.c1(nnx.relu(self.c0(x)))).mean(axis=(1, 2))
    return self.fa(h[..., :8]) + self.fb(h[..., 8:16])


def _for_model(model, x):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    reg = regularisers.group_lasso(neuron=0.1, channel=0.1).for_model(model, x)
  return reg, [str(w.message) for w in caught]


def _removed_when_zeroed(model, x, unit) -> bool:
  """Surgery removes something once this unit's entries are zero, and the rebuilt model's outputs are equal."""
  copy = nnx.clone(model)
  variables = variables_by_path(copy)
  for path, flat in unit.items():
    value = np.array(variables[path].get_value())
    value.reshape(-1)[flat] = 0
    variables[path].set_value(jnp.asarray(value))
  new, report = surgery.shrink_with_report(copy, x)  # check=True: outputs equal or it raises
  return report.params_after < report.params_before


def _units_reading(reg, path):
  return [u for u in reg.units.units if path in u]


def test_heads_at_a_head_count_written_in_the_code_are_not_units():
  model = Attention(True, nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, D)), jnp.float32)
  reg, messages = _for_model(model, x)
  assert any("reshape whose shape the model's code fixes" in m for m in messages), messages
  assert _units_reading(reg, "o/kernel") == []  # nothing may zero a head: shrink keeps every head
  hidden = _units_reading(reg, "f2/kernel")  # f1's 12 hidden units are read by f2's rows only: still units
  assert sorted(tuple(u["f2/kernel"]) for u in hidden) == [tuple(range(h * D, (h + 1) * D)) for h in range(12)]
  assert all(_removed_when_zeroed(model, x, u) for u in hidden[::4])


def test_heads_reshaped_with_minus_one_stay_units_and_go_whole():
  model = Attention(False, nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, D)), jnp.float32)
  reg, messages = _for_model(model, x)
  assert not any("fixes" in m for m in messages), messages
  heads = _units_reading(reg, "o/kernel")  # head h: rows h·8 … h·8 + 7 of o, 16 entries each
  expected = [tuple(range(h * HEAD_DIM * D, (h + 1) * HEAD_DIM * D)) for h in range(HEADS)]
  assert sorted(tuple(u["o/kernel"]) for u in heads) == expected
  assert all(_removed_when_zeroed(model, x, u) for u in heads)


def test_channels_sliced_at_fixed_bounds_are_not_units_but_their_inputs_are():
  model = FixedSlices(nnx.Rngs(2))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
  reg, messages = _for_model(model, x)
  assert any("slice whose shape the model's code fixes" in m for m in messages), messages
  assert _units_reading(reg, "fa/kernel") == [] and _units_reading(reg, "fb/kernel") == []
  inputs = _units_reading(reg, "c1/kernel")  # c0's channel c: c1's 3·3 taps of input c, 16 filters each
  kernel = np.arange(3 * 3 * 6 * 16).reshape(3, 3, 6, 16)
  assert sorted(tuple(u["c1/kernel"]) for u in inputs) == [tuple(np.sort(kernel[:, :, c].ravel())) for c in range(6)]
  assert all(_removed_when_zeroed(model, x, u) for u in inputs)


def test_a_flatten_with_minus_one_keeps_its_channel_units():
  model = models.create("lenet5")  # conv2 (…, 50) → 4·4·50 = 800 features (h, w, c order) → fc1 (800, 500)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
  reg, messages = _for_model(model, x)
  assert not any("fixes" in m for m in messages), messages
  fc1 = np.arange(800 * 500).reshape(4, 4, 50, 500)  # conv2 channel c: its 16 rows of fc1
  flattened = _units_reading(reg, "fc1/kernel")
  assert sorted(tuple(u["fc1/kernel"]) for u in flattened) == [tuple(np.sort(fc1[:, :, c].ravel())) for c in range(50)]
  assert _removed_when_zeroed(model, x, flattened[3])


def test_element_wise_penalties_run_no_probe():
  model = Attention(True, nnx.Rngs(0))  # the hard-coded heads: a probe would warn
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    reg = regularisers.l1(0.1).for_model(model, jnp.zeros((2, 5, D)))
  assert not isinstance(reg, regularisers.coupled.CoupledRegulariser)
  params = nnx.state(model, nnx.Param)
  new = reg.prox(params, 1.0)  # still ℓ1 on every kernel entry, heads included
  expected = np.sign(model.o.kernel[...]) * np.maximum(np.abs(model.o.kernel[...]) - 0.1, 0)
  np.testing.assert_allclose(np.asarray(new["o"]["kernel"][...]), expected, atol=1e-7)


def test_channels_of_a_conv_whose_group_count_the_code_fixes_are_not_units():
  from test_surgery_shape_sites import CustomSeparable  # lax.conv_general_dilated(..., feature_group_count=16)

  model = CustomSeparable(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  reg, messages = _for_model(model, x)
  assert any("grouped conv whose shape the model's code fixes" in m for m in messages), messages
  assert all(set(u) == {"fc/kernel"} for u in reg.units.units)  # only c2's 12 channels, each one row of fc
  assert sorted(tuple(u["fc/kernel"]) for u in reg.units.units) == [tuple(range(c * 5, c * 5 + 5)) for c in range(12)]
  assert _removed_when_zeroed(model, x, reg.units.units[7])


class TrainModeNet(nnx.Module):
  """BatchNorm and Dropout in training mode (as ``for_model`` usually meets a model) and a flatten with -1."""

  def __init__(self, rngs):
    self.conv, self.bn = nnx.Conv(3, 6, (3, 3), strides=2, rngs=rngs), nnx.BatchNorm(6, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.fc = nnx.Linear(4 * 4 * 6, 5, rngs=rngs)

  def __call__(self, x):
    h = self.drop(nnx.relu(self.bn(self.conv(x))))
    return self.fc(h.reshape(h.shape[0], -1))


def test_a_model_in_training_mode_keeps_its_flattened_channels_as_units():
  model = TrainModeNet(nnx.Rngs(0, dropout=1))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  reg, messages = _for_model(model, x)
  assert not any("removable units" in m for m in messages), messages
  fc = np.arange(96 * 5).reshape(4, 4, 6, 5)  # conv channel c: its 16 rows of fc
  assert sorted(tuple(u["fc/kernel"]) for u in reg.units.units) == [tuple(np.sort(fc[:, :, c].ravel())) for c in range(6)]
  model.eval()
  assert _removed_when_zeroed(model, x, reg.units.units[2])


def test_when_the_probe_cannot_shrink_the_warning_says_why():
  model = models.create("lenet5")
  model.fc2.bias[...] = model.fc2.bias[...].at[0].set(jnp.nan)  # no shrink of this model can succeed
  reg, messages = _for_model(model, jnp.zeros((2, 28, 28, 1)))
  assert any("failed (ValueError: cannot shrink a model with non-finite values" in m for m in messages), messages
  assert _units_reading(reg, "fc1/kernel") == []  # the flattened channels are not units
