"""Pruning to a budget: the controller's pieces by hand, and short runs that land on their targets.

The reached fractions are recomputed here from the summary's raw counts (non-zero parameters,
parameters of the shrunk model, MACs) and compared with the requested targets.
"""

import json
import math

import jax
import pytest

from mobileprune_jax import config as config_lib
from mobileprune_jax.train import budget, pipeline

CONFIG = "experiments/configs/quick.py"


def test_next_multiplier_by_hand():
  base, applied = budget.next_multiplier(1.0, 2.0, gain=0.15, proportional=3.0)
  assert base == pytest.approx(2 ** 0.15)
  assert applied == pytest.approx(2 ** 0.15 * 4)  # 2^3 = 8 is capped at ×4
  base, applied = budget.next_multiplier(0.5, 1.0, gain=0.15, proportional=3.0)
  assert (base, applied) == (0.5, 0.5)
  base, applied = budget.next_multiplier(1.0, 0.9, gain=0.2, proportional=2.0)
  assert base == pytest.approx(0.9 ** 0.2) and applied == pytest.approx(0.9 ** (0.2 + 8))
  _, applied = budget.next_multiplier(1.0, 0.1, gain=0.0, proportional=3.0)
  assert applied == pytest.approx(1 / 64)  # (1/4)^3 is capped at 1/64
  base, _ = budget.next_multiplier(1.0, 1e6, gain=0.5, proportional=1.0)
  assert base == pytest.approx(2.0)  # r capped at 4


def test_wanted_fraction_is_a_geometric_ramp():
  assert budget.wanted_fraction(0.01, 0.0, 0.6) == 1.0
  assert budget.wanted_fraction(0.01, 0.3, 0.6) == pytest.approx(0.1)
  assert budget.wanted_fraction(0.01, 0.9, 0.6) == pytest.approx(0.01)
  assert budget.wanted_fraction(0.01, 0.1, 0.0) == pytest.approx(0.01)


def test_bisect_multiplier_finds_the_crossing():
  assert budget.bisect_multiplier(lambda m: 3.0 / m, 1.0) == pytest.approx(3.0, rel=0.01)
  assert budget.bisect_multiplier(lambda m: 0.5, 1.0) is None  # already small enough
  assert budget.bisect_multiplier(lambda m: 1000.0 / m, 1.0, span=16.0) == pytest.approx(16.0)


def test_report_and_the_one_line_error():
  entry = budget.report({"nonzero": 0.0215, "params": 0.04}, {"nonzero": 0.02, "params": 0.1}, 1.5, 0.1)
  assert entry["within_tolerance"]  # nonzero binds (1.075 ≤ 1.1); params is below its target
  entry = budget.report({"nonzero": 0.017}, {"nonzero": 0.02}, 0.3, 0.1)
  assert not entry["within_tolerance"]
  with pytest.raises(budget.BudgetNotReachedError, match=r"nonzero 1.7 % \(target 2 %\), final multiplier 0.3"):
    budget.check_reached(entry, "run")


def _cfg(model, **overrides):
  cfg = config_lib.load_config(CONFIG)
  cfg.model, cfg.progress, cfg.data_parallel = model, False, False
  # the budget is reached in pruning; retraining keeps the support, so the tests skip it
  cfg.pretrain.epochs, cfg.prune.iterations, cfg.prune.epochs, cfg.retrain.epochs = 1, 1, 3, 0
  cfg.test_subset = 500  # the budget does not look at the test digits
  cfg.coef.coupled = False  # the papers' per-layer groups (coupled units: test_coupled_mobileprune_lands_on_params)
  config_lib.apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])
  return cfg


def _reached(summary, kind):
  return {"nonzero": summary["nonzero_params"] / summary["params_total"],
          "params": summary["params_remaining"] / summary["params_total"],
          "macs": summary["macs_pruned"] / summary["macs_dense"]}[kind]


# both kinds of target on both models; a LeNet-5 run costs ~25 s on 2 CPU cores, so it gets two of them
TARGETS = [("lenet300", "nonzero", 0.01), ("lenet300", "nonzero", 0.05), ("lenet300", "params", 0.10),
           ("lenet5", "nonzero", 0.02), ("lenet5", "params", 0.05)]


