"""Several processes (stand-ins for hosts) through the command line: 2 processes × 2 CPU devices (gloo).

References: the same config in 1 process × 4 devices (the same global batches), and an uninterrupted 2-process run
for the kill-and-resume test.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from mobileprune_jax import __main__ as cli

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config", str(REPO / "experiments" / "configs" / "quick.py"), "--config.model=lenet300",
        "--config.pretrain.epochs=1", "--config.prune.iterations=1", "--config.prune.epochs=1",
        "--config.retrain.epochs=1", "--config.train_subset=800", "--config.test_subset=300",
        "--config.progress=False", "--config.checkpoint_every_steps=3"]


def _env(devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_processes(workdir: pathlib.Path, *extra: str) -> list[subprocess.Popen]:
  port = _free_port()
  return [subprocess.Popen([sys.executable, "-m", "mobileprune_jax", "run", *ARGS, "--workdir", str(workdir), *extra,
                            f"--config.distributed.coordinator=localhost:{port}",
                            "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
                           cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(2)]


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
  outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{out[-3000:]}"
  return outputs


def _summary(workdir: pathlib.Path) -> dict:
  s = json.loads((workdir / "summary.json").read_text())
  return {k: v for k, v in s.items() if k not in ("devices",)}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two") / "run"
  outputs = _finish(_start_processes(workdir))
  return workdir, outputs


@pytest.mark.slow
def test_two_processes_match_one_process_with_as_many_devices(tmp_path, two_processes):
  workdir, outputs = two_processes
  one = tmp_path / "one"
  p = subprocess.run([sys.executable, "-m", "mobileprune_jax", "run", *ARGS, "--workdir", str(one)], cwd=REPO,
                     env=_env(4), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  a, b = _summary(one), _summary(workdir)
  assert json.loads((workdir / "summary.json").read_text())["devices"] == 4
  # the gradient all-reduce sums in another order across processes (gloo) than inside one: float32 last bits, which
  # a prox threshold can turn into a few weights on the other side of it. Everything else is equal.
  for key in ("base_accuracy", "pruned_accuracy", "masked_accuracy", "params_remaining", "architecture"):
    assert a[key] == b[key], key
  assert abs(a["nonzero_params"] - b["nonzero_params"]) <= 1e-4 * a["params_total"]
  log_a = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()]
  log_b = [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]
  assert [e["phase"] for e in log_a] == [e["phase"] for e in log_b]
  for x, y in zip(log_a, log_b):
    if x.get("loss") is not None:
      assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
  # files are written once, by process 0; process 1 prints nothing of the run's own
  assert "accuracy base -> pruned" in outputs[0] and "accuracy base -> pruned" not in outputs[1]
  assert not list(workdir.glob(".*.tmp-*")) and not list((workdir / "checkpoints").glob(".ckpt-*"))


@pytest.mark.slow
def test_a_killed_process_then_resume_of_both_equals_the_uninterrupted_run(tmp_path, two_processes):
  reference, _ = two_processes
  workdir = tmp_path / "run"
  procs = _start_processes(workdir)
  end = time.time() + 600
  while len(list((workdir / "checkpoints").glob("ckpt-*.safetensors"))) < 2:  # mid-pretraining (step 6 of 8)
    assert all(p.poll() is None for p in procs), "the run ended before the kill"
    assert time.time() < end
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)  # one host lost; the scheduler then stops the job
  procs[1].wait()
  time.sleep(1)
  procs[0].send_signal(signal.SIGKILL)
  procs[0].wait()
  assert not (workdir / "summary.json").exists()
  outputs = _finish(_start_processes(workdir, "--resume"))
  assert "resuming at phase" in outputs[0]
  assert _summary(workdir) == _summary(reference)
  assert (workdir / "log.jsonl").read_text() == (reference / "log.jsonl").read_text()


@pytest.mark.parametrize("keys,message", [
    (["--config.distributed.coordinator=localhost:1234"],
     "distributed.coordinator needs distributed.num_processes and distributed.process_id too"),
    (["--config.distributed.coordinator=localhost", "--config.distributed.num_processes=2",
      "--config.distributed.process_id=0"], "distributed.coordinator must be HOST:PORT"),
    (["--config.distributed.coordinator=localhost:1234", "--config.distributed.num_processes=2",
      "--config.distributed.process_id=2"], "distributed.process_id must be an integer in [0, num_processes)"),
    (["--config.distributed.num_processes=0"], "distributed.num_processes must be a positive integer"),
])
def test_bad_distributed_keys_are_one_error_line_before_anything_starts(tmp_path, capsys, keys, message):
  status = cli.main(["run", *ARGS, "--workdir", str(tmp_path / "run"), *keys])
  err = capsys.readouterr().err
  assert status == 2 and "Traceback" not in err
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], err
  assert not (tmp_path / "run").exists()
