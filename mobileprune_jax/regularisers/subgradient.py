"""DEGL's selection as the paper runs it: SGD on L + R with a (sub)gradient of the elastic group lasso.

∂R(W)_g = γ·√|g|·W_g/‖W_g‖₂ + 2λ·W_g (the group term's subgradient taken as 0 at W_g = 0), with one
group per output unit / filter / head of every kernel (the groups of
``catalog.elastic_group_lasso``). Groups reach exact zero only through DEGL's threshold
afterwards; the exact-prox default (``elastic_group_lasso(...).as_transform``) zeroes them during
training.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mobileprune_jax import groups
from mobileprune_jax.regularisers.base import Coefficient, Layout, check_coefficient, evaluate
from mobileprune_jax.regularisers.catalog import KERNEL_ROLES, OUTPUT_GROUPS


def elastic_group_lasso_subgradient(gamma: Coefficient, lam: Coefficient,
                                    rules: groups.Rules | None = None) -> optax.GradientTransformationExtraArgs:
  """Adds ∂R(params) to the gradient (put it before the optimizer: ``chain(this, sgd(lr))``).

  Args:
    gamma, lam: the group and ridge coefficients (floats, arrays or schedules of the step count).
    rules: ``(regex, role)`` overrides of the leaf roles (e.g. the classifier as ``"none"``).

  The extra argument ``penalty_multiplier`` scales both coefficients (the budget controller's m).
  """
  check_coefficient("elastic_group_lasso_subgradient", "gamma", gamma)
  check_coefficient("elastic_group_lasso_subgradient", "lam", lam)
  groups._validate_rules(rules)

  def init(params: Any) -> optax.ScaleByScheduleState:
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates: Any, state: optax.ScaleByScheduleState, params: Any = None, *, penalty_multiplier=1.0,
             **extra_args) -> tuple[Any, optax.ScaleByScheduleState]:
    del extra_args
    if params is None:
      raise ValueError("elastic_group_lasso_subgradient needs params (optimizer.update(grads, state, params))")
    g = evaluate(gamma, state.count) * penalty_multiplier
    l = evaluate(lam, state.count) * penalty_multiplier
    flat_u, treedef = jax.tree.flatten(updates)
    roles = groups.leaf_roles(params, rules, warn_depthwise=False)  # output filters: conv and depthwise alike
    new = [u if role not in KERNEL_ROLES else (u + _subgradient(p, g, l, OUTPUT_GROUPS[role])).astype(u.dtype)
           for role, u, p in zip(roles, flat_u, jax.tree.leaves(params))]
    return jax.tree.unflatten(treedef, new), optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init, update)


def _subgradient(kernel: jax.Array, gamma: jax.Array, lam: jax.Array, layout: Layout) -> jax.Array:
  w = layout.split(kernel)
  norm = jnp.linalg.norm(w, axis=-1, keepdims=True)
  unit = jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), 0.0)
  sub = gamma * jnp.sqrt(jnp.asarray(w.shape[-1], w.dtype)) * unit + 2 * lam * w
  return layout.join(sub, kernel.shape)
