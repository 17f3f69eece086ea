"""Channels the tracer must keep because of what they meet element-wise (``surgery.tracer``): a zero-padded
channel, a value with no channel, an array written into the code that a cut would shorten."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mobileprune_jax.surgery.graph import NO_NODE
from mobileprune_jax.surgery.values import Act, Const

if TYPE_CHECKING:
  from mobileprune_jax.surgery.tracer import Tracer


def unpartnered(t: Tracer, a: Act, b: Act) -> None:
  """Pins channels of one operand that meet only wildcards (e.g. a zero-padded channel) in the
  other: the other side's channel count cannot shrink with them."""
  for x, y in ((a, b), (b, a)):
    nodes = np.unique(x.ids[x.ids >= 0])
    met = np.unique(x.ids[(x.ids >= 0) & ~y.wild])
    lonely = np.setdiff1d(nodes, met)
    if len(lonely):
      t.pin(lonely, "channels added to a zero-padded channel (e.g. a ResNet option-A shortcut) are kept")


def met_by_opaque(t: Tracer, acts: list[Act]) -> None:
  """Pins channels that meet, element for element, values with no channel in another operand of an element-wise
  op: the output of an op the trace does not understand, or a known non-zero value (e.g. RMSNorm's
  rsqrt(mean(x²) + eps)·scale when x is all zero: the scale's channels are no node's). That operand cannot be
  sliced with them."""
  for i, x in enumerate(acts):
    met = np.zeros(x.ids.shape, bool)
    channel_axes = {d for d in range(x.ids.ndim) if np.any(np.diff(x.ids, axis=d) != 0)}
    for j, y in enumerate(acts):
      if j != i and not channel_axes <= y.spread:  # a value copied along x's channel axes (an input mask
        met |= (y.ids < 0) & ~y.wild  # broadcast over features) is the same for every channel: cut along
    met &= x.ids >= 0
    if met.any():
      t.pin(np.unique(x.ids[met]), "channels combined element-wise with a value of no channel (a statistic over "
            "all channels, as LayerNorm's, or the output of an op the trace does not understand, e.g. an embedding "
            "lookup) are kept")


def met_by_fixed_array(t: Tracer, const: Const, act: Act, shape: tuple[int, ...]) -> None:
  """Records the channels an array written into the code (no parameter origin, e.g. a numpy constant) meets along
  axes where both vary: its length there is fixed, so a cut along them is not possible (decided once every set is
  joined, ``cut_along_fixed_arrays``)."""
  value = np.asarray(const.value)
  fixed = np.ones(value.shape, bool)
  for idx in const.origin.values():
    fixed &= idx < 0
  if value.ndim == 0 or not fixed.any():
    return
  ids = np.broadcast_to(act.ids, shape)
  aligned = (1,) * (len(shape) - value.ndim) + value.shape
  channel_axes = [d for d in range(len(shape)) if aligned[d] > 1 and np.any(np.diff(ids, axis=d) != 0)]
  if channel_axes:
    met = np.broadcast_to(fixed.reshape(aligned), shape) & (ids >= 0)
    t.fixed_array_sites.append((np.where(met, ids, NO_NODE), channel_axes))


def cut_along_fixed_arrays(t: Tracer) -> None:
  """Once every set is joined: pins the sets a cut would shrink along an axis that an array written into the
  code varies along (``met_by_fixed_array``). A set is cut along an axis where it holds only part of a line;
  one that holds whole lines along it is cut along another (a head of (…, heads, head_dim) activations that
  meet RoPE's sin/cos tables over head_dim: the tables keep their length)."""
  for ids, axes in t.fixed_array_sites:
    nodes, inverse = np.unique(ids, return_inverse=True)  # one find per node, not per element
    roots = np.array([t.sets.find(int(n)) if n >= 0 else NO_NODE for n in nodes], np.int64)[inverse].reshape(ids.shape)
    for axis in axes:
      lines = np.moveaxis(roots, axis, -1).reshape(-1, roots.shape[axis])
      partial = lines[np.any(lines != lines[:, :1], axis=1)]
      t.pin(np.unique(partial), "channels combined with an array written into the code are kept")
