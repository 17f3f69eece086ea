"""Bad input through the command line: one ``error:`` line, the documented exit status, no traceback,
nothing trained or exported."""

import json
import pathlib

import numpy as np
import pytest

from mobileprune_jax import __main__ as cli
from mobileprune_jax import models, surgery

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "configs" / "quick.py"
FAST = ["--config.train_subset=200", "--config.test_subset=100", "--config.batch_size=100",
        "--config.data_parallel=False", "--config.progress=False"]


def _errors(capsys):
  captured = capsys.readouterr()
  assert "Traceback" not in captured.err
  return [line for line in captured.err.splitlines() if line.startswith("error:")]


CONFIG_FILES = {
    "get_config raises": ("def get_config():\n  raise RuntimeError('no GPU here')\n",
                          "get_config() raised RuntimeError: no GPU here"),
    "syntax error": ("def get_config(:\n  pass\n", "is not valid Python: invalid syntax (line 1)"),
    "missing import": ("import not_a_module_anywhere\n\ndef get_config():\n  return {}\n",
                       "failed to import: ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    "returns None": ("def get_config():\n  pass\n", "get_config() returned NoneType, not a ConfigDict"),
    "returns a list": ("def get_config():\n  return ['lenet5']\n", "get_config() returned list, not a ConfigDict"),
    "get_config is not a function": ("get_config = 3\n", "has no get_config()"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_a_config_file_that_fails_is_one_error_line(tmp_path, capsys, case):
  text, message = CONFIG_FILES[case]
  path = tmp_path / "my_config.py"
  path.write_text(text)
  status = cli.main(["run", "--config", str(path), "--workdir", str(tmp_path / "w")])
  errors = _errors(capsys)
  assert status == 2 and len(errors) == 1 and message in errors[0] and str(path) in errors[0], errors
  assert not (tmp_path / "w").exists()


def test_a_non_python_config_file_is_one_error_line(tmp_path, capsys):
  path = tmp_path / "config.yaml"
  path.write_text("model: lenet5\n")
  assert cli.main(["run", "--config", str(path), "--workdir", str(tmp_path / "w")]) == 2
  assert _errors(capsys) == [f"error: config file {str(path)!r} is not a Python file (.py with get_config())"]
  assert cli.main(["run", "--config", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
  assert _errors(capsys) == [f"error: config file {str(tmp_path)!r} is a directory, not a Python file with "
                             "get_config()"]
  assert not (tmp_path / "w").exists()


def test_fewer_model_outputs_than_labels_is_a_config_error_before_training(tmp_path, capsys):
  workdir = tmp_path / "w"
  status = cli.main(["run", "--config", str(QUICK), "--workdir", str(workdir), *FAST,
                     "--config.model_kwargs.num_classes=5"])
  assert status == 2
  assert _errors(capsys) == ["error: model 'lenet5' has 5 outputs but mnist_subset's labels go up to 9 (10 classes); "
                             "drop model_kwargs.num_classes or set it to 10"]
  assert not workdir.exists()


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_demo_with_no_epochs_is_one_error_line(capsys, epochs):
  assert cli.main(["demo", "--epochs", epochs]) == 2
  assert _errors(capsys) == [f"error: --epochs must be a positive integer, got {epochs}"]


@pytest.fixture(scope="module")
def finished_model(tmp_path_factory):
  """A workdir as a finished LeNet-5 run leaves it: model/ and summary.json."""
  workdir = tmp_path_factory.mktemp("bench") / "run"
  surgery.save(workdir / "model", models.create("lenet5", seed=0), factory="lenet5", kwargs={"seed": 0})
  (workdir / "summary.json").write_text(json.dumps({"dataset": "mnist_subset", "input_shape": [28, 28, 1]}))
  return workdir


def _benchmark(capsys, workdir, *extra):
  status = cli.main(["benchmark", "--workdir", str(workdir), *extra])
  return status, _errors(capsys)


def test_benchmark_a_workdir_that_is_a_file(tmp_path, capsys):
  (tmp_path / "w").write_text("notes")
  assert _benchmark(capsys, tmp_path / "w") == (2, [
      f"error: workdir {tmp_path / 'w'} is not a directory (pass the --workdir of a finished run)"])
  assert _benchmark(capsys, tmp_path / "missing") == (2, [f"error: workdir {tmp_path / 'missing'} does not exist"])


@pytest.mark.parametrize("summary,message", [
    ("{}", "has neither 'input_shape' nor 'dataset': not a run summary"),
    ('{"dataset": "cifar10"}', "has no 'input_shape' and data set 'cifar10' cannot be loaded to find it"),
    ('{"input_shape": [32, 32, 3]}', "input_shape [32, 32, 3] does not fit the dense model"),
    ('{"input_shape": [28, 28, true]}', "input_shape must be a list of positive sizes"),
])
def test_benchmark_checks_the_summary_before_exporting(tmp_path, capsys, finished_model, summary, message,
                                                       monkeypatch):
  import shutil

  from mobileprune_jax import data

  def offline(name, *args, **kwargs):  # no network here, and none in the check: cifar10 is unavailable
    raise data.DataUnavailableError(f"{name} needs tensorflow-datasets and a download")

  monkeypatch.setattr(data, "load", offline)
  workdir = tmp_path / "run"
  shutil.copytree(finished_model, workdir)
  (workdir / "summary.json").write_text(summary)
  status, errors = _benchmark(capsys, workdir)
  assert status == 2 and len(errors) == 1 and message in errors[0] and str(workdir / "summary.json") in errors[0]
  assert not (workdir / "tflite").exists()


@pytest.mark.parametrize("repeats", ["0", "-5"])
def test_benchmark_needs_positive_repeats(capsys, finished_model, repeats):
  assert _benchmark(capsys, finished_model, "--repeats", repeats) == (2, [
      f"error: --repeats must be a positive integer, got {repeats}"])
  assert not (finished_model / "tflite").exists()


def test_benchmark_refuses_a_model_holding_nan(tmp_path, capsys):
  model = models.create("lenet5", seed=0)
  kernel = model.fc1.kernel[...]
  model.fc1.kernel[...] = kernel.at[0, 0].set(np.nan)
  workdir = tmp_path / "run"
  surgery.save(workdir / "model", model, factory="lenet5", kwargs={"seed": 0})  # checksums match the NaN
  (workdir / "summary.json").write_text(json.dumps({"input_shape": [28, 28, 1]}))
  assert _benchmark(capsys, workdir) == (2, [
      f"error: {workdir / 'model'}: the model holds 1 NaN/inf weights (a diverged or damaged model); nothing was "
      "exported"])
  assert not (workdir / "tflite").exists()


def test_warning_lines_go_to_stderr_and_progress_to_stdout(capsys):
  from mobileprune_jax.train import loop

  loop.print_line("pretrain epoch 1/2: loss 0.3")
  loop.print_line("warning: ignoring runs/x/checkpoints/ckpt-9.safetensors: it is a directory")
  captured = capsys.readouterr()
  assert captured.out == "pretrain epoch 1/2: loss 0.3\n"
  assert captured.err == "warning: ignoring runs/x/checkpoints/ckpt-9.safetensors: it is a directory\n"


def test_native_log_lines_are_hidden_but_a_signal_handler_still_reaches_stderr(capfd, monkeypatch):
  import os

  from mobileprune_jax import quiet

  monkeypatch.delenv("MOBILEPRUNE_JAX_NATIVE_LOGS", raising=False)
  with quiet.native_stderr_hidden():
    os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")  # as TensorFlow's C++ code writes
    os.write(quiet.stderr_fd(), b"interrupted at prune/1 epoch 3\n")
  os.write(2, b"after\n")
  assert capfd.readouterr().err == "interrupted at prune/1 epoch 3\nafter\n"
  monkeypatch.setenv("MOBILEPRUNE_JAX_NATIVE_LOGS", "1")
  with quiet.native_stderr_hidden():
    os.write(2, b"shown\n")
  assert capfd.readouterr().err == "shown\n"


def test_benchmark_prints_no_native_log_lines(capfd, finished_model, tmp_path):
  import shutil

  workdir = tmp_path / "run"
  shutil.copytree(finished_model, workdir)  # the module's workdir stays without tflite/
  assert cli.main(["benchmark", "--workdir", str(workdir), "--repeats", "3"]) == 0
  captured = capfd.readouterr()
  assert captured.err == "" and "latency 1 thread" in captured.out
