"""Coupled units: the kernel entries surgery removes together, from one trace of the model (docs/algorithms.md §K).

Surgery (``surgery.depgraph``) joins channels that must go together into one set: a residual-stream
channel with every block output added to it, a depthwise filter with the channel it reads, the
nodes of one attention head. A set is *removable* unless something pins it (a model output, an op
the analysis keeps, a layer that cannot be cut). ``reader_units`` and ``writer_units`` turn that
analysis into a partition of the traced kernels' entries:

* **reader side** (MobilePrune's convention): every kernel entry belongs to the unit of the channel
  it *reads*. One unit holds every reader's slice of one removable set — all convs reading a
  residual-stream channel (the projection shortcut too), the H·W dense rows of a flattened conv
  channel, a depthwise filter together with the project rows that read its output, the out
  projection's rows of one attention head. Its leaves are the members' shape groups: one tap
  (h, w, c) across a conv reader's filters, one dense row. Entries reading a channel that must
  stay (the model input, a LayerNorm'd stream, a pinned channel) form *fixed* trees, one per leaf,
  with no unit term (weight 0): only the sparse and shape terms act on them.
* **writer side** (DEGL): every entry belongs to the unit of the channel it *writes*: one unit holds
  every producer's output filter of one removable set (the expand filter and the depthwise filter
  of a MobileNet channel, every conv adding into one stream channel, a head's q/k/v columns), and the
  per-channel arrays of those channels (``writer_vectors``: biases, norm scales and shifts, position tables,
  class tokens), so a zero unit is a zero channel. Filters of channels that must stay (the classifier's outputs) are fixed, with no group term.

Units partition the entries (each entry reads, and writes, exactly one feature), so a penalty that
is a sum over units has an exact prox computed unit by unit. A unit is stored as a two-level tree
(L leaves of ≤ F entries) zero-padded into ``index`` arrays of positions in the concatenation of
the covered kernels (padding points past the end, at a zero); trees with the same number of leaves
and the same padded width (a power of two) share one ``Bucket``, so the prox compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from mobileprune_jax.surgery.graph import Graph, Layer

SIDES = ("reader", "writer")
CONV_KINDS = ("conv", "depthwise", "grouped")

__all__ = ["SIDES", "Bucket", "Units", "reader_units", "writer_units", "units_from_graph"]


@dataclasses.dataclass(frozen=True)
class Bucket:
  """Trees of one shape: ``index`` (U, L, F) positions in the flat vector of covered kernels (``pad`` = none).

  Attributes:
    index: entry positions; ``Units.size`` marks padding.
    leaf_kind: (U, L) the leaf's kind: ``ROW`` a dense row (no leaf term), ``TAP`` a conv tap across the filters
      it feeds (leaf coefficient ``shape``), ``SINGLE_TAPS`` a member's taps that each feed one filter (a
      depthwise filter): each entry is its own leaf of coefficient ``shape``, kept together as one row.
    channel: (U,) the unit term uses ``channel`` (a conv reads the unit), else ``neuron``.
    weight: (U,) the unit term's weight w_u (0: a fixed tree, no unit term).
    size: (U,) real entries per tree.
    component: (U,) the connected set of kernels the tree lies in (``Units.components``).
  """

  index: np.ndarray
  leaf_kind: np.ndarray
  channel: np.ndarray
  weight: np.ndarray
  size: np.ndarray
  component: np.ndarray


@dataclasses.dataclass(frozen=True)
class Units:
  """A partition of the covered kernels' entries into trees (removable units and fixed leaves).

  Attributes:
    side: "reader" or "writer".
    paths: the covered kernel paths, then (writer side) the per-channel vectors its units hold, in the order of the
      flat vector; ``shapes`` their shapes.
    offsets: start of each path's entries in the flat vector (``len(paths) + 1`` values).
    buckets: the trees, bucketed by shape.
    components: for each component, the kernel paths its units span (a PALM block must hold whole ones).
    units: for each removable unit, {path: sorted flat entry indices} (what tests and users inspect).
    notes: kernels left out of the units, and why.
    roots: for each removable unit, the graph node (``Graph.find``) of the channel set it is the unit of.
  """

  side: str
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  offsets: tuple[int, ...]
  buckets: tuple[Bucket, ...]
  components: tuple[tuple[str, ...], ...]
  units: tuple[dict[str, np.ndarray], ...]
  notes: tuple[str, ...] = ()
  roots: tuple[int, ...] = ()

  @property
  def size(self) -> int:
    """Entries in the flat vector (the padding position)."""
    return self.offsets[-1]


ROW, TAP, SINGLE_TAPS = 0, 1, 2  # leaf kinds (``Bucket.leaf_kind``)


def _member_slices(layer: Layer, side: str) -> list[tuple[int, np.ndarray, bool]]:
  """(feature, entries (taps, width), is_conv) for every input (reader) or output (writer) feature of ``layer``.

  Entries are flat indices into the kernel; a reader slice's rows are its leaves (one tap across the
  filters it feeds, or one dense row), a writer slice is one output filter (one leaf).
  """
  shape = layer.kernel_shape
  flat = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
  conv = layer.kind in CONV_KINDS
  out = []
  if layer.groups > 1:  # (*spatial, per_in, n_out): group g reads channels g·per_in.. and writes g·per_out..
    block = np.moveaxis(flat, (layer.in_axis, layer.out_axis), (-2, -1))
    per_in, n_out = block.shape[-2], block.shape[-1]
    per_out = n_out // layer.groups
    block = block.reshape(-1, per_in, n_out)  # (taps, per_in, n_out)
    if side == "reader":
      for c in range(layer.n_in):
        g, j = divmod(c, per_in)
        out.append((c, block[:, j, g * per_out:(g + 1) * per_out], conv))
    else:
      for f in range(n_out):
        out.append((f, block[:, :, f].reshape(1, -1), conv))
    return out
  io = np.moveaxis(flat, layer.in_axes + layer.out_axes, range(len(layer.in_axes) + len(layer.out_axes)))
  io = io.reshape(layer.n_in, layer.n_out, -1)  # (n_in, n_out, taps)
  if side == "reader":
    return [(i, io[i].T, conv) for i in range(layer.n_in)]
  return [(f, io[:, f, :].reshape(1, -1), conv) for f in range(layer.n_out)]


def fixed_roots(graph: Graph) -> set[int]:
  """Roots of the channel sets that must stay: pinned, or made or read by a layer that cannot be cut."""
  fixed = {graph.find(n) for n in graph.pinned}
  for layer in graph.layers:
    if not layer.sliceable:
      fixed.update(graph.find(int(n)) for n in layer.out_nodes)
      fixed.update(graph.find(int(n)) for n in layer.in_nodes if n >= 0)
  return fixed


def _partitioning_use(graph: Graph, path: str, side: str, fixed: set[int]) -> Layer:
  """The use of kernel ``path`` that partitions it: the first whose ``side`` features include a removable one (a tied
  table's head reads the stream, its lookup reads token ids), else the first use."""
  uses = [layer for layer in graph.layers if layer.kernel_path == path]
  for layer in uses:
    nodes = layer.in_nodes if side == "reader" else layer.out_nodes
    if layer.sliceable and any(int(n) >= 0 and graph.find(int(n)) not in fixed for n in nodes):
      return layer
  return uses[0]


def _bucket_width(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def units_from_graph(graph: Graph, kernel_shapes: dict[str, tuple[int, ...]], covered: Sequence[str],
                     side: str = "reader") -> Units:
  """The units of the layers whose kernels are in ``covered`` (paths of plain parameters; others are skipped).

  Args:
    graph: the model's channel graph (``surgery.depgraph.trace``).
    kernel_shapes: shape of every parameter by path.
    covered: kernel paths to partition (e.g. the penalised ones); a kernel several layers use is partitioned
      once, by its first use that reads (``side="reader"``) or writes a removable feature, else its first use (the
      trace joined its uses' features: ``surgery.depgraph.join_shared_kernels``).
    side: "reader" (MobilePrune, group lasso, ℓ1-SGL) or "writer" (DEGL/EGL).
  """
  if side not in SIDES:
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")
  wanted = set(covered)
  fixed = fixed_roots(graph)
  layers, seen, notes = [], set(), []
  for layer in graph.layers:
    path = layer.kernel_path
    if path not in wanted or path in seen:
      continue
    if tuple(kernel_shapes.get(path, ())) != tuple(layer.kernel_shape):
      notes.append(f"{path}: traced with shape {layer.kernel_shape}, stored as {kernel_shapes.get(path)}: per-layer "
                   "groups")
      continue
    seen.add(path)
    layers.append(_partitioning_use(graph, path, side, fixed))
  paths = tuple(layer.kernel_path for layer in layers)
  offsets = np.concatenate([[0], np.cumsum([math.prod(layer.kernel_shape) for layer in layers])]).astype(np.int64)

  by_root: dict[int, list[tuple[int, np.ndarray, bool]]] = defaultdict(list)  # root -> [(layer, entries, conv)]
  fixed_leaves: list[tuple[int, np.ndarray, bool]] = []
  for k, layer in enumerate(layers):
    nodes = layer.in_nodes if side == "reader" else layer.out_nodes
    for feature, entries, conv in _member_slices(layer, side):
      node = int(nodes[feature])
      movable = layer.sliceable and node >= 0
      root = graph.find(node) if node >= 0 else -1
      if movable and root not in fixed:
        by_root[root].append((k, entries + offsets[k], conv))
      else:
        fixed_leaves.extend((k, row[None] + offsets[k], conv) for row in entries)

  attached = writer_vectors(graph, kernel_shapes, set(by_root), set(paths)) if side == "writer" else {}
  vector_paths = tuple(sorted(attached))
  paths += vector_paths
  offsets = np.concatenate([offsets, offsets[-1] + np.cumsum([math.prod(kernel_shapes[p]) for p in vector_paths])
                            ]).astype(np.int64)
  extra: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)  # root -> [(path index, entries)]
  for j, path in enumerate(vector_paths):
    k = len(layers) + j
    for root in np.unique(attached[path]):
      extra[int(root)].append((k, np.flatnonzero(attached[path] == root)))

  trees = []  # (leaves (list of 1-D arrays), leaf_kind flags, channel, weight, layers)
  unit_entries = []
  for root in sorted(by_root):
    members = by_root[root] + [(k, e[None] + offsets[k], False) for k, e in extra.get(root, [])]
    leaves, taps = [], []
    for k, e, conv in members:
      if k >= len(layers):  # a bias / norm entry of a writer unit: with its first filter (one leaf, no padding)
        leaves[0] = np.concatenate([leaves[0], e.ravel()])
      elif conv and side == "reader" and e.shape[1] == 1 and e.shape[0] > 1:  # one-entry taps: one row, not k² leaves
        leaves.append(e.ravel())
        taps.append(SINGLE_TAPS)
      else:
        leaves.extend(e)
        taps.extend([TAP if conv and side == "reader" else ROW] * len(e))
    weight = math.sqrt(len(members)) if side == "reader" else 1.0
    trees.append((leaves, taps, any(c for _, _, c in members), weight, {k for k, _, _ in members}))
    entries = defaultdict(list)
    for k, e, _ in members:
      entries[paths[k]].append(e.ravel() - offsets[k])
    unit_entries.append({p: np.sort(np.concatenate(v)) for p, v in entries.items()})
  for k, e, conv in fixed_leaves:
    trees.append(([e[0]], [TAP if conv and side == "reader" else ROW], conv, 0.0, {k}))

  component = _components(len(paths), [t[4] for t in trees])
  buckets = _bucket(trees, component, int(offsets[-1]))
  comps: list[list[str]] = [[] for _ in set(component)]
  for k, c in enumerate(component):
    comps[c].append(paths[k])
  shapes = tuple(tuple(layer.kernel_shape) for layer in layers) + tuple(tuple(kernel_shapes[p]) for p in vector_paths)
  return Units(side, paths, shapes, tuple(int(o) for o in offsets),
               buckets, tuple(tuple(v) for v in comps), tuple(unit_entries), tuple(notes), tuple(sorted(by_root)))


VECTOR_OPS = {"add", "add_any", "sub", "mul", "concatenate"}  # how a bias, a norm's shift or scale, a position
# table or a class token joined before the patches meets its channels


def writer_vectors(graph: Graph, kernel_shapes: dict[str, tuple[int, ...]], unit_roots: set[int],
                   kernels: set[str]) -> dict[str, np.ndarray]:
  """Per-channel parameters that join writer units: {path: unit root of each entry}.

  A layer's bias, a normalisation's scale and shift, a position table, a class token concatenated to the patches:
  arrays (not kernels) only ever added to, multiplying or joined to channels, each entry always the same channel,
  every one of them a writer unit's. With them in the unit, a zero unit makes its channel exactly zero, so surgery
  removes it; with the filters alone the channel would stay at its bias.
  """
  out = {}
  for path, pairs in graph.attachments.items():
    ops = graph.attach_ops.get(path, set())
    if path in kernels or path not in kernel_shapes or not ops or not ops <= VECTOR_OPS:
      continue
    roots = np.full(math.prod(kernel_shapes[path]), -1, np.int64)
    consistent = bool(pairs)
    for idx, nodes in pairs:
      r = np.array([graph.find(int(n)) if n >= 0 else -2 for n in np.ravel(nodes)], np.int64)
      idx = np.ravel(idx)
      pairs_seen = np.unique(np.stack([idx, r]), axis=1)
      consistent &= len(np.unique(pairs_seen[0])) == pairs_seen.shape[1]  # one channel per entry within a use
      consistent &= bool(np.all((roots[idx] == -1) | (roots[idx] == r)))  # and across uses
      roots[idx] = r
    if consistent and np.all(np.isin(roots, list(unit_roots))):
      out[path] = roots
  return out


def _components(n_layers: int, tree_layers: list[set[int]]) -> list[int]:
  """Component id of each layer: layers sharing a unit are connected."""
  parent = list(range(n_layers))

  def find(a):
    while parent[a] != a:
      parent[a] = parent[parent[a]]
      a = parent[a]
    return a

  for ks in tree_layers:
    ks = sorted(ks)
    for k in ks[1:]:
      ra, rb = find(ks[0]), find(k)
      if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)
  roots = [find(k) for k in range(n_layers)]
  dense = {r: i for i, r in enumerate(sorted(set(roots)))}
  return [dense[r] for r in roots]  # 0..n-1, in order of each component's first layer


