"""Reductions, pools and ops along one axis: a reduced element keeps its channel when every element it merges has it.

``reduce_*`` over axes (global mean / max pools, LayerNorm's statistics) and ``reduce_window_*``
(``nnx.max_pool`` / ``avg_pool``, ``lax.reduce_window``, any window, stride and padding). Padding
and zero wildcards fit any channel. A reduction whose windows split the channels into disjoint groups
(GroupNorm's statistics) joins each group into one set, removed whole; one that mixes them all (LayerNorm,
softmax over channels), in overlapping windows, or with elements of no channel pins them, with a note.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mobileprune_jax.surgery.graph import NO_NODE
from mobileprune_jax.surgery.values import Act, uniform_nodes

if TYPE_CHECKING:
  from mobileprune_jax.surgery.tracer import Tracer

_MIXING = "(LayerNorm / softmax over channels mix them)"


def merge_windows(t: Tracer, name: str, ids: np.ndarray, values: np.ndarray, wild: np.ndarray) -> Act:
  """Output of a reduction whose inputs per output element lie on the last axis."""
  reduce = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[name.rsplit("_", 1)[-1]]
  shape = ids.shape[:-1]
  flat_ids, flat_wild = ids.reshape(-1, ids.shape[-1]).T, wild.reshape(-1, ids.shape[-1]).T
  out_ids, same = uniform_nodes(flat_ids, flat_wild)
  zero_windows = np.all(values.reshape(-1, ids.shape[-1]) == 0, axis=1)  # all-zero windows are zero anyway
  groups = _disjoint_groups(flat_ids[:, ~same], flat_wild[:, ~same]) if not same.all() else None
  if groups is not None:  # GroupNorm's statistics: each group of channels goes whole, with what is reduced from it
    members, column_set = groups  # (a group of zeros too: its statistics are its own, not a zero wildcard)
    out_ids = out_ids.copy()
    out_ids[~same] = np.array([t.union_all(m) for m in members], np.int64)[column_set]
  else:
    mixed = ~same & ~zero_windows
    if mixed.any():
      t.pin(flat_ids[:, mixed][~flat_wild[:, mixed]], f"{name} across channels {_MIXING}: those channels are kept")
  with np.errstate(invalid="ignore", over="ignore"):
    out = reduce(values, axis=-1)  # NaN (unknown) wherever any element is unknown
  return Act(out_ids.reshape(shape), np.where(np.isinf(out), np.nan, out))


def _disjoint_groups(ids: np.ndarray, wild: np.ndarray) -> tuple[list[np.ndarray], np.ndarray] | None:
  """The distinct channel sets of the columns of ``ids`` (positions, windows) and each column's set, when those sets
  split the channels into several disjoint groups (GroupNorm: each window holds one group); else None (one window
  holds them all: LayerNorm; windows overlap: channels would chain into one set; or an element of no channel)."""
  if np.any(ids[~wild] < 0):  # an element of no channel (computed from the input) mixed in: removal changes it
    return None
  masked = np.where(wild, -1, ids)
  if np.array_equal(masked, np.broadcast_to(masked[:, :1], masked.shape)):  # every window the same (LayerNorm)
    return None
  keys = np.sort(masked, axis=0)  # each column's set, sorted, duplicates blanked, sorted again
  keys[1:][keys[1:] == keys[:-1]] = -1
  keys = np.sort(keys, axis=0)
  distinct, column_set = np.unique(keys, axis=1, return_inverse=True)
  members = [col[col >= 0] for col in distinct.T]
  total = sum(len(m) for m in members)
  if len(members) < 2 or total != len(np.unique(np.concatenate(members))):
    return None
  return members, column_set.reshape(-1)


def reduce(t: Tracer, eqn, a: Act) -> Act:
  axes = tuple(eqn.params.get("axes", ()))
  name = eqn.primitive.name
  if name in ("argmax", "argmin"):
    t.pin(a.ids, f"{name} over activations")
    return Act.unknown(tuple(eqn.outvars[0].aval.shape))
  keep = [d for d in range(a.ids.ndim) if d not in axes]
  order = keep + list(axes)
  lead = [a.ids.shape[d] for d in keep]
  move = lambda x: np.transpose(x, order).reshape(lead + [-1])
  return merge_windows(t, name, move(a.ids), move(a.value), move(a.wild))


def reduce_window(t: Tracer, eqn, a: Act) -> Act:
  """Pools (``nnx.max_pool`` / ``avg_pool``, ``lax.reduce_window``): each output element merges
  its window; windows that stay inside one channel keep it; padding fits any channel."""
  p = eqn.params
  if any(d != 1 for d in p["base_dilation"]) or any(d != 1 for d in p["window_dilation"]):
    return t.opaque(eqn, [a])[0]
  name = eqn.primitive.name
  init = {"reduce_window_sum": 0.0, "reduce_window_max": -np.inf, "reduce_window_min": np.inf}[name]
  pads = [(lo, hi) for lo, hi in p["padding"]]
  ids = np.pad(a.ids, pads, constant_values=NO_NODE)
  padded = np.pad(np.zeros(a.ids.shape, bool), pads, constant_values=True)
  values = np.pad(np.where(np.isnan(a.value), np.nan, a.value), pads, constant_values=init)
  window, strides = tuple(p["window_dimensions"]), tuple(p["window_strides"])
  view = lambda x: np.lib.stride_tricks.sliding_window_view(x, window)[
      tuple(slice(None, None, s) for s in strides)].reshape(tuple(eqn.outvars[0].aval.shape) + (-1,))
  v_ids, v_padded = view(ids), view(padded)
  v_values = np.where(view(padded), init, view(values))
  wild = v_padded | ((v_ids < 0) & (v_values == 0))
  return merge_windows(t, name.replace("reduce_window_", "reduce_"), v_ids, v_values, wild)


ALONG_AXIS = {"cumsum": "axis", "cumprod": "axis", "cummax": "axis", "cummin": "axis", "cumlogsumexp": "axis",
              "sort": "dimension", "top_k": "axis"}  # ops that work along one axis, each line of it on its own


def along_axis(t: Tracer, eqn, ins: list) -> list[Act] | None:
  """Running sums / maxima, sorts and top-k along an axis the channels do not vary along (time, positions): every
  line keeps its channel, and a line that is zero throughout stays zero (cumlogsumexp: unknown). None (not
  understood) along a channel axis, or for a sort of several operands."""
  a = ins[0]
  if not isinstance(a, Act) or (eqn.primitive.name == "sort" and len(ins) != 1):
    return None
  axis = eqn.params[ALONG_AXIS[eqn.primitive.name]] % a.ids.ndim
  if a.ids.shape[axis] > 1 and np.any(np.diff(a.ids, axis=axis) != 0):
    return None
  size = eqn.outvars[0].aval.shape[axis]
  take = lambda x: np.take(x, np.arange(size), axis=axis)  # the same all along the axis: any `size` of them
  dead = np.all(a.zero, axis=axis, keepdims=True) if eqn.primitive.name != "cumlogsumexp" else False
  value = np.where(np.broadcast_to(dead, a.ids.shape), 0.0, np.nan)
  outs = [Act(take(a.ids), take(value))]
  return outs + [Act.unknown(tuple(v.aval.shape)) for v in eqn.outvars[1:]]  # top_k's indices: positions
