"""The research workflow: train → sparsify → prune → retrain (→ repeat) → shrink → measure.

A run is a list of *phases* built from the config (``build_phases``). Each phase has its
own optimizer (an optax chain, or PALM) and a number of epochs (or steps); some end with
an action (DEGL's threshold). The loop is resumable: checkpoints (orbax, atomic) hold the
model, the optimizer state, the phase, epoch and step, and the log; the data order is a
function of (seed, phase, epoch), so a resumed run ends with the same parameters as an
uninterrupted one.

Outputs in the workdir: ``log.jsonl`` (one line per epoch / phase event), ``summary.json``,
``model/`` (the shrunk model: architecture.json + orbax state), ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from mobileprune_jax import config as config_lib
from mobileprune_jax import data as data_lib
from mobileprune_jax import metrics, models, surgery, transforms
from mobileprune_jax.surgery import depgraph
from mobileprune_jax.train import palm
from mobileprune_jax.train.steps import Placement, bound_train_step, evaluate

ProxFactory = Callable[[Any], optax.GradientTransformation]


@dataclasses.dataclass
class Phase:
  """One stage of a run.

  Attributes:
    name: e.g. "pretrain", "prune/1", "retrain/1", "select", "debias".
    epochs: number of epochs (or ``steps`` mini-batches if steps > 0).
    make_tx: builds the optax transform (None for PALM phases).
    palm: the prox factory for a PALM phase.
    on_end: action on the model when the phase is done (e.g. DEGL's threshold).
  """

  name: str
  epochs: int
  steps: int = 0
  make_tx: Callable[[], optax.GradientTransformation] | None = None
  palm: ProxFactory | None = None
  on_end: Callable[[nnx.Module], dict[str, Any]] | None = None


def learning_rate(lr: float, schedule: str, total_steps: int) -> optax.ScalarOrSchedule:
  """constant, cosine decay to 0, or ×0.1 after 1/3 and 2/3 of ``total_steps``."""
  if schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  if schedule == "step":
    return optax.exponential_decay(lr, transition_steps=max(total_steps // 3, 1), decay_rate=0.1, staircase=True)
  return lr


def _optimizer(section: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate(section.lr, section.schedule, total_steps)
  if section.optimizer == "adam":
    base = optax.adam(lr, b1=section.momentum) if section.momentum else optax.adam(lr)
  else:
    base = optax.sgd(lr, momentum=section.momentum or None)
  return optax.chain(optax.add_decayed_weights(section.weight_decay), base) if section.weight_decay else base


def prox_factory(cfg: ml_collections.ConfigDict, rules) -> ProxFactory | None:
  """The regulariser of ``cfg.method`` as a function of the step size."""
  c = cfg.coef
  grouping = c.conv_grouping
  factories = {
      "mobileprune": lambda s: transforms.l0_sparse_group_lasso(s, l0=c.l0, neuron=c.neuron, channel=c.channel,
                                                                shape=c.shape if grouping != "output_filter" else 0.0,
                                                                rules=rules, conv_grouping=grouping),
      "l0": lambda s: transforms.l0(s, l0=c.l0, rules=rules),
      "l1": lambda s: transforms.l1(s, l1=c.l1, rules=rules),
      "l2": lambda s: transforms.l2(s, l2=c.l2, rules=rules),
      "group_lasso": lambda s: transforms.group_lasso(s, neuron=c.neuron, channel=c.channel, shape=c.shape,
                                                      rules=rules),
      "l1_sgl": lambda s: transforms.l1_sparse_group_lasso(s, l1=c.l1, neuron=c.neuron, channel=c.channel,
                                                           shape=c.shape, rules=rules),
  }
  return factories.get(cfg.method)


def output_layer_rules(last: str) -> list[tuple[str, str]]:
  """Rules that exclude the classifier (kernel path ``last``, the layer producing the outputs) from group terms."""
  parent = last.rpartition("/")[0]
  return [(f"^{parent}/(kernel|bias)$", "none")] if parent else [(f"^{last}$", "none")]


def degl_threshold(model: nnx.Module, sample_input, t_th: float, exclude: str) -> dict[str, Any]:
  """DEGL's rule: remove unit/filter m iff max_k |w^{m,k}| < t_th (its incoming weights).

  The unit is removed as a whole: its incoming weights and bias, and the weights of every
  layer that reads it (found by the dependency graph), are set to 0, so that surgery can
  cut it exactly. Units tied to others by a residual add are left alone.
  """
  graph = depgraph.trace(model, sample_input)
  variables = _variables(model)
  dead_nodes: set[int] = set()
  group_size: dict[int, int] = {}
  for node in range(len(graph.parent)):
    root = graph.find(node)
    group_size[root] = group_size.get(root, 0) + 1
  removed = 0
  for layer in graph.layers:
    if layer.kernel_path == exclude or not layer.sliceable:
      continue
    kernel = np.asarray(variables[layer.kernel_path].get_value())
    by_out = np.moveaxis(kernel, layer.out_axis, -1).reshape(-1, kernel.shape[layer.out_axis])
    small = np.max(np.abs(by_out), axis=0) < t_th
    for f in np.flatnonzero(small):
      node = int(layer.out_nodes[f])
      if node in graph.pinned or group_size[graph.find(node)] > 1:
        continue
      dead_nodes.add(node)
      removed += 1
  for layer in graph.layers:
    if not layer.sliceable:
      continue
    var = variables[layer.kernel_path]
    kernel = np.asarray(var.get_value()).copy()
    out_dead = np.array([int(n) in dead_nodes for n in layer.out_nodes])
    in_dead = np.array([int(n) in dead_nodes for n in layer.in_nodes])
    if out_dead.any():
      index = [slice(None)] * kernel.ndim
      index[layer.out_axis] = out_dead
      kernel[tuple(index)] = 0
      bias = variables.get(layer.kernel_path.rpartition("/")[0] + "/bias")
      if bias is not None:
        b = np.asarray(bias.get_value()).copy()
        b[out_dead] = 0
        bias.set_value(jnp.asarray(b))
    if in_dead.any():
      index = [slice(None)] * kernel.ndim
      index[layer.in_axis] = in_dead
      kernel[tuple(index)] = 0
    var.set_value(jnp.asarray(kernel))
  return {"degl_removed_units": removed, "t_th": t_th}


def magnitude_threshold(model: nnx.Module, sample_input, threshold: float, layers: str, exclude: str) -> dict[str, Any]:
  """Zeroes every kernel weight with |w| <= threshold in conv layers (``layers="conv"``) or all layers but ``exclude``."""
  graph = depgraph.trace(model, sample_input)
  variables = _variables(model)
  zeroed = 0
  for layer in graph.layers:
    var = variables[layer.kernel_path]
    kernel = var.get_value()
    if layer.kernel_path == exclude or (layers == "conv" and kernel.ndim < 3):
      continue
    small = jnp.abs(kernel) <= threshold
    zeroed += int(jnp.sum(small & (kernel != 0)))
    var.set_value(jnp.where(small, jnp.zeros_like(kernel), kernel))
  return {"magnitude_zeroed": zeroed, "threshold": threshold}


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  return {"/".join(str(p) for p in path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}


def _retrain_phase(name: str, rt: ml_collections.ConfigDict, steps_per_epoch: int) -> Phase:
  """Masked retraining: the retrain optimizer followed by ``keep_support`` (pruned weights stay 0)."""
  return Phase(name, rt.epochs, make_tx=lambda: optax.chain(_optimizer(rt, rt.epochs * steps_per_epoch),
                                                            transforms.keep_support()))


def build_phases(cfg: ml_collections.ConfigDict, model: nnx.Module, sample_input, steps_per_epoch: int = 1) -> list[Phase]:
  """The phases of ``cfg.method`` (spec §B for MobilePrune and baselines, §H for DEGL)."""
  last_kernel = depgraph.trace(model, sample_input).layers[-1].kernel_path
  rules = output_layer_rules(last_kernel)
  pre, pr, rt = cfg.pretrain, cfg.prune, cfg.retrain
  phases: list[Phase] = []
  if pre.epochs:
    phases.append(Phase("pretrain", pre.epochs, make_tx=lambda: _optimizer(pre, pre.epochs * steps_per_epoch)))
  if cfg.method == "dense":
    return phases
  if cfg.method == "magnitude":
    mg = cfg.magnitude
    phases.append(Phase("threshold", 0, on_end=lambda m: magnitude_threshold(m, sample_input, mg.threshold, mg.layers,
                                                                              last_kernel)))
    if rt.epochs:
      phases.append(_retrain_phase("retrain/1", rt, steps_per_epoch))
    return phases
  if cfg.method in ("degl", "egl", "degl_group_lasso"):
    d = cfg.degl
    lam = 0.0 if cfg.method == "degl_group_lasso" else d.lam
    select = lambda: optax.chain(optax.sgd(d.lr, momentum=d.momentum or None),
                                 transforms.elastic_group_lasso(d.lr, gamma=d.gamma, lam=lam, rules=rules))
    phases.append(Phase("select", d.select_epochs, make_tx=select,
                        on_end=lambda m: degl_threshold(m, sample_input, d.t_th, last_kernel)))
    if cfg.method == "egl":
      retrain = lambda: optax.chain(optax.sgd(d.lr, momentum=d.momentum or None),
                                    transforms.elastic_group_lasso(d.lr, gamma=d.gamma, lam=lam, rules=rules),
                                    transforms.keep_support())
    else:
      rt_lam = lam * (d.rt_scale if d.rt_scale > 0 else 1.0)
      retrain = lambda: optax.chain(optax.sgd(d.lr, momentum=d.momentum or None),
                                    transforms.l2(d.lr, l2=rt_lam), transforms.keep_support())
    phases.append(Phase("debias" if cfg.method == "degl" else "retrain", d.retrain_epochs, make_tx=retrain))
    return phases
  factory = prox_factory(cfg, rules=None)
  for t in range(1, pr.iterations + 1):
    if cfg.mode == "palm" and cfg.method != "l2":
      phases.append(Phase(f"prune/{t}", pr.epochs, steps=pr.steps, palm=factory))
    else:
      phases.append(Phase(f"prune/{t}", pr.epochs, steps=pr.steps,
                          make_tx=lambda: optax.chain(optax.sgd(pr.lr, momentum=pr.momentum or None), factory(pr.lr))))
    if rt.epochs:
      phases.append(_retrain_phase(f"retrain/{t}", rt, steps_per_epoch))
  return phases


# ------------------------------------------------------------------------ checkpoints ---


def _to_saveable(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)


def _from_saved(saved, like):
  return jax.tree.map(
      lambda s, x: jax.random.wrap_key_data(s, impl=jax.random.key_impl(x))
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else s, saved, like)


class Checkpoints:
  """Atomic orbax checkpoints of (model, optimizer) state plus JSON progress metadata."""

  def __init__(self, directory: pathlib.Path, max_to_keep: int = 2):
    self.manager = ocp.CheckpointManager(directory.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

  def save(self, step: int, model: nnx.Module, optimizer: Any, meta: dict[str, Any]) -> None:
    state = {"model": _to_saveable(nnx.state(model))}
    if optimizer is not None:
      state["optimizer"] = _to_saveable(nnx.state(optimizer))
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)
    self.manager.wait_until_finished()

  def latest_meta(self) -> dict[str, Any] | None:
    step = self.manager.latest_step()
    if step is None:
      return None
    return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, model: nnx.Module, optimizer: Any) -> None:
    step = self.manager.latest_step()
    target = {"model": _to_saveable(nnx.state(model))}
    if optimizer is not None:
      target["optimizer"] = _to_saveable(nnx.state(optimizer))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    got = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    nnx.update(model, _from_saved(got["model"], nnx.state(model)))
    if optimizer is not None:
      nnx.update(optimizer, _from_saved(got["optimizer"], nnx.state(optimizer)))


# ---------------------------------------------------------------------------- the run ---


def _sparsity(model: nnx.Module) -> float:
  params = nnx.state(model, nnx.Param)
  return metrics.count_nonzero(params) / max(metrics.count_params(params), 1)


def load_data(cfg: ml_collections.ConfigDict) -> data_lib.Dataset:
  options = {"fold": cfg.fold} if cfg.dataset in ("wisdm", "uci_har", "pamap2") else {}
  ds = data_lib.load(cfg.dataset, cfg.data_dir or None, **options)
  if cfg.train_subset or cfg.test_subset:
    ds = ds.subset(cfg.train_subset or None, cfg.test_subset or None)
  return ds


def create_model(cfg: ml_collections.ConfigDict, ds: data_lib.Dataset) -> tuple[nnx.Module, dict[str, Any]]:
  kwargs = dict(cfg.model_kwargs)
  kwargs.setdefault("num_classes", ds.num_classes)
  if cfg.model == "har_cnn":
    kwargs.setdefault("in_channels", ds.input_shape[-1])
    kwargs.setdefault("window", ds.input_shape[0])
    kwargs.setdefault("kernel", 5)
  factory_kwargs = {"name": cfg.model, "seed": cfg.seed, **kwargs}
  return models.create(cfg.model, seed=cfg.seed, **kwargs), factory_kwargs


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, resume: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs a config end to end and returns the summary (also written to workdir/summary.json)."""
  config_lib.validate(cfg)
  workdir = pathlib.Path(workdir)
  ds = load_data(cfg)  # fails fast, before any training, when the data is missing
  model, factory_kwargs = create_model(cfg, ds)
  sample = jnp.asarray(ds.test_x[:2])
  steps_per_epoch = len(ds.train_x) // cfg.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(ds.train_x)} training examples")
  phases = build_phases(cfg, model, sample, steps_per_epoch)
  placement = Placement(jax.devices() if cfg.data_parallel else jax.devices()[:1])
  placement.check_batch(cfg.batch_size)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = Checkpoints(workdir / "checkpoints")
  meta = ckpt.latest_meta() if resume else None
  if not resume and ckpt.manager.latest_step() is not None:
    raise FileExistsError(f"{workdir} already has checkpoints: pass --resume to continue, or use a new workdir")
  state = meta or {"phase": 0, "epoch": 0, "step": 0, "global_step": 0, "saves": 0, "log": [], "base_accuracy": None}
  log_path = workdir / "log.jsonl"
  log_path.write_text("".join(json.dumps(e) + "\n" for e in state["log"]))

  def save(optimizer) -> None:
    state["saves"] += 1
    ckpt.save(state["saves"], model, optimizer, dict(state))

  def record(entry: dict[str, Any]) -> None:
    state["log"].append(entry)
    with open(log_path, "a") as f:
      f.write(json.dumps(entry) + "\n")

  if meta is not None:
    log(f"resuming at phase {meta['phase']} ({phases[min(meta['phase'], len(phases) - 1)].name if phases else '-'}), "
        f"epoch {meta['epoch']}, step {meta['step']}")
  t_start = time.time()
  for p_index in range(state["phase"], len(phases)):
    phase = phases[p_index]
    optimizer = nnx.Optimizer(model, phase.make_tx(), wrt=nnx.Param) if phase.make_tx else None
    palm_step = palm.make_palm_step(model, phase.palm, [layer.kernel_path for layer in depgraph.trace(model, sample).layers],
                                    cfg.prune.palm_gamma, cfg.prune.palm_max_backtracks) if phase.palm else None
    if meta is not None:  # resuming: inside this phase (with its optimizer) or at its start
      inside = bool(meta["epoch"] or meta["step"])
      ckpt.restore(model, optimizer if inside else None)
      meta = None
    placement.put_model(model, *([optimizer] if optimizer is not None else []))
    step = bound_train_step(model, optimizer) if optimizer is not None else None
    epochs = math.ceil(phase.steps / steps_per_epoch) if phase.steps else phase.epochs
    for epoch in range(state["epoch"], epochs):
      order_seed = int(np.random.SeedSequence([cfg.seed, p_index, epoch]).generate_state(1)[0])
      n_steps = min(steps_per_epoch, phase.steps - epoch * steps_per_epoch) if phase.steps else steps_per_epoch
      skip = state["step"]
      progress = _progress(cfg, phase.name, epoch, epochs, n_steps, skip)
      losses, accs, lips = [], [], []
      for i, (xb, yb) in enumerate(data_lib.batches(ds.train_x, ds.train_y, cfg.batch_size, order_seed, skip=skip)):
        if skip + i >= n_steps:
          break
        xb, yb = placement.put_batch(xb, yb)
        if palm_step is not None:
          loss, lip = palm_step(model, xb, yb)
          acc = jnp.nan
          lips.append(lip)
        else:
          loss, acc = step(xb, yb)
        losses.append(loss)
        accs.append(acc)
        state["step"] = skip + i + 1
        state["global_step"] += 1
        if progress is not None:
          progress.update(1)
          if (i + 1) % 10 == 0:
            progress.set_postfix(loss=f"{float(loss):.4f}", acc=f"{float(acc):.3f}")
        if cfg.checkpoint_every_steps and state["global_step"] % cfg.checkpoint_every_steps == 0:
          state.update(phase=p_index, epoch=epoch)
          save(optimizer)
      if progress is not None:
        progress.close()
      test_acc = evaluate(model, ds.test_x, ds.test_y, cfg.eval_batch_size, placement)
      val_acc = evaluate(model, ds.val_x, ds.val_y, cfg.eval_batch_size, placement) if ds.val_x is not None else None
      entry = {"phase": phase.name, "epoch": epoch + 1, "epochs": epochs,
               "loss": float(np.mean([float(v) for v in losses])) if losses else None,
               "test_accuracy": test_acc, "val_accuracy": val_acc, "nonzero_fraction": _sparsity(model),
               "seconds": round(time.time() - t_start, 1)}
      if entry["loss"] is not None and not math.isfinite(entry["loss"]):
        raise FloatingPointError(f"{cfg.name}: the training loss became {entry['loss']} in phase {phase.name!r}, epoch "
                                 f"{epoch + 1}; lower the learning rate or the penalty coefficients (the last good "
                                 "checkpoint is kept, but resuming would diverge again)")
      if lips:  # PALM: mean backtracked Lipschitz estimate (the step is 1 / (palm_gamma * L))
        entry["palm_lipschitz"] = float(np.mean([float(v) for v in lips]))
      record(entry)
      log(f"[{phase.name}] epoch {epoch + 1}/{epochs}  loss {entry['loss'] if entry['loss'] is None else round(entry['loss'], 4)}  "
          f"test acc {test_acc:.4f}  nonzero {100 * entry['nonzero_fraction']:.2f} %"
          + (f"  L {entry['palm_lipschitz']:.3g}" if lips else ""))
      state.update(phase=p_index, epoch=epoch + 1, step=0)
      save(optimizer)
    if phase.on_end is not None:
      info = phase.on_end(model)
      record({"phase": phase.name, "event": "end", **info, "nonzero_fraction": _sparsity(model)})
      log(f"[{phase.name}] {info}")
    if phase.name == "pretrain" or (state["base_accuracy"] is None and p_index == 0 and cfg.method == "dense"):
      state["base_accuracy"] = evaluate(model, ds.test_x, ds.test_y, cfg.eval_batch_size, placement)
    state.update(phase=p_index + 1, epoch=0, step=0)
    save(None)
  return finish(cfg, workdir, model, ds, sample, factory_kwargs, state, log)


def _progress(cfg, name, epoch, epochs, total, initial):
  if not cfg.progress:
    return None
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=f"{name} {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def finish(cfg, workdir: pathlib.Path, model: nnx.Module, ds: data_lib.Dataset, sample, factory_kwargs,
           state, log) -> dict[str, Any]:
  """Shrinks the final model, measures it, writes summary.json and the shrunk model."""
  dense, _ = create_model(cfg, ds)
  shrunk, report = surgery.shrink_with_report(model, sample)
  pruned_acc = evaluate(shrunk, ds.test_x, ds.test_y, cfg.eval_batch_size)
  masked_acc = evaluate(model, ds.test_x, ds.test_y, cfg.eval_batch_size)
  summary = {
      "name": cfg.name,
      "dataset": cfg.dataset,
      "model": cfg.model,
      "method": cfg.method,
      "mode": cfg.mode,
      "seed": cfg.seed,
      "base_accuracy": state["base_accuracy"],
      "pruned_accuracy": pruned_acc,
      "masked_accuracy": masked_acc,
      "nonzero_params_masked": metrics.count_nonzero(nnx.state(model, nnx.Param)),
      **metrics.summary(dense, shrunk, sample),
      "shrink_max_abs_diff": report.max_abs_diff,
      "input_shape": list(ds.input_shape),
      "shrink": report.to_json(),
      "devices": jax.device_count(),
  }
  surgery.save(workdir / "model", shrunk, factory="mobileprune_jax.models:create", kwargs=factory_kwargs,
               cuts=report.cuts)
  if cfg.export.tflite:
    from mobileprune_jax import export

    summary.update(export.compare(dense, shrunk, sample[:1], workdir / "tflite"))
    if cfg.export.quantize:
      path = export.to_tflite(shrunk, sample[:1], workdir / "tflite" / f"pruned_{cfg.export.quantize}.tflite",
                              quantize=cfg.export.quantize)
      summary[f"tflite_bytes_pruned_{cfg.export.quantize}"] = path.stat().st_size
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
  log(format_summary(summary))
  return summary


def format_summary(s: dict[str, Any]) -> str:
  """A small table: base vs pruned accuracy, params, MACs, architecture."""
  def pct(a, b):
    return f"{100 * a / b:.2f} %" if b else "-"

  base = s["base_accuracy"]
  rows = [
      ("model / data / method", f"{s['model']} / {s['dataset']} / {s['method']} ({s['mode']})"),
      ("accuracy base -> pruned", f"{base:.4f} -> {s['pruned_accuracy']:.4f}" if base is not None else f"{s['pruned_accuracy']:.4f}"),
      ("params (shrunk model)", f"{s['params_remaining']:,} / {s['params_total']:,} ({pct(s['params_remaining'], s['params_total'])})"),
      ("non-zero params", f"{s['nonzero_params']:,} ({pct(s['nonzero_params'], s['params_total'])})"),
      ("MACs dense -> pruned", f"{s['macs_dense']:,} -> {s['macs_pruned']:,} ({pct(s['macs_pruned'], s['macs_dense'])})"),
      ("architecture", f"{s['architecture_dense']} -> {s['architecture']} (filter sizes {s['filter_sizes'] or '-'})"),
      ("shrink parity (max |diff|)", f"{s['shrink_max_abs_diff']:.2e}"),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
