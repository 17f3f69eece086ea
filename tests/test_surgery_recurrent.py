"""Surgery through ``lax.scan``: recurrent layers (``nnx.RNN`` over LSTM / GRU / simple cells) and a loop written by
hand. Expected shapes are counted by hand from the planted dead hidden units; outputs are compared with the unpruned
model's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import surgery

TOL = 1e-5


def _zero(var, index):
  value = np.asarray(var.get_value()).copy()
  value[index] = 0
  var.set_value(jnp.asarray(value))


class Recurrent(nnx.Module):
  def __init__(self, cell, rngs):
    self.inp = nnx.Linear(4, 12, rngs=rngs)
    self.rnn = nnx.RNN(cell(12, 16, rngs=rngs))
    self.readout = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    return self.readout(self.rnn(nnx.relu(self.inp(x)))[:, -1])


def _recurrent_kernels(cell):
  """(kernels reading the state, kernels writing it) of a cell."""
  if isinstance(cell, nnx.LSTMCell):
    return [cell.hi, cell.hf, cell.hg, cell.ho], [cell.ii, cell.if_, cell.ig, cell.io, cell.hi, cell.hf, cell.hg, cell.ho]
  return [cell.dense_h], [cell.dense_i, cell.dense_h]


@pytest.mark.parametrize("cell", [nnx.OptimizedLSTMCell, nnx.LSTMCell, nnx.GRUCell, nnx.SimpleCell])
def test_a_hidden_unit_nothing_reads_leaves_every_gate(cell):
  model = Recurrent(cell, nnx.Rngs(0))
  dead = [3, 9]
  readers, writers = _recurrent_kernels(model.rnn.cell)
  for layer in readers:
    _zero(layer.kernel, dead)  # the recurrent kernels' rows: the state's units 3 and 9 feed no gate
  _zero(model.readout.kernel, dead)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 4)), jnp.float32)
  new, report = surgery.shrink_with_report(model, x)
  assert report.max_abs_diff <= TOL and surgery.max_output_diff(model, new, x, n=3, seed=3) <= TOL
  gates = writers[0].kernel.shape[-1] // 16  # a fused kernel holds every gate's columns
  removed = 0
  for layer in {id(w): w for w in writers}.values():
    n_in = layer.kernel.shape[0]
    removed += 2 * gates * (n_in + (layer.bias is not None))  # two units' columns in every gate (and biases)
  removed += sum(2 * layer.kernel.shape[1] for layer in readers) - len(readers) * 2 * 2 * gates  # rows, less overlap
  removed += 2 * 5
  assert surgery.count_params(new) == surgery.count_params(model) - removed
  assert new.rnn.cell.hidden_features == 14 and new.readout.kernel.shape == (14, 5)


class HandLoop(nnx.Module):
  """An Elman loop written with ``lax.scan``, its initial state zeros of a width written in the code."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(4, 12, rngs=rngs)
    self.w_h = nnx.Linear(16, 16, rngs=rngs)
    self.w_x = nnx.Linear(12, 16, rngs=rngs)
    self.readout = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    xs = jnp.swapaxes(nnx.relu(self.inp(x)), 0, 1)
    step = lambda h, xt: (jnp.tanh(self.w_h(h) + self.w_x(xt)),) * 2
    h, _ = jax.lax.scan(step, jnp.zeros((x.shape[0], 16)), xs)
    return self.readout(h)


def test_a_loop_whose_initial_state_has_a_fixed_width_keeps_it_and_still_cuts_its_inputs():
  model = HandLoop(nnx.Rngs(1))
  _zero(model.w_h.kernel, 5)
  _zero(model.readout.kernel, 5)  # state unit 5 is unread, but the code makes a 16-wide initial state
  _zero(model.w_x.kernel, 2)  # input feature 2 is unread: it goes, with inp's column 2
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 4)), jnp.float32)
  new, report = surgery.shrink_with_report(model, x)
  assert report.max_abs_diff <= TOL
  assert new.w_h.kernel.shape == (16, 16) and new.w_x.kernel.shape == (11, 16) and new.inp.kernel.shape == (4, 11)
  assert surgery.count_params(new) == surgery.count_params(model) - 16 - 5
  assert any("scan carry" in note for note in report.notes), report.notes


