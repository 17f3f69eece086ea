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
                                   "export.quantize='dynamic_int8'"])
  summary = pipeline.run(cfg, tmp_path / "run", log=lambda *_: None)
  for key in ("tflite_path", "tflite_bytes_dense", "tflite_bytes_pruned", "latency_dense_ms", "latency_pruned_ms"):
    assert key in summary, key
  assert summary["tflite_bytes_pruned"] < summary["tflite_bytes_dense"]
  assert summary["tflite_bytes_pruned_dynamic_int8"] < summary["tflite_bytes_pruned"]
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