@pytest.mark.parametrize("model,kind,target", TARGETS)
@pytest.mark.slow
def test_mobileprune_lands_on_the_budget(tmp_path, model, kind, target):
  summary = pipeline.run(_cfg(model, **{f"budget.{kind}": target}), tmp_path, log=lambda *_: None)
  reached = _reached(summary, kind)
  assert abs(reached / target - 1) <= 0.1, (reached, summary["budget"])
  assert summary["budget"]["target"] == {kind: target}
  assert summary["budget"]["reached"][kind] == pytest.approx(reached)
  assert summary["pruned_accuracy"] > 0.5
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["budget"] == summary["budget"]


@pytest.mark.slow
def test_coupled_mobileprune_lands_on_params(tmp_path):
  """Coupled units (the default of new configs) under the params budget of the README job."""
  summary = pipeline.run(_cfg("lenet5", **{"budget.params": 0.05, "coef.coupled": True}), tmp_path,
                         log=lambda *_: None)
  assert abs(_reached(summary, "params") / 0.05 - 1) <= 0.1, summary["budget"]
  assert summary["pruned_accuracy"] > 0.5


@pytest.mark.parametrize("method,extra", [
    ("mobileprune", {"mode": "palm"}),
    ("group_lasso", {}),
    ("l1_sgl", {}),
    ("degl", {"degl.select_epochs": 3, "degl.retrain_epochs": 0, "degl.gamma": 0.05}),
    ("egl", {"degl.select_epochs": 3, "degl.retrain_epochs": 1, "degl.gamma": 0.05}),  # penalised retraining
])
@pytest.mark.slow
def test_every_penalised_method_lands_on_a_budget(tmp_path, method, extra):
  cfg = _cfg("lenet300", method=method, **{"budget.nonzero": 0.05}, **extra)
  summary = pipeline.run(cfg, tmp_path, log=lambda *_: None)
  reached = _reached(summary, "nonzero")
  assert abs(reached / 0.05 - 1) <= 0.1, (method, reached, summary["budget"])


def test_an_unreachable_budget_is_one_error_and_the_outputs_are_written(tmp_path):
  # the smallest LeNet-300 the surgery keeps (one unit per layer) has ~800 of 266,610 parameters (0.3 %)
  import warnings

  cfg = _cfg("lenet300", **{"budget.params": 0.001, "train_subset": 2000, "prune.epochs": 1})
  events = []
  with warnings.catch_warnings(), pytest.raises(pipeline.BudgetNotReachedError, match=r"^lenet5_mobileprune_quick: "
                                                r"the budget was not reached within ±10 %: params .* \(target 0.1 %\)"):
    warnings.simplefilter("always")
    warnings.showwarning = lambda message, *args, **kwargs: events.append(("warning", str(message)))
    pipeline.run(cfg, tmp_path, log=lambda message, *_: events.append(("log", str(message))))
  reach = [i for i, (kind, text) in enumerate(events) if kind == "warning" and "out of this penalty's reach" in text]
  first_epoch = next(i for i, (kind, text) in enumerate(events) if kind == "log" and "epoch" in text)
  assert len(reach) == 1 and reach[0] < first_epoch, events[:first_epoch + 1]  # said once, before any training
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert not summary["budget"]["within_tolerance"] and (tmp_path / "model" / "weights.safetensors").exists()


@pytest.mark.parametrize("override,message", [
    ("budget.nonzero=1.5", "budget.nonzero must be a fraction in (0, 1]"),
    ("budget.macs=0", "budget.macs must be a fraction in (0, 1]"),
    ("budget.tolerance=0", "budget.tolerance must be in (0, 1)"),
    ("budget.ramp=2", "budget.ramp must be in [0, 1]"),
])
def test_bad_budget_values_are_one_config_error(override, message):
  cfg = _cfg("lenet300")
  config_lib.apply_overrides(cfg, [override])
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")):
    config_lib.validate(cfg)


