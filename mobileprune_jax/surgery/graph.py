"""The result of the channel analysis: layers, channel nodes, their coupling (union-find).

A *node* is one output channel / unit / feature of a producer (a conv, a dense or
``LinearGeneral`` layer). Nodes joined by an op that needs them to stay aligned (a residual
add, an attention head's q/k/v/output, a depthwise filter and the channel it reads) are one
*group* in the union-find; a group is removed or kept as a whole.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

NO_NODE = -1


@dataclasses.dataclass
class Layer:
  """A conv, dense (incl. ``LinearGeneral``) or depthwise conv layer found in the trace.

  Attributes:
    kind: "conv", "dense", "depthwise" (``feature_group_count`` = channels, one filter each),
      "grouped" (``feature_group_count`` = ``groups``, several channels per group) or "embedding"
      (a table lookup: rows are tokens with no node, columns the channels it writes).
    kernel_path: parameter path of the kernel.
    in_axes / out_axes: the kernel axes of input and output features (several for a
      ``LinearGeneral`` kernel such as attention's (in, heads, head_dim)); a depthwise kernel
      (*spatial, 1, C) has ``in_axes == out_axes``: channel c is read by filter c only.
    in_nodes: node of each input feature (flattened over ``in_axes``; per channel for a conv;
      a flattened NHWC map gives each channel's node at every position).
    out_nodes: the node of each output feature (flattened over ``out_axes``).
    out_spatial: number of output positions per example (H·W for 2-D conv, 1 for dense).
    kernel_shape: shape of the kernel parameter.
    sliceable: False if nothing can be cut here (a computed kernel, a grouped conv).
    nz: (n_in, n_out) booleans: some weight from input feature i to output f is non-zero.
    in_zero: (n_in,) booleans: input feature i is identically zero where this layer reads it.
    groups: ``feature_group_count`` of a grouped / depthwise conv (``in_nodes`` then lists every
      input channel, the kernel's input axis one group's).
  """

  kind: str
  kernel_path: str
  in_axes: tuple[int, ...]
  out_axes: tuple[int, ...]
  in_nodes: np.ndarray
  out_nodes: np.ndarray
  out_spatial: int
  kernel_shape: tuple[int, ...]
  sliceable: bool = True
  nz: np.ndarray | None = None
  in_zero: np.ndarray | None = None
  groups: int = 1

  @property
  def in_axis(self) -> int:
    """The input-feature axis of a single-axis kernel."""
    return self.in_axes[0]

  @property
  def out_axis(self) -> int:
    """The output-feature axis of a single-axis kernel."""
    return self.out_axes[0]

  @property
  def n_in(self) -> int:
    return len(self.in_nodes)

  @property
  def n_out(self) -> int:
    return len(self.out_nodes)

  def by_output(self, kernel: np.ndarray) -> np.ndarray:
    """The kernel as (everything else, n_out): column f = every weight of output feature f."""
    moved = np.moveaxis(kernel, self.out_axes, range(kernel.ndim - len(self.out_axes), kernel.ndim))
    return moved.reshape(-1, self.n_out)

  def io(self, kernel: np.ndarray) -> np.ndarray:
    """The kernel as (n_in, n_out, taps); a grouped kernel is block-diagonal (0 across groups)."""
    if self.groups > 1:
      block = np.moveaxis(kernel, (self.in_axis, self.out_axis), (0, 1))
      per_in, per_out = block.shape[0], self.n_out // self.groups
      block = block.reshape(per_in, self.n_out, -1)
      out = np.zeros((self.n_in, self.n_out, block.shape[2]), kernel.dtype)
      for g in range(self.groups):
        out[g * per_in:(g + 1) * per_in, g * per_out:(g + 1) * per_out] = block[:, g * per_out:(g + 1) * per_out]
      return out
    moved = np.moveaxis(kernel, self.in_axes + self.out_axes, range(len(self.in_axes) + len(self.out_axes)))
    return moved.reshape(self.n_in, self.n_out, -1)

  def _masked(self, kernel: np.ndarray, axes: tuple[int, ...], dead: np.ndarray) -> np.ndarray:
    mask = np.asarray(dead, bool).reshape([kernel.shape[a] for a in axes])
    mask = np.transpose(mask, np.argsort(axes))  # to increasing axis order
    full = [1] * kernel.ndim
    for a in axes:
      full[a] = kernel.shape[a]
    return np.where(mask.reshape(full), np.zeros_like(kernel), kernel)

  def zero_outputs(self, kernel: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """``kernel`` with every weight of the ``dead`` output features set to 0."""
    return self._masked(kernel, self.out_axes, dead)

  def zero_inputs(self, kernel: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """``kernel`` with every weight reading the ``dead`` input features set to 0."""
    if self.groups > 1:
      if self.kind != "depthwise" and np.any(dead):
        raise ValueError(f"{self.kernel_path}: inputs of a grouped conv go with their whole group")
      return self._masked(kernel, self.out_axes, dead) if self.kind == "depthwise" else kernel
    return self._masked(kernel, self.in_axes, dead)

  def cuts(self, in_keep: list[int], out_keep: list[int]) -> list[tuple[int, list[int]]] | None:
    """Per-axis kept indices for these kept input/output features; None if they are not a
    product of per-axis index sets (then the kernel cannot be sliced to them)."""
    pairs = [(self.out_axes, out_keep)]
    if self.groups == 1:  # a grouped kernel's input axis is one group's channels: it keeps its size
      pairs.append((self.in_axes, in_keep))
    out = []
    for axes, keep in pairs:
      per_axis = product_indices([self.kernel_shape[a] for a in axes], keep)
      if per_axis is None:
        return None
      out += [(a, k) for a, k in zip(axes, per_axis) if len(k) < self.kernel_shape[a]]
    return out


def product_indices(shape: list[int], flat_keep: list[int]) -> list[list[int]] | None:
  """Per-axis index lists whose product is exactly ``flat_keep`` (row-major), or None."""
  if not shape:
    return []
  keep = np.zeros(math.prod(shape), bool)
  keep[np.asarray(flat_keep, np.int64)] = True
  keep = keep.reshape(shape)
  per_axis = [np.flatnonzero(np.any(np.moveaxis(keep, a, 0).reshape(shape[a], -1), axis=1)).tolist()
              for a in range(len(shape))]
  product = np.zeros(shape, bool)
  product[np.ix_(*per_axis)] = True
  return per_axis if np.array_equal(product, keep) else None


class UnionFind:
  """Disjoint sets over node ids 0..n-1 (path halving; the smaller id is the root)."""

  def __init__(self, parent: list[int] | None = None):
    self.parent: list[int] = parent if parent is not None else []

  def add(self, n: int) -> np.ndarray:
    start = len(self.parent)
    self.parent.extend(range(start, start + n))
    return np.arange(start, start + n, dtype=np.int64)

  def find(self, n: int) -> int:
    while self.parent[n] != n:
      self.parent[n] = self.parent[self.parent[n]]
      n = self.parent[n]
    return n

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      self.parent[max(ra, rb)] = min(ra, rb)


@dataclasses.dataclass
class Graph:
  """Result of the analysis."""

  layers: list[Layer]
  parent: list[int]  # union-find over nodes
  pinned: set[int]
  node_layer: dict[int, int]  # node -> index of the layer that produces it
  attachments: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # path -> [(param flat idx, node)]
  notes: list[str]
  param_paths: list[str]
  output_shapes: list[tuple[int, ...]]
  # node -> the op whose static shape parameters it passes through (a reshape that splits or merges the axis it
  # varies along, a slice or split of that axis, a pad of it): the model's code recomputes those shapes for the
  # shrunk model, so ``shrink`` keeps these channels if the plan that cuts them does not rebuild an equal model
  shape_sites: dict[int, str] = dataclasses.field(default_factory=dict)
  attach_ops: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # attached path -> element-wise ops
  shape_site_groups: list[np.ndarray] = dataclasses.field(default_factory=list)  # the site nodes of each op

  def find(self, n: int) -> int:
    return self._sets.find(n)

  def __post_init__(self) -> None:
    self._sets = UnionFind(self.parent)  # shares the parent list
