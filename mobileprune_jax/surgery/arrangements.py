"""Ops that rearrange, join or cut arrays without computing: ``split``, ``pad``, ``concatenate``, ``stack`` and
``dynamic_slice`` at indices known without the input. Each moves the operands' channel nodes to where their
elements go, and records the axes whose sizes the model's code fixes (``Tracer.note_shape_site``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mobileprune_jax.surgery import shape_sites
from mobileprune_jax.surgery.graph import NO_NODE
from mobileprune_jax.surgery.values import Act, Const

if TYPE_CHECKING:
  from mobileprune_jax.surgery.tracer import Tracer


def split(t: Tracer, eqn, a: Act) -> list[Act]:
  """``jnp.split``: each piece carries its part of the input's nodes."""
  axis, sizes = eqn.params["axis"], [int(n) for n in eqn.params["sizes"]]
  t.note_shape_site(a, [axis], "split")
  bounds = np.cumsum([0] + sizes)
  take = lambda arr, lo, hi: np.take(arr, np.arange(lo, hi), axis=axis)
  pieces = [Act(take(a.ids, lo, hi), take(a.value, lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
  if len(set(sizes)) == 1:  # equal parts (jnp.split(x, n): a fused q/k/v or gate/up projection): entry i of every
    for piece in pieces[1:]:  # part goes together, so the parts stay equal and aligned after a cut
      t.union(pieces[0].ids, piece.ids)
  return pieces


def pad(t: Tracer, eqn, ins: list[Any]) -> Act:
  """``lax.pad`` by a constant: zero padding fits any channel; any other value is a node of its own, kept."""
  a, value = ins
  cfg = eqn.params["padding_config"]
  shape = tuple(eqn.outvars[0].aval.shape)
  if isinstance(value, Act) or any(interior for _, _, interior in cfg) or any(lo < 0 or hi < 0 for lo, hi, _ in cfg):
    return t.opaque(eqn, ins)[0]
  pad_value = float(np.asarray(value.value))
  if pad_value == 0:  # zero padding: the new elements fit any channel
    ids = np.full(shape, NO_NODE, np.int64)
  else:  # a constant that is not zero: its own node, kept (cutting it would change the pad)
    pad_node = t.new_nodes(1)[0]
    t.pinned.add(int(pad_node))
    ids = np.full(shape, pad_node, np.int64)
  values = np.full(shape, pad_value)
  src = t.as_act(a, tuple(eqn.invars[0].aval.shape))
  t.note_shape_site(src, [d for d, (lo, hi, _) in enumerate(cfg) if lo or hi], "pad")
  sl = tuple(slice(lo, lo + n) for (lo, _, _), n in zip(cfg, src.ids.shape))
  ids[sl], values[sl] = src.ids, src.value
  return Act(ids, values)


def concatenate(t: Tracer, eqn, ins: list[Any]) -> Act:
  """``jnp.concatenate``: the operands' nodes side by side. Joined along an axis their channels do not vary along
  (two sequences along time), the operands must keep equal channel axes: channel i of each goes with channel i of
  the others (``along_other_axes``), and a parameter among them (a class token) is attached to those channels."""
  dim = eqn.params["dimension"]
  parts = [t.as_act(x, tuple(v.aval.shape)) for x, v in zip(ins, eqn.invars)]
  lines = [along_other_axes(p.ids, dim) for p in parts]
  if len(parts) > 1 and all(line is not None for line in lines):
    for line in lines[1:]:
      t.union(lines[0], line)
    rep = np.max(np.stack(np.broadcast_arrays(*lines)), axis=0)  # one node of each joined set, where any has one
    parts = [Act(np.where(p.ids >= 0, np.broadcast_to(rep, p.ids.shape), p.ids), p.value) for p in parts]
    for i, x in enumerate(ins):  # a parameter joined along (a class token before the patches): cut with the channels
      if isinstance(x, Const) and x.origin and _all_from_parameters(x):
        nodes = Act(np.broadcast_to(rep, parts[i].ids.shape).copy(), parts[i].value)
        t.attach(x, nodes, nodes.ids.shape)
        for path in x.origin:
          t.attach_ops.setdefault(path, set()).add("concatenate")
        parts[i] = nodes
  return Act(np.concatenate([p.ids for p in parts], dim), np.concatenate([p.value for p in parts], dim))


def _all_from_parameters(x: Const) -> bool:
  """Every entry of ``x`` is a parameter entry (not a value the code writes in)."""
  covered = np.zeros(np.shape(x.value), bool)
  for idx in x.origin.values():
    covered |= np.broadcast_to(idx, covered.shape) >= 0
  return bool(covered.all())


def along_other_axes(ids: np.ndarray, axis: int) -> np.ndarray | None:
  """The nodes of ``ids`` with ``axis`` taken out (size 1) when they do not vary along it (positions without a node
  aside), else None."""
  if ids.shape[axis] == 0:
    return None
  top = ids.max(axis=axis, keepdims=True)
  return top if np.all((ids == top) | (ids < 0)) else None


def stack(t: Tracer, eqn, ins: list[Any]) -> Act:
  """``jnp.stack``: a new axis for each operand, then a concatenation along it. The operands must keep equal
  shapes, so entry i of every operand goes together (as the equal parts of a split)."""
  axis = eqn.params["axis"]
  parts = [t.as_act(x, tuple(v.aval.shape)) for x, v in zip(ins, eqn.invars)]
  for part in parts[1:]:
    t.union(parts[0].ids, part.ids)
  return Act(np.stack([p.ids for p in parts], axis), np.stack([p.value for p in parts], axis))


def dynamic_slice(t: Tracer, eqn, a: Act, starts: Sequence[Const]) -> Act:
  """A slice at start indices the code computes without the input (``lax.dynamic_slice_in_dim(x, 1, 2)``): a
  ``slice`` at those indices, clamped as XLA clamps them."""
  sizes = tuple(int(n) for n in eqn.params["slice_sizes"])
  lo = [min(max(int(np.asarray(c.value)), 0), n - size) for c, n, size in zip(starts, a.ids.shape, sizes)]
  params = {"start_indices": lo, "limit_indices": [b + size for b, size in zip(lo, sizes)], "strides": None}
  t.note_shape_site(a, shape_sites.sliced_axes(a.ids.shape, params), "slice")
  window = tuple(slice(b, b + size) for b, size in zip(lo, sizes))
  return Act(a.ids[window], a.value[window])
