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


def degl_threshold(model: nnx.Module, sample_input, t_th: float, exclude: str) -> dict[str, Any]:
  """DEGL's rule: remove unit/filter m iff max_k |w^{m,k}| < t_th (its incoming weights).

  The unit is removed as a whole: its incoming weights and bias, and the weights of every
  layer that reads it (found by the dependency graph), are set to 0, so that surgery can
  cut it exactly. Units tied to others by a residual add are left alone.
  """
  graph = depgraph.trace(model, sample_input)
  variables = variables_by_path(model)
  dead_nodes: set[int] = set()
  group_size: dict[int, int] = {}
  for node in range(len(graph.parent)):
    root = graph.find(node)
    group_size[root] = group_size.get(root, 0) + 1
  removed = 0
  for layer in graph.layers:
    if layer.kernel_path == exclude or not layer.sliceable:
      continue
    kernel = np.asarray(variables[layer.kernel_path].get_value())
    small = np.max(np.abs(layer.by_output(kernel)), axis=0) < t_th
    for f in np.flatnonzero(small):
      node = int(layer.out_nodes[f])
      if node in graph.pinned or group_size[graph.find(node)] > 1:
        continue
      dead_nodes.add(node)
      removed += 1
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
    if in_dead.any():
      kernel = layer.zero_inputs(kernel, in_dead)
    var.set_value(jnp.asarray(kernel))
  return {"degl_removed_units": removed, "t_th": t_th}


def magnitude_threshold(model: nnx.Module, sample_input, threshold: float, layers: str, exclude: str) -> dict[str, Any]:
  """Zeroes every kernel weight with |w| <= threshold in conv layers (``layers="conv"``) or all layers but ``exclude``."""
  graph = depgraph.trace(model, sample_input)
  variables = variables_by_path(model)
  zeroed = 0
  for layer in graph.layers:
    var = variables[layer.kernel_path]
    kernel = var.get_value()
    if layer.kernel_path == exclude or (layers == "conv" and kernel.ndim < 3):
      continue
    small = jnp.abs(kernel) <= threshold
    zeroed += int(jnp.sum(small & (kernel != 0)))
    var.set_value(jnp.where(small, jnp.zeros_like(kernel), kernel))
  return {"magnitude_zeroed": zeroed, "threshold": threshold}
