"""``surgery.shrink(..., round_to=N)``: widths at multiples of N (or unchanged), outputs exactly equal.

References: a hand-built MLP whose kept channels are computed by hand from the filter norms, and
zoo models with random dead channels checked against the unpruned model's outputs.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import models, surgery


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(12, 20, rngs=rngs)
    self.fc2 = nnx.Linear(20, 16, rngs=rngs)
    self.fc3 = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x):
    return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


def _hand_built():
  """fc1 keeps 13 of 20 live outputs, fc2 11 of 16; the dead ones have filters of known norms."""
  model = MLP(nnx.Rngs(0))
  k1, k2, k3 = (np.asarray(layer.kernel[...]).copy() for layer in (model.fc1, model.fc2, model.fc3))
  dead1 = [0, 2, 4, 6, 8, 10, 12]  # fc2 reads none of them: removable, whatever their own filters
  for rank, c in enumerate(dead1):
    k1[:, c] = (rank + 1) * 0.1 / np.linalg.norm(k1[:, c]) * k1[:, c]  # filter norms 0.1 … 0.7
  k2[dead1, :] = 0
  dead2 = [1, 3, 5, 7, 9]  # fc3 reads none of them
  for rank, c in enumerate(dead2):
    k2[:, c] = (5 - rank) * 0.1 / max(np.linalg.norm(k2[:, c]), 1e-12) * k2[:, c]  # norms 0.5 … 0.1
  k3[dead2, :] = 0
  for layer, k in zip((model.fc1, model.fc2, model.fc3), (k1, k2, k3)):
    layer.kernel[...] = jnp.asarray(k)
  return model


def test_rounded_widths_keep_the_largest_removable_filters(tmp_path):
  model = _hand_built()
  x = np.random.default_rng(0).normal(size=(4, 12)).astype(np.float32)
  plain = surgery.shrink(model, x)
  assert (plain.fc1.kernel.shape, plain.fc2.kernel.shape) == ((12, 13), (13, 11))
  small, report = surgery.shrink_with_report(model, x, round_to=4)
  # fc1: 13 → 16 keeps the three largest dead filters (channels 12, 10, 8); fc2: 11 → 12 keeps channel 1
  assert small.fc1.kernel.shape == (12, 16) and small.fc2.kernel.shape == (16, 12) and small.fc3.kernel.shape == (12, 10)
  live1 = [c for c in range(20) if c not in (0, 2, 4, 6)]
  live2 = [c for c in range(16) if c not in (3, 5, 7, 9)]
  np.testing.assert_array_equal(small.fc1.kernel[...], np.asarray(model.fc1.kernel[...])[:, live1])
  np.testing.assert_array_equal(small.fc2.kernel[...], np.asarray(model.fc2.kernel[...])[np.ix_(live1, live2)])
  assert report.params_after == 12 * 16 + 16 + 16 * 12 + 12 + 12 * 10 + 10
  assert report.max_abs_diff <= 1e-6
  np.testing.assert_allclose(small(x), model(x), atol=1e-6)
  reasons = {c.path: c.kept_dead for c in report.layers}
  assert reasons["fc1/kernel"] == {"coupled: kept to round widths to a multiple of 4": 3}
  # a width already a multiple, or uncut, stays as it is
  assert surgery.shrink(model, x, round_to=1).fc1.kernel.shape == (12, 13)
  assert surgery.shrink(model, x, round_to=32).fc1.kernel.shape == (12, 20)  # 13 → 32 > 20: unchanged


@pytest.mark.parametrize("round_to", [0, -4, 2.5, True, "8"])
def test_round_to_must_be_a_positive_integer(round_to):
  model = _hand_built()
  with pytest.raises(ValueError, match="round_to must be a positive integer"):
    surgery.shrink(model, np.zeros((1, 12), np.float32), round_to=round_to)


def _kill_random_channels(model, seed, fraction=0.4):
  """Zeroes every weight reading a random subset of each conv / dense layer's input channels."""
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, (nnx.Conv, nnx.Linear)) and getattr(node, "feature_group_count", 1) == 1:
      k = np.asarray(node.kernel[...]).copy()
      dead = rng.random(k.shape[-2]) < fraction
      k[..., dead, :] = 0
      node.kernel[...] = jnp.asarray(k)


