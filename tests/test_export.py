"""TFLite export: LiteRT parity for every zoo model, quantised variants, missing-TensorFlow error."""

import builtins
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import models, surgery

export = pytest.importorskip("mobileprune_jax.export")
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

ZOO = [
    ("lenet300", lambda: models.create("lenet300"), (1, 28, 28, 1)),
    ("lenet5", lambda: models.create("lenet5"), (1, 28, 28, 1)),
    ("vgg_like", lambda: models.vgg_like_cifar(width=0.125, rngs=nnx.Rngs(0)), (1, 32, 32, 3)),
    ("vgg19_tiny", lambda: models.VGG(tuple(c if c == "M" else c // 8 for c in models.vgg.CFG_VGG19_TINY), 200,
                                      hidden=(), image_size=64, final_pool=4, rngs=nnx.Rngs(0)), (1, 64, 64, 3)),
    ("resnet56", lambda: models.create("resnet56"), (1, 32, 32, 3)),
    ("resnet32_wide", lambda: models.create("resnet32_wide"), (1, 32, 32, 3)),
    ("har_cnn", lambda: models.create("har_cnn", in_channels=9, num_classes=6, window=40, kernel=5), (1, 40, 9)),
    ("mobilenet_v2", lambda: models.create("mobilenet_v2", width=0.35, in_channels=1), (1, 32, 32, 1)),
]


def _randomise_bn(model, seed=0):
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      n = node.scale.shape[0]
      node.mean.set_value(jnp.asarray(rng.normal(size=n) * 0.1, jnp.float32))
      node.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32))


@pytest.mark.parametrize("name,make,shape", ZOO, ids=[z[0] for z in ZOO])
@pytest.mark.slow
def test_every_zoo_model_exports_with_parity(tmp_path, name, make, shape):
  model = make()
  _randomise_bn(model)
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  path = export.to_tflite(model, x, tmp_path / f"{name}.tflite")  # raises ParityError on mismatch
  assert path.stat().st_size > 0
  assert export.parity(path, model, x) <= 1e-5
  out = export.run_tflite(path, x)
  assert out.shape == (1, 10 if name not in ("vgg19_tiny", "har_cnn") else (200 if name == "vgg19_tiny" else 6))


def test_shrunk_model_exports_smaller_and_matches(tmp_path):
  model = models.create("lenet5")
  k = np.asarray(model.conv2.kernel[...]).copy()
  k[:, :, 10:, :] = 0
  model.conv2.kernel.set_value(jnp.asarray(k))
  f = np.asarray(model.fc2.kernel[...]).copy()
  f[100:] = 0
  model.fc2.kernel.set_value(jnp.asarray(f))
  x = np.random.default_rng(2).normal(size=(1, 28, 28, 1)).astype(np.float32)
  small = surgery.shrink(model, x)
  dense_path = export.to_tflite(model, x, tmp_path / "dense.tflite")
  small_path = export.to_tflite(small, x, tmp_path / "small.tflite")
  assert small_path.stat().st_size < dense_path.stat().st_size / 3
  np.testing.assert_allclose(export.run_tflite(small_path, x), export.run_tflite(dense_path, x), atol=1e-5)
  assert export.latency_ms(small_path, x, repeats=20) > 0


@pytest.mark.parametrize("quantize,shrink_factor", [("float16", 0.6), ("dynamic_int8", 0.35)])
def test_quantised_variants(tmp_path, quantize, shrink_factor):
  model = models.create("lenet5")
  x = np.random.default_rng(3).uniform(size=(1, 28, 28, 1)).astype(np.float32)
  full = export.to_tflite(model, x, tmp_path / "f32.tflite")
  q = export.to_tflite(model, x, tmp_path / f"{quantize}.tflite", quantize=quantize)
  assert q.stat().st_size < shrink_factor * full.stat().st_size
  assert export.parity(q, model, x) <= export.TOLERANCE[quantize]