def _bucket(trees, component: list[int], pad: int) -> tuple[Bucket, ...]:
  groups = defaultdict(list)
  for tree in trees:
    leaves = tree[0]
    groups[(len(leaves), _bucket_width(max(len(leaf) for leaf in leaves)))].append(tree)
  buckets = []
  for (n_leaves, width), members in sorted(groups.items()):
    index = np.full((len(members), n_leaves, width), pad, np.int32 if pad < 2**31 - 1 else np.int64)
    for u, (leaves, *_rest) in enumerate(members):
      for i, leaf in enumerate(leaves):
        index[u, i, :len(leaf)] = leaf
    buckets.append(Bucket(
        index=index,
        leaf_kind=np.array([t[1] for t in members], np.int8).reshape(len(members), n_leaves),
        channel=np.array([t[2] for t in members], bool),
        weight=np.array([t[3] for t in members], np.float64),
        size=np.array([sum(len(leaf) for leaf in t[0]) for t in members], np.int64),
        component=np.array([component[min(t[4])] for t in members], np.int64)))
  return tuple(buckets)


def reader_units(graph: Graph, kernel_shapes: dict[str, tuple[int, ...]], covered: Sequence[str]) -> Units:
  """Reader-side units (MobilePrune's convention through the couplings); see the module."""
  return units_from_graph(graph, kernel_shapes, covered, "reader")


def writer_units(graph: Graph, kernel_shapes: dict[str, tuple[int, ...]], covered: Sequence[str]) -> Units:
  """Writer-side units (DEGL's output filters, joined across the couplings); see the module."""
  return units_from_graph(graph, kernel_shapes, covered, "writer")
