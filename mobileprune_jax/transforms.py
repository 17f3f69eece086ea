"""Proximal regularisers as optax GradientTransformations.

Each factory returns a transform whose update is the proximal step written as an update
(the template is optax's ``keep_params_nonnegative``, a projection written as an update)::

    u ↦ prox_{s·R}(p + u) − p,     s = learning rate at this step

so after ``optax.apply_updates`` the parameters are ``prox_{s·R}(p + u)``, with exact zeros.
Put it **last** in an ``optax.chain``, after the optimizer that produced ``u``, and give it
the same learning rate (float or schedule)::

    tx = optax.chain(
        optax.sgd(lr, momentum=0.9),
        transforms.l0_sparse_group_lasso(lr, l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3),
    )

Which leaves are penalised and how they are grouped comes from ``groups.leaf_roles``
(dense kernels, conv kernels, layer biases; normalisation parameters untouched), with
``rules`` to override it. The step counter (for schedules) and any mask live in the
optimizer state, so a checkpoint of the state holds them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from mobileprune_jax import groups, prox

Array = jax.Array
ScalarOrSchedule = float | optax.Schedule
# (role, value p + u, step size s) -> prox result, or None to leave the update as it is.
LeafProx = Callable[[str, Array, Array], Array | None]

__all__ = [
    "ProxState",
    "KeepSupportState",
    "l0",
    "l1",
    "l2",
    "group_lasso",
    "l1_sparse_group_lasso",
    "l0_sparse_group_lasso",
    "elastic_group_lasso",
    "keep_support",
]

CONV_GROUPINGS = ("input_channel_tree", "output_filter")


class ProxState(NamedTuple):
  """State of a proximal transform: the step count, for learning-rate schedules."""

  count: chex.Array


class KeepSupportState(NamedTuple):
  """State of ``keep_support``: the frozen support (True = weight may be non-zero)."""

  mask: Any


def _check_coefficients(fn: str, **coefs: float) -> None:
  for name, value in coefs.items():
    if not isinstance(value, (int, float)) or isinstance(value, bool):
      raise TypeError(f"{fn}: {name} must be a number, got {value!r}")
    if not 0 <= value < math.inf:  # also rejects NaN
      raise ValueError(f"{fn}: {name} must be a finite non-negative number, got {value!r}")


def _check_learning_rate(fn: str, learning_rate: ScalarOrSchedule) -> None:
  if callable(learning_rate) or isinstance(learning_rate, (jax.Array, jax.core.Tracer)):
    return  # schedules and traced step sizes (e.g. PALM's 1/(γL)) are checked by their producer
  _check_coefficients(fn, learning_rate=learning_rate)


def _check_conv_grouping(fn: str, conv_grouping: str, shape: float) -> None:
  if conv_grouping not in CONV_GROUPINGS:
    raise ValueError(f"{fn}: conv_grouping must be one of {CONV_GROUPINGS}, got {conv_grouping!r}")
  if conv_grouping == "output_filter" and shape:
    raise ValueError(f"{fn}: shape groups need conv_grouping='input_channel_tree' (got shape={shape})")


def _step_size(learning_rate: ScalarOrSchedule, count: Array) -> Array:
  return jnp.asarray(learning_rate(count) if callable(learning_rate) else learning_rate)


# (trees (N, L, F), step size) -> prox of every tree; applied to all tree-shaped leaves at once
TreeProx = Callable[[Array, Array], Array]
_TREE_LAYOUTS = {"conv": (groups.to_channel_trees, groups.from_channel_trees),
                 "depthwise": (groups.to_depthwise_trees, groups.from_depthwise_trees)}


def _bucket_size(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def _apply_tree_prox(tree_prox: TreeProx, items: list[tuple[int, str, Array]], step: Array) -> dict[int, Array]:
  """θ on every tree of every leaf, compiled once per bucket instead of once per kernel shape.

  Trees with the same number of leaves L are zero-padded to the largest leaf size F among them
  (rounded up to a power of two) and stacked: one θ per distinct L (kernel size), whatever the
  widths. Exact: zero entries are never in an optimal support
  (ties go to zero) and do not change any norm, and the trees are independent.
  """
  buckets: dict[tuple, list[tuple[int, str, Array, Array]]] = {}
  for index, role, value in items:
    trees = _TREE_LAYOUTS[role][0](value)
    buckets.setdefault((trees.dtype, trees.shape[1]), []).append((index, role, value, trees))
  out = {}
  for members in buckets.values():
    width = _bucket_size(max(t.shape[2] for *_, t in members))
    padded = [jnp.pad(t, ((0, 0), (0, 0), (0, width - t.shape[2]))) for *_, t in members]
    result = tree_prox(jnp.concatenate(padded, axis=0), step.astype(padded[0].dtype))
    start = 0
    for index, role, value, trees in members:
      part = result[start:start + trees.shape[0], :, :trees.shape[2]]
      start += trees.shape[0]
      out[index] = _TREE_LAYOUTS[role][1](part, value.shape)
  return out


def _prox_transform(
    fn: str, learning_rate: ScalarOrSchedule, leaf_prox: LeafProx, rules: groups.Rules | None,
    tree_prox: TreeProx | None = None, tree_roles: tuple[str, ...] = ()
) -> optax.GradientTransformation:
  """Builds ``u ↦ prox(p + u) − p`` leaf by leaf from a per-role prox (leaves of ``tree_roles``:
  all at once through ``tree_prox``, see ``_apply_tree_prox``)."""
  groups._validate_rules(rules)

  def init_fn(params):
    groups.leaf_roles(params, rules)  # fail at construction time, naming the path
    return ProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(f"{fn}: update needs params (the proximal step is taken at p + u)")
    roles = groups.leaf_roles(params, rules)
    step = _step_size(learning_rate, state.count)
    flat_u, treedef = jax.tree.flatten(updates)
    flat_p = jax.tree.leaves(params)
    if len(flat_u) != len(flat_p):
      raise ValueError(f"{fn}: updates and params have different structures")
    targets: dict[int, Array | None] = {}
    trees = []
    for i, (role, u, p) in enumerate(zip(roles, flat_u, flat_p)):
      if tree_prox is not None and role in tree_roles:
        trees.append((i, role, (p + u).astype(p.dtype)))
      else:
        targets[i] = leaf_prox(role, (p + u).astype(p.dtype), step.astype(p.dtype))
    if trees:
      targets |= _apply_tree_prox(tree_prox, trees, step)
    new_u = [u if targets[i] is None else (targets[i] - p).astype(u.dtype)
             for i, (u, p) in enumerate(zip(flat_u, flat_p))]
    count = optax.safe_increment(state.count)
    return jax.tree.unflatten(treedef, new_u), ProxState(count=count)

  return optax.GradientTransformation(init_fn, update_fn)


def _elementwise(fn: str, op: Callable[[Array, Array], Array], coef: float) -> LeafProx:
  def leaf_prox(role, value, step):
    if role == "none":
      return None
    return op(value, step * coef)

  return leaf_prox


def l0(learning_rate: ScalarOrSchedule, l0: float, rules: groups.Rules | None = None):
  """ℓ0 penalty l0·‖W‖₀ on kernels and layer biases: hard threshold at sqrt(2·s·l0).

  Args:
    learning_rate: the step size s (float or schedule), the same as the base optimizer's.
    l0: non-negative coefficient.
    rules: optional ``(regex, role)`` overrides (see ``groups``).
  """
  _check_learning_rate("l0", learning_rate)
  _check_coefficients("l0", l0=l0)
  return _prox_transform("l0", learning_rate, _elementwise("l0", prox.hard_threshold, l0), rules)


def l1(learning_rate: ScalarOrSchedule, l1: float, rules: groups.Rules | None = None):
  """ℓ1 penalty l1·‖W‖₁ on kernels and layer biases: soft threshold at s·l1."""
  _check_learning_rate("l1", learning_rate)
  _check_coefficients("l1", l1=l1)
  return _prox_transform("l1", learning_rate, _elementwise("l1", prox.soft_threshold, l1), rules)


def l2(learning_rate: ScalarOrSchedule, l2: float, rules: groups.Rules | None = None):
  """Ridge penalty l2·‖W‖₂² on kernels and layer biases: W ← W / (1 + 2·s·l2)."""
  _check_learning_rate("l2", learning_rate)
  _check_coefficients("l2", l2=l2)
  return _prox_transform("l2", learning_rate, _elementwise("l2", prox.ridge, l2), rules)


def _grouped(
    dense: Callable[[Array], Array],
    conv_tree: Callable[[Array], Array],
    conv_filter: Callable[[Array], Array],
    bias: Callable[[Array], Array],
    conv_grouping: str,
) -> Callable[[str, Array], Array | None]:
  """Applies group-layout prox functions per role (each takes the grouped array)."""

  def apply(role, value):
    shape = value.shape
    if role == "dense":
      return groups.from_neuron_groups(dense(groups.to_neuron_groups(value)), shape)
    if role == "conv" and conv_grouping == "input_channel_tree":
      return groups.from_channel_trees(conv_tree(groups.to_channel_trees(value)), shape)
    if role == "conv":
      return groups.from_output_groups(conv_filter(groups.to_output_groups(value)), shape)
    if role == "depthwise" and conv_grouping == "input_channel_tree":  # channel = root, taps = leaves
      return groups.from_depthwise_trees(conv_tree(groups.to_depthwise_trees(value)), shape)
    if role == "depthwise":
      return groups.from_output_groups(conv_filter(groups.to_output_groups(value)), shape)
    if role in ("heads_in", "heads_out"):  # one group per attention head, with the channel coefficient
      return groups.from_head_groups(conv_filter(groups.to_head_groups(value, role)), shape, role)
    if role == "bias":
      return groups.from_element_groups(bias(groups.to_element_groups(value)), shape)
    return None

  return apply


def group_lasso(
    learning_rate: ScalarOrSchedule,
    neuron: float = 0.0,
    channel: float = 0.0,
    shape: float = 0.0,
    rules: groups.Rules | None = None,
    conv_grouping: str = "input_channel_tree",
):
  """Group lasso on MobilePrune's groups: neuron·Σ‖row‖ (dense), channel·Σ‖W[c]‖ + shape·Σ‖W[c,tap]‖ (conv).

  Dense kernels: block soft threshold per input neuron (row). Conv kernels: per input
  channel, shape-group shrink then channel shrink (the exact prox of the two-level tree).
  Layer biases: each entry a singleton group with coefficient ``neuron``.

  Args:
    learning_rate: the step size s (float or schedule), the same as the base optimizer's.
    neuron: coefficient of the dense neuron groups (and the bias entries).
    channel: coefficient of the conv input-channel groups (or of the output-filter groups
      with ``conv_grouping="output_filter"``).
    shape: coefficient of the conv filter-shape groups (one tap across all filters).
    rules: optional ``(regex, role)`` overrides (see ``groups``).
    conv_grouping: ``"input_channel_tree"`` (paper) or ``"output_filter"`` (old code).
  """
  fn = "group_lasso"
  _check_learning_rate(fn, learning_rate)
  _check_coefficients(fn, neuron=neuron, channel=channel, shape=shape)
  _check_conv_grouping(fn, conv_grouping, shape)

  def leaf_prox(role, value, s):
    return _grouped(
        dense=lambda g: prox.group_soft_threshold(g, s * neuron),
        conv_tree=lambda g: prox.tree_group_soft_threshold(g, s * shape, s * channel),
        conv_filter=lambda g: prox.group_soft_threshold(g, s * channel),
        bias=lambda g: prox.group_soft_threshold(g, s * neuron),
        conv_grouping=conv_grouping,
    )(role, value)

  return _prox_transform(fn, learning_rate, leaf_prox, rules)


def l1_sparse_group_lasso(
    learning_rate: ScalarOrSchedule,
    l1: float,
    neuron: float = 0.0,
    channel: float = 0.0,
    shape: float = 0.0,
    rules: groups.Rules | None = None,
    conv_grouping: str = "input_channel_tree",
):
  """ℓ1 sparse group lasso: l1·‖W‖₁ + the group lasso terms (see ``group_lasso``).

  The prox is the soft threshold followed by the group shrinks (exact for nested groups).
  """
  fn = "l1_sparse_group_lasso"
  _check_learning_rate(fn, learning_rate)
  _check_coefficients(fn, l1=l1, neuron=neuron, channel=channel, shape=shape)
  _check_conv_grouping(fn, conv_grouping, shape)

  def leaf_prox(role, value, s):
    return _grouped(
        dense=lambda g: prox.l1_sgl(g, s * l1, s * neuron),
        conv_tree=lambda g: prox.tree_l1_sgl(g, s * l1, s * shape, s * channel),
        conv_filter=lambda g: prox.l1_sgl(g, s * l1, s * channel),
        bias=lambda g: prox.l1_sgl(g, s * l1, s * neuron),
        conv_grouping=conv_grouping,
    )(role, value)

  return _prox_transform(fn, learning_rate, leaf_prox, rules)


def l0_sparse_group_lasso(
    learning_rate: ScalarOrSchedule,
    l0: float,
    neuron: float = 0.0,
    channel: float = 0.0,
    shape: float = 0.0,
    rules: groups.Rules | None = None,
    conv_grouping: str = "input_channel_tree",
):
  """MobilePrune's ℓ0 sparse group lasso: l0·‖W‖₀ + the group lasso terms (spec §A).

  Dense kernels: π (Algorithm 2) per input neuron with (s·neuron, s·l0). Conv kernels: θ
  (Algorithm 3) per input channel with ℓ0 s·l0, shape groups s·shape and channel group
  s·channel. Layer biases: π on each entry (keep-and-soft-threshold). Normalisation
  parameters are untouched.

  Args:
    learning_rate: the step size s (float or schedule), the same as the base optimizer's.
    l0: the ℓ0 coefficient λ0.
    neuron: the neuron-group coefficient λn (dense layers and bias entries).
    channel: the channel-group coefficient λc (conv).
    shape: the filter-shape-group coefficient λs (conv).
    rules: optional ``(regex, role)`` overrides (see ``groups``).
    conv_grouping: ``"input_channel_tree"`` (paper: θ) or ``"output_filter"`` (older
      code: π per output filter with coefficient ``channel``).
  """
  fn = "l0_sparse_group_lasso"
  _check_learning_rate(fn, learning_rate)
  _check_coefficients(fn, l0=l0, neuron=neuron, channel=channel, shape=shape)
  _check_conv_grouping(fn, conv_grouping, shape)

  def leaf_prox(role, value, s):
    return _grouped(
        dense=lambda g: prox.pi(g, s * neuron, s * l0),
        conv_tree=lambda g: prox.theta(g, s * l0, s * shape, s * channel),
        conv_filter=lambda g: prox.pi(g, s * channel, s * l0),
        bias=lambda g: prox.pi(g, s * neuron, s * l0),
        conv_grouping=conv_grouping,
    )(role, value)

  # θ is compiled once per bucket of tree shapes, not once per kernel shape (MobileNets have ~20)
  tree_roles = ("conv", "depthwise") if conv_grouping == "input_channel_tree" else ()
  tree_prox = lambda trees, s: prox.theta(trees, s * l0, s * shape, s * channel)
  return _prox_transform(fn, learning_rate, leaf_prox, rules, tree_prox, tree_roles)


def elastic_group_lasso(
    learning_rate: ScalarOrSchedule, gamma: float, lam: float, rules: groups.Rules | None = None
):
  """DEGL's elastic group lasso Σ_g gamma·sqrt(|g|)·‖W_g‖₂ + lam·‖W‖₂² on kernels.

  Groups are output units / filters (all incoming weights of one unit). The prox of
  t‖x‖ + μ‖x‖² is the block soft threshold of y/(1 + 2μ) at t/(1 + 2μ), with t = s·gamma·sqrt(|g|),
  μ = s·lam. Biases and normalisation parameters are untouched.

  Args:
    learning_rate: the step size s (float or schedule), the same as the base optimizer's.
    gamma: group coefficient γ (scaled by sqrt of the group size).
    lam: ridge coefficient λ.
    rules: optional ``(regex, role)`` overrides (see ``groups``); e.g. exclude the output
      layer, whose units are the classes: ``[(r"^head/kernel$", "none")]``.
  """
  fn = "elastic_group_lasso"
  _check_learning_rate(fn, learning_rate)
  _check_coefficients(fn, gamma=gamma, lam=lam)

  def leaf_prox(role, value, s):
    if role not in ("dense", "conv", "depthwise", "heads_in", "heads_out"):
      return None
    g = groups.to_output_groups(value)
    shrink = 1 + 2 * s * lam
    t = s * gamma * jnp.sqrt(jnp.asarray(g.shape[-1], value.dtype))
    return groups.from_output_groups(prox.group_soft_threshold(g / shrink, t / shrink), value.shape)

  return _prox_transform(fn, learning_rate, leaf_prox, rules)


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
      roles = groups.leaf_roles(params, rules)
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
