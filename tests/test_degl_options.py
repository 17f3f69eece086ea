"""DEGL as the paper runs it: the (sub)gradient selection and the learning rate ×0.1 on a plateau."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mobileprune_jax import config as config_lib
from mobileprune_jax import proximal, regularisers
from mobileprune_jax.train import phases, pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_subgradient_by_hand():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(4, 3)).astype(np.float32)
  kernel[:, 1] = 0.0  # a zero group: subgradient 0
  params = {"a": {"kernel": jnp.asarray(kernel), "bias": jnp.ones(3)}, "out": {"kernel": jnp.ones((3, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = regularisers.elastic_group_lasso_subgradient(0.1, 0.01, rules=[("^out/kernel$", "none")])
  updates, state = tx.update(grads, tx.init(params), params, penalty_multiplier=2.0)
  want = np.ones((4, 3), np.float32)
  for j in range(3):  # one group per output unit (column): 2·(γ·√4·w/‖w‖ + 2λ·w)
    w = kernel[:, j]
    norm = np.linalg.norm(w)
    want[:, j] += 2 * (0.1 * 2 * (w / norm if norm > 0 else 0 * w) + 2 * 0.01 * w)
  np.testing.assert_allclose(updates["a"]["kernel"], want, rtol=1e-6)
  np.testing.assert_array_equal(updates["a"]["bias"], np.ones(3))  # biases and the excluded classifier untouched
  np.testing.assert_array_equal(updates["out"]["kernel"], np.ones((3, 2)))
  assert int(state.count) == 1


def _degl_cfg(**degl):
  cfg = config_lib.load_config(REPO / "experiments" / "configs" / "quick.py")
  config_lib.apply_overrides(cfg, ["method=degl", "model=lenet300", "pretrain.epochs=0"]
                             + [f"degl.{k}={v}" for k, v in degl.items()])
  return cfg


class _Tiny(nnx.Module):
  def __init__(self):
    self.hidden = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    self.out = nnx.Linear(5, 3, rngs=nnx.Rngs(1))

  def __call__(self, x, train=False):
    return self.out(jax.nn.relu(self.hidden(x)))


def test_plateau_drops_the_rate_and_the_prox_follows_it():
  cfg = _degl_cfg(plateau_patience=1, lr=0.5, momentum=0.0, gamma=0.02, lam=0.05)
  model = _Tiny()
  select = phases.build_phases(cfg, ["hidden/kernel", "out/kernel"], jnp.ones((2, 6)), steps_per_epoch=2)[0]
  tx = select.build(model).optimizer.tx
  params = nnx.state(model, nnx.Param)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  scales = []
  for _ in range(8):  # zero gradient, constant loss: no improvement after the first window of 2 steps
    kernel = np.asarray(params["hidden"]["kernel"][...])
    updates, state = tx.update(zero, state, params, value=jnp.float32(1.0), penalty_multiplier=1.0)
    params = optax.apply_updates(params, updates)
    s = float(proximal._learning_rate(state))
    scales.append(round(s / 0.5, 6))
    # the EGL prox at step s, by hand: column j ← max(0, 1 − sγ√6/‖y_j‖)·y_j, y = w/(1 + 2sλ)
    y = kernel / (1 + 2 * s * 0.05)
    norms = np.linalg.norm(y, axis=0)
    want = y * np.maximum(0, 1 - s * 0.02 * np.sqrt(6) / (1 + 2 * s * 0.05) / norms)
    np.testing.assert_allclose(params["hidden"]["kernel"][...], want, rtol=2e-5, atol=1e-7)
  assert scales[0] == 1.0 and scales[-1] < 0.1 + 1e-6 and 0.1 in scales  # ×0.1 after the plateau, then again


def test_constant_rate_default_keeps_the_plain_chain():
  cfg = _degl_cfg()
  select = phases.build_phases(cfg, ["hidden/kernel", "out/kernel"], jnp.ones((2, 6)), steps_per_epoch=2)[0]
  state = select.build(_Tiny()).optimizer.opt_state
  assert not any(isinstance(x, optax.InjectHyperparamsState)
                 for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.InjectHyperparamsState)))


@pytest.mark.slow
def test_paper_mode_run_selects_thresholds_and_debiases(tmp_path):
  cfg = _degl_cfg(selection="subgradient", plateau_patience=1, select_epochs=2, retrain_epochs=1, gamma=0.03, t_th=0.02,
                  momentum=0.0)  # with momentum β the subgradient acts 1/(1 − β) times stronger than the prox
  config_lib.apply_overrides(cfg, ["train_subset=1000", "test_subset=300", "progress=False", "data_parallel=False",
                                   "pretrain.epochs=1"])
  s = pipeline.run(cfg, tmp_path, log=lambda *_: None)
  import json

  log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
  removed = [e["degl_removed_units"] for e in log if e.get("event") == "end"]
  assert removed and removed[0] > 0  # units below t_th removed after the subgradient selection
  assert s["params_remaining"] < s["params_total"] and s["pruned_accuracy"] > 0.3  # chance: 0.1


@pytest.mark.parametrize("override,message", [("degl.selection=gradient", "degl.selection must be one of"),
                                              ("degl.plateau_factor=1.0", "degl.plateau_factor must be in")])
def test_bad_degl_options_are_config_errors(override, message):
  cfg = _degl_cfg()
  config_lib.apply_overrides(cfg, [override])
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(cfg)


def test_the_threshold_keeps_the_strongest_unit_of_a_layer_it_would_empty():
  """Every hidden unit of fc1 has max |w| below t_th: DEGL's rule would remove all of them (and with them the output's
  dependence on the input). The strongest (largest max |w|, found here by numpy) stays with its weights; the others
  go with their bias and their fc2 rows. A second layer with units above t_th is untouched."""
  from mobileprune_jax.train import actions

  class MLP(nnx.Module):
    def __init__(self):
      self.fc1, self.fc2 = nnx.Linear(6, 5, rngs=nnx.Rngs(0)), nnx.Linear(5, 3, rngs=nnx.Rngs(1))

    def __call__(self, x, train=False):
      return self.fc2(nnx.relu(self.fc1(x)))

  m = MLP()
  rng = np.random.default_rng(0)
  k1 = (rng.uniform(-1, 1, (6, 5)) * 1e-3).astype(np.float32)  # every unit under t_th = 1e-2
  m.fc1.kernel[...] = jnp.asarray(k1)
  m.fc1.bias[...] = jnp.ones(5)
  k2 = np.asarray(m.fc2.kernel[...]).copy()
  info = actions.degl_threshold(m, jnp.ones((2, 6)), 1e-2, "fc2/kernel")
  keep = int(np.argmax(np.abs(k1).max(axis=0)))
  want1 = np.zeros_like(k1)
  want1[:, keep] = k1[:, keep]
  np.testing.assert_array_equal(np.asarray(m.fc1.kernel[...]), want1)
  np.testing.assert_array_equal(np.asarray(m.fc1.bias[...]), np.eye(5, dtype=np.float32)[keep])
  want2 = np.zeros_like(k2)
  want2[keep] = k2[keep]
  np.testing.assert_array_equal(np.asarray(m.fc2.kernel[...]), want2)
  assert info["degl_removed_units"] == 4
