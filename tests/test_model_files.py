"""Saved models are data: crafted files run no code, damaged weights are refused, user models load by name."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import models, surgery, tensorfile

X = jnp.asarray(np.random.default_rng(6).normal(size=(2, 28, 28, 1)), jnp.float32)


def _shrunk_lenet5():
  m = models.create("lenet5", seed=3)
  k = np.array(m.conv2.kernel[...])
  k[:, :, :12, :] = 0
  m.conv2.kernel.set_value(jnp.asarray(k))
  return surgery.shrink_with_report(m, X)


def test_save_is_deterministic_and_load_gives_the_same_outputs(tmp_path):
  new, report = _shrunk_lenet5()
  for d in ("a", "b"):
    surgery.save(tmp_path / d, new, factory="lenet5", kwargs={"seed": 3}, cuts=report.cuts)
  for name in ("architecture.json", "weights.safetensors"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  loaded = surgery.load(tmp_path / "a")
  assert loaded.conv1.kernel.shape == (5, 5, 1, 8)
  np.testing.assert_array_equal(np.asarray(loaded(X)), np.asarray(new(X)))
  assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["architecture.json", "weights.safetensors"]


def _craft(directory, spec):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "architecture.json").write_text(json.dumps(spec))


CRAFTED = {
    "v1 subprocess:run": lambda target: {"format": "mobileprune_jax/shrunk-model/v1", "factory": "subprocess:run",
                                         "kwargs": {"args": ["touch", str(target)]}, "cuts": {}},
    "v1 builtins:open": lambda target: {"format": "mobileprune_jax/shrunk-model/v1", "factory": "builtins:open",
                                        "kwargs": {"file": str(target), "mode": "w"}, "cuts": {}},
    "v2 subprocess:run": lambda target: {"format": "mobileprune_jax/shrunk-model/v2", "model": "subprocess:run",
                                         "kwargs": {"args": ["touch", str(target)]}, "cuts": {}, "weights": {}},
    "v2 builtins:open": lambda target: {"format": "mobileprune_jax/shrunk-model/v2", "model": "builtins:open",
                                        "kwargs": {"file": str(target), "mode": "w"}, "cuts": {}, "weights": {}},
    "v2 with a factory key": lambda target: {"format": "mobileprune_jax/shrunk-model/v2", "model": ["os", "system"],
                                             "factory": "os:system", "kwargs": {"command": f"touch {target}"},
                                             "cuts": {}},
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_architecture_file_runs_no_code(tmp_path, case):
  target = tmp_path / "outside" / "pwned"
  target.parent.mkdir()
  _craft(tmp_path / "model", CRAFTED[case](target))
  with pytest.raises(surgery.ModelFileError, match="registered"):
    surgery.load(tmp_path / "model")
  with pytest.raises(surgery.ModelFileError, match="registered"):
    surgery.build_original(tmp_path / "model")
  assert not target.exists()


def test_the_benchmark_command_refuses_a_crafted_model_in_one_line(tmp_path):
  target = tmp_path / "pwned"
  _craft(tmp_path / "run" / "model", CRAFTED["v1 subprocess:run"](target))
  (tmp_path / "run" / "summary.json").write_text(json.dumps({"input_shape": [28, 28, 1], "macs_dense": 1,
                                                             "macs_pruned": 1}))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  p = subprocess.run([sys.executable, "-m", "mobileprune_jax", "benchmark", "--workdir", str(tmp_path / "run")],
                     capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 2, p.stderr
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "refusing factory 'subprocess:run'" in errors[0], p.stderr
  assert not target.exists()


@pytest.mark.parametrize("damage,reason", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
    (lambda b: b[: len(b) // 2], "checksum mismatch"),
    (lambda b: b"", "checksum mismatch"),
])
def test_damaged_weights_are_refused(tmp_path, damage, reason):
  new, report = _shrunk_lenet5()
  surgery.save(tmp_path / "m", new, factory="lenet5", kwargs={"seed": 3}, cuts=report.cuts)
  weights = tmp_path / "m" / "weights.safetensors"
  weights.write_bytes(damage(weights.read_bytes()))
  with pytest.raises(surgery.ModelFileError, match=reason):
    surgery.load(tmp_path / "m")


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
  new, report = _shrunk_lenet5()
  surgery.save(tmp_path / "m", new, factory="lenet5", kwargs={"seed": 3}, cuts=report.cuts)
  spec = json.loads((tmp_path / "m" / "architecture.json").read_text())
  spec["cuts"] = {}  # the original's shapes, the shrunk model's weights
  arrays, _ = tensorfile.read(tmp_path / "m" / "weights.safetensors")
  spec["weights"]["sha256"] = tensorfile.write(tmp_path / "m" / "weights.safetensors", arrays)
  (tmp_path / "m" / "architecture.json").write_text(json.dumps(spec))
  with pytest.raises(surgery.ModelFileError, match=r"'conv1/bias' is stored as float32\[8\], the model has float32\[20\]"):
    surgery.load(tmp_path / "m")


@pytest.mark.parametrize("cuts,kwargs,reason", [
    ({"conv1/bias": [[0, [1.5]]]}, {}, r"malformed 'cuts' \(an index must be an integer, got 1.5\)"),
    ({"conv1/bias": [[0, [True]]]}, {}, r"malformed 'cuts' \(an index must be an integer, got True\)"),
    ({"conv1/bias": [[0.0, [1]]]}, {}, r"malformed 'cuts' \(an index must be an integer, got 0.0\)"),
    (None, {"seed": 2**80}, "cannot be built from kwargs"),
])
def test_crafted_cut_indices_and_kwargs_are_one_model_file_error(tmp_path, cuts, kwargs, reason):
  # int(1.5) and int(True) would have kept channel 1 and loaded a 1-channel model (then failed on the weights)
  new, report = _shrunk_lenet5()
  surgery.save(tmp_path / "m", new, factory="lenet5", kwargs={"seed": 3}, cuts=report.cuts)
  spec = json.loads((tmp_path / "m" / "architecture.json").read_text())
  spec["cuts"] = spec["cuts"] if cuts is None else cuts
  spec["kwargs"].update(kwargs)
  (tmp_path / "m" / "architecture.json").write_text(json.dumps(spec))
  with pytest.raises(surgery.ModelFileError, match=reason):
    surgery.load(tmp_path / "m")


class TinyNet(nnx.Module):
  def __init__(self, width: int, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(4, width, rngs=rngs)
    self.fc2 = nnx.Linear(width, 3, rngs=rngs)

  def __call__(self, x, train=False):
    return self.fc2(nnx.relu(self.fc1(x)))


def test_user_models_load_through_a_registered_or_passed_factory(tmp_path):
  factory = lambda width, seed=0: TinyNet(width, nnx.Rngs(seed))
  m = factory(8, seed=1)
  k = np.array(m.fc2.kernel[...])
  k[:5] = 0
  m.fc2.kernel.set_value(jnp.asarray(k))
  x = jnp.ones((2, 4))
  new, report = surgery.shrink_with_report(m, x)
  surgery.save(tmp_path / "m", new, factory="tiny_net_for_tests", kwargs={"width": 8, "seed": 1}, cuts=report.cuts)
  with pytest.raises(surgery.ModelFileError, match="model 'tiny_net_for_tests' is not registered"):
    surgery.load(tmp_path / "m")
  loaded = surgery.load(tmp_path / "m", factories={"tiny_net_for_tests": factory})
  assert loaded.fc1.kernel.shape == (4, 3)
  np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(m(x)), atol=1e-6)
  surgery.register("tiny_net_for_tests", factory)
  np.testing.assert_array_equal(np.asarray(surgery.load(tmp_path / "m")(x)), np.asarray(loaded(x)))


def _write_version_1(d):
  """A model directory as version 1 wrote it (zoo factory string + orbax state): (model, directory)."""
  import orbax.checkpoint as ocp

  new, report = _shrunk_lenet5()
  d.mkdir()
  spec = {"format": "mobileprune_jax/shrunk-model/v1", "factory": "mobileprune_jax.models:create",
          "kwargs": {"name": "lenet5", "seed": 3}, "cuts": report.cuts}
  (d / "architecture.json").write_text(json.dumps(spec))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(d / "state", nnx.state(new))
  ckpt.wait_until_finished()
  return new, d


def test_version_1_model_directories_still_load(tmp_path):
  new, d = _write_version_1(tmp_path / "v1")
  with pytest.warns(UserWarning, match="carry no checksums"):
    loaded = surgery.load(d)
  np.testing.assert_array_equal(np.asarray(loaded(X)), np.asarray(new(X)))


def test_shrink_refuses_non_finite_weights_and_parity_counts_nan():
  m = models.create("lenet300", seed=0)
  k = np.array(m.fc2.kernel[...])
  k[3, 4] = np.nan
  m.fc2.kernel.set_value(jnp.asarray(k))
  with pytest.raises(ValueError, match="fc2/kernel holds 1 NaN/inf entries"):
    surgery.shrink(m, jnp.ones((2, 28, 28, 1)))
  a, b = models.create("lenet300", seed=0), models.create("lenet300", seed=0)
  b.fc3.bias.set_value(b.fc3.bias[...].at[0].set(jnp.nan))
  assert np.isnan(surgery.max_output_diff(a, b, jnp.ones((2, 28, 28, 1))))


def test_a_damaged_version_1_directory_is_a_model_file_error(tmp_path):
  new, d = _write_version_1(tmp_path / "v1")
  for f in (d / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"\x00" * 7)
  with pytest.warns(UserWarning, match="carry no checksums"), pytest.raises(surgery.ModelFileError,
                                                                             match="version-1 weights cannot be read"):
    surgery.load(d)


@pytest.mark.slow
def test_the_benchmark_command_checks_the_summary_it_reads(tmp_path):
  new, report = _shrunk_lenet5()
  surgery.save(tmp_path / "run" / "model", new, factory="lenet5", kwargs={"seed": 3}, cuts=report.cuts)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  for summary, message in (('{"input_shape": "abc"}', "input_shape must be a list of positive sizes"),
                           ("{not json", "is not readable JSON")):
    (tmp_path / "run" / "summary.json").write_text(summary)
    p = subprocess.run([sys.executable, "-m", "mobileprune_jax", "benchmark", "--workdir", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and message in errors[0], p.stderr