def test_a_budget_needs_a_sparsifying_method():
  cfg = _cfg("lenet300", method="dense", **{"budget.nonzero": 0.1})
  with pytest.raises(config_lib.ConfigError, match="a budget needs a method with a sparsifying penalty"):
    config_lib.validate(cfg)
  assert math.isclose(_cfg("lenet300", **{"budget.nonzero": 0.1}).budget.nonzero, 0.1)


@pytest.mark.slow
def test_the_controller_in_a_hand_written_training_loop():
  """The API outside the pipeline: with_prox + penalty_multiplier in one's own loop, then land and report."""
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from mobileprune_jax import models, regularisers, surgery, transforms
  from mobileprune_jax.data import load
  from mobileprune_jax.train.steps import cross_entropy

  ds = load("mnist_subset")
  model = models.create("lenet300", seed=0)
  sample = jnp.asarray(ds.test_x[:2])
  controller = budget.Controller.for_model(model, sample, nonzero=0.03)
  reg = regularisers.l0_sparse_group_lasso(l0=5e-4, neuron=5e-2)
  lr = 0.05
  opt = nnx.Optimizer(model, transforms.with_prox(optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9),
                                                  reg), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y, m):
    loss, grads = nnx.value_and_grad(lambda mm: cross_entropy(mm(x), y))(model)
    opt.update(model, grads, penalty_multiplier=m)
    return loss

  rng = np.random.default_rng(0)
  base = m = 1.0
  total = 3 * (len(ds.train_x) // 128)
  for i in range(total):
    idx = rng.integers(0, len(ds.train_x), 128)
    step(model, opt, jnp.asarray(ds.train_x[idx]), jnp.asarray(ds.train_y[idx]), jnp.float32(m))
    if i % 8 == 7:
      base, m = controller.update(model, base, progress=i / total)
  m = controller.land(model, reg, lr, m)
  entry = controller.report(model, m)
  shrunk = surgery.shrink(model, sample)  # dead units (and their non-zero biases) gone
  nonzero = sum(np.count_nonzero(np.asarray(v)) for v in jax.tree.leaves(nnx.state(shrunk, nnx.Param))) / 266_610
  assert entry["within_tolerance"], entry
  assert abs(nonzero / 0.03 - 1) <= 0.1, nonzero
  with pytest.raises(ValueError, match="budget targets must be fractions in"):
    budget.Controller.for_model(model, sample, nonzero=2.0)


def test_controller_start_spreads_the_one_step_multiplier_over_the_ramp():
  """m₀·N applied as one ℓ1 prox (a soft threshold at s·m·λ) leaves the aimed fraction non-zero, counted by hand."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from mobileprune_jax import regularisers

  model, sample = _one_layer(0), jnp.ones((2, 40))
  controller = budget.Controller.for_model(model, sample, nonzero=0.2)
  reg, step, n = regularisers.l1(1.0), 0.05, 100  # strong enough that the start lowers it
  m0 = controller.start(model, reg, step, steps=n)
  weights = np.concatenate([np.abs(np.asarray(v)).ravel() for v in jax.tree.leaves(nnx.state(model, nnx.Param))])
  kept = lambda m: np.count_nonzero(weights > step * m * 1.0) / weights.size  # soft threshold, by hand
  aim = 0.2 * (1 + 3 * controller.tolerance)
  assert m0 < 1 and kept(m0 * n) <= aim < kept(m0 * n * 0.999)  # the bisection's crossing, to its precision
  assert kept(m0) > 0.9  # the first step barely prunes
  assert controller.start(model, regularisers.l1(1e-6), step, steps=n) == 1.0  # too weak: never raised at the start


def test_none_unsets_a_budget_target_from_the_command_line():
  cfg = config_lib.load_config("experiments/configs/lenet5_mobileprune.py")
  assert budget.targets(cfg) == {"params": 0.05}
  config_lib.apply_overrides(cfg, ["budget.params=None", "budget.nonzero=0.02"])
  assert budget.targets(cfg) == {"nonzero": 0.02}
  with pytest.raises(config_lib.ConfigError, match="takes a int"):
    config_lib.apply_overrides(cfg, ["seed=None"])  # only keys that may be unset take None


def test_landing_keeps_the_survivors_values_and_zeroes_what_the_prox_would():
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from mobileprune_jax import regularisers

  model, sample = _one_layer(1), jnp.ones((2, 40))
  before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]
  controller = budget.Controller.for_model(model, sample, nonzero=0.25)
  with pytest.warns(UserWarning, match=r"the landing starts at nonzero=97.6 % for a target of nonzero=25 %: one step"):
    m = controller.land(model, regularisers.l1(1.0), 0.05, 1.0)  # ~4x above the target (the biases are 0): said
  after = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]
  for b, a in zip(before, after):
    kept = np.abs(b) > 0.05 * m  # the soft threshold's support at the landing multiplier, by hand
    np.testing.assert_array_equal(a, np.where(kept, b, 0.0))  # survivors unchanged, the rest zero
  fraction = sum(np.count_nonzero(a) for a in after) / sum(a.size for a in after)
  assert abs(fraction / 0.25 - 1) <= 0.05 and m > 1.0
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a landing from less than twice the target is the normal end: no warning
    budget.Controller.for_model(model, sample, nonzero=0.15).land(model, regularisers.l1(1.0), 0.05, m)


def _one_layer(seed: int):
  """A single Linear(40 → 10): nothing for the surgery to remove, so sizes can be counted by hand."""
  from flax import nnx

  class OneLayer(nnx.Module):
    def __init__(self):
      self.dense = nnx.Linear(40, 10, rngs=nnx.Rngs(seed))

    def __call__(self, x, train=False):
      return self.dense(x)

  return OneLayer()


def test_a_model_below_the_target_lands_from_its_anchor_and_never_ends_below():
  """A run whose size fell below target·(1 − tolerance) (PALM's oscillation) is reset to the anchor — the last state
  at or above the target — and trimmed from there; the survivors are the anchor's own values. Without an anchor the
  model stays as it is (a prox cannot grow it) and the report says it missed."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from mobileprune_jax import regularisers

  model, sample = _one_layer(2), jnp.ones((2, 40))
  controller = budget.Controller.for_model(model, sample, nonzero=0.25)
  anchor = jax.tree.map(np.array, nnx.state(model))  # dense: at or above the target
  dense = [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param))]
  kernel = np.asarray(model.dense.kernel[...])
  model.dense.kernel[...] = jnp.asarray(np.where(np.abs(kernel) >= np.quantile(np.abs(kernel), 0.95), kernel, 0))
  model.dense.bias[...] = jnp.zeros(10)
  assert controller.measure(model)["nonzero"] < 0.25 * 0.9  # 5 % of the kernel: far below the target

  lone = nnx.clone(model)
  assert controller.land(lone, regularisers.l1(1.0), 0.05, 1.0) == 1.0  # no anchor: nothing to do
  assert not controller.report(lone, 1.0)["within_tolerance"]

  m = controller.land(model, regularisers.l1(1.0), 0.05, 1.0, fallback=anchor)
  report = controller.report(model, m)
  assert report["within_tolerance"] and abs(report["reached"]["nonzero"] / 0.25 - 1) <= 0.05, report
  for d, a in zip(dense, jax.tree.leaves(nnx.state(model, nnx.Param))):
    a = np.asarray(a)
    np.testing.assert_array_equal(a[a != 0], d[a != 0])  # the anchor's values, trimmed by |w| > s·m
    assert np.abs(a[a != 0]).min(initial=np.inf) >= np.abs(d[(a == 0) & (d != 0)]).max(initial=0)


