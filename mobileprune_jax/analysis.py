"""One analysis of a model, shared by training, metrics, surgery and export.

``analyze(model, sample_input)`` traces the forward pass once (``surgery.depgraph.trace``) and
answers what every stage asks: the conv / dense / attention / depthwise kernels in forward
order, the classifier (the last kernel, which produces the outputs), which channels are coupled
(one union-find), which parameter roles the shapes cannot tell (depthwise kernels) — all with
one path naming (``groups.path_to_str``). The structure (layers, axes, coupling) depends only
on the architecture; the zero flags of ``graph`` reflect the weights at the time of the call.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from mobileprune_jax import groups
from mobileprune_jax.surgery import depgraph
from mobileprune_jax.surgery.graph import Graph, Layer


@dataclasses.dataclass(frozen=True)
class Analysis:
  """The traced structure of one model.

  Attributes:
    graph: layers, channel nodes, coupling and notes (``surgery.depgraph.trace``).
    rules: ``(regex, role)`` rules for the kernels whose role their shape cannot tell.
  """

  graph: Graph
  rules: tuple[tuple[str, str], ...]

  @property
  def layers(self) -> list[Layer]:
    return self.graph.layers

  @property
  def kernel_paths(self) -> list[str]:
    """Every conv / dense / depthwise / attention kernel, in forward order."""
    return [layer.kernel_path for layer in self.graph.layers]

  @property
  def classifier(self) -> str:
    """The kernel of the last layer (the one that produces the outputs)."""
    return self.graph.layers[-1].kernel_path

  def coupled_groups(self) -> list[list[int]]:
    """Channel nodes that can only be removed together (groups of more than one node)."""
    by_root: dict[int, list[int]] = {}
    for node in range(len(self.graph.parent)):
      by_root.setdefault(self.graph.find(node), []).append(node)
    return [nodes for nodes in by_root.values() if len(nodes) > 1]


def analyze(model: nnx.Module, sample_input: Any) -> Analysis:
  """Traces ``model`` once on one example of ``sample_input``.

  Raises:
    ValueError: no usable sample input, or no conv / dense layer in the model.
  """
  graph = depgraph.trace(model, sample_input)
  if not graph.layers:
    raise ValueError("the model has no prunable layer (no conv_general_dilated / dot_general with a parameter kernel)")
  return Analysis(graph, tuple(groups.rules_for_model(model)))
