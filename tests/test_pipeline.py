"""End-to-end runs on the embedded data: methods, summary, resume after SIGKILL, CLI errors."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import config as config_lib
from mobileprune_jax import groups, metrics, models, surgery
from mobileprune_jax.train import pipeline
from mobileprune_jax.train.steps import Placement, train_step

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "quick.py"


def _small(method="mobileprune", model="lenet300", **extra):
  cfg = config_lib.load_config(CONFIG)
  cfg.model = model
  cfg.method = method
  cfg.train_subset, cfg.test_subset = 1000, 500
  cfg.progress = False
  cfg.pretrain.epochs = 1
  cfg.prune.iterations, cfg.prune.epochs, cfg.retrain.epochs = 1, 3, 1
  cfg.degl.select_epochs, cfg.degl.retrain_epochs = 1, 1
  cfg.coef.neuron, cfg.coef.l0, cfg.prune.lr = 0.3, 2e-3, 0.05
  cfg.data_parallel = False
  for key, value in extra.items():
    config_lib.apply_overrides(cfg, [f"{key}={value}"])
  return cfg


@pytest.mark.slow
def test_mobileprune_run_writes_summary_that_matches_the_shrunk_model(tmp_path):
  # sharded over the 8 host devices of the test session
  summary = pipeline.run(_small(data_parallel=True, batch_size=96), tmp_path, log=lambda *_: None)
  assert summary["devices"] == 8
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  for key in ("dataset", "model", "method", "base_accuracy", "pruned_accuracy", "params_total", "params_remaining",
              "nonzero_params", "macs_dense", "macs_pruned", "architecture"):
    assert key in on_disk, key
  assert on_disk["params_total"] == 266_610 and on_disk["macs_dense"] == 266_200
  assert on_disk["params_remaining"] < on_disk["params_total"]
  assert on_disk["pruned_accuracy"] > 0.5
  assert on_disk["shrink_max_abs_diff"] <= 1e-5
  # the saved shrunk model: its measured size equals metrics' structural counts
  shrunk = surgery.load(tmp_path / "model")
  x = jnp.zeros((1, 28, 28, 1))
  assert metrics.count_params(nnx.state(shrunk, nnx.Param)) == summary["params_remaining"]
  assert metrics.macs(shrunk, x, sparse=True) == summary["macs_pruned"]
  stats = metrics.layer_stats(shrunk, x)
  assert summary["macs_pruned"] == sum(s.n_out * s.live_in for s in stats)  # n_in alive × n_out
  phases = [json.loads(line)["phase"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
  assert phases == ["pretrain", "pretrain", "prune/1", "prune/1", "prune/1", "retrain/1"]
  entries = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
  # the test split is read once per reported number: the dense model's (and the summary's final one), never per epoch
  assert [e for e in entries if "test_accuracy" in e] == [
      {"phase": "pretrain", "event": "dense_model", "test_accuracy": summary["base_accuracy"]}]


@pytest.mark.parametrize("method,extra", [
    ("degl", {"degl.t_th": 0.05, "degl.gamma": 0.2}),
    ("group_lasso", {"pretrain.schedule": "'cosine'", "retrain.schedule": "'step'", "retrain.optimizer": "'sgd'"}),
    ("l1", {"coef.l1": 1e-3}),
    ("mobileprune", {"mode": "palm", "prune.steps": 3, "model": "lenet5"}),
])
@pytest.mark.slow
def test_other_methods_run(tmp_path, method, extra):
  summary = pipeline.run(_small(method, **extra), tmp_path, log=lambda *_: None)
  assert summary["method"] == method
  assert summary["nonzero_params"] <= summary["params_total"]
  if method == "degl":
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(e.get("degl_removed_units", 0) > 0 for e in lines)
    assert summary["params_remaining"] < summary["params_total"]


@pytest.mark.slow
def test_palm_sweeps_decrease_the_penalised_objective():
  """PALM's guarantee: Ψ = loss + R never goes up on the batch it steps on (R computed here in numpy)."""
  from mobileprune_jax import regularisers
  from mobileprune_jax.data import load
  from mobileprune_jax.train import palm
  from mobileprune_jax.train.steps import cross_entropy

  l0, neuron = 1e-3, 5e-2
  ds = load("mnist_subset")
  m = models.create("lenet300")
  step = palm.make_palm_step(m, regularisers.l0_sparse_group_lasso(l0=l0, neuron=neuron), ["fc1/kernel", "fc2/kernel", "fc3/kernel"])
  x, y = jnp.asarray(ds.train_x[:200]), jnp.asarray(ds.train_y[:200])

  def psi(model):
    r = 0.0
    for layer in (model.fc1, model.fc2, model.fc3):
      k, b = np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64)
      r += l0 * (np.count_nonzero(k) + np.count_nonzero(b))
      r += neuron * (np.linalg.norm(k, axis=1).sum() + np.abs(b).sum())
    return float(cross_entropy(model(x), y)) + r

  values = [psi(m)]
  for _ in range(4):
    _, lip = step(m, x, y)
    values.append(psi(m))
    assert float(lip) >= 1.0
  assert all(b <= a + 1e-4 for a, b in zip(values, values[1:])), values
  assert values[-1] < values[0] - 0.1
  assert int(jnp.sum(m.fc1.kernel[...] == 0)) > 1000