def test_a_landing_that_would_empty_a_kernel_keeps_its_strongest_row():
  """fc2's weights are 1000x smaller than the others': the ℓ1 trim to 30 % zeroes all of fc2 (its threshold s·m is
  above fc2's largest weight, checked by hand), which would leave only the skip path. The landing keeps fc2's row with
  the largest norm (found here by numpy) at its values, so the branch still carries a signal."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from mobileprune_jax import regularisers

  class Skip(nnx.Module):
    def __init__(self):
      self.fc1, self.fc2 = nnx.Linear(40, 20, rngs=nnx.Rngs(3)), nnx.Linear(20, 10, rngs=nnx.Rngs(4))
      self.skip = nnx.Linear(40, 10, rngs=nnx.Rngs(5))

    def __call__(self, x, train=False):
      return self.fc2(nnx.relu(self.fc1(x))) + self.skip(x)

  model, sample = Skip(), jnp.ones((2, 40))
  model.fc2.kernel[...] = model.fc2.kernel[...] * 0.001
  fc2 = np.asarray(model.fc2.kernel[...])
  controller = budget.Controller.for_model(model, sample, nonzero=0.3)
  m = controller.land(model, regularisers.l1(1.0), 0.05, 1.0)
  assert np.abs(fc2).max() <= 0.05 * m  # the soft threshold alone would zero every fc2 weight
  strongest = int(np.argmax(np.linalg.norm(fc2, axis=1)))
  expected = np.zeros_like(fc2)
  expected[strongest] = fc2[strongest]
  np.testing.assert_array_equal(np.asarray(model.fc2.kernel[...]), expected)
  assert controller.report(model, m)["within_tolerance"]


def test_spare_emptied_kernels_by_role():
  """Units by hand: a conv kernel's input channel, a depthwise channel, a head of (in, heads, d); biases untouched."""
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(0)
  conv, dw, heads = (rng.normal(size=shape).astype(np.float32) for shape in ((3, 3, 4, 5), (3, 3, 1, 6), (8, 2, 4)))
  conv[:, :, 2] *= 3  # channel 2 strongest
  dw[..., 4] *= 3
  heads[:, 1] *= 3
  bias = rng.normal(size=5).astype(np.float32)
  before = {"a": conv, "b": dw, "c": heads, "d": bias, "e": conv}
  after = {k: np.zeros_like(v) for k, v in before.items()}
  after["e"] = np.where(np.abs(conv) > 1, conv, 0)  # not emptied: left as it is
  out = budget.spare_emptied_kernels(before, after, ["conv", "depthwise", "heads_in", "bias", "conv"])
  expect_conv = np.zeros_like(conv)
  expect_conv[:, :, 2] = conv[:, :, 2]
  expect_dw = np.zeros_like(dw)
  expect_dw[..., 4] = dw[..., 4]
  expect_heads = np.zeros_like(heads)
  expect_heads[:, 1] = heads[:, 1]
  for key, want in (("a", expect_conv), ("b", expect_dw), ("c", expect_heads), ("d", np.zeros(5)), ("e", after["e"])):
    np.testing.assert_array_equal(np.asarray(out[key]), want, err_msg=key)
  assert jnp.asarray(out["a"]).dtype == jnp.asarray(conv).dtype


