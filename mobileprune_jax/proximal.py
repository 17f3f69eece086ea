"""``with_prox``: a base optimizer followed by the prox of a regulariser at the base's own step size.

Proximal gradient: x⁺ = prox_{s·R}(p + u). The step s must be the one the base used to make u,
at run time: ``with_prox`` reads it from the base's state after its update — the injected
``learning_rate`` of ``optax.inject_hyperparams`` (a constant, a schedule's value, or a value set
by hand between steps), times the scale of any ``optax.contrib.reduce_on_plateau`` in the base.

**Adam-family bases** (``metric="adam"``): Adam's step u = −D⁻¹m̂ with D = diag(√v̂ + ε)/lr is the
minimiser of ⟨m̂, x − p⟩ + ½‖x − p‖²_D; adding R gives x⁺ = argmin ½‖x − (p + u)‖²_D + R(x), the prox
in the metric D: per coordinate the step is s_i = lr/(√v̂_i + ε). That is exact for element-wise
terms (ℓ0, ℓ1, ℓ2); for group terms the metric is made one scalar per group (its mean of D_i),
under which the group prox is exact (``regularisers.base``). Scaling the loss by c scales m̂ by c
and D by c (ε aside), so x⁺ is the prox of R/c: the iteration minimises L + λR, and sparsity
drops as the loss scale grows, as it should. (The plain chain compares s·λ with Adam's
normalised step instead, so its sparsity ignores the loss scale.)

**Wrappers inside the base that make no step** — ``optax.MultiSteps`` while it accumulates (or
skips), ``optax.apply_if_finite`` on a non-finite gradient — emit a zero update; the prox is then
not applied either (prox_{s·R}(p) ≠ p for ℓ1 and the group terms: it would shrink once per
micro-batch) and the step count does not advance, so ``with_prox(MultiSteps(base, k), R)`` equals
``MultiSteps(with_prox(base, R), k)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from optax.contrib import ReduceLROnPlateauState

from mobileprune_jax.regularisers.base import Coefficient, Regulariser, check_coefficient, evaluate, proximal_updates

METRICS = ("euclidean", "adam")


class WithProxState(NamedTuple):
  """The base optimizer's state and the step count (for coefficient schedules)."""

  base: optax.OptState
  count: chex.Array


def _instances(tree: Any, cls: type) -> list:
  return [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls)) if isinstance(x, cls)]


def _injected(state: Any) -> list[dict]:
  """The ``hyperparams`` dicts of every inject_hyperparams state inside ``state``."""
  kinds = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
  return [s.hyperparams for s in _instances(state, kinds)]


def _learning_rate(state: Any) -> jax.Array:
  """The injected learning rate of the base, times its reduce_on_plateau scales."""
  rates = [h["learning_rate"] for h in _injected(state) if "learning_rate" in h]
  if len(rates) != 1:
    raise ValueError(
        "with_prox: cannot find the base optimizer's learning rate in its state "
        f"({len(rates)} injected 'learning_rate's); build the base with "
        "optax.inject_hyperparams(optax.sgd)(learning_rate=...), or pass learning_rate=")
  rate = jnp.asarray(rates[0])
  for plateau in _instances(state, ReduceLROnPlateauState):
    rate = rate * plateau.scale
  return rate


def _base_stepped(old: Any, new: Any) -> jax.Array | None:
  """Whether the base made a step, or None when it holds no wrapper that can skip one.

  A step is made unless a ``MultiSteps`` in the base kept its gradient_step (accumulating or skipping)
  or an ``apply_if_finite`` saw a non-finite gradient.
  """
  multi = list(zip(_instances(old, optax.MultiStepsState), _instances(new, optax.MultiStepsState)))
  finite = [s.last_finite for s in _instances(new, optax.ApplyIfFiniteState)]
  if not multi and not finite:
    return None
  stepped = jnp.asarray(True)
  for before, after in multi:
    stepped &= after.gradient_step != before.gradient_step
  for last_finite in finite:
    stepped &= jnp.asarray(last_finite, bool)
  return stepped