@pytest.mark.parametrize("name,kwargs,shape,n", [
    ("lenet5", {}, (2, 28, 28, 1), 4),
    ("resnet20", {}, (2, 32, 32, 3), 8),
    ("mobilenet_v2", {"width": 0.35, "in_channels": 1}, (2, 32, 32, 1), 8),
])
@pytest.mark.slow
def test_zoo_models_round_every_cut_width_and_keep_their_outputs(name, kwargs, shape, n):
  model = models.create(name, seed=0, **kwargs)
  _kill_random_channels(model, seed=1)
  x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  _, plain = surgery.shrink_with_report(model, x)
  small, report = surgery.shrink_with_report(model, x, round_to=n)
  assert report.max_abs_diff <= 1e-4
  cut = [c for c in plain.layers if c.out_after < c.out_before]
  assert cut, "the zero pattern cut nothing"
  for change in report.layers:
    assert change.out_after % n == 0 or change.out_after == change.out_before, change
  plain_widths = {c.path: c.out_after for c in plain.layers}
  for change in report.layers:  # rounding only keeps more
    assert plain_widths[change.path] <= change.out_after
  assert plain.params_after <= report.params_after < report.params_before


@pytest.mark.slow
def test_the_pipeline_rounds_the_saved_model_and_budgets_the_rounded_size(tmp_path):
  from test_checkpoints import _cfg

  from mobileprune_jax.train import pipeline

  summary = pipeline.run(_cfg("round_to=8", "budget.params=0.5", "prune.epochs=2"), tmp_path / "run",
                         log=lambda *_: None)
  saved = surgery.load(tmp_path / "run" / "model")
  widths = {"fc1/kernel": saved.fc1.kernel.shape[1], "fc2/kernel": saved.fc2.kernel.shape[1],
            "fc3/kernel": saved.fc3.kernel.shape[1]}
  assert widths == summary["widths_after"]
  dense = summary["widths_before"]
  assert all(w % 8 == 0 or w == dense[p] for p, w in widths.items()) and widths != dense
  unrounded = summary["unrounded"]
  assert all(unrounded["widths_after"][p] <= w for p, w in widths.items())
  assert unrounded["params_remaining"] <= summary["params_remaining"] == surgery.count_params(saved)
  # the budget is reached by the rounded model: its measured fraction is the saved model's
  assert summary["budget"]["reached"]["params"] == pytest.approx(summary["params_remaining"] / summary["params_total"])


@pytest.mark.slow
def test_load_expanded_puts_the_saved_weights_back_and_shrinks_to_the_same_model(tmp_path):
  model = models.create("resnet20", seed=0)
  _kill_random_channels(model, seed=3)
  x = np.random.default_rng(4).normal(size=(2, 32, 32, 3)).astype(np.float32)
  small, report = surgery.shrink_with_report(model, x)
  surgery.save(tmp_path / "m", small, factory="resnet20", kwargs={"seed": 0}, cuts=report.cuts)
  full = surgery.load_expanded(tmp_path / "m")
  assert surgery.count_params(full) == report.params_before
  assert surgery.max_output_diff(full, model, x) <= 1e-4  # the pruned network at full width
  again = surgery.shrink(full, x)
  assert surgery.count_params(again) == report.params_after
  rounded = surgery.shrink(full, x, round_to=8)
  assert surgery.max_output_diff(rounded, model, x) <= 1e-4


def test_load_expanded_keeps_rng_state_of_a_model_with_dropout(tmp_path):
  """MobileNetV2 holds a Dropout's RNG key (a PRNG-key array numpy cannot hold): it is carried over as it is."""
  model = models.create("mobilenet_v2", width=0.35, in_channels=1, seed=0)
  _kill_random_channels(model, seed=5)
  x = np.random.default_rng(6).normal(size=(2, 32, 32, 1)).astype(np.float32)
  small, report = surgery.shrink_with_report(model, x)
  surgery.save(tmp_path / "m", small, factory="mobilenet_v2", kwargs={"width": 0.35, "in_channels": 1, "seed": 0},
               cuts=report.cuts)
  full = surgery.load_expanded(tmp_path / "m")
  assert surgery.count_params(full) == report.params_before
  assert surgery.max_output_diff(full, model, x) <= 1e-4
  assert surgery.count_params(surgery.shrink(full, x)) == report.params_after
