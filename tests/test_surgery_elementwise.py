"""Element-wise ops with a predicate or an input-dependent operand: leaky_relu / elu (select on the channels' own
sign) and sequence masks broadcast over the features cut along the channels; a full-width input-dependent operand
keeps them. Widths are counted by hand; outputs are compared with the unpruned model's."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import surgery


def _kill_outputs(layer: nnx.Linear, units: list[int]) -> None:
  """Output units that are exactly zero for every input: their kernel columns and biases are zero."""
  layer.kernel[...] = layer.kernel[...].at[:, units].set(0)
  layer.bias[...] = layer.bias[...].at[jnp.asarray(units)].set(0)


class SelectActivations(nnx.Module):
  def __init__(self, rngs):
    self.a, self.b, self.c = nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs), nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    return self.c(jax.nn.elu(self.b(jax.nn.leaky_relu(self.a(x), 0.1))))


def test_leaky_relu_and_elu_channels_are_cut():
  """Both are select(x >= 0, ...) on the channels' own sign; f(0) = 0, so a dead unit stays dead through them."""
  model = SelectActivations(nnx.Rngs(0))
  _kill_outputs(model.a, [3, 7])
  _kill_outputs(model.b, [2])
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 6)), jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert small.a.kernel.shape == (6, 14) and small.b.kernel.shape == (14, 15) and small.c.kernel.shape == (15, 4)
  assert report.params_after == 6 * 14 + 14 + 14 * 15 + 15 + 15 * 4 + 4
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-6)


class MaskedSequence(nnx.Module):
  """Per-token features masked by the sequence mask (an input) and averaged over the real tokens."""

  def __init__(self, rngs, full_width_gate=False):
    self.full_width_gate = full_width_gate
    self.a, self.b, self.c = nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x, mask, gate):
    h = nnx.relu(self.a(x)) * mask[:, :, None]  # (b, t, 16) · (b, t, 1): the same for every channel
    h = jnp.where(mask[:, :, None] > 0, nnx.relu(self.b(h)), 0.0)
    if self.full_width_gate:
      h = h * gate  # (b, t, 16) from the input: one value per channel, which a narrower model cannot take
    return self.c(h.sum(1) / mask.sum(1, keepdims=True))


def _masked_inputs():
  rng = np.random.default_rng(1)
  mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], jnp.float32)
  return (jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32), mask,
          jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.float32))


def test_a_sequence_mask_broadcast_over_the_features_does_not_keep_them():
  model = MaskedSequence(nnx.Rngs(0))
  _kill_outputs(model.a, [0, 9, 15])
  _kill_outputs(model.b, [4, 5])
  inputs = _masked_inputs()
  small = surgery.shrink(model, inputs)
  assert small.a.kernel.shape == (6, 13) and small.b.kernel.shape == (13, 14) and small.c.kernel.shape == (14, 3)
  np.testing.assert_allclose(np.asarray(small(*inputs)), np.asarray(model(*inputs)), atol=1e-6)


def test_a_full_width_input_operand_keeps_the_channels_it_meets():
  model = MaskedSequence(nnx.Rngs(0), full_width_gate=True)
  _kill_outputs(model.a, [0, 9, 15])
  _kill_outputs(model.b, [4, 5])
  inputs = _masked_inputs()
  small, report = surgery.shrink_with_report(model, inputs)
  assert small.a.kernel.shape == (6, 13)  # a's units do not meet the gate
  assert small.b.kernel.shape == (13, 16) and small.c.kernel.shape == (16, 3)  # b's outputs are multiplied by it
  assert any("does not understand" in note for note in report.notes)
  np.testing.assert_allclose(np.asarray(small(*inputs)), np.asarray(model(*inputs)), atol=1e-6)


class AlongTime(nnx.Module):
  """Per-channel ops along the time axis (running sum, sort, top-2 of each channel), or top-2 over the channels."""

  def __init__(self, kind, rngs):
    self.kind = kind
    self.a, self.b = nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.a(x))  # (b, t, 16)
    if self.kind == "cumsum":
      h = jnp.cumsum(h, axis=1)
    elif self.kind == "sort":
      h = jnp.sort(h, axis=1)
    elif self.kind == "top_k":
      h = jax.lax.top_k(jnp.swapaxes(h, 1, 2), 2)[0].sum(-1)  # (b, 16): each channel's two largest steps
    elif self.kind == "top_k_channels":
      values = jax.lax.top_k(h, 2)[0]  # (b, t, 2): the two largest channels at each step
      h = h * values.sum(-1, keepdims=True)
    return self.b(h).mean(axis=tuple(range(1, h.ndim - 1))) if h.ndim > 2 else self.b(h)


def test_ops_along_time_keep_each_channel_and_a_dead_one_stays_dead():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 7, 6)), jnp.float32)
  for kind in ("cumsum", "sort", "top_k"):
    model = AlongTime(kind, nnx.Rngs(0))
    _kill_outputs(model.a, [1, 2, 11])  # zero for every input: zero at every step, whatever the op along time
    small = surgery.shrink(model, x)
    assert small.a.kernel.shape == (6, 13) and small.b.kernel.shape == (13, 3), kind
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5, err_msg=kind)


def test_top_k_over_the_channels_keeps_them():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 7, 6)), jnp.float32)
  model = AlongTime("top_k_channels", nnx.Rngs(0))
  _kill_outputs(model.a, [1, 2, 11])
  small, report = surgery.shrink_with_report(model, x)
  assert small.a.kernel.shape == (6, 16) and any("top_k" in note for note in report.notes)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-6)


class GraphConv(nnx.Module):
  """A two-layer graph convolution: the adjacency (an input) mixes nodes, never channels."""

  def __init__(self, rngs):
    self.a, self.b, self.c = nnx.Linear(5, 16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x, adj):
    h = nnx.relu(adj @ self.a(x))
    h = nnx.relu(jnp.einsum("bij,bjc->bic", adj, self.b(h)))
    return self.c(h.max(axis=1))


def test_an_input_dependent_matrix_over_the_nodes_carries_each_channel_through():
  model = GraphConv(nnx.Rngs(0))
  _kill_outputs(model.a, [1, 4])  # zero for every input, so adj @ them is zero too
  _kill_outputs(model.b, [0])
  rng = np.random.default_rng(4)
  inputs = (jnp.asarray(rng.normal(size=(3, 7, 5)), jnp.float32), jnp.asarray(rng.random((3, 7, 7)), jnp.float32))
  small = surgery.shrink(model, inputs)
  assert small.a.kernel.shape == (5, 14) and small.b.kernel.shape == (14, 15) and small.c.kernel.shape == (15, 3)
  np.testing.assert_allclose(np.asarray(small(*inputs)), np.asarray(model(*inputs)), atol=1e-5)