def _adam_steps(state: Any, rate: jax.Array, b2: float, eps: float) -> Any:
  """Per-coordinate step lr/(√v̂ + ε) from the base's Adam second moment (bias-corrected)."""
  adams = _instances(state, optax.ScaleByAdamState)
  if len(adams) != 1:
    raise ValueError(f"with_prox(metric='adam'): the base optimizer's state has {len(adams)} Adam states "
                     "(scale_by_adam: adam, adamw, ...); exactly one is needed")
  (adam,) = adams
  hyper = {k: v for h in _injected(state) for k, v in h.items()}
  b2, eps = hyper.get("b2", b2), hyper.get("eps", eps)
  correction = 1 - jnp.asarray(b2, jnp.float32) ** adam.count.astype(jnp.float32)
  return jax.tree.map(lambda nu: rate / (jnp.sqrt(nu / correction) + eps), adam.nu)


def with_prox(base: optax.GradientTransformation, regulariser: Regulariser, *,
              learning_rate: Coefficient | None = None, metric: str = "euclidean", b2: float = 0.999,
              eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
  """``base`` then ``u ↦ prox_{s·m·R}(p + u) − p`` with the base's step size s (see the module).

  Args:
    base: the optimizer. Unless ``learning_rate`` is given, its state must hold exactly one injected
      ``learning_rate`` (``optax.inject_hyperparams(optax.sgd)(learning_rate=...)``; schedules work).
    regulariser: the penalty R (``mobileprune_jax.regularisers``).
    learning_rate: the step size (float, array or schedule of this transform's count) when the base's
      state does not hold one; it must then be the base's.
    metric: ``"euclidean"`` (prox-SGD) or ``"adam"``: the prox in Adam's diagonal metric (needs an
      Adam-family base; ``b2``, ``eps`` as in the base's, read from its injected hyperparameters
      when they are there).
    b2: Adam's second-moment decay (for the bias correction).
    eps: Adam's ε.

  Returns:
    A transform whose update also takes ``penalty_multiplier`` (m, default 1), passed on with any
    other extra arguments to the base.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from mobileprune_jax import regularisers, transforms
    >>> base = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    >>> tx = transforms.with_prox(base, regularisers.l0(l0=0.5))  # hard threshold at √(2·0.1·0.5) ≈ 0.32
    >>> params = {"fc": {"kernel": jnp.array([[1.0, 0.05], [-0.2, 2.0]])}}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    >>> optax.apply_updates(params, updates)["fc"]["kernel"].tolist()
    [[1.0, 0.0], [0.0, 2.0]]
  """
  if metric not in METRICS:
    raise ValueError(f"with_prox: metric must be one of {METRICS}, got {metric!r}")
  if learning_rate is not None:
    check_coefficient("with_prox", "learning_rate", learning_rate)
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    regulariser.roles(params)
    state = base.init(params)
    if learning_rate is None:
      _learning_rate(state)  # fail now, not at the first step
    if metric == "adam":
      _adam_steps(state, jnp.asarray(1.0), b2, eps)
    return WithProxState(base=state, count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, penalty_multiplier: chex.Numeric = 1.0, **extra_args):
    if params is None:
      raise ValueError(f"with_prox({regulariser.name}): update needs params (the prox is taken at p + u)")
    updates, base_state = base.update(updates, state.base, params, **extra_args)
    rate = _learning_rate(base_state) if learning_rate is None else evaluate(learning_rate, state.count)
    step = _adam_steps(base_state, rate, b2, eps) if metric == "adam" else rate
    prox = lambda u: proximal_updates(regulariser, u, params, step, state.count, penalty_multiplier)
    stepped = _base_stepped(state.base, base_state)
    if stepped is None:
      return prox(updates), WithProxState(base=base_state, count=optax.safe_increment(state.count))
    proxed = jax.eval_shape(prox, updates)  # a skipped step passes the base's (zero) update in the prox's dtypes
    keep = lambda u: jax.tree.map(lambda x, like: jnp.asarray(x, like.dtype), u, proxed)
    updates = jax.lax.cond(stepped, prox, keep, updates)
    count = jnp.where(stepped, optax.safe_increment(state.count), state.count)
    return updates, WithProxState(base=base_state, count=count)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
