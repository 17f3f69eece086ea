"""The validation split, random-shift augmentation and init_from: checked against hand-built references."""

import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import config as config_lib
from mobileprune_jax import data as data_lib
from mobileprune_jax import surgery
from mobileprune_jax.data import splits
from mobileprune_jax.train import pipeline
from mobileprune_jax.train.steps import evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "configs" / "quick.py"


def _toy(n=50):
  x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 4, 4, 1), np.float32)
  return data_lib.Dataset("toy", x, np.arange(n, dtype=np.int32) % 3, x[:5], np.zeros(5, np.int32), 3)


def test_hold_out_is_a_seeded_partition_of_the_training_data():
  ds = _toy()
  a, b, other = splits.hold_out(ds, 0.2, seed=1), splits.hold_out(ds, 0.2, seed=1), splits.hold_out(ds, 0.2, seed=2)
  ids = lambda x: x[:, 0, 0, 0].astype(int).tolist()
  assert len(a.val_x) == 10 and len(a.train_x) == 40
  assert sorted(ids(a.train_x) + ids(a.val_x)) == list(range(50))  # a partition: nothing lost, nothing twice
  assert ids(a.train_x) == sorted(ids(a.train_x)) and ids(a.val_x) == sorted(ids(a.val_x))  # order kept
  assert ids(a.val_x) == ids(b.val_x) and ids(a.val_x) != ids(other.val_x)
  assert a.val_y.tolist() == [i % 3 for i in ids(a.val_x)]  # labels travel with their inputs
  np.testing.assert_array_equal(a.test_x, ds.test_x)


@pytest.mark.parametrize("fraction,message", [(0.0, "must be in"), (1.0, "must be in"), (0.001, "empty split")])
def test_hold_out_refuses_bad_fractions(fraction, message):
  with pytest.raises(ValueError, match=message):
    splits.hold_out(_toy(), fraction, 0)


def test_hold_out_refuses_a_data_set_with_a_validation_fold():
  ds = splits.hold_out(_toy(), 0.2, 0)
  with pytest.raises(ValueError, match="already has a validation split"):
    splits.hold_out(ds, 0.2, 0)


def test_shift_images_matches_a_pixel_loop():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(6, 7, 5, 2)).astype(np.float32)
  out = splits.shift_images(x, 2, np.random.default_rng(11))
  dy, dx = np.random.default_rng(11).integers(-2, 3, size=(2, 6))
  ref = np.zeros_like(x)
  for n in range(6):
    for i in range(7):
      for j in range(5):
        if 0 <= i - dy[n] < 7 and 0 <= j - dx[n] < 5:
          ref[n, i, j] = x[n, i - dy[n], j - dx[n]]
  np.testing.assert_array_equal(out, ref)
  assert splits.shift_images(x, 0, rng) is x


def test_augmented_batches_after_a_skip_are_the_uninterrupted_epochs_batches():
  ds = _toy(40)
  full = list(data_lib.batches(ds.train_x, ds.train_y, 8, seed=5, shift=1))
  resumed = list(data_lib.batches(ds.train_x, ds.train_y, 8, seed=5, skip=3, shift=1))
  for (x1, y1), (x2, y2) in zip(full[3:], resumed):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  plain = list(data_lib.batches(ds.train_x, ds.train_y, 8, seed=5))
  assert not all(np.array_equal(a[0], b[0]) for a, b in zip(full, plain))  # the shift did something


def _quick(**overrides):
  cfg = config_lib.load_config(QUICK)
  config_lib.apply_overrides(cfg, ["model=lenet300", "train_subset=1000", "test_subset=300", "progress=False",
                                   "data_parallel=False", "pretrain.epochs=1", "prune.iterations=1", "prune.epochs=1",
                                   "retrain.epochs=1", "coef.neuron=0.3", "coef.l0=2e-3"]
                          + [f"{k}={v}" for k, v in overrides.items()])
  return cfg


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("dense")
  summary = pipeline.run(_quick(method="dense", val_fraction=0.2, augment_shift=1), wd, log=lambda *_: None)
  return wd, summary


def test_a_run_with_a_validation_split_reports_it(dense_run):
  wd, s = dense_run
  ds = splits.hold_out(data_lib.load("mnist_subset").subset(1000, 300), 0.2, 0)
  model = surgery.load(wd / "model")
  assert (s["train_size"], s["val_size"], s["test_size"]) == (800, 200, 300)
  assert s["val_accuracy"] == evaluate(model, ds.val_x, ds.val_y, 100)  # the held-out 200, rebuilt independently
  assert s["base_val_accuracy"] == s["val_accuracy"]  # dense: nothing pruned
  log = [json.loads(line) for line in (wd / "log.jsonl").read_text().splitlines()]
  assert all(e["val_accuracy"] is not None for e in log if "epoch" in e)


def test_init_from_starts_from_the_dense_models_weights(dense_run, tmp_path):
  wd, dense = dense_run
  cfg = _quick(method="l1", val_fraction=0.2, init_from=str(wd / "model"), **{"pretrain.epochs": 0,
                                                                               "prune.epochs": 0, "retrain.epochs": 0})
  s = pipeline.run(cfg, tmp_path / "cell", log=lambda *_: None)
  assert s["base_accuracy"] == dense["pruned_accuracy"]  # evaluated on the loaded weights
  assert s["base_val_accuracy"] == dense["val_accuracy"]
  got = nnx.state(surgery.load(tmp_path / "cell" / "model"), nnx.Param)
  want = nnx.state(surgery.load(wd / "model"), nnx.Param)
  for a, b in zip(jax_leaves(got), jax_leaves(want)):  # no training step: the same weights
    np.testing.assert_array_equal(a, b)


def jax_leaves(state):
  import jax

  return [np.asarray(v) for v in jax.tree.leaves(state)]


def test_init_from_refuses_another_shape_in_one_line(tmp_path, dense_run):
  wd, _ = dense_run
  pruned = pipeline.run(_quick(), tmp_path / "pruned", log=lambda *_: None)
  assert pruned["params_remaining"] < pruned["params_total"]
  for source, message in ((tmp_path / "pruned" / "model", "do not match"), (tmp_path / "nowhere", "init_from")):
    with pytest.raises(config_lib.ConfigError, match=message):
      pipeline.run(_quick(init_from=str(source)), tmp_path / "refused", log=lambda *_: None)
    assert not (tmp_path / "refused").exists()
  with pytest.raises(config_lib.ConfigError, match="augment_shift needs images"):
    pipeline.run(_quick(dataset="basic_motions", model="har_cnn", augment_shift=1, batch_size=4,
                        train_subset=0, test_subset=0), tmp_path / "refused", log=lambda *_: None)


def test_runs_without_the_new_keys_keep_their_fingerprint():
  cfg = _quick()
  before = pipeline.config_fingerprint(cfg)
  assert "val_fraction" not in before and "init_from" not in before and "selection" not in before
  cfg.val_fraction = 0.1
  assert pipeline.config_fingerprint(cfg) != before
