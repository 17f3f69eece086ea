"""The phases of a run and the step each one builds from a model.

A run is a list of ``Phase``s built from the config (``build_phases``): pretraining, T ×
(pruning, masked retraining) for MobilePrune and the baselines (docs/algorithms.md §B), selection →
threshold → debiasing for DEGL (docs/algorithms.md §H), training → magnitude threshold → retraining for
the HAR notebooks' procedure. A phase knows how to build its *stepper* from the model it
starts with (``Phase.build``): an optax optimizer step, or a PALM sweep. Building happens
after a checkpoint was restored, so masks that read the model (``keep_support``) see the
restored weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from mobileprune_jax import groups, methods, regularisers, transforms
from mobileprune_jax.surgery import depgraph
from mobileprune_jax.train import actions, palm
from mobileprune_jax.train.steps import Placement, bound_train_step

ProxFactory = Callable[[Any], optax.GradientTransformation]


class Stepper:
  """A phase's training step bound to a model.

  ``items()`` is what a checkpoint must hold to continue the phase (the optimizer state);
  ``start(placement)`` places the model and that state on the devices and returns
  ``step(x, y, multiplier) -> (loss, lipschitz or None)`` (``multiplier``: an array that scales the
  penalty's coefficients, see ``budget``; transforms without a penalty ignore it).
  """

  def __init__(self, model: nnx.Module, optimizer: nnx.Optimizer | None = None,
               palm_step: palm.PalmStep | None = None):
    self.model, self.optimizer, self.palm_step = model, optimizer, palm_step

  def items(self) -> dict[str, Any]:
    if self.optimizer is not None:
      return {"optimizer": nnx.state(self.optimizer)}
    return self.palm_step.items() if self.palm_step is not None else {}

  def restore(self, trees: dict[str, Any]) -> None:
    if self.optimizer is not None:
      nnx.update(self.optimizer, trees["optimizer"])
    elif self.palm_step is not None:
      self.palm_step.restore(trees)

  def start(self, placement: Placement) -> Callable[..., tuple[jax.Array, jax.Array | None]]:
    if self.optimizer is None:
      placement.put_model(self.model)
      return lambda x, y, multiplier: self.palm_step(self.model, x, y, multiplier)
    placement.put_model(self.model, self.optimizer)
    step = bound_train_step(self.model, self.optimizer)
    return lambda x, y, multiplier: (step(x, y, jnp.asarray(multiplier, jnp.float32))[0], None)


@dataclasses.dataclass
class Phase:
  """One stage of a run.

  Attributes:
    name: e.g. "pretrain", "prune/1", "retrain/1", "select", "debias".
    epochs: number of epochs (or ``steps`` mini-batches if steps > 0).
    steps: if > 0, the phase is this many mini-batches (epochs = ceil(steps / steps per epoch)).
    build: ``model -> Stepper``; called with the model the phase starts from (after a restore).
    on_end: action on the model when the phase is done (e.g. DEGL's threshold); must be
      deterministic, since a run killed after it and before the next checkpoint redoes it.
    scaled: the step's penalty is scaled by the run's budget multiplier.
    controlled: the budget controller adapts the multiplier during this phase (implies ``scaled``);
      it measures the model as ``on_end`` would leave it.
    regulariser, step_size: the phase's penalty and its nominal prox step (the controller's
      prediction of the size a multiplier gives).
    lands: under a budget, the model is trimmed to the target at the end of this phase (the last
      pruning phase; DEGL/EGL's selection, so that the retraining recovers from the trim).
  """

  name: str
  epochs: int
  steps: int = 0
  build: Callable[[nnx.Module], Stepper] | None = None
  on_end: Callable[[nnx.Module], dict[str, Any]] | None = None
  scaled: bool = False
  controlled: bool = False
  regulariser: regularisers.Regulariser | None = None
  step_size: float = 0.0
  lands: bool = False

  def epochs_with(self, steps_per_epoch: int) -> int:
    return -(-self.steps // steps_per_epoch) if self.steps else self.epochs

  def steps_in_epoch(self, epoch: int, steps_per_epoch: int) -> int:
    return min(steps_per_epoch, self.steps - epoch * steps_per_epoch) if self.steps else steps_per_epoch


def optax_phase(name: str, epochs: int, make_tx: Callable[[], optax.GradientTransformation], steps: int = 0,
                on_end=None, scaled: bool = False, controlled: bool = False,
                regulariser: regularisers.Regulariser | None = None, step_size: float = 0.0,
                lands: bool = False) -> Phase:
  """A phase stepping ``nnx.Optimizer(model, make_tx())`` (built when the phase starts)."""
  build = lambda m: Stepper(m, optimizer=nnx.Optimizer(m, optax.with_extra_args_support(make_tx()), wrt=nnx.Param))
  return Phase(name, epochs, steps, build=build, on_end=on_end, scaled=scaled or controlled, controlled=controlled,
               regulariser=regulariser, step_size=step_size, lands=lands)


def palm_phase(name: str, epochs: int, steps: int, regulariser: regularisers.Regulariser, kernel_paths: Sequence[str],
               gamma: float, max_backtracks: int, lands: bool = False, warm_start: bool = False) -> Phase:
  """A PALM pruning phase (docs/algorithms.md §B): block Gauss–Seidel prox steps with backtracking, no optimizer
  state (the blocks' last L under ``warm_start``)."""
  return Phase(name, epochs, steps, build=lambda m: Stepper(
      m, palm_step=palm.make_palm_step(m, regulariser, kernel_paths, gamma, max_backtracks, warm_start)),
      scaled=True, controlled=True, regulariser=regulariser, step_size=1.0 / gamma, lands=lands)


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
    base = optax.adam(lr, b1=section.momentum)  # momentum is Adam's b1: 0 means no first moment, as for SGD
  else:
    base = optax.sgd(lr, momentum=section.momentum or None)
  return optax.chain(optax.add_decayed_weights(section.weight_decay), base) if section.weight_decay else base


def regulariser(cfg: ml_collections.ConfigDict, rules) -> regularisers.Regulariser | None:
  """The penalty of ``cfg.method`` (the prox family of ``methods.REGISTRY``), or None for the other methods."""
  method = methods.REGISTRY[cfg.method]
  return method.penalty(cfg.coef, rules) if method.penalty is not None else None


def prox_factory(cfg: ml_collections.ConfigDict, rules) -> ProxFactory | None:
  """The regulariser of ``cfg.method`` as a function of the step size (``regulariser(...).as_transform``)."""
  reg = regulariser(cfg, rules)
  return None if reg is None else reg.as_transform


def output_layer_rules(last: str) -> list[tuple[str, str]]:
  """Rules that exclude the classifier (kernel path ``last``, the layer producing the outputs) from group terms."""
  parent = last.rpartition("/")[0]
  return [(f"^{parent}/(kernel|bias)$", "none")] if parent else [(f"^{last}$", "none")]


def _retrain_phase(name: str, rt: ml_collections.ConfigDict, steps_per_epoch: int) -> Phase:
  """Masked retraining: the retrain optimizer followed by ``keep_support`` (pruned weights stay 0)."""
  return optax_phase(name, rt.epochs, lambda: optax.chain(_optimizer(rt, rt.epochs * steps_per_epoch),
                                                          transforms.keep_support()))


def _degl_sgd(d: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """DEGL's SGD with an injected rate; with ``plateau_patience``: × ``plateau_factor`` after that many epochs
  without a lower mean training loss."""
  sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=d.lr, momentum=d.momentum or None)
  if not d.plateau_patience:
    return sgd
  return optax.chain(sgd, optax.contrib.reduce_on_plateau(factor=d.plateau_factor, patience=d.plateau_patience,
                                                          accumulation_size=steps_per_epoch))


def _coupler(cfg: ml_collections.ConfigDict, model: nnx.Module | None, sample_input,
             graph: Any) -> Callable[[regularisers.Regulariser], regularisers.Regulariser]:
  """``reg ↦ reg.for_model(model)`` when ``cfg.coef.coupled`` and a model is given, else the identity."""
  if not cfg.coef.coupled or model is None:
    return lambda reg: reg
  return lambda reg: reg.for_model(model, sample_input, graph=graph)


def _degl_phases(cfg: ml_collections.ConfigDict, rules, sample_input, last_kernel: str,
                 steps_per_epoch: int, couple=lambda reg: reg) -> list[Phase]:
  """EGL selection (exact prox, or the paper's subgradient) → threshold → debiased / full-cost retraining.

  The default (exact prox, constant rate) keeps the plain chains it always had (its checkpoints resume);
  the paper's options read the rate from the optimizer state (``with_prox``), so the plateau moves the prox too.
  """
  d = cfg.degl
  lam = 0.0 if cfg.method == "degl_group_lasso" else d.lam
  egl_reg = couple(regularisers.elastic_group_lasso(d.gamma, lam, rules))
  ridge = regularisers.l2(lam * (d.rt_scale if d.rt_scale is not None else 1.0))  # every kernel, classifier too
  if d.selection == "subgradient":
    select = lambda: optax.chain(regularisers.elastic_group_lasso_subgradient(d.gamma, lam, rules),
                                 _degl_sgd(d, steps_per_epoch))
  elif d.plateau_patience:
    select = lambda: transforms.with_prox(_degl_sgd(d, steps_per_epoch), egl_reg)
  else:
    select = lambda: optax.chain(optax.sgd(d.lr, momentum=d.momentum or None), egl_reg.as_transform(d.lr))
  if d.plateau_patience:
    debias = lambda: transforms.with_prox(_degl_sgd(d, steps_per_epoch), ridge)
  else:
    debias = lambda: optax.chain(optax.sgd(d.lr, momentum=d.momentum or None), ridge.as_transform(d.lr))
  phases = [optax_phase("select", d.select_epochs, select,
                        on_end=lambda m: actions.degl_threshold(m, sample_input, d.t_th, last_kernel,
                                                                coupled=getattr(egl_reg, "units", None) is not None),
                        controlled=True, regulariser=egl_reg, step_size=d.lr, lands=True)]
  if cfg.method == "egl":
    # retrained with the full cost; the support can only shrink, so under a budget the controller keeps watching
    # (it eases the penalty once the size is at the target); the landing trim is at the end of the selection
    phases.append(optax_phase("retrain", d.retrain_epochs, lambda: optax.chain(select(), transforms.keep_support()),
                              controlled=True, regulariser=egl_reg, step_size=d.lr))
  else:
    phases.append(optax_phase("debias", d.retrain_epochs, lambda: optax.chain(debias(), transforms.keep_support())))
  return phases


def build_phases(cfg: ml_collections.ConfigDict, kernel_paths: Sequence[str] | nnx.Module, sample_input,
                 steps_per_epoch: int = 1, model_rules: Sequence[tuple[str, str]] = (), model: nnx.Module | None = None,
                 graph: Any = None) -> list[Phase]:
  """The phases of ``cfg.method`` (docs/algorithms.md §B for MobilePrune and baselines, §H for DEGL).

  Args:
    cfg: the run config.
    kernel_paths: the model's conv/dense kernels in forward order (the last is the classifier);
      or the model itself (it is then traced once to find them).
    sample_input: a batch of inputs (the threshold actions trace the model with it).
    steps_per_epoch: mini-batches per epoch (sets the length of learning-rate schedules).
    model_rules: roles the parameter shapes cannot tell (``groups.rules_for_model``: depthwise kernels).
    model, graph: the model and its trace (``analysis.analyze``); with ``cfg.coef.coupled`` the penalties act on
      its coupled units (``Regulariser.for_model``). Without a model, per-layer groups.
  """
  if isinstance(kernel_paths, nnx.Module):
    model = model if model is not None else kernel_paths
    model_rules = list(model_rules) or groups.rules_for_model(kernel_paths)
    kernel_paths = [layer.kernel_path for layer in depgraph.trace(kernel_paths, sample_input).layers]
  last_kernel = kernel_paths[-1]
  rules = output_layer_rules(last_kernel) + list(model_rules)
  pre, pr, rt = cfg.pretrain, cfg.prune, cfg.retrain
  phases: list[Phase] = []
  if pre.epochs:
    phases.append(optax_phase("pretrain", pre.epochs, lambda: _optimizer(pre, pre.epochs * steps_per_epoch)))
  method = methods.REGISTRY[cfg.method]
  if method.family == "dense":
    return phases
  if method.family == "magnitude":
    mg = cfg.magnitude
    phases.append(Phase("threshold", 0, on_end=lambda m: actions.magnitude_threshold(
        m, sample_input, mg.threshold, mg.layers, last_kernel)))
    if rt.epochs:
      phases.append(_retrain_phase("retrain/1", rt, steps_per_epoch))
    return phases
  couple = _coupler(cfg, model, sample_input, graph)
  if method.family == "degl":
    return phases + _degl_phases(cfg, rules, sample_input, last_kernel, steps_per_epoch, couple)
  reg = regulariser(cfg, rules=list(model_rules) or None)
  reg = couple(reg) if reg is not None else None
  for t in range(1, pr.iterations + 1):
    if cfg.mode == "palm" and method.palm:
      phases.append(palm_phase(f"prune/{t}", pr.epochs, pr.steps, reg, kernel_paths, pr.palm_gamma,
                               pr.palm_max_backtracks, lands=t == pr.iterations, warm_start=pr.palm_warm_start))
    else:
      phases.append(optax_phase(f"prune/{t}", pr.epochs, lambda: optax.chain(
          optax.sgd(pr.lr, momentum=pr.momentum or None), reg.as_transform(pr.lr)), steps=pr.steps,
          controlled=method.budget, regulariser=reg, step_size=pr.lr, lands=t == pr.iterations))
    if rt.epochs:
      phases.append(_retrain_phase(f"retrain/{t}", rt, steps_per_epoch))
  return phases
