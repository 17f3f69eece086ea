"""Size and cost of a (pruned) model, in the papers' conventions (docs/algorithms.md §E, DEGL §5).

* params: every parameter entry (kernels, biases, normalisation); ``nonzero`` counts the
  entries that are not exactly 0.
* MACs (multiply–accumulates, not 2×), per example, of conv and dense layers, found by
  tracing the forward pass: a conv costs ``H_out·W_out · C_out · filter_size``, a dense layer
  ``n_in · n_out``. For the dense model filter_size = kh·kw·C_in; for a pruned model
  (``sparse=True``) it is the number of live taps (h, w, c) — those with a non-zero weight
  in some output filter — and n_in the number of non-zero input rows, which is how the
  MobilePrune tables count the compacted net (LeNet-5 5-14-151-57 → 113,497 MACs). Apply it
  to the *shrunk* model so that dead output channels are gone too.
* architecture: alive output channels of each conv and non-zero inputs of each dense layer
  ("5-14-151-57" for MobilePrune's LeNet-5); filter sizes: live taps per conv.
* CMF (DEGL eq. 15): bytes of weights plus one example's output activations,
  (Q/8)(θ_l + H·W·C_out) per conv and (Q/8)(θ_l + n_out) per dense layer, Q = 32.
* MMS: bytes of the model's parameters in float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from mobileprune_jax import tree_arrays
from mobileprune_jax.surgery import depgraph

BYTES_PER_PARAM = 4  # float32


@dataclasses.dataclass
class LayerStats:
  """Cost of one conv/dense layer."""

  path: str
  kind: str
  n_in: int
  n_out: int
  out_spatial: int
  live_in: int  # conv: live taps (filter size); dense: non-zero input rows
  alive_out: int  # output channels/units with a non-zero incoming weight
  weights: int
  nonzero_weights: int
  macs_dense: int
  macs_sparse: int


def count_params(tree: Any) -> int:
  """Number of entries of all array leaves (``tree_arrays.count_entries``)."""
  return tree_arrays.count_entries(tree)


def count_nonzero(tree: Any) -> int:
  """Number of entries that are not exactly zero."""
  return sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(tree))


def layer_stats(model: nnx.Module, sample_input: Any, graph: depgraph.Graph | None = None) -> list[LayerStats]:
  """Per conv/dense layer: widths, live inputs, MACs (dense and sparse convention).

  ``graph``: a trace of a model with the same architecture (``analysis.analyze(...).graph``), to
  skip tracing again; the weights are read from ``model``.
  """
  graph = graph if graph is not None else depgraph.trace(model, sample_input)
  _, leaves, paths, _ = depgraph.forward_fn(model)
  values = dict(zip(paths, leaves))
  stats = []
  for layer in graph.layers:
    kernel = np.asarray(values[layer.kernel_path]) if layer.kernel_path in values else None
    n_in, n_out = layer.n_in, layer.n_out
    size = int(np.prod(layer.kernel_shape))
    if kernel is None:
      live_in, alive_out, nonzero = size // max(n_out, 1), n_out, size
    else:
      by_out = layer.by_output(kernel)  # (taps·in, out)
      live_in = int(np.sum(np.any(by_out != 0, axis=1)))
      alive_out = int(np.sum(np.any(by_out != 0, axis=0)))
      nonzero = int(np.count_nonzero(kernel))
    # a depthwise filter reads only its own channel: its live taps are its own non-zeros
    live_macs = nonzero if layer.kind == "depthwise" and kernel is not None else n_out * live_in
    if layer.kind == "embedding":  # a lookup: no multiply-adds
      size_macs, live_macs = 0, 0
    else:
      size_macs = size
    stats.append(LayerStats(
        path=layer.kernel_path, kind=layer.kind, n_in=n_in, n_out=n_out, out_spatial=layer.out_spatial,
        live_in=live_in, alive_out=alive_out, weights=size, nonzero_weights=nonzero,
        macs_dense=layer.out_spatial * size_macs, macs_sparse=layer.out_spatial * live_macs))
  return stats


def macs(model: nnx.Module, sample_input: Any, sparse: bool = False) -> int:
  """MACs per example; ``sparse=True`` counts only live taps / non-zero input rows."""
  return sum(s.macs_sparse if sparse else s.macs_dense for s in layer_stats(model, sample_input))


def architecture(stats: list[LayerStats]) -> str:
  """Alive conv filters and non-zero dense inputs, e.g. "5-14-151-57" (MobilePrune's LeNet-5)."""
  return "-".join(str(s.alive_out if s.kind in ("conv", "depthwise", "grouped") else s.live_in) for s in stats
                  if s.kind != "embedding")


def filter_sizes(stats: list[LayerStats]) -> str:
  """Live taps (h, w, c) per conv layer, e.g. "16-65"."""
  return "-".join(str(s.live_in) for s in stats if s.kind == "conv")


def cmf_bytes(stats: list[LayerStats], bits: int = 32, batch: int = 1) -> float:
  """DEGL's computational memory footprint: weights + output activations, in bytes.

  A kernel used several times (a layer applied twice, a tied head) is stored once: its weights count at
  its first use, its outputs at every use.
  """
  seen: set[str] = set()
  total = 0.0
  for s in stats:
    weights = 0 if s.path in seen else s.weights
    seen.add(s.path)
    total += bits / 8 * (weights + batch * s.out_spatial * s.n_out)
  return total


def mms_bytes(model: nnx.Module) -> int:
  """Storage of the model's parameters in float32, in bytes."""
  return BYTES_PER_PARAM * count_params(nnx.state(model, nnx.Param))


def summary(dense: nnx.Module, shrunk: nnx.Module, sample_input: Any,
            dense_graph: depgraph.Graph | None = None) -> dict[str, Any]:
  """The numbers a run reports: dense vs pruned params, non-zeros, MACs, architecture, CMF, MMS.

  Args:
    dense: the model before pruning (or any model with the original widths).
    shrunk: the pruned model after ``surgery.shrink`` (dead channels physically gone).
    sample_input: a batch with the model's input shape.
    dense_graph: a trace of the dense architecture, if one was made already.
  """
  before, after = layer_stats(dense, sample_input, dense_graph), layer_stats(shrunk, sample_input)
  params_dense = nnx.state(dense, nnx.Param)
  params_shrunk = nnx.state(shrunk, nnx.Param)
  return {
      "params_total": count_params(params_dense),
      "params_remaining": count_params(params_shrunk),
      "nonzero_params": count_nonzero(params_shrunk),
      "macs_dense": sum(s.macs_dense for s in before),
      "macs_pruned": sum(s.macs_sparse for s in after),
      "macs_shrunk_dense": sum(s.macs_dense for s in after),
      "architecture_dense": "-".join(str(s.n_out if s.kind in ("conv", "depthwise", "grouped") else s.n_in)
                                     for s in before if s.kind != "embedding"),
      "architecture": architecture(after),
      "filter_sizes": filter_sizes(after),
      "widths_before": {s.path: s.n_out for s in before},
      "widths_after": {s.path: s.n_out for s in after},
      "cmf_bytes_dense": cmf_bytes(before),
      "cmf_bytes_pruned": cmf_bytes(after),
      "mms_bytes_dense": mms_bytes(dense),
      "mms_bytes_pruned": mms_bytes(shrunk),
  }
