"""Runs killed with SIGKILL at every kind of moment and resumed end exactly like uninterrupted runs.

Each chain kills one workdir again and again — at random moments (the parent sends SIGKILL)
or at named points (the child, started through ``tests/kill_at.py``, kills itself: inside a
checkpoint write, after a save, between the last step and the evaluation, before a phase's
action, right after a phase-start checkpoint (retrain, debias), before and during the
finishing stages) — resuming after each kill, then compares ``summary.json``, ``model/``,
``log.jsonl`` and the final parameters with a run that was never interrupted, byte for byte.
"""

import hashlib
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mobileprune_jax import tensorfile
from mobileprune_jax.train.lock import WorkdirLock

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "quick.py"
TINY = ["--config.model=lenet300", "--config.train_subset=1000", "--config.test_subset=300", "--config.batch_size=100",
        "--config.progress=False", "--config.checkpoint_every_steps=4", "--config.data_parallel=False"]
CHAINS = {
    # pretrain (1 epoch) → prune/1 (2 epochs) → retrain/1 (1 epoch) → finishing; 10 steps per epoch
    "mobileprune_random": (["--config.pretrain.epochs=1", "--config.prune.iterations=1", "--config.prune.epochs=2",
                            "--config.retrain.epochs=1", "--config.coef.neuron=0.3", "--config.coef.l0=2e-3",
                            "--config.budget.nonzero=0.05", "--config.budget.tolerance=0.9"],
                           ["random", "random", "random"]),
    # with a budget: the controller's multiplier is run state, and the landing happens after "phase_end"; a
    # validation split and shifted batches (both drawn from the seed)
    "mobileprune": (["--config.pretrain.epochs=1", "--config.prune.iterations=1", "--config.prune.epochs=2",
                     "--config.retrain.epochs=1", "--config.coef.neuron=0.3", "--config.coef.l0=2e-3",
                     "--config.budget.nonzero=0.05", "--config.budget.tolerance=0.9", "--config.val_fraction=0.2",
                     "--config.augment_shift=1"],
                    ["saved:2", "checkpoint_write:2", "epoch_end:1", "phase_end:1",
                     "phase_start:1", "epoch_end:1", "finish:1", "finish_model:1"]),
    # PALM with warm-started backtracking: each block's last accepted L is run state (checkpointed mid-phase); the
    # second kill is after a mid-phase checkpoint of the pruning phase
    "palm_warm": (["--config.mode=palm", "--config.prune.palm_warm_start=True", "--config.pretrain.epochs=1",
                   "--config.prune.iterations=1", "--config.prune.epochs=2", "--config.retrain.epochs=1",
                   "--config.coef.neuron=0.01", "--config.coef.l0=1e-4"],  # accepted L ≈ 2-3 (> γ²: the start matters)
                  ["saved:4", "saved:1", "random"]),
    # select (2 epochs) → DEGL threshold → debias (1 epoch): kills before the threshold and at the debias start; the
    # paper's subgradient selection and the plateau (reduce_on_plateau's state is optimizer state)
    "degl": (["--config.method=degl", "--config.degl.select_epochs=2", "--config.degl.retrain_epochs=1",
              "--config.degl.gamma=0.2", "--config.degl.t_th=0.05", "--config.degl.selection=subgradient",
              "--config.degl.plateau_patience=1", "--config.degl.momentum=0.0"],
             ["phase_end:1", "phase_start:1", "checkpoint_write:1", "finish_model:1"]),
    # pretrain → magnitude threshold (an action, no epochs) → masked retrain: kill at the retrain start
    "magnitude": (["--config.method=magnitude", "--config.pretrain.epochs=1", "--config.retrain.epochs=1",
                   "--config.magnitude.threshold=0.05", "--config.magnitude.layers=all"],
                  ["phase_start:2", "saved:2"]),
}


def _env():
  return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _start(workdir, extra, resume=False, kill_at=None):
  command = [sys.executable, str(REPO / "tests" / "kill_at.py"), kill_at] if kill_at else [sys.executable, "-m",
                                                                                            "mobileprune_jax"]
  args = [*command, "run", "--config", str(CONFIG), "--workdir", str(workdir), *TINY,
          *extra, *(["--resume"] if resume else [])]
  return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fingerprint(workdir: pathlib.Path) -> dict[str, str]:
  """Hashes of summary.json, log.jsonl, model/* and of every array of the final checkpoint."""
  files = [workdir / "summary.json", workdir / "log.jsonl", *sorted((workdir / "model").iterdir())]
  out = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
  arrays, meta = tensorfile.read(sorted((workdir / "checkpoints").glob("ckpt-*"))[-1])
  out |= {name: hashlib.sha256(a.tobytes()).hexdigest() for name, a in arrays.items()}
  out["run_state"] = meta["run_state"]
  return out


