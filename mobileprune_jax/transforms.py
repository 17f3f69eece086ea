"""Proximal regularisers as optax GradientTransformations.

A ``Regulariser`` (``mobileprune_jax.regularisers``) becomes a transform whose update is the
proximal step written as an update (the template is optax's ``keep_params_nonnegative``)::

    u ↦ prox_{s·R}(p + u) − p,     s = the step size at this step

so after ``optax.apply_updates`` the parameters are ``prox_{s·R}(p + u)``, with exact zeros.

**Recommended: ``with_prox(base, regulariser)``** — the prox reads the step size from the base
optimizer's own state, so it is the same at run time whatever changes it (a schedule,
``inject_hyperparams``, ``reduce_on_plateau``), and ``metric="adam"`` takes the prox in Adam's
diagonal metric::

    tx = transforms.with_prox(optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=0.9),
                              regularisers.l0_sparse_group_lasso(l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3))

**Plain chain** (the factories below, today's API): put the transform last and give it the same
learning rate (float or schedule)::

    tx = optax.chain(optax.sgd(lr, momentum=0.9),
                     transforms.l0_sparse_group_lasso(lr, l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3))

Its limits: the prox holds its own copy of the learning rate, so a run-time change of the base's
rate (``inject_hyperparams``, ``reduce_on_plateau``, a manual decay) desynchronises the two; and
behind an adaptive optimizer (Adam) the threshold s·λ is compared with a normalised step, so the
chain does not minimise L + λR (the sparsity ignores the loss scale) — use ``with_prox`` there.

Coefficients are ``ArrayLike`` (floats, arrays, schedules of the step count) and every factory
works under ``optax.inject_hyperparams`` (coefficients and learning rate injectable),
``optax.MultiSteps``, ``optax.masked``, ``optax.apply_if_finite`` (around the whole chain: a prox
chained after them cannot see a skipped step; ``with_prox`` can, in either order) and ``jax.vmap`` over
coefficients. Every update also takes the extra argument ``penalty_multiplier`` (an array:
multiplies every coefficient, no recompilation; the budget controller's knob).

Which leaves are penalised and how they are grouped comes from ``groups.leaf_roles``, with
``rules`` to override it. The step count (for schedules) and any mask live in the optimizer
state, so a checkpoint of the state holds them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mobileprune_jax import groups, regularisers
from mobileprune_jax.proximal import WithProxState, with_prox
from mobileprune_jax.regularisers.base import Coefficient, ProxState, prox_transform

Array = jax.Array
ScalarOrSchedule = Coefficient

__all__ = [
    "ProxState",
    "KeepSupportState",
    "WithProxState",
    "prox_transform",
    "with_prox",
    "l0",
    "l1",
    "l2",
    "group_lasso",
    "l1_sparse_group_lasso",
    "l0_sparse_group_lasso",
    "elastic_group_lasso",
    "keep_support",
]

CONV_GROUPINGS = regularisers.CONV_GROUPINGS


class KeepSupportState(NamedTuple):
  """State of ``keep_support``: the frozen support (True = weight may be non-zero)."""

  mask: Any


def l0(learning_rate: ScalarOrSchedule, l0: Coefficient, rules: groups.Rules | None = None):
  """ℓ0 penalty l0·‖W‖₀ on kernels and layer biases: hard threshold at sqrt(2·s·l0).

  Args:
    learning_rate: the step size s (float, array or schedule), the same as the base optimizer's.
    l0: non-negative coefficient (float, array or schedule).
    rules: optional ``(regex, role)`` overrides (see ``groups``).
  """
  return prox_transform(regularisers.l0(l0, rules), learning_rate)


def l1(learning_rate: ScalarOrSchedule, l1: Coefficient, rules: groups.Rules | None = None):
  """ℓ1 penalty l1·‖W‖₁ on kernels and layer biases: soft threshold at s·l1."""
  return prox_transform(regularisers.l1(l1, rules), learning_rate)


def l2(learning_rate: ScalarOrSchedule, l2: Coefficient, rules: groups.Rules | None = None):
  """Ridge penalty l2·‖W‖₂² on kernels and layer biases: W ← W / (1 + 2·s·l2)."""
  return prox_transform(regularisers.l2(l2, rules), learning_rate)


def group_lasso(learning_rate: ScalarOrSchedule, neuron: Coefficient = 0.0, channel: Coefficient = 0.0,
                shape: Coefficient = 0.0, rules: groups.Rules | None = None,
                conv_grouping: str = "input_channel_tree"):
  """Group lasso on MobilePrune's groups: neuron·Σ‖row‖ (dense), channel·Σ‖W[c]‖ + shape·Σ‖W[c,tap]‖ (conv).

  Dense kernels: block soft threshold per input neuron (row). Conv kernels: per input
  channel, shape-group shrink then channel shrink (the exact prox of the two-level tree).
  Layer biases: each entry a singleton group with coefficient ``neuron``.

  Args:
    learning_rate: the step size s (float, array or schedule), the same as the base optimizer's.
    neuron: coefficient of the dense neuron groups (and the bias entries).
    channel: coefficient of the conv input-channel groups (or of the output-filter groups
      with ``conv_grouping="output_filter"``).
    shape: coefficient of the conv filter-shape groups (one tap across all filters).
    rules: optional ``(regex, role)`` overrides (see ``groups``).
    conv_grouping: ``"input_channel_tree"`` (paper) or ``"output_filter"`` (old code).
  """
  return prox_transform(regularisers.group_lasso(neuron, channel, shape, rules, conv_grouping), learning_rate)


def l1_sparse_group_lasso(learning_rate: ScalarOrSchedule, l1: Coefficient, neuron: Coefficient = 0.0,
                          channel: Coefficient = 0.0, shape: Coefficient = 0.0, rules: groups.Rules | None = None,
                          conv_grouping: str = "input_channel_tree"):
  """ℓ1 sparse group lasso: l1·‖W‖₁ + the group lasso terms (see ``group_lasso``).

  The prox is the soft threshold followed by the group shrinks (exact for nested groups).
  """
  return prox_transform(regularisers.l1_sparse_group_lasso(l1, neuron, channel, shape, rules, conv_grouping),
                        learning_rate)


def l0_sparse_group_lasso(learning_rate: ScalarOrSchedule, l0: Coefficient, neuron: Coefficient = 0.0,
                          channel: Coefficient = 0.0, shape: Coefficient = 0.0, rules: groups.Rules | None = None,
                          conv_grouping: str = "input_channel_tree"):
  """MobilePrune's ℓ0 sparse group lasso: l0·‖W‖₀ + the group lasso terms (docs/algorithms.md §A).

  Dense kernels: π (Algorithm 2) per input neuron with (s·neuron, s·l0). Conv kernels: θ
  (Algorithm 3) per input channel with ℓ0 s·l0, shape groups s·shape and channel group
  s·channel (all conv and depthwise trees of one kernel size in one call). Layer biases: π on
  each entry (keep-and-soft-threshold). Normalisation parameters are untouched.

  Args:
    learning_rate: the step size s (float, array or schedule), the same as the base optimizer's.
    l0: the ℓ0 coefficient λ0.
    neuron: the neuron-group coefficient λn (dense layers and bias entries).
    channel: the channel-group coefficient λc (conv).
    shape: the filter-shape-group coefficient λs (conv).
    rules: optional ``(regex, role)`` overrides (see ``groups``).
    conv_grouping: ``"input_channel_tree"`` (paper: θ) or ``"output_filter"`` (older
      code: π per output filter with coefficient ``channel``).

  Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> from mobileprune_jax import transforms
    >>> tx = optax.chain(optax.sgd(0.1), transforms.l0_sparse_group_lasso(0.1, l0=0.5, neuron=1.0))  # same lr
    >>> params = {"fc": {"kernel": jnp.array([[3.0, 4.0], [0.3, 0.4]])}}
    >>> updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    >>> print(np.asarray(optax.apply_updates(params, updates)["fc"]["kernel"]).round(3))
    [[2.94 3.92]
     [0.   0.  ]]
  """
  return prox_transform(regularisers.l0_sparse_group_lasso(l0, neuron, channel, shape, rules, conv_grouping),
                        learning_rate)


def elastic_group_lasso(learning_rate: ScalarOrSchedule, gamma: Coefficient, lam: Coefficient,
                        rules: groups.Rules | None = None):
  """DEGL's elastic group lasso Σ_g gamma·sqrt(|g|)·‖W_g‖₂ + lam·‖W‖₂² on kernels.

  Groups are output units / filters (all incoming weights of one unit). The prox of
  t‖x‖ + μ‖x‖² is the block soft threshold of y/(1 + 2μ) at t/(1 + 2μ), with t = s·gamma·sqrt(|g|),
  μ = s·lam. Biases and normalisation parameters are untouched.

  Args:
    learning_rate: the step size s (float, array or schedule), the same as the base optimizer's.
    gamma: group coefficient γ (scaled by sqrt of the group size).
    lam: ridge coefficient λ.
    rules: optional ``(regex, role)`` overrides (see ``groups``); e.g. exclude the output
      layer, whose units are the classes: ``[(r"^head/kernel$", "none")]``.
  """
  return prox_transform(regularisers.elastic_group_lasso(gamma, lam, rules), learning_rate)


def keep_support(mask: Any = None, rules: groups.Rules | None = None) -> optax.GradientTransformation:
  """Keeps pruned weights at exactly zero: u ↦ M·u − (1 − M)·p, so p + u = 0 off the support.

  Place it last in the chain (after momentum, Adam or weight decay): whatever they propose
  for a pruned weight is replaced by the update that sets it to 0, so the support cannot
  grow back. The mask lives in the state.

  Args:
    mask: optional pytree of booleans with the structure and shapes of the params (True =
      may be non-zero). By default the support is read from the params given to ``init``:
      ``M = (p != 0)`` on kernels and layer biases, all-True on leaves of role ``"none"``.
    rules: optional ``(regex, role)`` overrides used for the default mask.
  """
  groups._validate_rules(rules)

  def init_fn(params):
    if mask is None:
      roles = groups.leaf_roles(params, rules, warn_depthwise=False)  # the mask does not depend on the grouping
      leaves, treedef = jax.tree.flatten(params)
      masks = [jnp.ones(p.shape, bool) if r == "none" else p != 0 for r, p in zip(roles, leaves)]
      return KeepSupportState(mask=jax.tree.unflatten(treedef, masks))
    _check_mask(mask, params)
    masks = [jnp.asarray(m, bool) for m in jax.tree.leaves(mask)]
    return KeepSupportState(mask=jax.tree.unflatten(jax.tree.structure(params), masks))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("keep_support: update needs params")
    new = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), updates, params, state.mask)
    return new, state

  return optax.GradientTransformation(init_fn, update_fn)


def _check_mask(mask: Any, params: Any) -> None:
  p_paths = groups.leaf_paths(params)
  m_paths = groups.leaf_paths(mask)
  if p_paths != m_paths:
    missing = sorted(set(p_paths) - set(m_paths))
    extra = sorted(set(m_paths) - set(p_paths))
    raise ValueError(
        f"keep_support: mask structure does not match params (missing {missing[:5]}, "
        f"unexpected {extra[:5]})"
    )
  for path, m, p in zip(p_paths, jax.tree.leaves(mask), jax.tree.leaves(params)):
    if jnp.shape(m) != jnp.shape(p):
      raise ValueError(
          f"keep_support: mask for {path!r} has shape {jnp.shape(m)}, parameter has {jnp.shape(p)}"
      )
