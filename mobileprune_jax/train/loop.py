"""The run as one explicit, checkpointed state machine: phases → epochs → steps → finishing.

    state = restore newest good checkpoint (model first, then the phase's optimizer built from it)
    while state.phase < len(phases):
        build the phase's stepper from the model (unless the restore built it)
        for each remaining epoch: steps (checkpoint every N) → evaluate → log → checkpoint
        phase action (e.g. DEGL threshold) → checkpoint at the next phase's start
    finishing stages (shrink, model/, export, summary.json): redone from the final state

Every checkpoint holds the ``RunState`` (phase, epoch, step, the epoch's running loss sums,
the log), the model and the current phase's optimizer state; the data order is a function of
(seed, phase, epoch). So a run killed anywhere and resumed writes the same ``log.jsonl``,
``summary.json``, ``model/`` and parameters as an uninterrupted one. Non-finite losses or
parameters are never saved. Wall-clock times go to ``timing.jsonl`` only.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from mobileprune_jax import analysis, atomic, metrics, tree_arrays
from mobileprune_jax import config as config_lib
from mobileprune_jax import data as data_lib
from mobileprune_jax.train import budget, distributed, events, inputs, report
from mobileprune_jax.train.checkpoints import Checkpoints, NonFiniteError
from mobileprune_jax.train.lock import WorkdirBusyError, WorkdirLock, check_member, check_workdir
from mobileprune_jax.train.phases import Phase, Stepper, build_phases
from mobileprune_jax.train.state import RunState, StateError
from mobileprune_jax.train.steering import ANCHOR, Steering
from mobileprune_jax.train.steps import evaluate

# keys that do not change what a run computes: they may differ between a run and its resume
_FREE_KEYS = ("progress", "checkpoint_every_steps", "checkpoint_keep", "data_parallel", "export", "distributed")
_LATER_KEYS = {"val_fraction": 0.0, "augment_shift": 0, "init_from": "", "degl.selection": "prox",
               "degl.plateau_patience": 0, "degl.plateau_factor": 0.1,
               "coef.coupled": False, "round_to": 1,
               "prune.palm_warm_start": False}  # per-layer groups: the fingerprint runs had before coupled units


def config_fingerprint(cfg: ml_collections.ConfigDict) -> str:
  """The config as canonical JSON, without the keys a resume may change."""
  d = cfg.to_dict()
  for key, sentinel in config_lib.SENTINELS.items():  # None and the old "unset" value are one fingerprint
    *parents, leaf = key.split(".")
    node = d
    for parent in parents:
      node = node.get(parent, {})
    if leaf in node and node[leaf] is None:
      node[leaf] = sentinel
  for key in _FREE_KEYS:
    d.pop(key, None)
  if all(d["budget"][k] is None for k in ("nonzero", "params", "macs")):
    d.pop("budget")  # runs without a budget keep the fingerprint they had before budgets existed
  for key, default in _LATER_KEYS.items():  # the same for keys added later, at their defaults
    *parents, leaf = key.split(".")
    node = d
    for parent in parents:
      node = node.get(parent, {})
    if node.get(leaf, default) == default:
      node.pop(leaf, None)
  return json.dumps(d, sort_keys=True)


_ACTIVE: list[tuple[Run, WorkdirLock]] = []  # the run holding its workdir lock in this process, if any


@contextlib.contextmanager
def _active(run: Run, lock: WorkdirLock):
  _ACTIVE.append((run, lock))
  try:
    yield
  finally:
    _ACTIVE.remove((run, lock))


def stop_active_run() -> str | None:
  """For a signal handler about to end the process: releases the active run's workdir lock cleanly and returns
  where the run stopped (``Run.stopped_at``); None when no run holds a workdir. Every checkpoint on disk is
  complete at any instant (atomic writes), so the process may then exit at once, like a kill."""
  if not _ACTIVE:
    return None
  run, lock = _ACTIVE[-1]
  lock.release_for_exit()
  return run.stopped_at()


class RunInterrupted(KeyboardInterrupt):
  """Ctrl-C (or SIGTERM) stopped a run; the message says where and how to resume. A ``KeyboardInterrupt``, so
  notebooks and ``except Exception`` treat it as one."""


class Run:
  """One run in a workdir; ``Run(cfg, workdir).execute(resume)`` (see ``run``)."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: pathlib.Path, log: Callable[[str], None]):
    config_lib.validate(cfg)
    self.main = distributed.is_main()  # the process that writes files; every process computes the same run
    self.cfg, self.workdir = cfg, workdir
    self.log = log if self.main else (lambda message: None)
    self.ds = inputs.load_data(cfg)
    self.model, self.spec = inputs.create_model(cfg, self.ds)
    if cfg.init_from:
      inputs.load_initial_weights(cfg, self.model)
    self.batches = inputs.plan_batches(cfg, self.ds)
    self.sample = jnp.asarray(self.ds.test_x[:2])
    structure = analysis.analyze(self.model, self.sample)  # traced once; the phases reuse it
    inputs.check_classes(cfg, self.ds, structure.graph.output_shapes)
    self.phases = build_phases(cfg, structure.kernel_paths, self.sample, self.batches.steps_per_epoch,
                               model_rules=structure.rules, model=self.model, graph=structure.graph)
    self.steering = Steering.for_run(cfg, self.model, self.sample, self.phases, self.batches.steps_per_epoch,
                                     self.record)
    self.fingerprint = config_fingerprint(cfg)
    self.ckpt = Checkpoints(workdir / "checkpoints", keep=cfg.checkpoint_keep, warn=log)
    self.state = RunState()
    self.last_saved: str = "none"

  # ------------------------------------------------------------------ checkpoints ---

  def _epochs(self, phase: Phase) -> int:
    return phase.epochs_with(self.batches.steps_per_epoch)

  def _load(self, state: RunState, arrays: dict[str, np.ndarray], items: list[str]) -> Stepper | None:
    """Applies a checkpoint: validate the state, restore the model, build the phase, restore its optimizer; returns
    the phase's stepper it built (None after the last phase, or for a phase without one)."""
    state.check_fits([self._epochs(p) for p in self.phases],
                     lambda p, e: self.phases[p].steps_in_epoch(e, self.batches.steps_per_epoch))
    nnx.update(self.model, tree_arrays.from_arrays(nnx.state(self.model), arrays, prefix="model/"))
    if state.phase >= len(self.phases):
      return None
    stepper = self.phases[state.phase].build(self.model) if self.phases[state.phase].build else None
    if self.steering is not None:  # the landing's fallback, when the run had one at this point
      self.steering.restore(tree_arrays.from_arrays(nnx.state(self.model), arrays, prefix=f"{ANCHOR}/")
                            if ANCHOR in items else None)
    wanted = sorted(stepper.items()) if stepper is not None and (state.epoch or state.step) else []
    if sorted(set(items) - {"model", ANCHOR}) != wanted:
      raise StateError(f"holds {sorted(items)}, but phase {state.phase} at epoch {state.epoch}, step {state.step} "
                       f"needs {['model', *wanted]}")
    if wanted:
      stepper.restore({name: tree_arrays.from_arrays(tree, arrays, prefix=f"{name}/")
                       for name, tree in stepper.items().items()})
    return stepper

  def save(self, stepper: Stepper | None) -> None:
    items = {"model": nnx.state(self.model), **(stepper.items() if stepper is not None else {}),
             **(self.steering.items() if self.steering is not None else {})}
    try:
      path = self.ckpt.save(self.state, items, self.fingerprint, write=self.main)
    except NonFiniteError as e:
      self._diverged(str(e))
    distributed.barrier("checkpoint")  # process 0's file is on disk before any process goes on
    path = path or self.ckpt.paths()[-1]
    self.last_saved = f"{path.name} at {self.where()}"
    events.reached("saved")

  def _diverged(self, what: str) -> None:
    phase = self.phases[self.state.phase].name if self.state.phase < len(self.phases) else "finish"
    saved = (f"the newest checkpoint, {self.last_saved}, holds finite values" if self.last_saved != "none"
             else "no checkpoint was written")
    raise FloatingPointError(
        f"{self.cfg.name}: the run diverged in phase {phase!r}, epoch {self.state.epoch + 1} ({what}); nothing "
        f"non-finite was saved ({saved}); lower the learning rate or the penalty coefficients (resuming with the "
        "same config would diverge again)")

  # ------------------------------------------------------------------------- log ---

  def record(self, entry: dict[str, Any]) -> None:
    self.state.log.append(entry)
    if self.main:
      _append(self.workdir / "log.jsonl", json.dumps(entry) + "\n")

  def timing(self, event: dict[str, Any]) -> None:
    if self.main:
      _append(self.workdir / "timing.jsonl", json.dumps({**event, "time": round(time.time(), 3)}) + "\n")

  # ------------------------------------------------------------------------- run ---

  def where(self) -> str:
    """The run's position, for a one-line interruption message."""
    state = self.state
    if state.phase >= len(self.phases):
      return "finishing (shrink, export, summary)"
    phase = self.phases[state.phase]
    if state.epoch >= self._epochs(phase):
      return f"the end of {phase.name}"
    return f"{phase.name} epoch {state.epoch + 1} step {state.step}"

  def stopped_at(self) -> str:
    """Where the run stopped and how to go on, e.g. ``at prune/1 epoch 3 step 40 (newest checkpoint: …); resume
    with --resume``."""
    return f"at {self.where()} ({self._newest_checkpoint()}); resume with --resume"

  def _newest_checkpoint(self) -> str:
    """What the disk holds, not only what ``save`` recorded: a signal may land between a file's commit and the
    bookkeeping."""
    try:
      on_disk = self.ckpt.paths()
    except OSError:
      on_disk = []
    if not on_disk:
      return "no checkpoint yet"
    newest = on_disk[-1].name
    known = self.last_saved if self.last_saved.startswith(newest + " ") else newest
    return f"newest checkpoint: {known}"

  def execute(self, resume: bool) -> dict[str, Any]:
    try:
      return self._execute(resume)
    except KeyboardInterrupt:  # Ctrl-C in a notebook or script: one message, the checkpoints stay intact
      raise RunInterrupted(f"interrupted {self.stopped_at()}") from None

  def _execute(self, resume: bool) -> dict[str, Any]:
    with self._lock() as lock, _active(self, lock):
      if self.main:
        self.ckpt.remove_partial_writes()
        self.ckpt.warn_about_strangers()
      distributed.barrier("workdir cleaned")
      if not resume and self.ckpt.exists():
        raise FileExistsError(f"{self.workdir} already has checkpoints: pass --resume to continue, or use a new "
                              "workdir")
      restored = self.ckpt.restore_latest(self.fingerprint, self._load) if resume else None
      distributed.check_same(-1 if restored is None else int(restored.path.name[5:13]), "the checkpoint to resume from")
      stepper = None  # the restored phase's optimizer, when the checkpoint is inside a phase
      if restored is not None:
        self.state, path, stepper = restored
        self.last_saved = f"{path.name} at {self.where()}"
        where = self.phases[self.state.phase].name if self.state.phase < len(self.phases) else "finishing"
        self.log(f"resuming at phase {self.state.phase} ({where}), epoch {self.state.epoch}, step {self.state.step} "
                 f"from {path.name}")
      elif resume:
        self.log(f"no checkpoint in {self.workdir}: starting from the beginning")
      if self.main:
        atomic.write_text(self.workdir / "log.jsonl", "".join(json.dumps(e) + "\n" for e in self.state.log))
      self.timing({"event": "start", "resumed": restored is not None, "phase": self.state.phase,
                   "epoch": self.state.epoch, "step": self.state.step})
      if restored is None and self.cfg.init_from:
        self.record_initial_model()
      while self.state.phase < len(self.phases):
        self.run_phase(self.phases[self.state.phase], stepper)
        stepper = None
      events.reached("finish")
      summary = report.finish(self.cfg, self.workdir, self.model, self.ds, self.sample, self.spec, self.state,
                              write=self.main)
      self.timing({"event": "finished"})
      self.log(report.format_summary(summary))
    budget.check_reached(summary.get("budget"), self.cfg.name)
    return summary

  @contextlib.contextmanager
  def _lock(self):
    """The workdir lock: held by process 0; the other processes check that it names this run."""
    token = distributed.run_token()  # every process calls it (a broadcast)
    lock = WorkdirLock(self.workdir, warn=self.log, run=token if distributed.count() > 1 else None)
    error = None
    if self.main:
      try:
        lock.__enter__()
      except (WorkdirBusyError, OSError) as e:
        error = e
    if not distributed.agree(error is None):  # the others must not wait for a process 0 that stopped
      if error is not None:
        raise error
      raise WorkdirBusyError(f"process 0 could not take the lock of {self.workdir} (see its message)")
    try:
      if not self.main:
        check_member(self.workdir, token)
      yield lock
    finally:
      if self.main:
        lock.__exit__(None, None, None)

  def record_initial_model(self) -> None:
    """A run started from ``init_from``: its accuracy is the base accuracy (there may be no pretraining)."""
    val = self._evaluate(self.ds.val_x, self.ds.val_y) if self.ds.val_x is not None else None
    self.state.base_accuracy = self._evaluate(self.ds.test_x, self.ds.test_y)
    self.record({"phase": "init", "event": "init_from", "test_accuracy": self.state.base_accuracy,
                 "val_accuracy": val, "nonzero_fraction": _nonzero_fraction(self.model)})

  def run_phase(self, phase: Phase, stepper: Stepper | None) -> None:
    """Runs the rest of the current phase, its action, and checkpoints the start of the next."""
    state, cfg = self.state, self.cfg
    if stepper is None and phase.build is not None:
      stepper = phase.build(self.model)
    step = stepper.start(self.batches.placement) if stepper is not None else None
    epochs = self._epochs(phase)
    if self.steering:
      self.steering.phase_starts(self.model, state)
    while state.epoch < epochs:
      n_steps = phase.steps_in_epoch(state.epoch, self.batches.steps_per_epoch)
      self.run_epoch(phase, step, stepper, n_steps)
      self.end_epoch(phase, stepper, epochs)
    events.reached("phase_end")
    if self.steering:
      self.steering.phase_ends(self.model, state)
    if phase.on_end is not None:
      info = phase.on_end(self.model)
      self.record({"phase": phase.name, "event": "end", **info, "nonzero_fraction": _nonzero_fraction(self.model)})
      self.log(f"[{phase.name}] {info}")
    if phase.name == "pretrain" or (state.base_accuracy is None and state.phase == 0 and cfg.method == "dense"):
      state.base_accuracy = self._evaluate(self.ds.test_x, self.ds.test_y)  # a reported number: the dense model's
      self.record({"phase": phase.name, "event": "dense_model", "test_accuracy": state.base_accuracy})
      self.log(f"[{phase.name}] test accuracy of the dense model {state.base_accuracy:.4f}")
    state.start_phase(state.phase + 1)
    self.save(None)
    events.reached("phase_start")

  def run_epoch(self, phase: Phase, step, stepper: Stepper | None, n_steps: int) -> None:
    """The remaining steps of the current epoch (checkpointing every ``checkpoint_every_steps``)."""
    state, cfg = self.state, self.cfg
    order_seed = int(np.random.SeedSequence([cfg.seed, state.phase, state.epoch]).generate_state(1)[0])
    progress = _progress(cfg, phase.name, state.epoch, self._epochs(phase), n_steps, state.step)
    pending: list[tuple[jax.Array, jax.Array | None]] = []

    def fold() -> None:  # adds the pending losses in step order (float64 on the host): resume-invariant sums
      for loss, lip in pending:
        state.loss_sum += float(loss)
        state.loss_count += 1
        if lip is not None:
          state.lipschitz_sum += float(lip)
      pending.clear()

    batches = data_lib.batches(self.ds.train_x, self.ds.train_y, cfg.batch_size, order_seed, skip=state.step,
                               shift=cfg.augment_shift)
    for xb, yb in batches:
      if state.step >= n_steps:
        break
      loss, lip = step(*self.batches.placement.put_batch(xb, yb), state.multiplier if phase.scaled else 1.0)
      pending.append((loss, lip))
      state.step += 1
      state.global_step += 1
      if self.steering:
        self.steering.step_done(self.model, state)
      if progress is not None:
        progress.update(1)
        if state.step % 10 == 0:
          progress.set_postfix(loss=f"{float(loss):.4f}")
      if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0:
        fold()
        if not math.isfinite(state.loss_sum):
          self._diverged(f"the training loss became {state.loss_sum} by step {state.step}")
        self.save(stepper)
    fold()
    if progress is not None:
      progress.close()

  def end_epoch(self, phase: Phase, stepper: Stepper | None, epochs: int) -> None:
    """Evaluates, logs and checkpoints the end of the current epoch."""
    state = self.state
    events.reached("epoch_end")
    if state.mean_loss is not None and not math.isfinite(state.mean_loss):
      self._diverged(f"the training loss became {state.mean_loss}")
    # validation only: the test split is read once per reported number (the dense model's and the final one's)
    val_acc = self._evaluate(self.ds.val_x, self.ds.val_y) if self.ds.val_x is not None else None
    entry = {"phase": phase.name, "epoch": state.epoch + 1, "epochs": epochs, "loss": state.mean_loss,
             "val_accuracy": val_acc, "nonzero_fraction": _nonzero_fraction(self.model)}
    if self.steering:
      entry |= self.steering.epoch_entry(self.model, state)
    if state.lipschitz_sum and state.loss_count:  # PALM: mean backtracked Lipschitz estimate (step 1 / (γ L))
      entry["palm_lipschitz"] = state.lipschitz_sum / state.loss_count
    self.record(entry)
    self.timing({"event": "epoch", "phase": phase.name, "epoch": state.epoch + 1})
    loss = "-" if entry["loss"] is None else f"{entry['loss']:.4f}"
    val = "" if val_acc is None else f"  val acc {val_acc:.4f}"
    self.log(f"[{phase.name}] epoch {state.epoch + 1}/{epochs}  loss {loss}{val}  nonzero "
             f"{100 * entry['nonzero_fraction']:.2f} %" + (f"  L {entry['palm_lipschitz']:.3g}"
                                                         if "palm_lipschitz" in entry else ""))
    state.start_epoch(state.epoch + 1)
    self.save(stepper)

  def _evaluate(self, x, y) -> float:
    return evaluate(self.model, x, y, self.cfg.eval_batch_size, self.batches.placement)


