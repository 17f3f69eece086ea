"""Ops that move or mix values *within* channels: what ``jax.image.resize`` lowers to.

* ``constant_product``: an activation times a constant that is not a parameter (bilinear /
  linear / cubic resize multiplies each spatial axis by a fixed interpolation matrix). Each
  output element is Σ_i K_i·x_i over a fiber of the contracted axes; it keeps its channel when
  every element with a non-zero coefficient is in that channel (zeros and wildcards fit any), like
  a pool window. A fiber that mixes channels pins them, naming the op.
* ``gather``: an activation indexed by constant indices (nearest resize, ``x[:, idx]``): each
  output element *is* one input element, so it keeps that element's channel and value. Indices
  along a channel axis name positions that surgery would shift: those channels are pinned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from mobileprune_jax.surgery.graph import NO_NODE
from mobileprune_jax.surgery.values import Act, Const, uniform_nodes

if TYPE_CHECKING:
  from mobileprune_jax.surgery.tracer import Tracer

_MAX_ELEMENTS = 200_000_000  # output elements × fiber length: beyond this, the op is treated as opaque


def constant_product(t: Tracer, eqn, ins: list) -> Act:
  """``dot_general`` of an activation and a constant that no parameter produced (no batch dimensions)."""
  (lc, rc), _ = eqn.params["dimension_numbers"]
  act_index = 0 if isinstance(ins[0], Act) else 1
  x, k = ins[act_index], ins[1 - act_index]
  x_contract, k_contract = (list(lc), list(rc)) if act_index == 0 else (list(rc), list(lc))
  x_free = [d for d in range(x.ids.ndim) if d not in x_contract]
  k_free = [d for d in range(k.value.ndim) if d not in k_contract]
  fiber = int(np.prod([x.ids.shape[d] for d in x_contract]))
  out_shape = tuple(eqn.outvars[0].aval.shape)
  if int(np.prod(out_shape)) * fiber > _MAX_ELEMENTS:
    return t.opaque(eqn, ins)[0]
  move_x = lambda v: np.transpose(v, x_free + x_contract).reshape([x.ids.shape[d] for d in x_free] + [fiber])
  ids, values, wild = move_x(x.ids), move_x(x.value), move_x(x.wild)
  kernel = np.transpose(np.asarray(k.value, np.float64), k_free + k_contract).reshape(
      [k.value.shape[d] for d in k_free] + [fiber])
  nx, nk = len(x_free), len(k_free)
  # broadcast to (x free..., k free..., fiber)
  ids = ids.reshape(ids.shape[:-1] + (1,) * nk + (fiber,))
  values = values.reshape(values.shape[:-1] + (1,) * nk + (fiber,))
  wild = wild.reshape(wild.shape[:-1] + (1,) * nk + (fiber,))
  kernel = kernel.reshape((1,) * nx + kernel.shape)
  full = np.broadcast_shapes(ids.shape, kernel.shape)
  unread = np.broadcast_to(kernel == 0, full)
  ids_b = np.broadcast_to(ids, full)
  flat_ids = ids_b.reshape(-1, fiber).T
  flat_wild = (np.broadcast_to(wild, full) | unread).reshape(-1, fiber).T
  out_ids, same = uniform_nodes(flat_ids, flat_wild)
  if not same.all():
    t.pin(flat_ids[:, ~same][~flat_wild[:, ~same]],
          f"{eqn.primitive.name} with a constant matrix mixes channels: those channels are kept")
  with np.errstate(invalid="ignore", over="ignore"):
    out = np.sum(np.where(unread, 0.0, np.broadcast_to(values, full) * np.broadcast_to(kernel, full)), axis=-1)
  out_ids = out_ids.reshape(full[:-1])
  if act_index == 1:  # the constant is the lhs: its free axes come first
    order = list(range(nx, nx + nk)) + list(range(nx))
    out_ids, out = np.transpose(out_ids, order), np.transpose(out, order)
  return Act(np.ascontiguousarray(out_ids).reshape(out_shape), np.ascontiguousarray(out).reshape(out_shape))


def gather(t: Tracer, eqn, x: Act, indices: Const) -> Act:
  """``gather`` of an activation at constant indices: every output element is one input element (or fill)."""
  for axis in eqn.params["dimension_numbers"].start_index_map:  # indexed axes must not be channel axes
    ids = np.moveaxis(x.ids, axis, 0).reshape(x.ids.shape[axis], -1)
    wild = np.moveaxis(x.wild, axis, 0).reshape(x.ids.shape[axis], -1)
    if not uniform_nodes(ids, wild)[1].all():  # the indices name channel positions, which surgery would shift
      t.pin(x.ids[~x.wild], "gather at constant indices along a channel axis: its channels are kept")
      break
  params = eqn.primitive.get_bind_params(eqn.params)
  source = jnp.arange(1, x.ids.size + 1, dtype=jnp.int32).reshape(x.ids.shape)  # 0 = no source (a fill)
  params = {**params, "fill_value": 0}
  picked = np.asarray(eqn.primitive.bind(source, jnp.asarray(indices.value), **params)).astype(np.int64)
  filled = picked <= 0
  src = np.where(filled, 0, picked - 1)
  ids = np.where(filled, NO_NODE, x.ids.ravel()[src])
  fill = eqn.params.get("fill_value")
  values = np.where(filled, np.nan if fill is None else float(fill), x.value.ravel()[src])
  return Act(ids, values)
