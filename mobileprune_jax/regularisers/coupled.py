"""Regularisers on a model's coupled units (docs/algorithms.md §K): what ``Regulariser.for_model`` returns.

The units (``mobileprune_jax.units``) partition the traced kernels' entries into two-level trees:
a removable unit is the root, its members' shape groups the leaves; entries that read (or, for
DEGL, write) a channel surgery must keep form fixed trees without a unit term. The penalty is a sum
over trees, so its prox is computed tree by tree, exactly:

* group lasso / ℓ1-SGL: (soft threshold at s·l1, then) leaf shrink at s·shape on conv taps, then one
  block soft threshold of the whole unit at s·w_u·λ_u — one factor for all its slices;
* ℓ0-SGL (MobilePrune): θ with the unit as root and leaves of different sizes and coefficients
  (``prox.tree_l0.theta_leafwise``; zero padding never enters a support);
* EGL (DEGL): y/(1 + 2μ), then the block soft threshold of the unit at s·gamma·√|u|/(1 + 2μ).

λ_u is ``channel`` when a conv reads the unit and ``neuron`` otherwise; w_u = √(number of slices the
unit joins), so a unit of k equally strong slices costs what its k per-layer groups cost, and a unit of
one slice is exactly the papers' group. Leaves: ``shape`` on conv taps, no leaf term on dense rows
(the papers' dense groups have one level). Leaves of parameters outside the units (biases, kernels
the trace does not see) keep the per-layer rules. A member's one-entry taps (a depthwise filter's) are one row of the tree: their leaf terms are
soft thresholds at s·shape, applied first, and the row has no leaf term (the same prox; docs/algorithms.md §K).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import groups
from mobileprune_jax import units as units_lib
from mobileprune_jax.nnx_only import require_nnx
from mobileprune_jax.prox.bracketing import shrink_factor
from mobileprune_jax.prox.convex import tree_shrink
from mobileprune_jax.prox.group_l0 import pi
from mobileprune_jax.prox.tree_l0 import theta_leafwise
from mobileprune_jax.prox.validation import compute_dtype
from mobileprune_jax.regularisers import fixed_shapes, traced_roles
from mobileprune_jax.regularisers.base import ELEMENTS, Regulariser
from mobileprune_jax.surgery import depgraph

Array = jax.Array

__all__ = ["CoupledRegulariser", "TreeMeta", "couple", "egl_units", "sparse_group_units"]


class TreeMeta(NamedTuple):
  """Per-tree constants of one bucket (see ``units.Bucket``)."""

  leaf_kind: Array  # (U, L) the leaf kind (``units.ROW``, ``TAP``, ``SINGLE_TAPS``)
  channel: Array  # (U,) bool
  weight: Array  # (U,)
  size: Array  # (U,)
  flat: bool = False  # static: no tree has a leaf term (dense rows only), or every tree is one leaf
  singles: bool = False  # static: some leaf is ``SINGLE_TAPS``


# (trees (U, L, F), step per tree (U,), coefficients, meta) -> prox of the trees
UnitProx = Callable[[Array, Array, Mapping[str, Array], TreeMeta], Array]


def sparse_group_units(sparse: str | None) -> UnitProx:
  """The prox of sparse·‖x‖_{0|1} + Σ leaf terms + the unit term on trees (``sparse``: None, "l1" or "l0")."""

  def prox(trees, s, c, meta):
    beta = s[:, None] * c["shape"] * (meta.leaf_kind == units_lib.TAP)
    if meta.singles:  # one-entry leaves: their leaf terms are soft thresholds, taken first (docs/algorithms.md §K)
      t = (s[:, None] * c["shape"] * (meta.leaf_kind == units_lib.SINGLE_TAPS))[..., None]
      trees = jnp.sign(trees) * jnp.maximum(jnp.abs(trees) - t, 0)
    gamma = s * meta.weight * jnp.where(meta.channel, c["channel"], c["neuron"])
    if sparse == "l0" and meta.flat:  # one group level: θ is π on the whole tree (docs/algorithms.md §C.2's sanity identities)
      n_leaves = trees.shape[1]
      lam = gamma + (beta[:, 0] if n_leaves == 1 else 0)
      return pi(trees.reshape(trees.shape[0], -1), lam, s * c["l0"]).reshape(trees.shape)
    if sparse == "l0":
      return _theta(trees, s * c["l0"], beta, gamma)
    if sparse == "l1":
      a = (s * c["l1"])[:, None, None]
      trees = jnp.sign(trees) * jnp.maximum(jnp.abs(trees) - a, 0)
    return tree_shrink(trees, beta, gamma)

  return prox


def egl_units(trees: Array, s: Array, c: Mapping[str, Array], meta: TreeMeta) -> Array:
  """EGL on writer units: ridge, then one block soft threshold per unit at s·gamma·√|u| (fixed trees: ridge only)."""
  shrink = 1 + 2 * s * c["lam"]
  y = trees / shrink[:, None, None]
  t = s * c["gamma"] * jnp.sqrt(meta.size) * meta.weight / shrink
  norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=(1, 2)))
  return y * shrink_factor(norm, t)[:, None, None]


_theta = jax.jit(theta_leafwise)


@dataclasses.dataclass(frozen=True)
class CoupledRegulariser(Regulariser):
  """A ``Regulariser`` whose kernel groups are one model's coupled units (``Regulariser.for_model``).

  Its prox needs the leaves' paths (``prox`` and the optax transforms pass them); the params must be the
  model's ``nnx.Param`` state (or any pytree with the same kernel paths and shapes).
  """

  units: units_lib.Units | None = None
  _compiled: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def prox_leaves(self, roles: Sequence[str], leaves: Sequence[Array], step_size: Any, *, count: Any = 0,
                  multiplier: Any = 1.0, paths: Sequence[str] | None = None) -> list[Array]:
    if paths is None:
      raise ValueError(f"{self.name} on coupled units: prox_leaves needs the leaves' paths (paths=...)")
    steps = list(step_size) if isinstance(step_size, (list, tuple)) else [step_size] * len(leaves)
    where = {p: i for i, p in enumerate(paths)}
    covered = set(self.units.paths)
    out = list(leaves)
    rest = [i for i, p in enumerate(paths) if p not in covered]
    if rest:
      done = super().prox_leaves([roles[i] for i in rest], [leaves[i] for i in rest], [steps[i] for i in rest],
                                 count=count, multiplier=multiplier)
      for i, v in zip(rest, done):
        out[i] = v
    present = self._present(where)
    if not present:
      return out
    ks = sorted(present)
    values = [leaves[where[self.units.paths[k]]] for k in ks]
    new = self._prox_units(ks, values, [steps[where[self.units.paths[k]]] for k in ks], count, multiplier)
    for k, v in zip(ks, new):
      out[where[self.units.paths[k]]] = v
    return out

  def acts_on(self, roles: Sequence[str], paths: Sequence[str]) -> list[bool]:
    """Leaves with a rule, and every leaf in the units (a writer unit's biases and norm parameters)."""
    covered = set(self.units.paths)
    return [act or path in covered for act, path in zip(super().acts_on(roles, paths), paths)]

  def blocks(self, blocks: Sequence[Sequence[str]]) -> list[list[str]]:
    """PALM blocks (lists of leaf paths) merged so that no coupled unit spans two blocks (in first-seen order)."""
    comp_of = {p: c for c, paths in enumerate(self.units.components) for p in paths}
    owner = list(range(len(blocks)))  # union-find over blocks: blocks sharing a component are one

    def find(i):
      while owner[i] != i:
        owner[i] = owner[owner[i]]
        i = owner[i]
      return i

    first: dict[int, int] = {}
    for i, block in enumerate(blocks):
      for c in {comp_of[p] for p in block if p in comp_of}:
        j = first.setdefault(c, i)
        a, b = find(i), find(j)
        owner[max(a, b)] = min(a, b)
    merged: dict[int, list[str]] = {}
    for i, block in enumerate(blocks):
      merged.setdefault(find(i), []).extend(block)
    given = {p for block in blocks for p in block}
    for block in merged.values():  # a writer unit's biases / norm parameters no layer block lists join its block
      for c in sorted({comp_of[p] for p in block if p in comp_of}):
        block.extend(p for p in self.units.components[c] if p not in given)
    return list(merged.values())

  def _present(self, where: Mapping[str, int]) -> set[int]:
    """Indices (into ``units.paths``) of the covered kernels given; whole components only."""
    present = set()
    for comp in self.units.components:
      given = [p in where for p in comp]
      if any(given) and not all(given):
        missing = [p for p, g in zip(comp, given) if not g]
        raise ValueError(f"{self.name} on coupled units: the leaves given hold part of a coupled set of kernels "
                         f"(missing {missing[:3]}); a block must hold whole units (Regulariser.blocks)")
      if all(given):
        present.update(self.units.paths.index(p) for p in comp)
    return present

  def _prox_units(self, ks: list[int], values: list[Array], steps: list[Any], count, multiplier) -> list[Array]:
    units = self.units
    for k, v in zip(ks, values):
      if tuple(v.shape) != units.shapes[k]:
        raise ValueError(f"{self.name} on coupled units: {units.paths[k]} has shape {tuple(v.shape)}, the units "
                         f"were built for {units.shapes[k]} (Regulariser.for_model of another model?)")
    uniform = all(st is steps[0] for st in steps) and jnp.ndim(steps[0]) == 0
    key = (tuple(ks), uniform, tuple(str(jnp.result_type(v)) for v in values))
    if key not in self._compiled:
      self._compiled[key] = jax.jit(self._units_fn(ks, uniform))
    coefs = self.coefficients_at(count, multiplier)
    return self._compiled[key](list(values), steps[0] if uniform else list(steps), coefs)

  def block_shapes(self) -> list[tuple[int, int, int]]:
    """(trees, leaves, width) of each padded block the prox of all covered kernels works on: its cost follows their
    entries, not the weights' (``benchmarks/bench_unit_prox.py``)."""
    return [tuple(plan[0].shape) for plan in self._layout(list(range(len(self.units.paths))))[2]]

  def _layout(self, ks: list[int]) -> tuple[np.ndarray, int, list[tuple], np.ndarray]:
    """For the covered kernels ``ks``: their offsets in the flat vector of the given kernels, its size, the merged
    blocks (index (U, L, F), leaf kinds, channel, weight, size) and the gather that puts the blocks' outputs back."""
    units = self.units
    old_off = np.asarray(units.offsets)
    new_off = np.concatenate([[0], np.cumsum([math.prod(units.shapes[k]) for k in ks])]).astype(np.int64)
    total = int(new_off[-1])
    small = np.int32 if total < 2**31 - 1 else np.int64
    remap = np.full(units.size + 1, total, small)  # old flat position -> position among the given kernels
    for j, k in enumerate(ks):
      remap[old_off[k]:old_off[k + 1]] = np.arange(new_off[j], new_off[j + 1])
    given = set(ks)
    comp_ids = [c for c, comp in enumerate(units.components) if units.paths.index(comp[0]) in given]
    plans = []
    for bucket in units.buckets:
      rows = np.isin(bucket.component, comp_ids)
      if rows.any():
        plans.append((remap[bucket.index[rows]], bucket.leaf_kind[rows], bucket.channel[rows], bucket.weight[rows],
                      bucket.size[rows]))
    plans = _merge_trees(plans, total)
    positions = np.concatenate([plan[0].ravel() for plan in plans])
    gather = np.empty(total, small)
    real_pos = positions < total
    gather[positions[real_pos]] = np.flatnonzero(real_pos)  # a partition: every position exactly once
    return new_off, total, plans, gather

  def _units_fn(self, ks: list[int], uniform: bool) -> Callable:
    """f(values, step(s), coefs) -> new values for the covered kernels ``ks`` (index arrays built once, here)."""
    new_off, total, plans, gather = self._layout(ks)

    def apply(values, steps, coefs):
      dt = compute_dtype(jnp.result_type(*values))
      flat = jnp.concatenate([v.astype(dt).ravel() for v in values] + [jnp.zeros((1,), dt)])
      inv = None if uniform else _inverse_steps(steps, values, dt)
      c = {name: jnp.asarray(v, dt) for name, v in coefs.items()}
      outputs = []
      for idx, leaf_kind, channel, weight, size in plans:
        meta = TreeMeta(jnp.asarray(leaf_kind, dt), jnp.asarray(channel), jnp.asarray(weight, dt),
                        jnp.asarray(size, dt), flat=idx.shape[1] == 1 or not leaf_kind.any(),
                        singles=bool(np.any(leaf_kind == units_lib.SINGLE_TAPS)))
        s = (jnp.broadcast_to(jnp.asarray(steps, dt), meta.size.shape) if uniform
             else meta.size / jnp.sum(inv[idx], axis=(1, 2)))
        outputs.append(jnp.where(idx < total, self.unit_prox(flat[idx], s, c, meta), 0).ravel())
      result = jnp.concatenate(outputs)[gather]
      return [result[new_off[j]:new_off[j + 1]].reshape(v.shape).astype(v.dtype) for j, v in enumerate(values)]

    return apply


SMALL = 1 << 16  # entries below which a flat bucket is padded into a wider one rather than compiled on its own


def _merge_trees(plans: list[tuple], pad: int) -> list[tuple]:
  """Buckets of two-level trees with leaf terms, merged by the power of two above their leaf count (zero leaves and
  zero-padded widths: exact, zeros never enter a support), so θ compiles a few times, not once per bucket. Flat
  buckets (one group level) become single leaves; a small one is padded into the next wider (``_merge_flat``)."""
  keep, groups, flat = [], {}, []
  for plan in plans:
    idx, leaf_kind = plan[0], plan[1]
    if idx.shape[1] == 1 or not leaf_kind.any():
      tap = leaf_kind[:, :1] if idx.shape[1] == 1 else np.zeros((len(idx), 1), leaf_kind.dtype)
      flat.append((idx.reshape(len(idx), 1, -1), tap, *plan[2:]))
    else:
      groups.setdefault(1 << (idx.shape[1] - 1).bit_length(), []).append(plan)
  keep += _merge_flat(flat, pad)
  for n_leaves, members in sorted(groups.items()):
    width = max(m[0].shape[2] for m in members)
    idx = np.concatenate([np.pad(m[0], ((0, 0), (0, n_leaves - m[0].shape[1]), (0, width - m[0].shape[2])),
                                 constant_values=pad) for m in members])
    tap = np.concatenate([np.pad(m[1], ((0, 0), (0, n_leaves - m[1].shape[1]))) for m in members])
    keep.append((idx, tap, *(np.concatenate([m[k] for m in members]) for k in (2, 3, 4))))
  return keep


def _merge_flat(plans: list[tuple], pad: int) -> list[tuple]:
  """Flat buckets (U, 1, W) from narrow to wide; a bucket joins the next wider one when padding it to that width
  costs at most 4× its entries or under ``SMALL`` entries (π then compiles once for both)."""
  out: list[tuple] = []
  for plan in sorted(plans, key=lambda p: p[0].shape[2]):
    if out:
      prev = out[-1]
      width = plan[0].shape[2]
      if prev[0].shape[0] * width <= max(4 * prev[0].size, SMALL):
        idx = np.concatenate([np.pad(prev[0], ((0, 0), (0, 0), (0, width - prev[0].shape[2])), constant_values=pad),
                              plan[0]])
        out[-1] = (idx, *(np.concatenate([prev[k], plan[k]]) for k in range(1, 5)))
        continue
    out.append(plan)
  return out


def _inverse_steps(steps: list[Any], values: list[Array], dt) -> Array:
  """1/s per entry of the given kernels (flat, with a 0 for padding)."""
  parts = [jnp.broadcast_to(1 / jnp.asarray(s, dt), v.shape).ravel() for s, v in zip(steps, values)]
  return jnp.concatenate(parts + [jnp.zeros((1,), dt)])


def _no_units_warning(name: str, notes: Sequence[str]) -> str:
  """The warning of a model none of whose channels is a removable unit, with the trace's first reasons."""
  reasons = "; ".join(list(dict.fromkeys(notes))[:2]) or "every channel is an output or meets an op that keeps it"
  return (f"{name}.for_model: no channel of this model is a removable unit, so the penalty has no group term to act "
          f"on and training will not make the model smaller (surgery keeps every channel: {reasons})")


def couple(reg: Regulariser, model: Any, sample_input: Any, graph: Any = None) -> Regulariser:
  """``reg`` on ``model``'s coupled units (see ``Regulariser.for_model``)."""
  require_nnx(model, f"{reg.name}.for_model", "Regulariser.for_model(model, sample_input) takes a flax.nnx model")
  rules = list(reg.rules or []) + groups.rules_for_model(model)
  unknown = groups.unknown_leaves(nnx.state(model, nnx.Param), rules)
  if unknown and graph is None:
    graph = depgraph.trace(model, sample_input)
  any_layout = reg.unit_prox is not None or all(rule.layout is ELEMENTS for rule in reg.rules_by_role.values())
  traced, foreign = traced_roles.roles_from_trace(graph, unknown, any_layout) if unknown else ({}, set())
  reader_axes = {layer.kernel_path: traced_roles.reader_axis(layer) for layer in graph.layers
                 if layer.kernel_path in foreign} if foreign else {}
  rules += [(f"^{re.escape(path)}$", role) for path, role in traced.items()]
  general = traced_roles.general_kernels(model, reg.rules) if any_layout else []
  if general:  # nnx.Einsum / multi-axis LinearGeneral: "none" per layer; the trace may know which axis they read
    graph = graph if graph is not None else depgraph.trace(model, sample_input)
    general_roles, general_axes = traced_roles.general_roles(graph, general)
    rules = [(f"^{re.escape(path)}$", role) for path, role in general_roles.items()] + rules
    foreign = set(foreign) | set(general_roles)
    reader_axes.update(general_axes)
  unknown = [path for path in unknown if path not in traced]
  told = []  # unknown parameters beside a kernel the trace cannot see are named by the hidden-layer warning below
  if unknown:
    hidden = set(groups.leaf_paths(nnx.state(model, nnx.Param))) - {layer.kernel_path for layer in graph.layers}
    told = [path for path in unknown if not traced_roles.beside(path, hidden)]
  if told:  # custom parameters the trace finds no plain layer for (or vectors: a scale)
    warnings.warn(f"{reg.name}.for_model: {len(told)} parameter(s) the model's layers do not explain are not "
                  f"penalised: {', '.join(told[:4])}{', ...' if len(told) > 4 else ''} (pass rules=[(path, role)] "
                  "to penalise them)", stacklevel=3)
  rules += [(f"^{re.escape(path)}$", "none") for path in unknown]
  if reg.unit_prox is None:
    if any(rule.layout.group_ndim for rule in reg.rules_by_role.values() if rule.layout is not ELEMENTS):
      raise ValueError(f"{reg.name}: these groups have no coupled form (conv_grouping='output_filter' groups what a "
                       "filter writes; units follow what it reads): use the default conv_grouping")
    return dataclasses.replace(reg, rules=rules, reader_axes=reader_axes or None)  # element-wise: nothing to couple
  if graph is None:
    graph = depgraph.trace(model, sample_input)
  params = nnx.state(model, nnx.Param)
  paths = groups.leaf_paths(params)
  shapes = {p: tuple(np.shape(x)) for p, x in zip(paths, jax.tree.leaves(params))}
  roles = dict(zip(paths, groups.leaf_roles(params, rules)))
  hidden = traced_roles.hidden_layers(graph, roles)
  if hidden:  # layers inside an op the trace cannot enter (a scan, an RNN cell): per-layer groups would zero rows
    warnings.warn(f"{reg.name}.for_model: {len(hidden)} kernel(s) the trace cannot see (inside a scan over "
                  "stacked layers or another opaque op, or applied to parameters alone, e.g. learned latents) are not "
                  f"penalised: {', '.join(hidden[:4])}{', ...' if len(hidden) > 4 else ''}; "
                  "surgery keeps them whole (pass rules=[(path, role)] to penalise them anyway)", stacklevel=3)
    hidden_rules = [(f"^{re.escape(path.rpartition('/')[0])}/(kernel|bias)$" if "/" in path else
                     f"^{re.escape(path)}$", "none") for path in hidden]
    rules = hidden_rules + rules
    roles = dict(zip(paths, groups.leaf_roles(params, rules)))
  tied = traced_roles.tied_tables(graph, roles, params, reg.rules)
  if tied:  # an embedding table that is also a dense layer (a tied output head): its columns read the stream
    rules = [(f"^{re.escape(path)}$", "dense") for path in tied] + rules
    roles = dict(zip(paths, groups.leaf_roles(params, rules)))
  graph, fixed, failure = fixed_shapes.pin_fixed_shapes(model, sample_input, graph, shapes)
  if fixed:  # shrink keeps these channels, so no unit may hold them
    warnings.warn(fixed_shapes.warning(reg.name, fixed, failure), stacklevel=3)
  covered = [layer.kernel_path for layer in graph.layers
             if roles.get(layer.kernel_path) in reg.rules_by_role and roles[layer.kernel_path] != "bias"]
  units = units_lib.units_from_graph(graph, shapes, covered, reg.unit_side)
  if covered and not units.units:  # nothing to remove: the unit terms act on nothing, silently, without this
    warnings.warn(_no_units_warning(reg.name, graph.notes), stacklevel=3)
  outside = sorted(foreign - set(units.paths))
  if outside:  # per-layer groups assume the library's layout: a kernel in another one is penalised by its units or not
    warnings.warn(f"{reg.name}.for_model: {len(outside)} kernel(s) in a layout other than the library's are not in "
                  f"the units and are not penalised: {', '.join(outside[:4])} ({'; '.join(units.notes)[:200]})",
                  stacklevel=3)
    rules = [(f"^{re.escape(path)}$", "none") for path in outside] + rules
  fields = {f.name: getattr(reg, f.name) for f in dataclasses.fields(reg)}
  fields["rules"] = rules
  fields["reader_axes"] = {p: a for p, a in reader_axes.items() if p not in outside} or None
  return CoupledRegulariser(**fields, units=units)