def _append(path: pathlib.Path, text: str) -> None:
  try:
    with open(path, "a") as f:
      f.write(text)
  except OSError as e:  # a full disk or "File too large" names no file by itself
    if e.filename is None:
      raise OSError(e.errno, f"{e.strerror or e} while appending to {path}") from None
    raise


def _nonzero_fraction(model: nnx.Module) -> float:
  params = nnx.state(model, nnx.Param)
  return metrics.count_nonzero(params) / max(metrics.count_params(params), 1)


def _progress(cfg, name, epoch, epochs, total, initial):
  if not cfg.progress:
    return None
  return tqdm(total=total, initial=initial, desc=f"{name} {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def print_line(line: str) -> None:
  """The default ``log`` of ``run``: progress on standard output, ``warning:`` lines on standard error."""
  print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout, flush=True)


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, resume: bool = False,
        log: Callable[[str], None] = print_line) -> dict[str, Any]:
  """Runs a config end to end (or resumes it) and returns the summary (also in ``summary.json``).

  Every check of the config, the data and the model happens before the workdir is touched.

  Raises:
    ConfigError, InvalidDataError, DataUnavailableError: bad input (nothing was written).
    WorkdirBusyError: another live run holds the workdir.
    FileExistsError: the workdir has checkpoints and ``resume`` is False.
    CheckpointError: ``resume`` and no checkpoint in the workdir is usable.
    ConfigMismatchError: ``resume`` with a config other than the one the workdir was started with.
    WorkdirError: the workdir (or its ``checkpoints/``) is not a directory or cannot be written.
    FloatingPointError: the run diverged (nothing non-finite was saved).
    RunInterrupted: Ctrl-C stopped the run (every checkpoint on disk is intact; resume continues it).
  """
  check_workdir(workdir)
  config_lib.validate(cfg)
  distributed.initialize(cfg)
  try:
    prepared = Run(cfg, pathlib.Path(workdir), log)
  except KeyboardInterrupt:
    raise RunInterrupted("interrupted before training started; nothing was changed (run the command again)") from None
  return prepared.execute(resume)
