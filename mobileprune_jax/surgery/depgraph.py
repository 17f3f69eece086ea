"""Channel dependency analysis: trace a model's forward pass once and build its channel graph.

``trace(model, sample_input)`` traces the forward pass in inference mode with
``jax.make_jaxpr`` on a batch of one (``sample_input``: an array is the model's one argument, a tuple
its positional arguments, a dict its keyword arguments — ``call_arguments``) and interprets the
jaxpr abstractly (``tracer``, ``producers``): every conv / dense / ``LinearGeneral`` / depthwise layer, every channel node,
which nodes must be cut together (residual adds, attention heads, depthwise filters, the uses of a shared kernel), which
vectors are attached to which channels (biases, BatchNorm), and which channels must stay
(the model's outputs, ops that mix channels or are not understood — each named in the notes).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import groups
from mobileprune_jax.surgery import pins
from mobileprune_jax.surgery.graph import NO_NODE, Graph, Layer
from mobileprune_jax.surgery.tracer import Act, Const, Tracer, host

__all__ = ["NO_NODE", "Graph", "Layer", "call_arguments", "eval_mode", "forward_fn", "join_shared_kernels", "trace"]


def eval_mode(model: nnx.Module) -> nnx.Module:
  """A copy of ``model`` in inference mode (BatchNorm running averages, no dropout)."""
  copy = nnx.clone(model)
  copy.eval()
  return copy


def call_arguments(sample_input: Any) -> tuple[list[jax.Array], Callable[[list[jax.Array]], tuple[tuple, dict]]]:
  """The input arrays of ``sample_input`` and ``rebuild(arrays) -> (args, kwargs)`` for ``model(*args, **kwargs)``.

  An array (or anything ``jnp.asarray`` takes) is the model's one argument, a tuple its positional
  arguments, a dict its keyword arguments (nested pytrees inside them are fine). Every array needs
  the same non-empty batch axis; other leaves (Python numbers, strings, None) are passed as they are.

  Raises:
    ValueError: no input, an array without a batch axis, or arrays with different batch sizes.
  """
  if sample_input is None:
    raise ValueError("surgery needs a sample input (an array with a batch axis) to trace the model")
  if isinstance(sample_input, tuple):
    call = (tuple(sample_input), {})
  elif isinstance(sample_input, dict):
    call = ((), dict(sample_input))
  else:
    call = ((jnp.asarray(sample_input),), {})
  leaves, treedef = jax.tree.flatten(call)
  any_array = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
  # scalars and PRNG keys (a temperature, an nnx.Rngs' key and count) are passed as they are, like Python numbers
  is_array = [a and np.ndim(leaf) > 0 and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
              for leaf, a in zip(leaves, any_array)]
  arrays = [jnp.asarray(leaf) for leaf, a in zip(leaves, is_array) if a]
  if not any(any_array):
    raise ValueError("sample_input holds no array: pass a batch (an array, a tuple of positional or a dict of "
                     "keyword arguments)")
  if not arrays:
    arrays = [jnp.asarray(leaf) for leaf, a in zip(leaves, any_array) if a]  # only scalars: no batch axis
  batches = {x.shape[0] if x.ndim else 0 for x in arrays}
  if 0 in batches:
    raise ValueError(f"sample_input must have a non-empty batch axis, got shape(s) {[x.shape for x in arrays]}")
  if len(batches) > 1:
    raise ValueError(f"every array of sample_input needs the same batch axis, got shapes {[x.shape for x in arrays]}")

  def rebuild(new_arrays: list[jax.Array]) -> tuple[tuple, dict]:
    it = iter(new_arrays)
    return jax.tree.unflatten(treedef, [next(it) if a else leaf for leaf, a in zip(leaves, is_array)])

  return arrays, rebuild


def forward_fn(model: nnx.Module):
  """(graphdef, state leaves, paths, f) with f(leaves, *args, **kwargs) = model(*args, **kwargs) in inference mode."""
  model = eval_mode(model)
  graphdef, state = nnx.split(model)
  flat = jax.tree.flatten_with_path(state)
  paths = [groups.path_to_str(p) for p, _ in flat[0]]
  leaves = [leaf for _, leaf in flat[0]]
  treedef = flat[1]

  def f(leaves, *args, **kwargs):
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(*args, **inference_kwargs(model, args, kwargs))

  return graphdef, leaves, paths, f


_INFERENCE_VALUES = {"train": False, "training": False, "is_training": False, "deterministic": True,
                     "use_running_average": True, "inference": True}


def inference_kwargs(model: Any, args: tuple, kwargs: dict) -> dict:
  """``kwargs`` with the model's own mode flag set for inference when the call leaves it at a training default.

  ``__call__(self, x, train=True)`` passing ``use_running_average=not train`` to BatchNorm and ``deterministic=not
  train`` to Dropout overrides ``model.eval()``; surgery traces and compares the inference forward pass, so a
  boolean parameter named train / training / is_training (default True) gets False and one named deterministic /
  use_running_average / inference (default False) gets True, unless ``sample_input`` gives it.
  """
  try:
    signature = inspect.signature(model.__call__)
    bound = signature.bind_partial(*args, **kwargs).arguments
  except (TypeError, ValueError):
    return kwargs
  out = dict(kwargs)
  for name, param in signature.parameters.items():
    want = _INFERENCE_VALUES.get(name)
    if (want is not None and name not in bound and isinstance(param.default, bool) and param.default != want
        and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)):
      out[name] = want
  return out


def check_signature(model: Any, args: tuple, kwargs: dict) -> None:
  """Raises a one-line TypeError, before any tracing, when ``model(*args, **kwargs)`` does not fit the signature."""
  try:
    signature = inspect.signature(model.__call__)
  except (TypeError, ValueError):  # no signature to check (a builtin, a C extension): the call itself will tell
    return
  try:
    signature.bind(*args, **kwargs)
  except TypeError as e:
    raise TypeError(f"sample_input does not fit {type(model).__name__}.__call__{signature}: {e} (an array is "
                    "model(x), a tuple model(*args), a dict model(**kwargs))") from None


def trace(model: nnx.Module, sample_input: Any) -> Graph:
  """Traces ``model`` on one example of ``sample_input`` and returns its channel graph."""
  inputs, rebuild = call_arguments(sample_input)
  check_signature(model, *rebuild(inputs))
  inputs = [x[:1] for x in inputs]
  _, leaves, paths, f = forward_fn(model)

  def call(leaves, inputs):
    args, kwargs = rebuild(inputs)
    return f(leaves, *args, **kwargs)

  try:
    closed = jax.make_jaxpr(call)(leaves, inputs)
  except Exception as e:  # the model's own error, named with the input it got (one line)
    shapes = ", ".join(f"{x.dtype}{list(x.shape)}" for x in inputs)
    raise ValueError(f"the model does not run on the sample input (cut to a batch of one: {shapes}): "
                     f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
  tracer = Tracer(paths, {p: tuple(np.shape(leaf)) for p, leaf in zip(paths, leaves)})
  args = []
  for path, leaf in zip(paths, leaves):
    value = host(leaf)
    args.append(Const(value, {path: np.arange(value.size, dtype=np.int64).reshape(value.shape)}))
  args.extend(Act.unknown(tuple(x.shape)) for x in inputs)
  outs = tracer.run(closed.jaxpr, closed.consts, args)
  join_shared_kernels(tracer)
  pins.cut_along_fixed_arrays(tracer)
  output_shapes = []
  for o in outs:
    if isinstance(o, Act):
      tracer.pin(o.ids)
      output_shapes.append(tuple(o.ids.shape))
  return Graph(tracer.layers, tracer.parent, tracer.pinned, tracer.node_layer, tracer.attachments,
               list(dict.fromkeys(tracer.notes)), paths, output_shapes, tracer.shape_sites, tracer.attach_ops,
               tracer.shape_site_groups)


def join_shared_kernels(tracer: Tracer) -> None:
  """Couples the uses of a kernel several layers share, so that it is cut once, the same way for all of them.

  A layer applied twice, a Siamese encoder, an embedding table that is also the output head (``attend``): the
  features a use reads or writes along a kernel axis are joined, feature by feature, with the other uses'
  features along that axis (a channel goes only where every use lets it go). A feature with no node at one use
  (the model's input, token ids) pins the others'; uses whose axes do not match keep all the kernel's channels.
  """
  uses = defaultdict(list)
  for layer in tracer.layers:
    uses[layer.kernel_path].append(layer)
  for path, layers in uses.items():
    for other in layers[1:]:
      pairs = _matching_features(layers[0], other)
      if pairs is None:
        for layer in layers:
          tracer.pin(layer.in_nodes)
          tracer.pin(layer.out_nodes)
        tracer.notes.append(f"kernel {path!r} is used by {len(layers)} layers along different axes: its channels "
                            "are kept")
        break
      for a, b in pairs:
        tracer.union(a, b)
        tracer.pin(a[b < 0])
        tracer.pin(b[a < 0])


def _matching_features(a: Layer, b: Layer) -> list[tuple[np.ndarray, np.ndarray]] | None:
  """Pairs of node arrays that index the same kernel features at two uses (same axes, or input and output
  swapped as in a tied output head); None when the uses do not line up."""
  if a.groups != b.groups:
    return None
  if (a.in_axes, a.out_axes) == (b.in_axes, b.out_axes) and a.in_nodes.shape == b.in_nodes.shape \
      and a.out_nodes.shape == b.out_nodes.shape:
    return [(a.in_nodes, b.in_nodes), (a.out_nodes, b.out_nodes)]
  if a.groups == 1 and (a.in_axes, a.out_axes) == (b.out_axes, b.in_axes) and a.in_nodes.shape == b.out_nodes.shape \
      and a.out_nodes.shape == b.in_nodes.shape:
    return [(a.in_nodes, b.out_nodes), (a.out_nodes, b.in_nodes)]
  return None
