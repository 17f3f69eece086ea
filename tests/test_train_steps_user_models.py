"""The pipeline's train step, predict and PALM sweep on models outside the zoo: the zoo's calls take ``train``; a
model whose call does not is run as ``model(x)`` in the mode ``.train()`` / ``.eval()`` set (before: TypeError)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mobileprune_jax import regularisers
from mobileprune_jax.train.palm import make_palm_step
from mobileprune_jax.train.steps import forward, predict, train_step


class NoFlag(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Linear(6, 16, rngs=rngs)
    self.b = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.b(nnx.relu(self.a(x)))


class Flagged(NoFlag):
  def __init__(self, rngs):
    super().__init__(rngs)
    self.seen = []

  def __call__(self, x, train: bool = False):
    self.seen.append(train)
    return super().__call__(x)


def _batch():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(8, 6)), jnp.float32), jnp.asarray(rng.integers(0, 3, 8))


def test_a_model_without_a_train_argument_trains_predicts_and_runs_palm():
  x, y = _batch()
  model = NoFlag(nnx.Rngs(0))
  before = np.asarray(model.a.kernel[...]).copy()
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  loss, _ = train_step(model, optimizer, x, y)
  assert np.isfinite(float(loss)) and not np.array_equal(np.asarray(model.a.kernel[...]), before)
  np.testing.assert_array_equal(np.asarray(predict(model, x)), np.argmax(np.asarray(model(x)), -1))
  reg = regularisers.group_lasso(neuron=0.1).for_model(model, x)
  step = make_palm_step(model, reg, ["a/kernel", "b/kernel"])
  loss, lipschitz = step(model, x, y)
  assert np.isfinite(float(loss)) and float(lipschitz) >= 1.0


def test_a_model_taking_train_gets_it():
  x, _ = _batch()
  model = Flagged(nnx.Rngs(0))
  forward(model, x, training=True)
  forward(model, x, training=False)
  assert model.seen == [True, False]
