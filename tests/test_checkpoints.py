"""Damaged checkpoints: the run reports the file in one line and falls back, or stops with one clear error.

The reference is an uninterrupted run. A resume that falls back to an older, intact checkpoint
must end with exactly the reference's files (the older checkpoint replays deterministically).
"""

import hashlib
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from mobileprune_jax import config as config_lib
from mobileprune_jax import tensorfile
from mobileprune_jax.train import pipeline
from mobileprune_jax.train.checkpoints import Checkpoints, NonFiniteError
from mobileprune_jax.train.state import RunState

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "quick.py"
OVERRIDES = ["model=lenet300", "train_subset=1000", "test_subset=300", "batch_size=100", "progress=False",
             "checkpoint_every_steps=4", "data_parallel=False", "pretrain.epochs=1", "prune.iterations=1",
             "prune.epochs=1", "retrain.epochs=1", "coef.neuron=0.3", "coef.l0=2e-3"]


def _cfg(*extra):
  cfg = config_lib.load_config(CONFIG)
  config_lib.apply_overrides(cfg, OVERRIDES + list(extra))
  return cfg


def _outputs(workdir):
  files = [workdir / "summary.json", workdir / "log.jsonl", *sorted((workdir / "model").iterdir())]
  return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  pipeline.run(_cfg(), workdir, log=lambda *_: None)
  return workdir, _outputs(workdir)


def _copy(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  return workdir, sorted((workdir / "checkpoints").glob("ckpt-*"))


def _flip_data_byte(path):
  blob = bytearray(path.read_bytes())
  blob[-10] ^= 0x40
  path.write_bytes(bytes(blob))


def _flip_header_byte(path):
  blob = bytearray(path.read_bytes())
  blob[20] ^= 0x01
  path.write_bytes(bytes(blob))


def _flip_in_metadata(path):  # a flipped bit inside the config / run-state strings: still valid JSON
  blob = bytearray(path.read_bytes())
  at = blob.index(b"mobileprune")
  blob[at] ^= 0x01
  path.write_bytes(bytes(blob))


def _rewrite(path, arrays=None, **meta_changes):
  old_arrays, meta = tensorfile.read(path)
  meta.update(meta_changes)
  tensorfile.write(path, old_arrays if arrays is None else arrays(old_arrays), meta)


def _forge_metadata(path, **changes):
  """Replaces metadata entries with any JSON values and recomputes the header checksum (a forged, not a damaged,
  file: every checksum matches)."""
  blob = path.read_bytes()
  (n,) = struct.unpack("<Q", blob[:8])
  header = json.loads(blob[8 : 8 + n])
  header["__metadata__"].update(changes)
  header["__metadata__"]["sha256:__header__"] = tensorfile._header_digest(header)
  head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)
  path.write_bytes(struct.pack("<Q", len(head)) + head + blob[8 + n :])


def _nan_in_model(path):
  def poison(arrays):
    kernel = arrays["model/fc2/kernel"].copy()
    kernel[0, 0] = np.nan
    return {**arrays, "model/fc2/kernel": kernel}
  _rewrite(path, arrays=poison)


def _phase_99(path):
  _, meta = tensorfile.read(path)
  state = json.loads(meta["run_state"])
  state["phase"] = 99
  _rewrite(path, run_state=json.dumps(state))


def _epoch_out_of_range(path):
  _, meta = tensorfile.read(path)
  state = json.loads(meta["run_state"])
  state.update(phase=1, epoch=7)
  _rewrite(path, run_state=json.dumps(state))


def _missing_item(path):  # a mid-phase state whose optimizer arrays are gone
  _, meta = tensorfile.read(path)
  state = json.loads(meta["run_state"])
  state.update(phase=1, epoch=0, step=3, loss_count=3)
  _rewrite(path, arrays=lambda a: {k: v for k, v in a.items() if k.startswith("model/")}, run_state=json.dumps(state),
           items=json.dumps(["model", "optimizer"]))


def _missing_array(path):
  _rewrite(path, arrays=lambda a: {k: v for k, v in a.items() if k != "model/fc2/kernel"})


def _wrong_shape(path):
  _rewrite(path, arrays=lambda a: {**a, "model/fc2/kernel": np.zeros((3, 3), np.float32)})


def _negative_multiplier(path):
  _, meta = tensorfile.read(path)
  state = json.loads(meta["run_state"])
  state["multiplier"] = -1.0
  _rewrite(path, run_state=json.dumps(state))