def test_a_zero_egl_writer_unit_of_a_gru_hidden_unit_is_removed():
  """Writer side: hidden unit j is every gate's column j of both GRU kernels with their biases. At zero its state
  stays zero at every step (r = z = ½, n = tanh(0) = 0, h' = ½·h), which the trace finds by assuming the zero
  initial state stays zero through the scan's body and checking it (before: values in a scan were unknown, so only
  an unread hidden unit could go)."""
  from mobileprune_jax import regularisers

  class GRUNet(nnx.Module):
    def __init__(self, rngs):
      self.inp = nnx.Linear(6, 16, rngs=rngs)
      self.rnn = nnx.RNN(nnx.GRUCell(16, 16, rngs=rngs))
      self.out = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
      return self.out(self.rnn(nnx.relu(self.inp(x)))[:, -1])

  model = GRUNet(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 7, 6)), jnp.float32)
  reg = regularisers.elastic_group_lasso(0.1, 0.0).for_model(model, x)
  j = 6
  cols = sorted(i * 48 + g * 16 + j for i in range(16) for g in range(3))
  unit = next(u for u in reg.units.units if sorted(np.asarray(u.get("rnn/cell/dense_h/kernel", [])).tolist()) == cols)
  assert sorted(np.asarray(unit["rnn/cell/dense_i/kernel"]).tolist()) == cols
  assert sorted(np.asarray(unit["rnn/cell/dense_i/bias"]).tolist()) == [j, 16 + j, 32 + j]
  assert all(path.startswith("rnn/cell/") for path in unit)
  for path, idx in unit.items():  # zeroed by hand
    *_, layer, leaf = path.split("/")
    var = getattr(getattr(model.rnn.cell, layer), leaf)
    value = np.array(var[...])
    value.reshape(-1)[idx] = 0
    var[...] = jnp.asarray(value)
  small = surgery.shrink(model, x)
  assert small.rnn.cell.hidden_features == 15 and small.out.kernel.shape == (15, 5)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


class Refine(nnx.Module):
  """A weight-shared refinement loop (``lax.fori_loop`` with fixed bounds is a scan): h ← h + ¼·relu(f(h))."""

  def __init__(self, rngs):
    self.a = nnx.Linear(5, 8, rngs=rngs)
    self.f = nnx.Linear(8, 8, rngs=rngs)
    self.o = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = jax.lax.fori_loop(0, 3, lambda i, h: h + 0.25 * nnx.relu(self.f(h)), nnx.relu(self.a(x)))
    return self.o(h)


def test_a_channel_a_loop_carries_is_dead_when_every_filter_writing_it_is_zero():
  model = Refine(nnx.Rngs(0))
  for layer in (model.a, model.f):  # stream channel 2: a's and f's output filters and biases zero
    layer.kernel[...] = layer.kernel[...].at[:, 2].set(0)
    layer.bias[...] = layer.bias[...].at[2].set(0)
  model.a.kernel[...] = model.a.kernel[...].at[:, 5].set(0)  # channel 5 starts at zero, but f's bias makes it grow:
  model.a.bias[...] = model.a.bias[...].at[5].set(0)  # the assumption that it stays zero fails and is undone
  model.f.kernel[...] = model.f.kernel[...].at[:, 5].set(0)
  model.f.bias[...] = model.f.bias[...].at[5].set(1.0)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 5)), jnp.float32)
  small = surgery.shrink(model, x)
  assert small.a.kernel.shape == (5, 7) and small.f.kernel.shape == (7, 7) and small.o.kernel.shape == (7, 3)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


class RefineUntil(Refine):
  """The same refinement, its step count computed from the input: ``fori_loop`` with traced bounds is a while_loop."""

  def __call__(self, x):
    steps = 2 + (jnp.mean(x) > 0).astype(jnp.int32)
    return self.o(jax.lax.fori_loop(0, steps, lambda i, h: h + 0.25 * nnx.relu(self.f(h)), nnx.relu(self.a(x))))


def test_a_while_loop_body_is_traced_like_a_scan():
  """Before: a while_loop was opaque, so f was kept whole (and for_model left it unpenalised)."""
  from mobileprune_jax import regularisers

  model = RefineUntil(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(7).normal(size=(4, 5)), jnp.float32)
  reg = regularisers.group_lasso(neuron=0.1).for_model(model, x)
  units = {frozenset((p, int(i)) for p, idx in u.items() for i in idx) for u in reg.units.units}
  assert units == {frozenset([*(("f/kernel", 8 * j + k) for k in range(8)), *(("o/kernel", 3 * j + k) for k in range(3))])
                   for j in range(8)}  # stream channel j: read by f's row j at every step and by o's row j
  for layer in (model.a, model.f):
    layer.kernel[...] = layer.kernel[...].at[:, 2].set(0)
    layer.bias[...] = layer.bias[...].at[2].set(0)
  small = surgery.shrink(model, x)
  assert small.a.kernel.shape == (5, 7) and small.f.kernel.shape == (7, 7) and small.o.kernel.shape == (7, 3)
  for sample in (x, x - 3, x + 3):  # two and three steps
    np.testing.assert_allclose(np.asarray(small(sample)), np.asarray(model(sample)), atol=1e-5)