def _kill_randomly(workdir, extra, rng, resume) -> None:
  """SIGKILL a run at a random moment after it wrote a new checkpoint (a fresh run is retried if it finished first)."""
  for delay in (0.6, 0.2, 0.05):
    before = {p.name for p in (workdir / "checkpoints").glob("ckpt-*")} if resume else set()
    proc = _start(workdir, extra, resume=resume)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      if {p.name for p in (workdir / "checkpoints").glob("ckpt-*")} - before:
        break
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, delay))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    if proc.returncode == -signal.SIGKILL or resume:
      return
    shutil.rmtree(workdir)
  pytest.fail("the run always finished before the random kill")


@pytest.mark.parametrize("method", sorted(CHAINS))
@pytest.mark.slow
def test_killed_and_resumed_runs_equal_an_uninterrupted_run(tmp_path, method):
  extra, kills = CHAINS[method]
  reference = _start(tmp_path / "ref", extra)
  if method == "mobileprune_random":  # a second run on the busy workdir refuses at once and changes nothing
    while reference.poll() is None and not (tmp_path / "ref" / "log.jsonl").exists():
      time.sleep(0.05)
    intruder = _start(tmp_path / "ref", extra, resume=True)
    _, err = intruder.communicate(timeout=120)
    assert intruder.returncode == 2 and "in use by another run (pid" in err, err
    assert err.count("error:") == 1
  out, err = reference.communicate(timeout=600)
  assert reference.returncode == 0, err
  expected = _fingerprint(tmp_path / "ref")

  work = tmp_path / "kill"
  for i, kill in enumerate(kills):
    if kill == "random":
      _kill_randomly(work, extra, random.Random(i), resume=i > 0)
      continue
    proc = _start(work, extra, resume=i > 0, kill_at=kill)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"kill point {kill} was never reached: {err[-2000:]}"
  final = _start(work, extra, resume=True)
  out, err = final.communicate(timeout=600)
  assert final.returncode == 0, err
  assert "resuming at phase" in out
  assert _fingerprint(work) == expected

  again = _start(work, extra, resume=True)  # --resume on a finished workdir redoes the finishing identically
  out, err = again.communicate(timeout=600)
  assert again.returncode == 0, err
  assert "(finishing)" in out
  assert _fingerprint(work) == expected


def test_a_workdir_that_is_a_file_is_one_error_line(tmp_path):
  workdir = tmp_path / "w"
  workdir.write_text("notes")
  with pytest.raises(NotADirectoryError, match=f"workdir {workdir} exists and is not a directory"):
    with WorkdirLock(workdir):
      pass
  proc = _start(workdir, ["--config.method=dense"])  # the command: bad input, one line, status 2
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 2 and [line for line in err.splitlines() if line.startswith("error:")] == [
      f"error: workdir {workdir} exists and is not a directory"]
  assert workdir.read_text() == "notes"


@pytest.mark.slow
def test_a_live_lock_refuses_and_a_dead_ones_lock_is_taken_over(tmp_path):
  workdir = tmp_path / "w"
  with WorkdirLock(workdir):
    proc = _start(workdir, ["--config.pretrain.epochs=0", "--config.method=dense"])
    _, err = proc.communicate(timeout=120)
  assert proc.returncode == 2
  assert [line for line in err.splitlines() if line.startswith("error:")] == [
      f"error: workdir {workdir} is in use by another run (pid {os.getpid()} on {os.uname().nodename}); wait for it "
      "or use another workdir"]
  assert not (workdir / "checkpoints").exists()
  # a lock file left by a process that died (its flock is gone): taken over with a warning
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (workdir / ".lock").write_text(f'{{"pid": {dead.pid}, "host": "h"}}')
  proc = _start(workdir, ["--config.pretrain.epochs=1", "--config.method=dense"])
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert f"taking over the lock of {workdir} from pid {dead.pid}" in err  # a warning: on stderr
