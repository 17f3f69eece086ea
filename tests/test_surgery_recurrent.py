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
