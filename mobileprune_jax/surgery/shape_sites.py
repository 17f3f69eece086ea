"""Where a model's code fixes shapes that a cut changes: the axes a reshape, slice, split or pad acts on.

The shrunk model runs the same Python code on smaller arrays, so every static shape parameter of the traced
forward pass is computed again. ``reshape(n, -1)`` and ``jnp.split(x, 2)`` adapt; ``reshape(n, h, w, 2, c // 2)``
(a channel shuffle) adapts only if both halves keep matching channels, and ``x[..., :8]`` never does. The tracer
records the channel nodes that vary along such an axis; ``shrink`` keeps them when the plan that cuts them does
not rebuild a model with equal outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def reshaped_axes(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
  """Input axes a reshape splits or merges (not carried over whole; axes of size 1 are ignored).

  Axes are matched left to right by their running products (row-major), e.g. (n, 4, 4, 50) -> (n, 800): [1, 2, 3];
  (n, 16) -> (n, 2, 8): [1]; (n, 1, 16) -> (n, 16): [].
  """
  if 0 in in_shape or 0 in out_shape:
    return []
  dims_in = [(i, d) for i, d in enumerate(in_shape) if d != 1]
  dims_out = [d for d in out_shape if d != 1]
  changed: list[int] = []
  i = j = 0
  while i < len(dims_in) and j < len(dims_out):
    if dims_in[i][1] == dims_out[j]:
      i, j = i + 1, j + 1
      continue
    group, p_in, p_out = [dims_in[i][0]], dims_in[i][1], dims_out[j]
    i, j = i + 1, j + 1
    while p_in != p_out:
      if p_in < p_out:
        group.append(dims_in[i][0])
        p_in *= dims_in[i][1]
        i += 1
      else:
        p_out *= dims_out[j]
        j += 1
    changed.extend(group)
  return changed


def sliced_axes(in_shape: tuple[int, ...], params: dict[str, Any]) -> list[int]:
  """Axes a ``lax.slice`` does not take whole."""
  strides = params.get("strides") or (1,) * len(in_shape)
  return [d for d, (n, lo, hi, st) in enumerate(zip(in_shape, params["start_indices"], params["limit_indices"], strides))
          if lo != 0 or hi != n or st != 1]


def varying_nodes(ids: np.ndarray, axes: Sequence[int]) -> np.ndarray:
  """The nodes (≥ 0) of ``ids`` at positions whose node changes along ``axes`` (the other axes held fixed)."""
  axes = sorted(set(axes))
  if not axes or ids.size == 0:
    return np.zeros(0, np.int64)
  n = int(np.prod([ids.shape[a] for a in axes]))
  rows = np.moveaxis(ids, axes, range(ids.ndim - len(axes), ids.ndim)).reshape(-1, n)
  varies = np.any(rows != rows[:, :1], axis=1)
  nodes = rows[varies]
  return np.unique(nodes[nodes >= 0])
