"""The ops that create channel nodes: convolutions and ``dot_general`` with a parameter kernel.

* ``conv``: one node per output channel. A grouped conv (``feature_group_count`` = G) ties each
  group's input channels and filters into one unit: the groups must stay equal, so a group is
  cut whole (its inputs, its filters, the channels it makes) or not at all; a depthwise conv (one
  filter per channel) is the case of one channel per group.
* ``dot``: ``nnx.Linear`` and ``nnx.LinearGeneral`` (any number of contracted and output
  kernel axes, e.g. attention's (in, heads, head_dim) and (heads, head_dim, out) kernels).
* ``lookup``: a row lookup in a parameter table (``nnx.Embed``): one node per table column.
* ``dot_of_activations``: a product of two activations (attention's q·kᵀ and p·v): every node
  in one batch slice (one attention head) is joined into one group, so a head goes as a whole.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import numpy as np

from mobileprune_jax.surgery.graph import NO_NODE, Layer
from mobileprune_jax.surgery.values import Act, Const

if TYPE_CHECKING:
  from mobileprune_jax.surgery.tracer import Tracer


def _per_channel(out_shape: tuple[int, ...], axis: int, values: np.ndarray) -> np.ndarray:
  shape = [1] * len(out_shape)
  shape[axis] = len(values)
  return np.broadcast_to(values.reshape(shape), out_shape).copy()


def conv(t: Tracer, eqn, x: Act, k: Const) -> Act:
  dn = eqn.params["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  out_shape = tuple(eqn.outvars[0].aval.shape)
  kernel, path = k.value, t.kernel_param(k)
  in_ax, out_ax = rhs_spec[1], rhs_spec[0]
  seen = t.kernel_view(k) if path is None else None
  if seen is not None and not {in_ax, out_ax} & seen.reversed:  # e.g. ConvTranspose(transpose_kernel=True)
    path, kernel, in_ax, out_ax = seen.path, seen.value, seen.axis_of[in_ax], seen.axis_of[out_ax]
  groups, batch_groups = eqn.params["feature_group_count"], eqn.params["batch_group_count"]
  in_nodes, in_zero = t.input_features(x, [lhs_spec[1]])
  n_in_channels, n_out = len(in_nodes), kernel.shape[out_ax]
  spatial = math.prod(out_shape[d] for d in out_spec[2:])
  grouped = groups > 1 and batch_groups == 1 and path is not None
  if grouped:
    # group g reads input channels [g·C_in/G, (g+1)·C_in/G) and makes outputs [g·C_out/G, (g+1)·C_out/G):
    # its channels and filters can only go together (the groups must stay equal), so they are one unit;
    # a depthwise conv (one filter per channel) is the case C_in/G = C_out/G = 1
    out_nodes = t.new_nodes(n_out)
    per_in, per_out = n_in_channels // groups, n_out // groups
    for g in range(groups):
      t.union_all(np.concatenate([in_nodes[g * per_in:(g + 1) * per_in], out_nodes[g * per_out:(g + 1) * per_out]]))
    kind = "depthwise" if per_in == per_out == 1 else "grouped"
    layer = Layer(kind, path, (in_ax,), (out_ax,), in_nodes, out_nodes, spatial, tuple(kernel.shape),
                  groups=groups)
    t.add_layer(layer, in_zero, kernel, computed_from=k.mixed)
    out_zero = ~np.any(np.any(layer.io(kernel) != 0, axis=2) & ~in_zero[:, None], axis=0)
    return Act.of_zero(_per_channel(out_shape, out_spec[1], out_nodes), _per_channel(out_shape, out_spec[1], out_zero))
  out_nodes = t.new_nodes(n_out)
  unsliceable = path is None or groups != 1 or batch_groups != 1
  why = (f"conv with feature_group_count={groups}, batch_group_count={batch_groups} and a kernel that is not a plain "
         "parameter: its channels are kept")
  layer = Layer("conv", path or "<computed kernel>", (in_ax,), (out_ax,),
                in_nodes if not unsliceable else np.full(kernel.shape[in_ax], NO_NODE, np.int64), out_nodes,
                spatial, tuple(kernel.shape), not unsliceable)
  if unsliceable:
    t.pin(in_nodes, why)
  t.add_layer(layer, in_zero, kernel, why, computed_from=k.mixed)
  if unsliceable:
    out_zero = np.zeros(n_out, bool)
  else:  # output channel f is identically zero iff every non-zero weight reads a zero channel
    out_zero = ~np.any(np.any(layer.io(kernel) != 0, axis=2) & ~in_zero[:, None], axis=0)
  return Act.of_zero(_per_channel(out_shape, out_spec[1], out_nodes), _per_channel(out_shape, out_spec[1], out_zero))


def dot(t: Tracer, eqn, ins: list) -> Act:
  """An activation times a parameter kernel (``Linear``, ``LinearGeneral``, ``x @ W`` or ``W @ x``)."""
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  act_index = 0 if isinstance(ins[0], Act) else 1
  x, k = ins[act_index], ins[1 - act_index]
  x_contract, k_contract = (lc, rc) if act_index == 0 else (rc, lc)
  out_shape = tuple(eqn.outvars[0].aval.shape)
  kernel, path = k.value, t.kernel_param(k)
  if lb or rb or not x_contract:
    return t.opaque(eqn, ins)[0]
  in_axes = tuple(k_contract)
  out_axes = tuple(d for d in range(kernel.ndim) if d not in in_axes)
  seen = t.kernel_view(k) if path is None else None
  if seen is not None and not seen.reversed and len(in_axes) == len(out_axes) == 1:  # e.g. x @ w.T
    path, kernel = seen.path, seen.value
    in_axes, out_axes = (seen.axis_of[in_axes[0]],), (seen.axis_of[out_axes[0]],)
  in_nodes, in_zero = t.input_features(x, x_contract)
  n_out = math.prod(kernel.shape[d] for d in out_axes)
  out_nodes = t.new_nodes(n_out)
  layer = Layer("dense", path or "<computed kernel>", in_axes, out_axes, in_nodes, out_nodes, 1, tuple(kernel.shape),
                path is not None)
  t.add_layer(layer, in_zero, kernel, "dot_general with a kernel that is not a plain parameter: its channels are kept",
              computed_from=k.mixed)
  out_zero = ~np.any(np.any(layer.io(kernel) != 0, axis=2) & ~in_zero[:, None], axis=0)
  # output dims: (x free dims, kernel free dims) if x is the lhs, else (kernel free dims, x free dims)
  n_x_free = x.ids.ndim - len(x_contract)
  first = n_x_free if act_index == 0 else 0
  feature_shape = [kernel.shape[d] for d in out_axes]
  shape = [1] * len(out_shape)
  shape[first:first + len(out_axes)] = feature_shape
  return Act.of_zero(np.broadcast_to(out_nodes.reshape(shape), out_shape).copy(),
                     np.broadcast_to(out_zero.reshape(shape), out_shape).copy())


def lookup(t: Tracer, eqn, table: Const, indices: Act) -> Act:
  """A row lookup in a parameter table (``nnx.Embed``: ``jnp.take(table, tokens, axis=0)``): one node per column.

  The table's rows are tokens, never cut; its columns are the channels it writes, cut like a layer's outputs.
  Any other gather from a parameter is opaque.
  """
  dn = eqn.params["dimension_numbers"]
  out_shape = tuple(eqn.outvars[0].aval.shape)
  path, value = t.kernel_param(table), table.value
  plain = (path is not None and value.ndim == 2 and tuple(dn.collapsed_slice_dims) == (0,)
           and tuple(dn.start_index_map) == (0,) and tuple(dn.offset_dims) == (len(out_shape) - 1,)
           and tuple(eqn.params["slice_sizes"]) == (1, value.shape[1])
           and not getattr(dn, "operand_batching_dims", ()) and out_shape[-1] == value.shape[1])
  if not plain:
    return t.opaque(eqn, [table, indices])[0]
  rows, n_out = value.shape
  out_nodes = t.new_nodes(n_out)
  layer = Layer("embedding", path, (0,), (1,), np.full(rows, NO_NODE, np.int64), out_nodes, 1, tuple(value.shape))
  t.add_layer(layer, np.zeros(rows, bool), value, computed_from=table.mixed)
  out_zero = ~np.any(value != 0, axis=0)
  axis = len(out_shape) - 1
  return Act.of_zero(_per_channel(out_shape, axis, out_nodes), _per_channel(out_shape, axis, out_zero))


def _carried_through(a: Act, b: Act, dims) -> np.ndarray | None:
  """Output nodes of a product where one operand has no channel (an input-dependent matrix: a graph's adjacency)
  and the other's channels lie on its free axes only (``adj @ h`` mixes nodes, not channels): each output keeps
  the channel it comes from, as a fixed matrix along those axes would (``linear_maps.constant_product``). None
  otherwise."""
  (lc, rc), (lb, rb) = dims
  for side, (x, other, contract, batch) in enumerate(((a, b, lc, lb), (b, a, rc, rb))):
    if np.any(other.ids >= 0) or not np.any(x.ids >= 0):
      continue
    if any(x.ids.shape[d] > 1 and np.any(np.diff(x.ids, axis=d) != 0) for d in (*contract, *batch)):
      return None
    ids = x.ids
    for d in sorted(contract, reverse=True):
      ids = np.take(ids, 0, axis=d)
    kept = [d for d in range(x.ids.ndim) if d not in contract]  # axes left, in order: batch axes to the front
    ids = np.moveaxis(ids, [kept.index(d) for d in batch], range(len(batch)))
    other_free = (1,) * (other.ids.ndim - len(contract) - len(batch))  # output: batch, lhs free, rhs free axes
    return ids.reshape(ids.shape[:len(batch)] + other_free + ids.shape[len(batch):] if side else ids.shape + other_free)
  return None


def dot_of_activations(t: Tracer, eqn, a: Act, b: Act) -> Act:
  """A product of two activations: per batch slice (an attention head), all nodes are one group, unless one
  operand has no channel and the other's channels pass through (``_carried_through``)."""
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  out_shape = tuple(eqn.outvars[0].aval.shape)
  dims = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
  live = jax.lax.dot_general(np.asarray(~a.zero, np.float32), np.asarray(~b.zero, np.float32), dims)
  carried = _carried_through(a, b, eqn.params["dimension_numbers"])
  if carried is not None:
    return Act.of_zero(np.broadcast_to(carried, out_shape).copy(), np.asarray(live) == 0)
  batch_shape = tuple(a.ids.shape[d] for d in lb)
  move = lambda v, batch: np.moveaxis(v, batch, range(len(batch))).reshape(batch_shape + (-1,))
  a_ids, b_ids = move(a.ids, lb), move(b.ids, rb)
  reps = np.full(batch_shape, NO_NODE, np.int64)
  for index in np.ndindex(*batch_shape):
    reps[index] = t.union_all(np.concatenate([a_ids[index], b_ids[index]]))
  ids = np.broadcast_to(reps.reshape(batch_shape + (1,) * (len(out_shape) - len(batch_shape))), out_shape).copy()
  return Act.of_zero(ids, np.asarray(live) == 0)