def test_data_parallel_matches_one_device():
  assert jax.device_count() == 8  # conftest asks for 8 host devices
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 64))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    import optax

    model = models.create("lenet5", seed=0)
    opt = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    placement = Placement(devices)
    placement.put_model(model, opt)
    for _ in range(3):
      xb, yb = placement.put_batch(x, y)
      loss, _ = train_step(model, opt, xb, yb)
    results.append((float(loss), jax.tree.map(np.asarray, nnx.state(model, nnx.Param))))
  assert abs(results[0][0] - results[1][0]) < 1e-5
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, atol=2e-5)


def _cli(*args, env=None):
  return subprocess.Popen([sys.executable, "-m", "mobileprune_jax", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("override,message", [
    ("--config.nonsense=1", "unknown config key 'nonsense'"),
    ("--config.coef.nope=1", "unknown config key 'coef.nope'"),
    ("--config.coef.l0=-1e-4", "coef.l0 must be a non-negative number"),
    ("--config.coef.l0=1e999", "coef.l0 must be finite, got inf"),
    ("--config.model=resnet1000", "unknown model 'resnet1000'"),
    ("--config.dataset=imagenet", "unknown dataset 'imagenet'"),
    ("--config.dataset=wisdm", "needs --config.data_dir"),
    ("--config.batch_size=big", "takes a int"),
    ("--config.retrain.schedule=linear", "retrain.schedule must be one of"),
    ("--config.seed=-1", "seed must be an integer in [0, 2**32)"),
    ("--config.batch_size=100000", "batch_size 100000 is larger than the 8000 training examples"),
    ("--config.model_kwargs.widht=3", "model 'lenet5' cannot be built with model_kwargs {'widht': 3}"),
])
@pytest.mark.slow
def test_bad_config_is_one_error_line_before_training(tmp_path, override, message):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  p = _cli("run", "--config", str(CONFIG), "--workdir", str(tmp_path / "w"), override, env=env)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 2
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], err
  assert not (tmp_path / "w" / "log.jsonl").exists()


CONFIGS = REPO / "experiments" / "configs"


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.py") if p.name != "common.py" and not p.name.startswith("_")))
def test_every_experiment_config_loads_and_validates(path):
  cfg = config_lib.load_config(CONFIGS / path)
  config_lib.validate(cfg)
  assert cfg.method in config_lib.METHODS


def _budget_grid():
  from experiments.grid import cells

  return [(c.config_arg, c.method) for c in cells.cells(list(cells.MODELS)) if c.seed == 0]


@pytest.mark.parametrize("arg,method", _budget_grid())
def test_budget_grid_configs_validate(arg, method):
  cfg = config_lib.load_config(f"{CONFIGS / 'budget_grid.py'}:{arg}")
  config_lib.validate(cfg)
  assert cfg.mode == ("palm" if method == "mobileprune_palm" else "prox_sgd")
  assert cfg.method == {"mobileprune_palm": "mobileprune"}.get(method, method)
  assert cfg.val_fraction > 0 and (cfg.pretrain.epochs > 0) == (method == "dense")
  if method != "dense":
    assert cfg.budget.nonzero == float(arg.split(",")[-1])


@pytest.mark.slow
def test_the_mobilenet_grid_cell_builds_a_10_class_model_on_padded_fashion_mnist():
  # validate() leaves model_kwargs to the model's constructor: build it and feed the padded 32×32×1 images
  cfg = config_lib.load_config(f"{CONFIGS / 'budget_grid.py'}:mobilenet_v2,mobileprune,fashion_mnist_idx,0.01")
  model = models.create(cfg.model, seed=0, **cfg.model_kwargs)
  x = np.pad(np.ones((2, 28, 28, 1), np.float32), ((0, 0), (2, 2), (2, 2), (0, 0)))  # 28 → cfg.pad_to
  assert cfg.pad_to == x.shape[1] == 32 and model(jnp.asarray(x)).shape == (2, 10)


@pytest.mark.parametrize("name", ["wisdm", "uci_har", "pamap2"])
def test_har_paper_configs_have_both_modes(name):
  path = CONFIGS / f"paper_mobileprune_{name}_har.py"
  palm_cfg = config_lib.load_config(path)
  code_cfg = config_lib.load_config(f"{path}:paper_code")
  for cfg in (palm_cfg, code_cfg):
    config_lib.validate(cfg)
  assert (palm_cfg.method, palm_cfg.mode) == ("mobileprune", "palm")
  assert code_cfg.method == "magnitude" and code_cfg.magnitude.threshold == {"wisdm": 0.015, "uci_har": 0.005,
                                                                            "pamap2": 0.01}[name]
  with pytest.raises(config_lib.ConfigError, match="bad argument"):
    config_lib.load_config(f"{path}:sgd")


def test_config_argument_errors_are_config_errors():
  with pytest.raises(config_lib.ConfigError, match="bad argument"):
    config_lib.load_config(f"{CONFIGS / 'budget_grid.py'}:lenet5,nope,mnist_subset,0.01")
  with pytest.raises(config_lib.ConfigError, match="bad argument"):
    config_lib.load_config(f"{CONFIGS / 'budget_grid.py'}:lenet5,dense,mnist_subset,0.01")  # dense takes no budget
  with pytest.raises(config_lib.ConfigError, match="get_config"):
    config_lib.load_config(f"{CONFIG}:extra")  # a get_config() without an argument
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load_config(f"{CONFIGS / 'missing.py'}:x")


def test_magnitude_threshold_zeroes_small_conv_weights_only():
  model = models.create("lenet5", seed=3)
  x = jnp.zeros((1, 28, 28, 1))
  flat = lambda: {groups.path_to_str(k): np.asarray(v)
                  for k, v in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
  before = flat()
  info = pipeline.magnitude_threshold(model, x, threshold=0.1, layers="conv", exclude="fc2/kernel")
  after = flat()
  expected_zeroed = 0
  for path, w in before.items():
    if path.endswith("kernel") and w.ndim == 4:  # conv: brute-force rule keep |w| > t
      np.testing.assert_array_equal(after[path], np.where(np.abs(w) > 0.1, w, 0))
      expected_zeroed += int(np.sum((np.abs(w) <= 0.1) & (w != 0)))
    else:
      np.testing.assert_array_equal(after[path], w)
  assert info["magnitude_zeroed"] == expected_zeroed > 0


def test_magnitude_run_prunes_conv_channels(tmp_path):
  summary = pipeline.run(_small("magnitude", model="lenet5", **{"magnitude.threshold": 0.2, "retrain.epochs": 0}),
                         tmp_path, log=lambda *_: None)
  assert summary["method"] == "magnitude"
  lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
  assert any(e.get("magnitude_zeroed", 0) > 0 for e in lines)
  assert summary["nonzero_params"] < summary["params_total"]


def test_a_diverging_run_stops_with_a_clear_error(tmp_path):
  cfg = _small("l1", **{"prune.lr": 1e8, "pretrain.epochs": 0})
  with pytest.raises(FloatingPointError, match="diverged in phase 'prune/1', epoch 1 .*; nothing non-finite was saved"):
    pipeline.run(cfg, tmp_path, log=lambda *_: None)
  assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("name,row,method,t_th", [
    ("paper_degl_lenet5_mnist.py", "DEGL1", "degl", 1e-5), ("paper_degl_lenet5_mnist.py", "EGL4", "egl", 1e-2),
    ("paper_degl_vgg16_cifar10.py", "GL2", "degl_group_lasso", 1e-3), ("paper_degl_resnet56_cifar10.py", "DEGL3", "degl", 1e-2),
])
def test_degl_paper_configs_select_table_rows(name, row, method, t_th):
  cfg = config_lib.load_config(f"{CONFIGS / name}:{row}")
  config_lib.validate(cfg)
  assert (cfg.method, cfg.degl.t_th) == (method, t_th)
  with pytest.raises(config_lib.ConfigError, match="bad argument"):
    config_lib.load_config(f"{CONFIGS / name}:DEGL9")


def _write_wisdm(directory, lines=3000):
  from mobileprune_jax.data import har

  rng = np.random.default_rng(5)
  text = "\n".join(f"{i % 7},{har.WISDM_CLASSES[(i // 150) % 6]},{1000 + i},{x:.4f},{y:.4f},{z:.4f};"
                   for i, (x, y, z) in enumerate(rng.normal(size=(lines, 3))))
  (directory / "WISDM_ar_v1.1_raw.txt").write_text(text)


@pytest.mark.parametrize("mode", ["palm", "paper_code"])
@pytest.mark.slow
def test_wisdm_paper_config_runs_on_raw_files(tmp_path, mode):
  """The paper-row config end to end on WISDM-format raw files (synthetic), shortened."""
  _write_wisdm(tmp_path)
  cfg = config_lib.load_config(f"{CONFIGS / 'paper_mobileprune_wisdm_har.py'}:{mode}")
  config_lib.apply_overrides(cfg, [f"data_dir={tmp_path}", "pretrain.epochs=1", "prune.iterations=1", "prune.epochs=1",
                                   "retrain.epochs=1", "progress=False", "data_parallel=False",
                                   "magnitude.threshold=0.03"])
  summary = pipeline.run(cfg, tmp_path / "run", log=lambda *_: None)
  # docs/algorithms.md §F: 5 × Conv1D(k=10, 128, no bias) on 80×3 windows → flatten 128·35 = 4480 → 100 → 6
  assert summary["params_total"] == 3 * 128 * 10 + 4 * 128 * 128 * 10 + 4480 * 100 + 100 + 100 * 6 + 6
  assert summary["input_shape"] == [80, 3]
  assert summary["nonzero_params"] < summary["params_total"]
  assert summary["mode"] == ("palm" if mode == "palm" else "prox_sgd")
  phases = [json.loads(x)["phase"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
  assert phases[0] == "pretrain" and (("prune/1" in phases) == (mode == "palm")) and (("threshold" in phases) == (mode != "palm"))


BAD_VALUES = {
    "eval_batch_size=0": "eval_batch_size must be a positive integer",
    "batch_size=0": "batch_size must be a positive integer",
    "checkpoint_keep=0": "checkpoint_keep must be a positive integer",
    "coef.l0=inf": "coef.l0 must be finite",
    "coef.neuron=nan": "coef.neuron must be finite",
    "pretrain.lr=-0.1": "pretrain.lr must be a non-negative number",
    "prune.momentum=1.5": "prune.momentum must be in [0, 1)",
    "prune.epochs=-2": "prune.epochs must be a non-negative integer",
    "prune.palm_gamma=1.0": "prune.palm_gamma must be > 1",
    "degl.rt_scale=0.0": "degl.rt_scale must be in (0, 1]",
    "degl.t_th=inf": "degl.t_th must be finite",
    "export.quantize=int4": "export.quantize must be one of",
    "coef.conv_grouping=rows": "coef.conv_grouping must be one of",
    "seed=4294967296": "seed must be an integer in [0, 2**32)",
    "train_subset=-5": "train_subset must be a non-negative integer",
    "model_kwargs.num_classes=1.5e400": "model_kwargs.num_classes must be finite",
    "batch_size=8001": "batch_size 8001 is larger than the 8000 training examples",
}


@pytest.mark.parametrize("override", sorted(BAD_VALUES))
def test_bad_values_fail_before_the_workdir_is_touched(tmp_path, override):
  cfg = config_lib.load_config(CONFIG)
  config_lib.apply_overrides(cfg, [override])
  with pytest.raises(config_lib.ConfigError, match=re.escape(BAD_VALUES[override])):
    pipeline.run(cfg, tmp_path / "w", log=lambda *_: None)
  assert not (tmp_path / "w").exists()


def test_config_types_are_kept():
  cfg = config_lib.load_config(CONFIG)
  config_lib.apply_overrides(cfg, ["coef.l0=1", "degl.rt_scale=0.5", "progress=false", "pretrain.schedule='cosine'",
                                   "model_kwargs.width=[1, 2]"])
  assert cfg.coef.l0 == 1.0 and isinstance(cfg.coef.l0, float)
  assert cfg.degl.rt_scale == 0.5 and cfg.progress is False and cfg.pretrain.schedule == "cosine"
  assert cfg.model_kwargs.width == [1, 2]
  for bad, message in (("prune.epochs=1.5", "takes a int"), ("progress=maybe", "takes a bool"),
                       ("coef=1", "is a section"), ("batch_size", "must look like --config.key=value")):
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.apply_overrides(cfg, [bad])


def _write_idx(path, array):
  import struct

  path.write_bytes(struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
                   + array.astype(np.uint8).tobytes())


def test_labels_out_of_range_and_damaged_files_are_clear_errors(tmp_path):
  from mobileprune_jax.data import InvalidDataError

  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 20)
  labels[7] = 12
  _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
  _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 5))
  cfg = config_lib.load_config(CONFIG)
  config_lib.apply_overrides(cfg, ["dataset=mnist_idx", f"data_dir={tmp_path}", "batch_size=4"])
  with pytest.raises(InvalidDataError, match=r"train labels must be in \[0, 10\), found 0..12"):
    pipeline.run(cfg, tmp_path / "w", log=lambda *_: None)
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00")
  with pytest.raises(InvalidDataError, match="t10k-labels-idx1-ubyte: not an IDX file"):
    pipeline.run(cfg, tmp_path / "w", log=lambda *_: None)
  assert not (tmp_path / "w").exists()


def test_non_finite_inputs_are_rejected_at_load():
  from mobileprune_jax.data import Dataset, InvalidDataError

  x = np.zeros((4, 3, 2), np.float32)
  x[1, 2, 0] = np.nan
  ds = Dataset("toy", x, np.zeros(4, np.int32), np.zeros((2, 3, 2), np.float32), np.zeros(2, np.int32), 2)
  with pytest.raises(InvalidDataError, match="toy: train inputs hold 1 NaN/inf values"):
    ds.check()


@pytest.mark.parametrize("warm", [False, True])
def test_palm_backtracking_starts_at_one_or_two_gamma_steps_below_the_last_l(warm):
  """The papers' PALM tries L = 1, γ, γ², … per block; warm start begins at max(1, L⁻/γ²) (L⁻: last step's)."""
  from mobileprune_jax import regularisers
  from mobileprune_jax.train import palm

  gamma = 1.1
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 32))
  m = models.create("lenet300")
  kernels = ["fc1/kernel", "fc2/kernel", "fc3/kernel"]
  step = palm.make_palm_step(m, regularisers.l0_sparse_group_lasso(l0=1e-4, neuron=1e-3), kernels, gamma=gamma,
                             warm_start=warm)
  assert step.items() == ({"palm": {"lipschitz": step.lipschitz}} if warm else {})
  high = gamma ** 30  # far above what a random LeNet-300 needs (its first step accepts L = 1 or a few γ)
  step.restore({"palm": {"lipschitz": np.full(3, high, np.float32)}})
  _, mean_l = step(m, x, y)
  exponents = np.log(np.asarray(step.lipschitz, np.float64)) / np.log(gamma)
  if warm:  # the search starts at γ^28 and the first candidate passes the test there
    np.testing.assert_allclose(exponents, 28, atol=1e-3)
  else:  # the stored L is ignored: every block starts at L = 1 and accepts some γ^k with k far below 28
    assert np.all(exponents < 20) and np.allclose(exponents, np.round(exponents), atol=1e-3)
  assert float(mean_l) == pytest.approx(float(np.mean(np.asarray(step.lipschitz))))
