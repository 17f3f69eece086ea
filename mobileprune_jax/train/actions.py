"""Actions at the end of a phase that edit the model: DEGL's unit threshold, a magnitude threshold.

Both are deterministic functions of the model's weights, so a run killed after one and
before the next checkpoint redoes it with the same result.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax.surgery import depgraph
from mobileprune_jax.surgery.shrink import variables_by_path


def degl_threshold(model: nnx.Module, sample_input, t_th: float, exclude: str, coupled: bool = False) -> dict[str, Any]:
  """DEGL's rule: remove unit/filter m iff max_k |w^{m,k}| < t_th (its incoming weights).

  The unit is removed as a whole: its incoming weights and bias, and the weights of every
  layer that reads it (found by the dependency graph), are set to 0, so that surgery can
  cut it exactly. Per layer (``coupled=False``), units tied to others by a residual add are left
  alone; with ``coupled=True`` the rule acts on each coupled set (writer units: every producer's
  filter of a residual-stream channel, a depthwise chain's expand and depthwise filters), which goes
  iff the largest incoming weight of all its filters is < t_th. A layer all of whose units fall under t_th keeps
  the one with the largest incoming weight (as Torch-Pruning keeps a channel per layer): removing them all would
  leave a network whose output no longer depends on its input (the paper's rule does not say; it never happens on
  its models, but on BasicMotions' HAR CNN a whole layer fell under t_th at once and the run collapsed to chance).
  """
  graph = depgraph.trace(model, sample_input)
  variables = variables_by_path(model)
  dead_nodes: set[int] = set()
  members: dict[int, list[int]] = {}
  for node in range(len(graph.parent)):
    members.setdefault(graph.find(node), []).append(node)
  largest: dict[int, float] = {}  # root -> largest incoming |w| over its filters
  blocked: set[int] = {graph.find(n) for n in graph.pinned}
  for layer in graph.layers:
    if layer.kernel_path == exclude or not layer.sliceable:
      blocked.update(graph.find(int(n)) for n in layer.out_nodes)
      continue
    kernel = np.asarray(variables[layer.kernel_path].get_value())
    peak = np.max(np.abs(layer.by_output(kernel)), axis=0)
    for f, node in enumerate(layer.out_nodes.tolist()):
      root = graph.find(node)
      largest[root] = max(largest.get(root, 0.0), float(peak[f]))
  dead_roots = {root for root, peak in largest.items()
                if root not in blocked and peak < t_th and (len(members[root]) == 1 or coupled)}
  for layer in graph.layers:  # a layer whose every unit would go keeps its strongest: the network stays connected
    roots = {graph.find(int(n)) for n in layer.out_nodes}
    if layer.sliceable and layer.kernel_path != exclude and roots and roots <= dead_roots:
      dead_roots.discard(max(sorted(roots), key=lambda r: largest[r]))
  for root in dead_roots:
    dead_nodes.update(members[root])
  removed = len({(layer.kernel_path, f) for layer in graph.layers if layer.sliceable and layer.groups == 1
                 for f, n in enumerate(layer.out_nodes.tolist()) if n in dead_nodes})  # a shared kernel's filter once
  for layer in graph.layers:
    if not layer.sliceable:
      continue
    var = variables[layer.kernel_path]
    kernel = np.asarray(var.get_value()).copy()
    out_dead = np.array([int(n) in dead_nodes for n in layer.out_nodes])
    in_dead = np.array([int(n) in dead_nodes for n in layer.in_nodes])
    if out_dead.any():
      kernel = layer.zero_outputs(kernel, out_dead)
      bias = variables.get(layer.kernel_path.rpartition("/")[0] + "/bias")
      if bias is not None:
        b = np.asarray(bias.get_value()).copy()
        b.reshape(-1)[out_dead] = 0
        bias.set_value(jnp.asarray(b))
    if in_dead.any() and (layer.groups == 1 or layer.kind == "depthwise"):  # a grouped conv's group is its outputs
      kernel = layer.zero_inputs(kernel, in_dead)
    var.set_value(jnp.asarray(kernel))
  return {"degl_removed_units": removed, "t_th": t_th}


def magnitude_threshold(model: nnx.Module, sample_input, threshold: float, layers: str, exclude: str) -> dict[str, Any]:
  """Zeroes every kernel weight with |w| <= threshold in conv layers (``layers="conv"``) or all layers but ``exclude``
  (embedding tables are never thresholded)."""
  graph = depgraph.trace(model, sample_input)
  variables = variables_by_path(model)
  zeroed = 0
  for layer in graph.layers:
    var = variables[layer.kernel_path]
    kernel = var.get_value()
    if layer.kernel_path == exclude or layer.kind == "embedding" or (layers == "conv" and kernel.ndim < 3):
      continue  # tables are not regularised: not thresholded either
    small = jnp.abs(kernel) <= threshold
    zeroed += int(jnp.sum(small & (kernel != 0)))
    var.set_value(jnp.where(small, jnp.zeros_like(kernel), kernel))
  return {"magnitude_zeroed": zeroed, "threshold": threshold}
