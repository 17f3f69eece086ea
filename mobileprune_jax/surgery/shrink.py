"""Physically remove dead channels and neurons: plan from the channel graph, then rebuild.

A channel group (channels joined by residual adds, see ``trace``) is removed iff

* nothing pins it (model outputs, ops the analysis does not understand, pad-made channels,
  kernels that are not plain parameters), and
* every read of every channel in it is exact to drop: the weights reading it are all zero,
  or the channel is identically zero where it is read (zero filter, zero bias, zero
  BatchNorm shift, ...).

Everything that can go goes: producer kernels lose output filters/units, consumer kernels
lose the input channels/rows they read, and vectors attached to the channels (biases,
BatchNorm scale/bias/mean/var) lose the entries. The rebuilt module is a deep copy of the
input with smaller arrays (and updated ``in_features``/``out_features``/``num_features``);
the input module is untouched. Its outputs are checked against the original's.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import tree_arrays
from mobileprune_jax.groups import path_to_str
from mobileprune_jax.nnx_only import SHRINK_ROUTE, require_nnx
from mobileprune_jax.surgery import depgraph, rounding
from mobileprune_jax.surgery.graph import product_indices
from mobileprune_jax.surgery.parity import max_output_diff, parity_failure

Cuts = dict[str, list[tuple[int, list[int]]]]  # param path -> [(axis, kept indices), ...]


@dataclasses.dataclass
class LayerChange:
  """How one conv/dense layer changed."""

  path: str
  kind: str
  in_before: int
  in_after: int
  out_before: int
  out_after: int
  kept_dead: dict[str, int]  # reason -> number of output channels kept although never read

  def __str__(self) -> str:
    why = "; ".join(f"{n} kept: {r}" for r, n in self.kept_dead.items())
    return (f"{self.path:40s} {self.kind:5s} in {self.in_before:>6} -> {self.in_after:<6} "
            f"out {self.out_before:>6} -> {self.out_after:<6}" + (f"  ({why})" if why else ""))


@dataclasses.dataclass
class ShrinkReport:
  """What ``shrink`` did: per-layer widths, what stayed and why, and the parity it measured."""

  layers: list[LayerChange]
  notes: list[str]
  cuts: Cuts
  params_before: int = 0
  params_after: int = 0
  max_abs_diff: float = float("nan")
  kept_shape_sites: int = 0  # channels kept because the model's code fixes a shape they pass through or computes
  # the kernel of a layer they enter or leave (``Graph.shape_sites``)

  def __str__(self) -> str:
    lines = [str(layer) for layer in self.layers]
    lines.append(f"params {self.params_before:,} -> {self.params_after:,}; max |output diff| {self.max_abs_diff:.2e}")
    lines += [f"note: {n}" for n in self.notes]
    return "\n".join(lines)

  def to_json(self) -> dict[str, Any]:
    return {
        "layers": [dataclasses.asdict(layer) for layer in self.layers],
        "notes": self.notes,
        "params_before": self.params_before,
        "params_after": self.params_after,
        "max_abs_diff": self.max_abs_diff,
        "kept_shape_sites": self.kept_shape_sites,
    }


def _decide(graph: depgraph.Graph, extra_pinned: set[int],
            placeholders: frozenset[int] = frozenset()) -> tuple[set[int], dict[int, str]]:
  """Removed nodes, and for every kept root the reason it stayed.

  A fixpoint: a channel is read only by the weights of output channels that stay, so
  removing a layer's dead outputs can free its inputs; iterate until nothing changes.
  ``placeholders`` are dead channels kept only so that a layer keeps a width of one: nothing
  reads them, so what they read does not count.
  """
  n = len(graph.parent)
  fixed: dict[int, str] = {}
  for node in graph.pinned | extra_pinned:
    fixed.setdefault(graph.find(node), "pinned (model output, pad, or an op the analysis keeps)")
  for node in range(n):
    layer = graph.node_layer.get(node)
    if layer is not None and not graph.layers[layer].sliceable:
      fixed.setdefault(graph.find(node), "its layer cannot be cut")
  removed: set[int] = set()
  while True:
    reason = dict(fixed)
    for layer in graph.layers:
      if layer.nz is None or layer.groups > 1:  # a grouped / depthwise filter reads its own unit only
        continue
      out_alive = np.array([int(f) not in removed and int(f) not in placeholders for f in layer.out_nodes], bool)
      live = np.any(layer.nz[:, out_alive], axis=1) & ~layer.in_zero
      for node in np.unique(layer.in_nodes[live & (layer.in_nodes >= 0)]).tolist():
        reason.setdefault(graph.find(node), "read by non-zero weights")
    now = {node for node in range(n) if graph.find(node) not in reason}
    if now == removed:
      return removed, reason
    removed = now


def _attachment_cuts(graph: depgraph.Graph, removed: set[int], shapes: dict[str, tuple[int, ...]]):
  """Entries of attached parameters to drop; and nodes that must be kept (the entries to drop
  are not whole slices along one axis of a multi-dimensional parameter)."""
  cuts: Cuts = {}
  bad_nodes: set[int] = set()
  for path, pairs in graph.attachments.items():
    idx = np.concatenate([p[0] for p in pairs])
    nodes = np.concatenate([p[1] for p in pairs])
    shape = shapes[path]
    size = int(np.prod(shape))
    linked_keep = np.zeros(size, bool)
    linked = np.zeros(size, bool)
    linked[idx] = True
    keep_mask = ~np.isin(nodes, np.fromiter(removed, np.int64, len(removed)))
    np.logical_or.at(linked_keep, idx, keep_mask)
    drop = linked & ~linked_keep
    if not drop.any():
      continue
    per_axis = product_indices(list(shape), np.flatnonzero(~drop).tolist()) if len(shape) else None
    if per_axis is None:
      bad_nodes.update(int(n) for n in nodes[np.isin(idx, np.flatnonzero(drop))])
      continue
    cuts[path] = [(axis, keep) for axis, keep in enumerate(per_axis) if len(keep) < shape[axis]]
  return cuts, bad_nodes


def _kept(layer: depgraph.Layer, removed: set[int]) -> tuple[list[int], list[int]]:
  out_keep = [f for f, node in enumerate(layer.out_nodes.tolist()) if node not in removed]
  in_keep = [i for i, node in enumerate(layer.in_nodes.tolist()) if node < 0 or node not in removed]
  return in_keep, out_keep


def plan(model: nnx.Module, sample_input: Any, graph: depgraph.Graph | None = None,
         round_to: int = 1, keep: frozenset[int] = frozenset()) -> ShrinkReport:
  """Decides what to cut (without building anything).

  ``round_to`` > 1 keeps every cut layer's output width at a multiple of it (or unchanged): see
  ``rounding.round_widths``. ``keep``: graph nodes to keep besides the pinned ones.

  Raises:
    ValueError: no sample input, ``round_to`` < 1, or the model has no conv/dense layer to cut.
  """
  require_nnx(model, "surgery.plan", SHRINK_ROUTE)
  round_to = rounding.check_round_to(round_to)
  graph = graph if graph is not None else depgraph.trace(model, sample_input)
  if not graph.layers:
    raise ValueError("the model has no prunable layer (no conv_general_dilated / dot_general with a parameter kernel)")
  _, leaves, paths, _ = depgraph.forward_fn(model)
  shapes = {p: tuple(np.shape(leaf)) for p, leaf in zip(paths, leaves)}
  extra: set[int] = set(keep)  # channels kept beyond what _decide finds: unsliceable attachments, rounding
  placeholders: set[int] = set()  # dead channels kept so that a layer keeps a width of one
  kept_to_round: set[int] = set()
  while True:
    removed, reason = _decide(graph, extra | placeholders, frozenset(placeholders))
    attach_cuts, bad = _attachment_cuts(graph, removed, shapes)
    new_placeholder = False
    if bad:
      graph.notes.append("a multi-dimensional parameter is combined element-wise with channels in a pattern that "
                         "cannot be sliced: those channels are kept")
    for layer in graph.layers:  # never cut a layer to zero width: keep its first channel
      if layer.sliceable and len(layer.out_nodes) and all(int(n) in removed for n in layer.out_nodes):
        placeholders.add(int(layer.out_nodes[0]))
        new_placeholder = True
        graph.notes.append(f"{layer.kernel_path}: every output is dead; one channel is kept so the layer stays")
      elif layer.sliceable and layer.cuts(*_kept(layer, removed)) is None:  # e.g. part of an attention head
        bad.update(int(n) for n in layer.out_nodes if int(n) in removed)
        bad.update(int(n) for n in layer.in_nodes if n >= 0 and int(n) in removed)
        graph.notes.append(f"{layer.kernel_path}: the features to remove are not whole slices of its kernel axes; "
                           "they are kept")
    if not bad and not new_placeholder:
      if round_to > 1:
        rounded = rounding.round_widths(graph, removed, round_to, variables_by_path(model))
        if rounded:  # restored channels join the kept ones (a fixpoint again: slicing may need more)
          extra |= rounded
          kept_to_round |= rounded
          continue
      break
    extra |= bad

  for node in kept_to_round:
    reason[graph.find(node)] = f"kept to round widths to a multiple of {round_to}"
  cuts: Cuts = {}
  for path, axes in attach_cuts.items():
    cuts.setdefault(path, []).extend(axes)
  read_live: set[int] = set()
  for layer in graph.layers:
    if layer.nz is not None:
      out_alive = np.array([int(f) not in removed and int(f) not in placeholders for f in layer.out_nodes], bool)
      live = np.any(layer.nz[:, out_alive], axis=1) & ~layer.in_zero
      read_live.update(layer.in_nodes[live & (layer.in_nodes >= 0)].tolist())
  changes, cut_kernels = [], set()
  for layer in graph.layers:
    in_keep, out_keep = _kept(layer, removed)
    n_in, n_out = layer.n_in, layer.n_out
    if layer.sliceable and (len(out_keep) < n_out or len(in_keep) < n_in) and layer.kernel_path not in cut_kernels:
      cut_kernels.add(layer.kernel_path)  # a shared kernel: every use keeps the same features, cut it once
      cuts.setdefault(layer.kernel_path, []).extend(layer.cuts(in_keep, out_keep))
    # output channels that stayed although no live weight reads them: say why
    kept_dead: dict[str, int] = defaultdict(int)
    for node in layer.out_nodes.tolist():
      if node not in removed and node not in read_live and node not in graph.pinned:
        kept_dead["coupled: " + reason.get(graph.find(node), "?")] += 1
    changes.append(LayerChange(layer.kernel_path, layer.kind, n_in, len(in_keep), n_out, len(out_keep), dict(kept_dead)))
  return ShrinkReport(changes, graph.notes, cuts)


def variables_by_path(model: nnx.Module) -> dict[str, nnx.Variable]:
  """Every ``nnx.Variable`` of ``model`` by its path (``"conv1/kernel"``)."""
  return {path_to_str(path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}


def _sync_attributes(model: nnx.Module) -> None:
  """Updates the feature counts modules keep as attributes after their arrays shrank.

  Read from the kernel's trailing axes, so layers stacked by ``nnx.vmap`` (a leading layer axis) work too.
  """
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Conv):
      shape = node.kernel.shape[-len(node.kernel_shape):]
      if node.feature_group_count > 1:  # whole groups were cut: as many groups as remain
        per_group_out = node.out_features // node.feature_group_count
        node.feature_group_count = shape[-1] // per_group_out
      node.in_features = shape[-2] * node.feature_group_count
      node.out_features = shape[-1]
      node.kernel_shape = tuple(shape)
    elif isinstance(node, nnx.ConvTranspose):  # kernel (*spatial, in, out), or (*spatial, out, in) if transposed
      shape = node.kernel.shape[-len(node.kernel_shape):]
      node.in_features, node.out_features = shape[-1:-3:-1] if node.transpose_kernel else shape[-2:]
      node.kernel_shape = tuple(shape)
    elif isinstance(node, nnx.Linear):
      node.in_features, node.out_features = node.kernel.shape[-2:]
    elif isinstance(node, nnx.LinearGeneral):
      n_in, n_out = len(node.in_features), len(node.out_features)
      shape = node.kernel.shape[-(n_in + n_out):]
      node.in_features, node.out_features = tuple(shape[:n_in]), tuple(shape[n_in:])
    elif isinstance(node, nnx.Embed):  # its columns are the channels it writes
      node.features = node.embedding.shape[-1]
    elif isinstance(node, nnx.Einsum):  # its forward reshapes the bias with these
      node.kernel_shape = tuple(node.kernel.shape[-len(node.kernel_shape):])
      if node.bias is not None:
        node.bias_shape = tuple(node.bias.shape[-len(node.bias_shape):])
    elif isinstance(node, (nnx.BatchNorm, nnx.LayerNorm)):
      vec = node.scale if node.scale is not None else node.bias
      if vec is not None:
        node.num_features = vec.shape[-1]
    elif isinstance(node, nnx.GroupNorm):  # whole groups were cut (the trace joins each group's channels)
      vec = node.scale if node.scale is not None else node.bias
      if vec is not None:
        node.num_groups = vec.shape[-1] // node.group_size
  for _, node in nnx.iter_graph(model):
    if isinstance(node, (nnx.LSTMCell, nnx.OptimizedLSTMCell, nnx.GRUCell, nnx.SimpleCell)):
      # the state width is the recurrent kernel's input width (initialize_carry reads hidden_features)
      recurrent, inputs = (node.hi, node.ii) if isinstance(node, nnx.LSTMCell) else (node.dense_h, node.dense_i)
      node.hidden_features, node.in_features = recurrent.kernel.shape[0], inputs.kernel.shape[0]
    if isinstance(node, nnx.MultiHeadAttention):
      heads, head_dim = node.query.kernel.shape[-2:]
      if node.num_kv_heads == node.num_heads:
        node.num_kv_heads = heads
      node.num_heads, node.head_dim, node.qkv_features = heads, head_dim, heads * head_dim
      node.in_features = node.query.kernel.shape[-3]
      node.out_features = node.out.kernel.shape[-1]


def apply_cuts(model: nnx.Module, cuts: Cuts) -> nnx.Module:
  """A deep copy of ``model`` with every parameter in ``cuts`` sliced to its kept indices."""
  new = nnx.clone(model)
  variables = variables_by_path(new)
  for path, axes in cuts.items():
    if path not in variables:
      raise KeyError(f"no variable at path {path!r} in the model")
    var = variables[path]
    value = np.asarray(var.get_value())
    for axis, keep in dict(axes).items():  # one cut per axis (the last one given wins)
      value = np.take(value, np.asarray(keep, dtype=np.int64), axis=axis)
    var.set_value(jnp.asarray(value))
  _sync_attributes(new)
  return new


def count_params(model: nnx.Module) -> int:
  """Parameters (``nnx.Param`` entries) of a model: ``tree_arrays.count_entries`` of its params."""
  return tree_arrays.count_entries(nnx.state(model, nnx.Param))


def check_finite(model: nnx.Module) -> None:
  """Raises ValueError naming the first parameter or statistic that holds NaN or inf.

  On the host (numpy): the trace reads every weight there anyway, and per-array device ops would dispatch (and
  compile) one small program per shape.
  """
  for path, var in variables_by_path(model).items():
    value = var.get_value()
    if not hasattr(value, "dtype") or not jnp.issubdtype(value.dtype, jnp.floating):
      continue
    finite = np.isfinite(np.asarray(value, np.float32) if value.dtype == jnp.bfloat16 else np.asarray(value))
    if not finite.all():
      bad = int(finite.size - np.count_nonzero(finite))
      raise ValueError(f"cannot shrink a model with non-finite values: {path} holds {bad} NaN/inf entries")


def shrink_with_report(model: nnx.Module, sample_input: Any, *, check: bool = True, atol: float = 1e-4,
                       graph: depgraph.Graph | None = None, round_to: int = 1) -> tuple[nnx.Module, ShrinkReport]:
  """``shrink``, also returning the report (widths before/after, reasons, parity).

  ``graph``: a trace of ``model`` with its current weights (``analysis.analyze(model, x).graph``).
  ``check``: the rebuilt model's outputs must equal the original's within atol·max(1, max |y|) — absolute
  for outputs of magnitude ≤ 1, relative above (float32 sums in another order differ by a few ulps of
  the output; ``report.max_abs_diff`` is the absolute difference); a model computing in bfloat16 / float16 within
  4 ulps of that type (``parity.parity_failure``). If they do not (or the model's code fails on
  the cut arrays: a reshape or slice at sizes it computes), the channels that pass through such shapes
  (``Graph.shape_sites``) are kept and the model is planned again, with a note. ``check=False`` skips the
  comparison for models whose code computes no such shape; for the others it still runs, since only it finds
  the channels to keep (the budget controller measures sizes this way), but a difference left after the re-plan
  is not raised.
  """
  require_nnx(model, "surgery.shrink", SHRINK_ROUTE)
  round_to = rounding.check_round_to(round_to)
  check_finite(model)
  graph = graph if graph is not None else depgraph.trace(model, sample_input)
  notes = list(graph.notes)
  report = plan(model, sample_input, graph, round_to=round_to)
  new = apply_cuts(model, report.cuts)
  report.params_before, report.params_after = count_params(model), count_params(new)
  sites = unsynced_sites(model, graph.shape_sites)
  failure = parity_failure(model, new, sample_input, atol, report) if check or sites else None
  if failure is not None and sites:
    # the code recomputed a shape the cut changed (a channel shuffle, a split at fixed sizes): keep those channels
    ops = " / ".join(sorted({" ".join(op.split()[:2]) if op.startswith(("grouped", "computed")) else op
                             for op in sites.values()}))
    graph = dataclasses.replace(graph, notes=notes + [
        f"cutting the channels that pass through a {ops} did not rebuild an equal model ({failure.args[0].splitlines()[0]}"
        f"); those {len(sites)} channels are kept (the model's code computes that op's shapes, or that kernel from "
        "its parameters)"])
    report = plan(model, sample_input, graph, round_to=round_to, keep=frozenset(sites))
    new = apply_cuts(model, report.cuts)
    report.params_before, report.params_after = count_params(model), count_params(new)
    report.kept_shape_sites = len(sites)
    failure = parity_failure(model, new, sample_input, atol, report)
  if failure is not None and check:
    raise failure
  return new, report


def unsynced_sites(model: nnx.Module, sites: dict[int, str]) -> dict[int, str]:
  """``sites`` without the grouped convs of ``nnx.Conv`` layers (``_sync_attributes`` updates their group count)."""
  convs = {path_to_str(path) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Conv)}
  synced = lambda op: op.startswith("grouped conv ") and op.split()[2].rpartition("/")[0] in convs
  return {node: op for node, op in sites.items() if not synced(op)}


def shrink(model: nnx.Module, sample_input: Any, round_to: int = 1) -> nnx.Module:
  """A new, physically smaller model whose outputs equal ``model``'s (eval mode).

  Args:
    model: an NNX module built from Conv, Linear, BatchNorm, activations, pooling, reshape,
      add and concatenate (any structure: the analysis reads the traced forward pass).
    sample_input: a batch of inputs of the shape the model takes (only its shape and
      first example are used to trace; parity is checked on it and on random inputs): an array
      for ``model(x)``, a tuple of arrays for ``model(*args)``, a dict for ``model(**kwargs)``.
    round_to: keep every cut layer's output width a multiple of this (or unchanged), keeping the
      removable channels with the largest filters (mobile kernels run fastest at multiples of 4/8/16;
      outputs stay exactly equal, since every restored channel was exact to drop).

  Returns:
    The shrunk model (a new module; ``model`` is not modified).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> class MLP(nnx.Module):
    ...   def __init__(self, rngs=nnx.Rngs(0)):
    ...     self.fc1, self.fc2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.fc2(nnx.relu(self.fc1(x)))
    >>> from mobileprune_jax import surgery
    >>> model = MLP()
    >>> model.fc2.kernel[...] = model.fc2.kernel[...].at[:5].set(0.0)  # hidden units 0–4 are never read
    >>> small = surgery.shrink(model, jnp.ones((2, 4)))
    >>> small.fc1.kernel.shape, small.fc2.kernel.shape
    ((4, 3), (3, 3))
  """
  return shrink_with_report(model, sample_input, round_to=round_to)[0]


__all__ = ["LayerChange", "ShrinkReport", "apply_cuts", "check_finite", "variables_by_path", "count_params", "max_output_diff", "plan", "shrink",
           "shrink_with_report"]
