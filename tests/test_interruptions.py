"""Ctrl-C, SIGTERM and a hostile workdir, met through the command line as a user meets them.

The reference is an uninterrupted run of the same config: a stopped run resumed with ``--resume``
must end with exactly its files.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_checkpoints import CONFIG, OVERRIDES, REPO, _cfg, _outputs

from mobileprune_jax import __main__ as cli
from mobileprune_jax.train import pipeline

ARGS = [f"--config.{o}" for o in OVERRIDES]
ENV = dict(os.environ)  # the same devices as the in-process reference (summary.json records them)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  pipeline.run(_cfg(), workdir, log=lambda *_: None)
  return _outputs(workdir)


def _start(workdir, *extra, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "mobileprune_jax", "run", "--config", str(CONFIG), "--workdir",
                           str(workdir), *ARGS, *extra], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(predicate, proc, timeout=240):
  end = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()}"
    assert time.time() < end, "timed out waiting for the run"
    time.sleep(0.02)


@pytest.mark.parametrize("sig,status,word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
@pytest.mark.slow
def test_a_signal_mid_run_is_one_line_and_resume_equals_an_uninterrupted_run(tmp_path, reference, sig, status,
                                                                            word):
  workdir = tmp_path / "run"
  proc = _start(workdir)
  _wait_for(lambda: any((workdir / "checkpoints").glob("ckpt-*.safetensors")), proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == status, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith(f"{word} at ") and "newest checkpoint: ckpt-" in lines[0]
  assert lines[0].endswith("; resume with --resume"), lines
  assert (workdir / ".lock").read_text() == ""  # released cleanly: the resume takes it without a warning
  again = _start(workdir, "--resume")
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0, err
  assert "taking over the lock" not in out + err
  assert _outputs(workdir) == reference


def test_ctrl_c_at_start_up_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = _start(workdir)
  time.sleep(1.0)  # importing JAX, loading the config
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130
  assert [line for line in err.splitlines() if line.strip()] == [
      "interrupted before training started; nothing was changed (run the command again)"]
  assert not workdir.exists()


def test_an_ignored_sigint_stays_ignored(monkeypatch):  # nohup / a background job of a non-interactive shell
  installed = []
  real = signal.signal
  monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append((sig, handler)) or real(sig, handler))
  previous = real(signal.SIGINT, signal.SIG_IGN)
  try:
    assert cli.main(["demo", "--epochs", "0"]) == 2
  finally:
    real(signal.SIGINT, previous)
  assert [sig for sig, handler in installed if handler is cli._stop] == [signal.SIGTERM]


def test_ctrl_c_in_a_notebook_is_a_keyboard_interrupt_saying_where(tmp_path, reference):
  workdir = tmp_path / "run"

  def log(line):
    if line.startswith("[prune/1] epoch 1/1"):
      raise KeyboardInterrupt  # what Ctrl-C does in a notebook cell while the run prints

  with pytest.raises(KeyboardInterrupt) as info:
    pipeline.run(_cfg(), workdir, log=log)
  assert isinstance(info.value, pipeline.RunInterrupted)
  assert str(info.value).startswith("interrupted at prune/1 epoch 1 step 10 (newest checkpoint: ckpt-")
  pipeline.run(_cfg(), workdir, resume=True, log=lambda *_: None)
  assert _outputs(workdir) == reference


def test_entries_named_like_checkpoints_that_are_not_files_are_ignored_with_a_warning(tmp_path, reference):
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  stranger = workdir / "checkpoints" / "ckpt-00000009.safetensors"
  stranger.mkdir()
  (stranger / "notes.txt").write_text("mine")
  lines = []
  pipeline.run(_cfg(), workdir, resume=True, log=lines.append)
  warnings = [line for line in lines if line.startswith("warning:")]
  assert len(warnings) == 1 and f"ignoring {stranger}: it is a directory" in warnings[0], lines
  assert (stranger / "notes.txt").read_text() == "mine"  # never deleted by rotation
  assert all(int(p.name[5:13]) > 9 for p in (workdir / "checkpoints").glob("ckpt-*") if p.is_file())
  assert _outputs(workdir) == reference


def _cli_run(capsys, workdir, *extra):
  status = cli.main(["run", "--config", str(CONFIG), "--workdir", str(workdir), *ARGS, *extra])
  return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def test_checkpoints_that_is_a_file_is_one_error_line_before_training(tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a directory")
  for resume in ((), ("--resume",)):
    status, errors = _cli_run(capsys, workdir, *resume)
    assert status == 2 and errors == [f"error: {workdir / 'checkpoints'} exists and is not a directory (the run "
                                      "keeps its checkpoints there: move it away)"]
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints"]


def test_an_unwritable_workdir_is_exit_2_before_training(tmp_path, capsys, monkeypatch):
  parent = tmp_path / "parent"
  parent.mkdir()
  workdir = parent / "run"
  real_access = os.access
  read_only = {parent}
  monkeypatch.setattr(os, "access", lambda p, mode: False if pathlib.Path(p) in read_only else real_access(p, mode))
  status, errors = _cli_run(capsys, workdir)
  assert status == 2 and errors == [f"error: cannot write the parent of workdir {workdir} {parent} (permission "
                                    "denied or a read-only file system)"]
  workdir.mkdir()
  read_only.add(workdir)
  status, errors = _cli_run(capsys, workdir, "--resume")
  assert status == 2 and errors == [f"error: cannot write the workdir {workdir} (permission denied or a read-only "
                                    "file system)"]
  assert list(workdir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only directories")
def test_a_read_only_directory_is_exit_2(tmp_path):
  parent = tmp_path / "parent"
  parent.mkdir()
  parent.chmod(0o500)
  try:
    p = subprocess.run([sys.executable, "-m", "mobileprune_jax", "run", "--config", str(CONFIG), "--workdir",
                        str(parent / "run"), *ARGS], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  finally:
    parent.chmod(0o700)
  assert p.returncode == 2 and "error: cannot write the parent of workdir" in p.stderr


def test_file_too_large_names_the_file(tmp_path):
  limit = 200_000  # bytes: the log fits, a LeNet-300 checkpoint (≈ 3 MB) does not

  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "mobileprune_jax", "run", "--config", str(CONFIG), "--workdir", str(workdir), *ARGS]
  proc = subprocess.run(["bash", "-c", f'ulimit -f {limit // 1024} && exec "$@"', "bash", *command], cwd=REPO,
                        env=ENV, capture_output=True, text=True, timeout=300)
  err = proc.stderr
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert proc.returncode == 1 and len(errors) == 1, err
  assert "[Errno 27] File too large while writing" in errors[0] and str(workdir / "checkpoints" / "ckpt-") in errors[0]
  assert "Traceback" not in err
  assert not [p for p in (workdir / "checkpoints").iterdir()]  # the partial temporary file was removed
  shutil.rmtree(workdir)


def test_the_message_names_a_checkpoint_committed_just_before_the_signal(tmp_path):
  # A signal can land after a file's rename and before the run's bookkeeping: the disk is the truth.
  from mobileprune_jax.train import loop
  run = loop.Run(_cfg(), tmp_path / "run", log=lambda *_: None)
  assert run.stopped_at() == "at pretrain epoch 1 step 0 (no checkpoint yet); resume with --resume"
  run.ckpt.directory.mkdir(parents=True)
  (run.ckpt.directory / "ckpt-00000003.safetensors").write_bytes(b"")
  assert "(newest checkpoint: ckpt-00000003.safetensors);" in run.stopped_at()
  run.last_saved = "ckpt-00000003.safetensors at pretrain epoch 2 step 0"
  assert "(newest checkpoint: ckpt-00000003.safetensors at pretrain epoch 2 step 0);" in run.stopped_at()