CASES = {
    "bit flip in the data": (_flip_data_byte, "checksum mismatch in array"),
    "bit flip in the header": (_flip_header_byte, "damaged header"),
    "bit flip in the metadata": (_flip_in_metadata, "checksum mismatch in the header"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
    "empty file": (lambda p: p.write_bytes(b""), "empty file"),
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a tensor file"),
    "phase out of range": (_phase_99, "phase 99 is past the run's 3 phases"),
    "epoch out of range": (_epoch_out_of_range, "epoch 7 of phase 1, which has 1"),
    "missing item": (_missing_item, "no stored array for 'optimizer/"),
    "missing array": (_missing_array, "no stored array for 'model/fc2/kernel'"),
    "wrong shape": (_wrong_shape, "'model/fc2/kernel' is stored as float32[3, 3]"),
    "unreadable run state": (lambda p: _rewrite(p, run_state="{not json"), "run state is not readable"),
    "negative budget multiplier": (_negative_multiplier, "run state multiplier = -1.0 is not a positive number"),
    "items not a list": (lambda p: _rewrite(p, items='{"model": 1}'), "metadata 'items' is not a list of names"),
    "items a JSON array (forged)": (lambda p: _forge_metadata(p, items=["model"]),
                                    "metadata entry 'items' is a JSON list, not a string"),
    "config a JSON object (forged)": (lambda p: _forge_metadata(p, config={"seed": 0}),
                                      "metadata entry 'config' is a JSON dict, not a string"),
    "NaN in a model array (forged)": (_nan_in_model, "model/fc2/kernel holds 1 non-finite values"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(finished, tmp_path, case):
  damage, reason = CASES[case]
  workdir, ckpts = _copy(finished, tmp_path)
  damage(ckpts[-1])
  (workdir / "summary.json").unlink()
  lines = []
  pipeline.run(_cfg(), workdir, resume=True, log=lines.append)
  warnings = [line for line in lines if line.startswith("warning: skipping a damaged checkpoint")]
  assert len(warnings) == 1 and str(ckpts[-1]) in warnings[0] and reason in warnings[0], lines
  assert _outputs(workdir) == finished[1]


def test_no_usable_checkpoint_is_one_error_line_and_exit_2(finished, tmp_path):
  workdir, ckpts = _copy(finished, tmp_path)
  for path in ckpts:
    _flip_data_byte(path)
  with pytest.raises(pipeline.CheckpointError, match=f"no usable checkpoint in {workdir / 'checkpoints'} \\(3 tried"):
    pipeline.run(_cfg(), workdir, resume=True, log=lambda *_: None)
  args = [f"--config.{o}" for o in OVERRIDES]
  p = subprocess.run([sys.executable, "-m", "mobileprune_jax", "run", "--config", str(CONFIG), "--workdir", str(workdir),
                      "--resume", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                     env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert p.returncode == 2
  errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "no usable checkpoint" in errors[0], p.stderr
  assert "Traceback" not in p.stderr


def test_resuming_with_another_config_is_refused(finished, tmp_path):
  workdir, _ = _copy(finished, tmp_path)
  with pytest.raises(pipeline.ConfigMismatchError, match=r"different config \(coef.l0: 0.002 -> 0.001\)"):
    pipeline.run(_cfg("coef.l0=1e-3"), workdir, resume=True, log=lambda *_: None)
  with pytest.raises(pipeline.ConfigMismatchError, match=r"\(prune.palm_warm_start: its default -> True\)"):
    pipeline.run(_cfg("prune.palm_warm_start=True"), workdir, resume=True, log=lambda *_: None)  # a key at its default
  # keys that do not change the computation may differ
  pipeline.run(_cfg("checkpoint_every_steps=3", "progress=True"), workdir, resume=True, log=lambda *_: None)
  assert _outputs(workdir) == finished[1]


def test_a_killed_write_leaves_no_checkpoint_and_its_temporary_file_is_removed(finished, tmp_path):
  workdir, ckpts = _copy(finished, tmp_path)
  leftover = ckpts[-1].with_name(f".{ckpts[-1].name.replace('000', '999', 1)}.tmp-12345")
  leftover.write_bytes(b"half a checkpoint")
  pipeline.run(_cfg(), workdir, resume=True, log=lambda *_: None)
  assert not leftover.exists()
  assert _outputs(workdir) == finished[1]


def test_a_diverging_run_never_saves_non_finite_values(tmp_path):
  cfg = _cfg("method=l1", "coef.l1=1e-12", "prune.lr=1e8", "checkpoint_every_steps=2", "checkpoint_keep=2")
  with pytest.raises(FloatingPointError) as info:
    pipeline.run(cfg, tmp_path, log=lambda *_: None)
  message = str(info.value)
  assert "diverged in phase 'prune/1'" in message and "nothing non-finite was saved" in message
  ckpts = sorted((tmp_path / "checkpoints").glob("ckpt-*"))
  assert ckpts and ckpts[-1].name in message  # the message names the newest checkpoint, which is finite
  for path in ckpts:
    arrays, _ = tensorfile.read(path)
    assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f"), path
  assert not (tmp_path / "summary.json").exists()


def test_save_refuses_non_finite_arrays(tmp_path):
  ckpt = Checkpoints(tmp_path)
  with pytest.raises(NonFiniteError, match="model/w holds 1 non-finite values"):
    ckpt.save(RunState(), {"model": {"w": np.array([1.0, np.nan], np.float32)}}, "{}")
  with pytest.raises(NonFiniteError, match="model/w holds 1 non-finite values"):
    ckpt.save(RunState(), {"model": {"w": np.array([1.0, np.inf], np.float32)}}, "{}")
  with pytest.raises(NonFiniteError, match="optimizer/m holds 1 non-finite values"):
    ckpt.save(RunState(), {"model": {"w": np.ones(2, np.float32)}, "optimizer": {"m": np.array([np.nan], np.float32)}},
              "{}")
  assert not ckpt.exists()
  # +inf is an optimizer-state sentinel (reduce_on_plateau's best loss before the first window): saved
  ckpt.save(RunState(), {"model": {"w": np.ones(2, np.float32)}, "optimizer": {"best": np.array(np.inf, np.float32)}},
            "{}")
  assert ckpt.exists()