@pytest.fixture(scope="module")
def trained_lenet5():
  """LeNet-5 after two Adam epochs on the embedded MNIST subset (≈ 96 % test accuracy)."""
  import optax

  from mobileprune_jax import data

  ds = data.load("mnist_subset")
  model = models.create("lenet5", seed=0)
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    loss, grads = nnx.value_and_grad(
        lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(0)
  for _ in range(2):
    order = rng.permutation(len(ds.train_x))
    for i in range(0, len(order) - 99, 100):
      step(model, opt, jnp.asarray(ds.train_x[order[i : i + 100]]), jnp.asarray(ds.train_y[order[i : i + 100]]))
  return model, ds


@pytest.mark.slow
def test_static_int8_is_full_integer_and_agrees_with_float32(tmp_path, trained_lenet5):
  from ai_edge_litert.interpreter import Interpreter

  model, ds = trained_lenet5
  calibration = (ds.train_x[i : i + 100] for i in range(0, 1000, 100))  # an iterator of training batches
  path = export.to_tflite(model, ds.test_x[:1], tmp_path / "int8.tflite", quantize="int8",
                          calibration_data=calibration)
  interpreter = Interpreter(model_path=str(path))
  interpreter.allocate_tensors()
  inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
  assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
  weights = {d["name"]: d["dtype"] for d in interpreter.get_tensor_details() if len(d["shape"]) >= 2
             and d["index"] not in (inp["index"], out["index"]) and d["quantization"][0] > 0}
  assert weights and {np.dtype(t) for t in weights.values()} == {np.dtype(np.int8)}, weights
  # run_tflite's quantisation against one done by hand from the file's scales
  x = ds.test_x[:1]
  (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
  interpreter.set_tensor(inp["index"], np.clip(np.round(x / s_in) + z_in, -128, 127).astype(np.int8))
  interpreter.invoke()
  by_hand = (interpreter.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out
  np.testing.assert_allclose(export.run_tflite(path, x), by_hand, rtol=0, atol=1e-6)
  # the measure that matters: agreement with float32 on the 2,000 embedded test digits
  result = export.agreement(path, model, ds.test_x, ds.test_y)
  reference = float(np.mean(np.asarray(model(jnp.asarray(ds.test_x))).argmax(-1) == ds.test_y))
  assert result["accuracy_float32"] == pytest.approx(reference, abs=1e-9)
  assert result["top1_agreement"] >= 0.98 and abs(result["accuracy_int8"] - reference) <= 0.01, result
  assert path.stat().st_size < 0.3 * export.to_tflite(model, x, tmp_path / "f32.tflite").stat().st_size


def test_static_int8_of_a_model_taking_token_ids(tmp_path):
  class Tokens(nnx.Module):
    def __init__(self, rngs):
      self.embed, self.fc = nnx.Embed(50, 16, rngs=rngs), nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, ids):
      return self.fc(self.embed(ids).mean(1))

  model = Tokens(nnx.Rngs(0))
  ids = np.random.default_rng(0).integers(0, 50, size=(64, 8)).astype(np.int32)
  path = export.to_tflite(model, ids[:1], tmp_path / "tokens.tflite", quantize="int8", calibration_data=[ids])
  reference = np.asarray(model(jnp.asarray(ids))).argmax(-1)
  got = np.concatenate([export.run_tflite(path, ids[i : i + 1]) for i in range(len(ids))]).argmax(-1)
  assert np.mean(got == reference) >= 0.95


@pytest.mark.parametrize("kwargs,message", [
    ({"quantize": "int8"}, "quantize='int8' needs calibration_data"),
    ({"quantize": "dynamic_int8", "calibration_data": [np.zeros((4, 28, 28, 1))]}, "only it takes them"),
    ({"quantize": "int8", "calibration_data": [np.zeros((4, 32, 32, 1))]}, "calibration batch 0 has shape"),
    ({"quantize": "int8", "calibration_data": [np.full((4, 28, 28, 1), np.nan)]}, "calibration batch 0 holds NaN"),
    ({"quantize": "int8", "calibration_data": []}, "calibration_data holds no batches"),
    ({"quantize": "int8", "calibration_data": 3}, "calibration_data must be a sequence or iterator"),
])
def test_bad_calibration_data_is_refused_before_converting(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    export.to_tflite(models.create("lenet5"), np.zeros((1, 28, 28, 1), np.float32), tmp_path / "x.tflite", **kwargs)
  assert not (tmp_path / "x.tflite").exists()


def test_bad_quantize_and_missing_tensorflow(monkeypatch, tmp_path):
  model = models.create("lenet300")
  with pytest.raises(ValueError, match="quantize must be one of"):
    export.to_tflite(model, np.zeros((1, 28, 28, 1), np.float32), tmp_path / "x.tflite", quantize="int4")
  real_import = builtins.__import__

  def no_tf(name, *args, **kwargs):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ImportError("No module named 'tensorflow'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_tf)
  monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
  with pytest.raises(ImportError, match="pip install -r requirements-export.txt"):
    export.to_tflite(model, np.zeros((1, 28, 28, 1), np.float32), tmp_path / "x.tflite")


@pytest.mark.slow
def test_pipeline_exports_and_cli_benchmarks(tmp_path):
  import json
  import os
  import pathlib
  import subprocess

  from mobileprune_jax import config as config_lib
  from mobileprune_jax.train import pipeline

  repo = pathlib.Path(__file__).resolve().parents[1]
  cfg = config_lib.load_config(repo / "experiments" / "configs" / "quick.py")
  config_lib.apply_overrides(cfg, ["model='lenet300'", "train_subset=600", "test_subset=200", "pretrain.epochs=1",
                                   "prune.iterations=1", "prune.epochs=1", "retrain.epochs=1", "coef.neuron=0.5",
                                   "data_parallel=False", "progress=False", "export.tflite=True",
                                   "export.quantize='int8'"])
  summary = pipeline.run(cfg, tmp_path / "run", log=lambda *_: None)
  for key in ("tflite_path", "tflite_bytes_dense", "tflite_bytes_pruned", "latency_dense_ms", "latency_pruned_ms"):
    assert key in summary, key
  assert summary["tflite_bytes_pruned"] < summary["tflite_bytes_dense"]
  assert summary["tflite_bytes_pruned_int8"] < 0.35 * summary["tflite_bytes_pruned"]
  # the float32 side of the agreement is the shrunk model, whose accuracy the run measured in JAX
  assert summary["int8_float32_accuracy"] == pytest.approx(summary["pruned_accuracy"], abs=1e-9)
  assert summary["int8_top1_agreement"] >= 0.95 and abs(summary["int8_accuracy"] - summary["pruned_accuracy"]) <= 0.02
  assert json.loads((tmp_path / "run" / "summary.json").read_text())["latency_pruned_ms"] > 0
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  p = subprocess.run([sys.executable, "-m", "mobileprune_jax", "benchmark", "--workdir", str(tmp_path / "run"),
                      "--repeats", "20"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr
  assert "latency 1 thread" in p.stdout
  assert (tmp_path / "run" / "benchmark.json").exists()


def _linen_cnn():
  import flax.linen as nn

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.avg_pool(nn.relu(nn.Conv(8, (3, 3))(x)), (2, 2), (2, 2))
      return nn.Dense(10)(x.reshape(x.shape[0], -1))

  return CNN()


def test_a_linen_module_gets_one_line_pointing_to_the_bridge_and_the_bridge_exports(tmp_path):
  x = np.random.default_rng(0).normal(size=(1, 8, 8, 1)).astype(np.float32)
  module = _linen_cnn()
  with pytest.raises(TypeError, match=r"to_tflite takes a flax.nnx.Module, got the flax.linen module CNN; wrap it "
                                      r"first: model = nnx.bridge.ToNNX"):
    export.to_tflite(module, x, tmp_path / "m.tflite")
  with pytest.raises(TypeError, match="shrink takes a flax.nnx.Module, got the flax.linen module CNN; linen modules "
                                      "fix their feature counts"):
    surgery.shrink(module, x)
  model = nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(model, x)
  path = export.to_tflite(model, x, tmp_path / "bridged.tflite")  # checks LiteRT parity itself
  assert export.parity(path, model, x) <= 1e-5


def test_a_model_training_by_default_is_exported_in_inference_mode(tmp_path):
  # before, dropout stayed on and the converter failed ("failed to legalize operation 'tfl.mul'")
  from test_surgery_ops_and_kernels import TrainByDefault

  model = TrainByDefault(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
  path = export.to_tflite(model, x, tmp_path / "m.tflite")
  model.eval()
  np.testing.assert_allclose(export.run_tflite(path, np.asarray(x)), model(x, train=False), atol=1e-5)
