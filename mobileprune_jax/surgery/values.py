"""The values the tracer propagates: ``Const`` (known without the input, with the parameter entries it came
from) and ``Act`` (input-dependent: a channel node per element), and helpers the op handlers share."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mobileprune_jax.surgery.graph import NO_NODE


@dataclasses.dataclass
class Const:
  """A value known without the input; ``origin[path]`` = flat index into that parameter (or -1); ``mixed``: the
  variables whose values entered it through an op that is not entry by entry (a norm, a mean, a matrix product),
  e.g. a standardised kernel (w − mean w) / std w, or w / σ(w, u) under spectral norm."""

  value: np.ndarray
  origin: dict[str, np.ndarray]
  mixed: frozenset[str] = frozenset()


@dataclasses.dataclass
class Act:
  """An input-dependent value: per element, its channel node id and its constant value (NaN if
  it depends on the input)."""

  ids: np.ndarray
  value: np.ndarray
  spread: frozenset[int] = frozenset()  # axes along which the value is a broadcast copy (the same for every index)

  @classmethod
  def of_zero(cls, ids: np.ndarray, zero: np.ndarray) -> Act:
    return cls(ids, np.where(zero, 0.0, np.nan))

  @classmethod
  def unknown(cls, shape: tuple[int, ...]) -> Act:
    return cls(np.full(shape, NO_NODE, np.int64), np.full(shape, np.nan))

  @property
  def zero(self) -> np.ndarray:
    """Elements that are exactly zero for every input."""
    return self.value == 0

  @property
  def known(self) -> np.ndarray:
    return ~np.isnan(self.value)

  @property
  def wild(self) -> np.ndarray:
    """Elements that belong to no channel and are always zero (they fit any channel)."""
    return (self.ids < 0) & self.zero


def spread_axes(in_shape: tuple[int, ...], out_shape: tuple[int, ...], dims: tuple[int, ...],
                old: frozenset[int] = frozenset()) -> frozenset[int]:
  """Axes of a broadcast's output along which it copies its operand (input axis i lands on output axis dims[i]):
  new axes, size-1 axes stretched, and axes the operand already copied along."""
  kept = {d: i for i, d in enumerate(dims)}
  return frozenset(d for d in range(len(out_shape)) if out_shape[d] > 1 and (
      d not in kept or (in_shape[kept[d]] == 1) or kept[d] in old))


def carried_spread(name: str, params: dict[str, Any], in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                   spread: frozenset[int]) -> frozenset[int]:
  """The copy axes (``Act.spread``) of a transpose, reshape, squeeze, expand_dims, slice, rev or tile's output: a copy
  axis stays one where the op carries it over whole (a reshape that only adds or drops size-1 axes around it)."""
  if not spread:
    return frozenset()
  if name == "transpose":
    return frozenset(i for i, d in enumerate(params["permutation"]) if d in spread)
  if name in ("slice", "rev", "tile"):
    return frozenset(d for d in spread if out_shape[d] > 1)
  if name not in ("reshape", "squeeze", "expand_dims"):
    return frozenset()
  dims_in = [(i, n) for i, n in enumerate(in_shape) if n != 1]
  dims_out = [(j, n) for j, n in enumerate(out_shape) if n != 1]
  if [n for _, n in dims_in] != [n for _, n in dims_out]:  # axes split or merged: keep only what is certain
    return frozenset()
  return frozenset(j for (i, _), (j, _) in zip(dims_in, dims_out) if i in spread)


def operands_spread(operands: Sequence[Any], shape: tuple[int, ...]) -> frozenset[int]:
  """The copy axes of an element-wise op's output of ``shape``: the axes along which every operand (an ``Act``, or a
  ``Const`` broadcast to ``shape`` numpy-style) is a copy. A constant holding parameter entries counts only where it
  has size 1: a parameter with a length along the axis is cut with what the axis holds, even if its entries happen
  to be equal (RMSNorm's scale at its initial ones); one the code computes (a broadcast literal) where its values
  are equal along the axis."""
  common = {d for d in range(len(shape)) if shape[d] > 1}
  for x in operands:
    own = np.shape(x.ids if isinstance(x, Act) else x.value)
    pad = len(shape) - len(own)
    for d in list(common):
      k = d - pad
      if k < 0 or own[k] == 1:
        continue
      if isinstance(x, Act):
        copy = k in x.spread
      else:
        copy = not any(np.any(idx >= 0) for idx in x.origin.values()) and _equal_along(np.asarray(x.value), k)
      if not copy:
        common.discard(d)
  return frozenset(common)


def _equal_along(value: np.ndarray, axis: int) -> bool:
  """Whether ``value`` is the same at every index along ``axis`` (one pass when it is one number throughout)."""
  if value.size == 0 or value.strides[axis] == 0 or value.min() == value.max():
    return True
  return bool(np.all(value == np.take(value, [0], axis)))


def host(value: Any) -> Any:
  """numpy copy of an array; PRNG key arrays (e.g. Dropout's rngs) stay as they are."""
  if hasattr(value, "dtype") and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
    return value
  return np.asarray(value)


def uniform_nodes(ids: np.ndarray, wild: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per column of (positions, features) arrays: its node if every non-wildcard element has
  the same id (``NO_NODE`` if all are wildcards), and whether that holds."""
  big = np.iinfo(np.int64).max
  hi = np.where(wild, -2, ids).max(axis=0, initial=-2)
  lo = np.where(wild, big, ids).min(axis=0, initial=big)
  all_wild = np.all(wild, axis=0)
  same = all_wild | (hi == lo)
  return np.where(all_wild | ~same, NO_NODE, hi), same


def set_zero(value: np.ndarray, zero: np.ndarray) -> np.ndarray:
  """``value`` with the ``zero`` elements set to 0 (``value`` itself when there are none)."""
  return np.where(zero, 0.0, value) if zero.any() else value


def meeting(idx: np.ndarray, ids: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """``idx`` and ``ids`` broadcast against each other within ``shape``, without the axes along which ``idx`` is
  broadcast and ``ids`` does not change (a channel vector meeting an activation: one position stands for all)."""
  aligned = (1,) * (len(shape) - np.ndim(idx)) + np.shape(idx)
  ids = np.broadcast_to(ids, shape)
  axes = [d for d in range(len(shape)) if aligned[d] == 1 and shape[d] > 1]
  if axes:
    first = ids[tuple(slice(0, 1) if d in axes else slice(None) for d in range(len(shape)))]
    if np.array_equal(ids, np.broadcast_to(first, shape)):
      ids = first
  return np.broadcast_to(np.reshape(idx, aligned), ids.shape), ids


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The distinct pairs (a[i], b[i]) of two non-negative integer arrays."""
  width = int(b.max()) + 1
  key = np.unique(a.astype(np.int64) * width + b)
  return key // width, key % width
