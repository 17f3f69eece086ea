"""Channel dependency analysis: trace a model's forward pass once and build its channel graph.

``trace(model, sample_input)`` traces the forward pass in inference mode with
``jax.make_jaxpr`` on a batch of one and interprets the jaxpr abstractly (``tracer``,
``producers``): every conv / dense / ``LinearGeneral`` / depthwise layer, every channel node,
which nodes must be cut together (residual adds, attention heads, depthwise filters), which
vectors are attached to which channels (biases, BatchNorm), and which channels must stay
(the model's outputs, ops that mix channels or are not understood — each named in the notes).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import groups
from mobileprune_jax.surgery.graph import NO_NODE, Graph, Layer
from mobileprune_jax.surgery.tracer import Act, Const, Tracer, host

__all__ = ["NO_NODE", "Graph", "Layer", "eval_mode", "forward_fn", "trace"]


def eval_mode(model: nnx.Module) -> nnx.Module:
  """A copy of ``model`` in inference mode (BatchNorm running averages, no dropout)."""
  copy = nnx.clone(model)
  copy.eval()
  return copy


def forward_fn(model: nnx.Module):
  """(graphdef, state leaves, paths, f) with f(leaves, x) = model(x) in inference mode."""
  model = eval_mode(model)
  graphdef, state = nnx.split(model)
  flat = jax.tree.flatten_with_path(state)
  paths = [groups.path_to_str(p) for p, _ in flat[0]]
  leaves = [leaf for _, leaf in flat[0]]
  treedef = flat[1]

  def f(leaves, x):
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x)

  return graphdef, leaves, paths, f


def trace(model: nnx.Module, sample_input: Any) -> Graph:
  """Traces ``model`` on one example of ``sample_input`` and returns its channel graph."""
  if sample_input is None:
    raise ValueError("surgery needs a sample input (an array with a batch axis) to trace the model")
  x = jnp.asarray(sample_input)
  if x.ndim < 1 or x.shape[0] < 1:
    raise ValueError(f"sample_input must have a non-empty batch axis, got shape {x.shape}")
  x = x[:1]
  _, leaves, paths, f = forward_fn(model)
  closed = jax.make_jaxpr(f)(leaves, x)
  tracer = Tracer(paths)
  args = []
  for path, leaf in zip(paths, leaves):
    value = host(leaf)
    args.append(Const(value, {path: np.arange(value.size, dtype=np.int64).reshape(value.shape)}))
  args.append(Act.unknown(tuple(x.shape)))
  outs = tracer.run(closed.jaxpr, closed.consts, args)
  output_shapes = []
  for o in outs:
    if isinstance(o, Act):
      tracer.pin(o.ids)
      output_shapes.append(tuple(o.ids.shape))
  return Graph(tracer.layers, tracer.parent, tracer.pinned, tracer.node_layer, tracer.attachments,
               list(dict.fromkeys(tracer.notes)), paths, output_shapes)
