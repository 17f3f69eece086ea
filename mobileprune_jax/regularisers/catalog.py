"""Every penalty of the library as a ``Regulariser``: ℓ0, ℓ1, ℓ2, group lasso, ℓ1-SGL, ℓ0-SGL, EGL.

The three sparse-group penalties share one table (``SPARSE_GROUP``): a penalty is its sparse
term (none, ℓ1 or ℓ0) plus the group lasso terms on MobilePrune's groups — dense kernels: one
group per input neuron (row, coefficient ``neuron``); conv kernels: one two-level tree per input
channel (root ``channel``, one leaf per filter tap ``shape``); depthwise kernels: one tree per
channel; attention kernels: one group per head (``channel``); layer biases: each entry alone
(``neuron``). With ``conv_grouping="output_filter"`` conv kernels are grouped per output filter
(``channel``; the older code's layout).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from mobileprune_jax import groups, prox
from mobileprune_jax.regularisers import coupled
from mobileprune_jax.regularisers.base import (
  BIAS,
  CHANNEL_TREES,
  CHANNEL_TREES_OUT_IN,
  DEPTHWISE_TREES,
  ELEMENTS,
  FILTERS,
  FILTERS_OUT_IN,
  HEADS_IN,
  HEADS_OUT,
  ROWS,
  Coefficient,
  LeafRule,
  Regulariser,
  is_nonzero,
)

CONV_GROUPINGS = ("input_channel_tree", "output_filter")
KERNEL_ROLES = ("dense", "conv", "conv_out_in", "depthwise", "heads_in", "heads_out")
# the layout of each kernel role's output groups (DEGL's groups): one per output unit / filter
OUTPUT_GROUPS = {role: FILTERS_OUT_IN if role == "conv_out_in" else FILTERS for role in KERNEL_ROLES}
PENALISED_ROLES = KERNEL_ROLES + ("bias",)

__all__ = ["CONV_GROUPINGS", "SPARSE_GROUP", "l0", "l1", "l2", "group_lasso", "l1_sparse_group_lasso",
           "l0_sparse_group_lasso", "elastic_group_lasso", "sparse_group"]


def _elementwise(name: str, coef: str, op: Callable, value: Coefficient, rules) -> Regulariser:
  rule = LeafRule(ELEMENTS, lambda g, s, c: op(g, s * c[coef]))
  return Regulariser(name, {coef: value}, {role: rule for role in PENALISED_ROLES}, rules)


def l0(l0: Coefficient, rules: groups.Rules | None = None) -> Regulariser:
  """l0·‖W‖₀ on kernels and layer biases: hard threshold at sqrt(2·s·l0)."""
  return _elementwise("l0", "l0", prox.hard_threshold, l0, rules)


def l1(l1: Coefficient, rules: groups.Rules | None = None) -> Regulariser:
  """l1·‖W‖₁ on kernels and layer biases: soft threshold at s·l1."""
  return _elementwise("l1", "l1", prox.soft_threshold, l1, rules)


def l2(l2: Coefficient, rules: groups.Rules | None = None) -> Regulariser:
  """l2·‖W‖₂² on kernels and layer biases: W ← W / (1 + 2·s·l2)."""
  return _elementwise("l2", "l2", prox.ridge, l2, rules)


# name -> (sparse coefficient, prox of a flat group (g, sparse, group), prox of a tree (t, sparse, leaf, root))
SPARSE_GROUP = {
    "group_lasso": (None, lambda g, a, lam: prox.group_soft_threshold(g, lam),
                    lambda t, a, beta, gamma: prox.tree_group_soft_threshold(t, beta, gamma)),
    "l1_sparse_group_lasso": ("l1", prox.l1_sgl, prox.tree_l1_sgl),
    "l0_sparse_group_lasso": ("l0", lambda g, a, lam: prox.pi(g, lam, a), prox.theta),
}


def sparse_group(name: str, sparse: Coefficient = 0.0, neuron: Coefficient = 0.0, channel: Coefficient = 0.0,
                 shape: Coefficient = 0.0, rules: groups.Rules | None = None,
                 conv_grouping: str = "input_channel_tree") -> Regulariser:
  """sparse·‖W‖_{0 or 1} + neuron·Σ‖row‖ + channel·Σ‖W[c]‖ + shape·Σ‖W[c, tap]‖ (``SPARSE_GROUP[name]``)."""
  if name not in SPARSE_GROUP:
    raise ValueError(f"unknown sparse group penalty {name!r}; one of {sorted(SPARSE_GROUP)}")
  if conv_grouping not in CONV_GROUPINGS:
    raise ValueError(f"{name}: conv_grouping must be one of {CONV_GROUPINGS}, got {conv_grouping!r}")
  if conv_grouping == "output_filter" and is_nonzero(shape):
    raise ValueError(f"{name}: shape groups need conv_grouping='input_channel_tree' (got shape={shape})")
  sparse_name, flat, tree = SPARSE_GROUP[name]
  coefs = {"neuron": neuron, "channel": channel, "shape": shape}
  if sparse_name:
    coefs = {sparse_name: sparse, **coefs}
  a = (lambda c: c[sparse_name]) if sparse_name else (lambda c: 0.0)

  def flat_rule(layout, group):
    return LeafRule(layout, lambda g, s, c: flat(g, s * a(c), s * c[group]))

  tree_prox = lambda t, s, c: tree(t, s * a(c), s * c["shape"], s * c["channel"])  # one function: stacked together
  tree_rule = lambda layout: LeafRule(layout, tree_prox)
  trees = conv_grouping == "input_channel_tree"
  table = {
      "dense": flat_rule(ROWS, "neuron"),
      "conv": tree_rule(CHANNEL_TREES) if trees else flat_rule(FILTERS, "channel"),
      "conv_out_in": tree_rule(CHANNEL_TREES_OUT_IN) if trees else flat_rule(FILTERS_OUT_IN, "channel"),
      "depthwise": tree_rule(DEPTHWISE_TREES) if trees else flat_rule(FILTERS, "channel"),
      "heads_in": flat_rule(HEADS_IN, "channel"),
      "heads_out": flat_rule(HEADS_OUT, "channel"),
      "bias": flat_rule(BIAS, "neuron"),
  }
  return Regulariser(name, coefs, table, rules, unit_prox=coupled.sparse_group_units(sparse_name) if trees else None)


def group_lasso(neuron: Coefficient = 0.0, channel: Coefficient = 0.0, shape: Coefficient = 0.0,
                rules: groups.Rules | None = None, conv_grouping: str = "input_channel_tree") -> Regulariser:
  """neuron·Σ‖row‖ + channel·Σ‖W[c]‖ + shape·Σ‖W[c, tap]‖: block soft thresholds (tree: leaves, then root)."""
  return sparse_group("group_lasso", 0.0, neuron, channel, shape, rules, conv_grouping)


def l1_sparse_group_lasso(l1: Coefficient, neuron: Coefficient = 0.0, channel: Coefficient = 0.0,
                          shape: Coefficient = 0.0, rules: groups.Rules | None = None,
                          conv_grouping: str = "input_channel_tree") -> Regulariser:
  """l1·‖W‖₁ + the group lasso terms: soft threshold, then the group shrinks (exact for nested groups)."""
  return sparse_group("l1_sparse_group_lasso", l1, neuron, channel, shape, rules, conv_grouping)


def l0_sparse_group_lasso(l0: Coefficient, neuron: Coefficient = 0.0, channel: Coefficient = 0.0,
                          shape: Coefficient = 0.0, rules: groups.Rules | None = None,
                          conv_grouping: str = "input_channel_tree") -> Regulariser:
  """MobilePrune: l0·‖W‖₀ + the group lasso terms; π per row / filter / head, θ per channel tree (docs/algorithms.md §A)."""
  return sparse_group("l0_sparse_group_lasso", l0, neuron, channel, shape, rules, conv_grouping)


def elastic_group_lasso(gamma: Coefficient, lam: Coefficient, rules: groups.Rules | None = None) -> Regulariser:
  """DEGL: Σ_g gamma·sqrt(|g|)·‖W_g‖₂ + lam·‖W‖₂² on kernels, one group per output unit / filter / head unit.

  The prox of t‖x‖ + μ‖x‖² is the block soft threshold of y/(1 + 2μ) at t/(1 + 2μ), t = s·gamma·sqrt(|g|),
  μ = s·lam. Biases and normalisation parameters are untouched.
  """

  def egl(g, s, c):
    shrink = (1 + 2 * s * c["lam"])[..., None]
    t = s * c["gamma"] * jnp.sqrt(jnp.asarray(g.shape[-1], g.dtype))
    return prox.group_soft_threshold(g / shrink, t / shrink[..., 0])

  table = {role: LeafRule(layout, egl) for role, layout in OUTPUT_GROUPS.items()}
  return Regulariser("elastic_group_lasso", {"gamma": gamma, "lam": lam}, table, rules,
                     unit_prox=coupled.egl_units, unit_side="writer")
