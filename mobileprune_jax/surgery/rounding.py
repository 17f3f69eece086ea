"""Hardware-friendly widths: keep every cut layer's output width at a multiple of ``round_to``.

Mobile kernels (XNNPACK, NPUs) run fastest when channel counts are multiples of 4, 8 or 16; a
layer cut to 13 channels can be slower than one left at 16. Rounding keeps some removable
channels: for each layer whose kept width k (0 < k < n) is not a multiple of N, the removable
channel groups it produces are restored, largest producer filters first (‖w_f‖², summed over the
layers the group spans), until its width is a multiple of N or every channel is kept. A
restored group was exact to drop, so it is exact to keep: outputs are unchanged. Restoring
channels only widens layers; the planner repeats until no cut layer is off a multiple.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from mobileprune_jax.surgery import depgraph


def check_round_to(round_to: Any) -> int:
  """``round_to`` as an int.

  Raises:
    ValueError: not a positive integer.
  """
  if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
    raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
  return int(round_to)


def _filter_scores(graph: depgraph.Graph, removed: set[int], variables: Mapping[str, Any]) -> dict[int, float]:
  """root → Σ ‖w_f‖² over the output filters f of the removed nodes in that channel group."""
  score: dict[int, float] = defaultdict(float)
  for layer in graph.layers:
    variable = variables.get(layer.kernel_path)
    if variable is None:
      continue
    try:
      columns = np.sum(np.square(layer.by_output(np.asarray(variable.get_value(), np.float64))), axis=0)
    except ValueError:  # a kernel stacked by nnx.vmap: no per-filter score, ties broken by index
      continue
    for f, node in enumerate(layer.out_nodes.tolist()):
      if node in removed:
        score[graph.find(node)] += float(columns[f])
  return score


def round_widths(graph: depgraph.Graph, removed: set[int], round_to: int,
                 variables: Mapping[str, Any]) -> set[int]:
  """The removed nodes to keep so that every cut layer's output width is a multiple of ``round_to``.

  Args:
    graph: the traced channel graph.
    removed: the nodes the plan removes.
    round_to: N ≥ 1.
    variables: the model's variables by path (``shrink.variables_by_path``), for the filter norms.

  Returns:
    Nodes to restore (whole channel groups); empty when every cut width is already a multiple.
  """
  if round_to <= 1 or not removed:
    return set()
  members: dict[int, list[int]] = defaultdict(list)
  for node in removed:
    members[graph.find(node)].append(node)
  score = _filter_scores(graph, removed, variables)
  gone, restored = set(removed), set()
  changed = True
  while changed:
    changed = False
    for layer in graph.layers:
      if not layer.sliceable:
        continue
      out = layer.out_nodes.tolist()
      dead = [node for node in out if node in gone]
      kept = len(out) - len(dead)
      if not dead or kept % round_to == 0:
        continue
      for root in sorted({graph.find(node) for node in dead}, key=lambda r: (-score[r], r)):
        for node in members[root]:
          gone.discard(node)
          restored.add(node)
        changed = True
        kept = sum(node not in gone for node in out)
        if kept % round_to == 0:
          break
  return restored