def test_spare_emptied_kernels_in_another_layout_by_their_reader_axis():
  """An OIHW conv and an (out, in) matrix (``x @ w.T``) keep their strongest input channel / column, by hand; their
  roles' own layouts would have cut along the kernel's width and its outputs."""
  import numpy as np

  rng = np.random.default_rng(1)
  oihw, out_in = rng.normal(size=(5, 4, 3, 3)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
  oihw[:, 1] *= 3
  out_in[:, 6] *= 3
  before = {"k": oihw, "w": out_in}
  after = {k: np.zeros_like(v) for k, v in before.items()}
  out = budget.spare_emptied_kernels(before, after, ["conv", "dense"], reader_axes=[1, 1])
  expect_k, expect_w = np.zeros_like(oihw), np.zeros_like(out_in)
  expect_k[:, 1], expect_w[:, 6] = oihw[:, 1], out_in[:, 6]
  np.testing.assert_array_equal(np.asarray(out["k"]), expect_k)
  np.testing.assert_array_equal(np.asarray(out["w"]), expect_w)


def test_a_target_below_what_the_penalty_can_reach_warns_at_the_start():
  """Blocks stacked by nnx.vmap and run by nnx.scan are not penalised (the trace does not enter a scan over weights):
  no multiplier takes the model below them."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from test_surgery_user_models import ScannedStack

  from mobileprune_jax import regularisers

  model = ScannedStack(rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
  with pytest.warns(UserWarning, match="trace cannot see") as caught:
    reg = regularisers.group_lasso(neuron=1e-3).for_model(model, x)
  assert len(caught) == 1, [str(w.message) for w in caught]  # the stack's bias is named with its hidden kernel
  params = nnx.state(model, nnx.Param)
  cell = sum(v.size for p, v in jax.tree.leaves_with_path(params) if "blocks" in jax.tree_util.keystr(p))
  total = sum(v.size for v in jax.tree.leaves(params))
  assert cell / total > 0.5  # the floor: more than half of the parameters are the stack's
  with pytest.warns(UserWarning, match=r"budget params=40 % is out of this penalty's reach: .* keeps params=(\d+)"):
    budget.Controller.for_model(model, x, params=0.4).start(model, reg, 0.1, steps=100)
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    budget.Controller.for_model(model, x, params=0.8).start(model, reg, 0.1, steps=100)  # reachable: no warning


def test_the_pipeline_reports_an_unreachable_target_before_any_training_and_once():
  """``Steering`` (the pipeline's budget) checks the floor when it is built, before the first epoch, and the start of
  the pruning phase does not repeat the warning."""
  import warnings

  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from test_surgery_user_models import ScannedStack

  from mobileprune_jax import config, regularisers
  from mobileprune_jax.train.phases import Phase
  from mobileprune_jax.train.state import RunState
  from mobileprune_jax.train.steering import Steering

  model = ScannedStack(rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
  with pytest.warns(UserWarning, match="trace cannot see"):
    reg = regularisers.group_lasso(neuron=1e-3).for_model(model, x)
  phases = [Phase("pretrain", epochs=1), Phase("prune/1", epochs=1, scaled=True, controlled=True, regulariser=reg,
                                               step_size=0.1)]
  cfg = config.base_config()
  cfg.budget.params = 0.4
  with pytest.warns(UserWarning, match="budget params=40 % is out of this penalty's reach") as caught:
    steering = Steering(cfg, model, x, phases, steps_per_epoch=10, record=lambda entry: None)
  assert sum("out of this penalty's reach" in str(w.message) for w in caught) == 1
  state = RunState()
  state.phase = 1
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    steering.phase_starts(model, state)  # the pruning phase's start: no second warning
  assert state.multiplier > 0


def test_the_landing_anchor_holds_a_model_with_random_state(tmp_path):
  """A model with Dropout carries PRNG keys in its state. The anchor (the landing's fallback, a host copy of the
  state at a control point at or above the target) must hold them, land from them, and go through a checkpoint:
  before, the first control point of any budget run of such a model (MobileNetV2) raised a TypeError."""
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from mobileprune_jax import config, regularisers, tree_arrays
  from mobileprune_jax.train.phases import Phase
  from mobileprune_jax.train.state import RunState
  from mobileprune_jax.train.steering import ANCHOR, Steering

  class DropNet(nnx.Module):
    def __init__(self, rngs):
      self.fc1, self.fc2 = nnx.Linear(6, 16, rngs=rngs), nnx.Linear(16, 3, rngs=rngs)
      self.drop = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
      return self.fc2(self.drop(nnx.relu(self.fc1(x))))

  model = DropNet(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
  keys = [v for v in jax.tree.leaves(nnx.state(model)) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)]
  assert keys  # the model does carry a key
  reg = regularisers.group_lasso(neuron=1e-3).for_model(model, x)
  cfg = config.base_config()
  cfg.budget.params = 0.9
  steering = Steering(cfg, model, x, [Phase("prune/1", epochs=1, scaled=True, controlled=True, regulariser=reg,
                                            step_size=0.1, lands=True)], steps_per_epoch=8, record=lambda e: None)
  state = RunState()
  steering.step_done(model, state)  # a control point with the model at full size: the anchor is taken
  anchor = steering.items()[ANCHOR]
  now = tree_arrays.to_arrays(nnx.state(model))
  stored = tree_arrays.to_arrays(anchor)  # what a checkpoint writes
  assert set(stored) == set(now)
  for name, value in now.items():
    np.testing.assert_array_equal(stored[name], value, err_msg=name)
  steering.restore(tree_arrays.from_arrays(nnx.state(model), stored))  # what a resumed run holds
  landed = nnx.clone(model)
  nnx.update(landed, steering.anchor)  # what a landing from the anchor does
  for name, value in tree_arrays.to_arrays(nnx.state(landed)).items():
    np.testing.assert_array_equal(value, now[name], err_msg=name)
