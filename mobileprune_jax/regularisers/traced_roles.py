"""Roles the trace gives parameters ``rules_for_model`` cannot name (``Regulariser.for_model``; docs/coupled.md).

A custom kernel the trace finds as a plain layer takes that layer's role, in any layout when the penalty's groups
come from the trace (as do ``nnx.Einsum`` / multi-axis ``nnx.LinearGeneral`` kernels); a vector added to one layer's
outputs entry by entry is a bias; one otherwise combined entry by entry with one set of channels is not penalised,
like a norm's parameters; kernels inside an op the trace cannot enter are named, and so are embedding tables that
are also a dense head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from mobileprune_jax import groups
from mobileprune_jax import units as units_lib

ELEMENTWISE = {"add", "add_any", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem"}

__all__ = ["beside", "general_kernels", "general_roles", "hidden_layers", "reader_axis", "roles_from_trace",
           "tied_tables"]


def hidden_layers(graph: Any, roles: Mapping[str, str]) -> list[str]:
  """Kernel paths the trace saw no layer for (used inside an opaque op) that no rule already names."""
  seen = {layer.kernel_path for layer in graph.layers}
  return [p for p, role in roles.items() if role not in ("none", "bias") and p not in seen]


def beside(path: str, hidden_kernels: set[str]) -> bool:
  """Whether ``path`` sits beside a kernel the trace saw no layer for (e.g. the stacked bias of blocks run by
  ``nnx.scan``): the warning about hidden layers names that module."""
  return "/" in path and path.rpartition("/")[0] + "/kernel" in hidden_kernels


def roles_from_trace(graph: Any, paths: Sequence[str], any_layout: bool) -> tuple[dict[str, str], set[str]]:
  """Roles for custom kernels (``x @ self.w``) the trace found as plain layers, when every use agrees: "dense" for
  an (in, out) matrix, "conv" / "depthwise" for a (*spatial, in, out) / (*spatial, 1, C) conv kernel, and, with
  ``any_layout`` (penalties whose groups come from the trace, or element-wise ones), the same kinds in other
  layouts (an (out, in) matrix used as ``x @ w.T``, an OIHW conv kernel). Also returns the paths of that second kind."""
  found: dict[str, set[tuple[str, bool] | None]] = {}
  for layer in graph.layers:
    if layer.kernel_path in paths:
      found.setdefault(layer.kernel_path, set()).add(_plain_role(layer, any_layout))
  chosen = {path: roles.pop() for path, roles in found.items() if len(roles) == 1 and None not in roles}
  roles = {path: role for path, (role, _) in chosen.items()}
  roles.update({path: "bias" for path in paths if path not in roles and _is_bias(graph, path)})
  roles.update({path: "none" for path in paths if path not in roles and _meets_channels_only(graph, path)})
  return roles, {path for path, (_, foreign) in chosen.items() if foreign}


def _entrywise(graph: Any, path: str, ops: set[str]) -> np.ndarray | None:
  """The channel node each entry of vector ``path`` meets, in entry order, when its only uses are ``ops`` applied
  entry i to channel i of one set of channels; else None."""
  if not graph.attach_ops.get(path) or not graph.attach_ops[path] <= ops:
    return None
  pairs = graph.attachments.get(path, [])
  idx = np.concatenate([i for i, _ in pairs]) if pairs else np.zeros(0, np.int64)
  nodes = np.concatenate([n for _, n in pairs]) if pairs else np.zeros(0, np.int64)
  if not len(idx) or len(np.unique(idx)) != len(idx):
    return None
  order = np.argsort(idx)
  return nodes[order] if np.array_equal(idx[order], np.arange(len(idx))) else None


def _meets_channels_only(graph: Any, path: str) -> bool:
  """An array (not a layer's bias: ``_is_bias`` is asked first) only ever combined element-wise with channels or
  joined to them along another axis: a per-channel scale (``x * self.v``), a temperature, a PReLU slope, a single
  gain (ReZero's ``x + self.alpha * f(x)``), a position table, a class token concatenated before the patches. Like a
  normalisation's parameters it is not penalised (role "none"), and surgery slices it with its channels."""
  ops = graph.attach_ops.get(path)
  return bool(graph.attachments.get(path)) and bool(ops) and ops <= ELEMENTWISE | {"concatenate"}


def _is_bias(graph: Any, path: str) -> bool:
  """A vector only ever added to one layer's outputs, entry i to output i (``x @ self.w + self.b``)."""
  nodes = _entrywise(graph, path, {"add", "add_any", "sub"})
  return nodes is not None and any(layer.kernel_path != path and len(layer.out_nodes) == len(nodes)
             and np.array_equal(np.asarray(layer.out_nodes).ravel(), nodes) for layer in graph.layers)


def _plain_role(layer: Any, any_layout: bool = False) -> tuple[str, bool] | None:
  """(role, foreign) of a traced layer: its kind's role when its kernel lies in the library's layout (foreign False)
  or, with ``any_layout``, in another layout with one input and one output axis (foreign True); else None."""
  nd = len(layer.kernel_shape)
  if not layer.sliceable or len(layer.in_axes) != 1 or len(layer.out_axes) != 1:
    return None
  own = (layer.in_axes, layer.out_axes) == ((nd - 2,), (nd - 1,))
  if layer.kind == "dense" and nd == 2:
    role = "dense"
  elif layer.kind == "conv" and nd >= 3:
    role = "conv"
  elif layer.kind == "depthwise" and nd >= 3 and layer.kernel_shape[layer.in_axes[0]] == 1:
    role = "depthwise" if own else "conv"  # the "depthwise" role means (*spatial, 1, C); units follow the trace
  else:
    return None
  return (role, not own) if own or any_layout else None


def tied_tables(graph: Any, roles: Mapping[str, str], params: Any, user_rules: Any) -> list[str]:
  """Embedding tables (role "none") that a layer also uses as a dense kernel reading removable features
  (``nnx.Embed.attend`` on a stream no LayerNorm pins: a tied head), unless the user's own rules name them."""
  fixed = units_lib.fixed_roots(graph)
  lookups = {layer.kernel_path for layer in graph.layers if layer.kind == "embedding"}
  dense_uses = {layer.kernel_path for layer in graph.layers if layer.kind != "embedding" and layer.sliceable
                and any(int(n) >= 0 and graph.find(int(n)) not in fixed for n in layer.in_nodes)}
  named = set(groups.named_leaves(params, list(user_rules or [])))
  return sorted(p for p in lookups & dense_uses if roles.get(p) == "none" and p not in named)


def reader_axis(layer: Any) -> int:
  """The kernel axis whose slices are the layer's reader units: its input axis, or a depthwise filter's channel."""
  depthwise = layer.groups > 1 and layer.kernel_shape[layer.in_axes[0]] == 1
  return layer.out_axes[0] if depthwise else layer.in_axes[0]


def general_kernels(model: Any, user_rules: Any) -> list[str]:
  """Kernel paths of the layers ``groups.general_layers`` names (``groups.rules_for_model`` gives them "none"),
  unless the user's rules name them."""
  found = [f"{path}/kernel" for path, node in groups.general_layers(model).items()
           if getattr(node, "kernel", None) is not None]
  named = set(groups.named_leaves(nnx.state(model, nnx.Param), list(user_rules or []))) if found else set()
  return [path for path in found if path not in named]


def general_roles(graph: Any, paths: Sequence[str]) -> tuple[dict[str, str], dict[str, int]]:
  """For the kernels among ``paths`` the trace uses only as cuttable dense layers reading one axis: their role
  ("dense" for a matrix, "conv" for more axes: in the units the trace's axes decide) and that input axis."""
  uses: dict[str, list[Any]] = {}
  for layer in graph.layers:
    if layer.kernel_path in paths:
      uses.setdefault(layer.kernel_path, []).append(layer)
  roles, axes = {}, {}
  for path, layers in uses.items():
    if all(lay.kind == "dense" and lay.sliceable and len(lay.in_axes) == 1 for lay in layers) and \
        len({lay.in_axes for lay in layers}) == 1:
      roles[path] = "dense" if len(layers[0].kernel_shape) == 2 else "conv"
      axes[path] = layers[0].in_axes[0]
  return roles, axes
