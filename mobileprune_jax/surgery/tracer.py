"""Abstract interpretation of a forward-pass jaxpr: which channel node every element belongs to.

A value that depends only on parameters and literals is a ``Const``: it is computed
concretely, and for every element we remember which parameter entries it came from (its
*origin*), through reshapes, broadcasts, transposes and element-wise arithmetic (as in
BatchNorm's ``scale * rsqrt(var + eps)``). A value that depends on the input is an ``Act``:
for every element, the id of the channel node it belongs to (or ``NO_NODE``) and its value when
that is the same for every input (NaN: not constant) — so a dead filter followed by BatchNorm
with a negative shift and a ReLU is known to be exactly zero. An element with no node that is
identically zero (a zero pad) is a *wildcard*: it belongs to every channel at once.

Element-wise ops keep node ids; reshapes, transposes, slices, pads, concatenations, stacks, tiles and pools
(``reduce_window``, reductions) move them with the data; element-wise ops between two
activations (a residual add, a squeeze-and-excitation gate) join their nodes into one group;
a parameter vector combined element-wise with an activation (a bias, BatchNorm's scale and
shift) is *attached* to the nodes it meets. Producers (``producers.py``) create nodes. An op
the analysis does not understand pins every node it reads, and is named in the notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mobileprune_jax.surgery import arrangements, kernels, linear_maps, loops, pins, producers, reductions, shape_sites
from mobileprune_jax.surgery.graph import NO_NODE, Layer, UnionFind
from mobileprune_jax.surgery.values import (
  Act,
  Const,
  carried_spread,
  host,
  meeting,
  operands_spread,
  set_zero,
  spread_axes,
  uniform_nodes,
  unique_pairs,
)

# element-wise primitives, and whether f(0) == 0 for the unary ones
_UNARY_ZERO_PRESERVING = {
    "neg", "convert_element_type", "abs", "sign", "sqrt", "cbrt", "square", "tanh", "sin", "tan", "asin",
    "atan", "sinh", "asinh", "atanh", "erf", "copy", "copy_p", "stop_gradient", "reduce_precision", "floor",
    "ceil", "round", "real", "imag", "expm1", "log1p", "optimization_barrier",
}
_UNARY_OTHER = {"exp", "exp2", "log", "logistic", "cos", "cosh", "acos", "rsqrt", "erfc", "erf_inv", "is_finite",
                "not", "lgamma", "digamma", "integer_pow"}
_BINARY = {"add", "add_any", "sub", "mul", "div", "max", "min", "pow", "atan2", "rem", "nextafter", "and", "or",
           "xor", "eq", "ne", "lt", "le", "gt", "ge"}
_STRUCTURAL = {"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice", "rev", "tile"}
_REDUCE = {"reduce_max", "reduce_min", "reduce_sum", "reduce_prod", "argmax", "argmin"}
_REDUCE_WINDOW = {"reduce_window_sum", "reduce_window_max", "reduce_window_min"}
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
          "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr"}


def _np_broadcast_in_dim(a, shape, broadcast_dimensions, **_):
  expanded = [1] * len(shape)
  for i, d in enumerate(broadcast_dimensions):
    expanded[d] = a.shape[i]
  return np.broadcast_to(a.reshape(expanded), shape)


def _np_slice(a, start_indices, limit_indices, strides=None, **_):
  strides = strides or (1,) * a.ndim
  return a[tuple(slice(s, e, st) for s, e, st in zip(start_indices, limit_indices, strides))]


# numpy versions of the structural primitives (no XLA compile per shape on the host path)
_NP_STRUCTURAL = {
    "reshape": lambda a, new_sizes, dimensions=None, **_: np.reshape(a, new_sizes),
    "broadcast_in_dim": _np_broadcast_in_dim,
    "transpose": lambda a, permutation, **_: np.transpose(a, permutation),
    "squeeze": lambda a, dimensions, **_: np.squeeze(a, tuple(dimensions)),
    "expand_dims": lambda a, dimensions, **_: np.expand_dims(a, tuple(dimensions)),
    "slice": _np_slice,
    "rev": lambda a, dimensions, **_: np.flip(a, tuple(dimensions)),
    "tile": lambda a, reps, **_: np.tile(a, tuple(reps)),  # a channel tiled k times: its node at each copy
}


def weights_every_channel(x: Act, y: Act) -> bool:
  """y is a copy along every axis x's channels vary along (a (b, h, w, 1) attention or gate map times a (b, h, w, c)
  feature map), both belong to channels everywhere, and x has channels: x ⊙ y keeps x's channels apart (a dead
  channel of x stays dead), while y must stay while any of them does."""
  varying = {d for d in range(x.ids.ndim) if np.any(np.diff(x.ids, axis=d) != 0)}
  return bool(varying) and varying <= y.spread and bool(np.all(x.ids >= 0)) and bool(np.all(y.ids >= 0))


class Tracer:
  """Interprets a jaxpr over ``Const``/``Act`` values, building layers, nodes and groups."""

  def __init__(self, param_paths: Sequence[str], param_shapes: dict[str, tuple[int, ...]] | None = None):
    self.param_paths, self.param_shapes = list(param_paths), dict(param_shapes or {})
    self.sets = UnionFind()
    self.parent = self.sets.parent
    self.pinned: set[int] = set()
    self.fixed_array_sites: list[tuple[np.ndarray, list[int]]] = []  # (nodes met, axes the array varies along)
    self.layers: list[Layer] = []
    self.node_layer: dict[int, int] = {}
    self.attachments: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    self.notes: list[str] = []
    self.shape_sites: dict[int, str] = {}
    self.shape_site_groups: list[np.ndarray] = []  # the nodes of each op recorded in shape_sites
    self.attach_ops: dict[str, set[str]] = {}  # path -> the element-wise ops that combine it with channels

  # -- nodes ---------------------------------------------------------------------------

  def new_nodes(self, n: int) -> np.ndarray:
    return self.sets.add(n)

  def union(self, a: np.ndarray, b: np.ndarray) -> None:
    """Joins the nodes of ``a`` and ``b`` element by element (where both have one)."""
    ok = (a >= 0) & (b >= 0)
    for x, y in set(zip(a[ok].tolist(), b[ok].tolist())):
      self.sets.union(x, y)

  def union_all(self, ids: np.ndarray) -> int:
    """Joins every node in ``ids`` into one group; returns one of them (or NO_NODE)."""
    nodes = np.unique(ids[ids >= 0])
    if not len(nodes):
      return NO_NODE
    self.union(np.full(len(nodes) - 1, nodes[0]), nodes[1:])
    return int(nodes[0])

  def pin(self, ids: np.ndarray, why: str | None = None) -> None:
    nodes = set(np.unique(ids[ids >= 0]).tolist())
    if nodes:
      self.pinned.update(nodes)
      if why:
        self.notes.append(why)

  # -- interpretation ------------------------------------------------------------------

  def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v):
      if isinstance(v, jax.extend.core.Literal):
        return Const(np.asarray(v.val), {})
      return env[v]

    for v, c in zip(jaxpr.constvars, consts):
      env[v] = c if isinstance(c, (Const, Act)) else Const(host(c), {})
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    for eqn in jaxpr.eqns:
      outs = self.eqn(eqn, [read(v) for v in eqn.invars])
      for v, o in zip(eqn.outvars, outs):
        env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def eqn(self, eqn, ins: list[Any]) -> list[Any]:
    name = eqn.primitive.name
    if name in _CALLS and _CALLS[name] in eqn.params:
      sub = eqn.params[_CALLS[name]]
      closed = sub if hasattr(sub, "jaxpr") else None
      inner = closed.jaxpr if closed is not None else sub
      consts = closed.consts if closed is not None else []
      return self.run(inner, consts, ins[len(ins) - len(inner.invars):])
    if all(isinstance(x, Const) for x in ins):
      return self.const_eqn(eqn, ins)
    if name in _UNARY_ZERO_PRESERVING or name in _UNARY_OTHER:
      return [Act(ins[0].ids, self.constant_values(eqn, ins), ins[0].spread)]
    if name in _BINARY:
      return [self.binary(name, eqn, ins)]
    if name == "clamp" and isinstance(ins[1], Act) and not isinstance(ins[0], Act) and not isinstance(ins[2], Act):
      return [Act(ins[1].ids, self.constant_values(eqn, ins), ins[1].spread)]
    if name == "select_n":
      return [self.select(eqn, ins)]
    if name in _STRUCTURAL:
      return [self.structural(eqn, ins[0])]
    if name == "split" and isinstance(ins[0], Act):
      return arrangements.split(self, eqn, ins[0])
    if name == "scan" and (outs := loops.scan(self, eqn, ins)) is not None:
      return outs
    if name == "cond":
      return loops.cond(self, eqn, ins)
    if name == "while":
      return loops.while_loop(self, eqn, ins)
    if name == "pad":
      return [arrangements.pad(self, eqn, ins)]
    if name == "concatenate":
      return [arrangements.concatenate(self, eqn, ins)]
    if name == "stack":
      return [arrangements.stack(self, eqn, ins)]
    if name == "dynamic_slice" and isinstance(ins[0], Act) and all(isinstance(i, Const) for i in ins[1:]):
      return [arrangements.dynamic_slice(self, eqn, ins[0], ins[1:])]
    if name in _REDUCE:
      return [reductions.reduce(self, eqn, ins[0])]
    if name in _REDUCE_WINDOW:
      return [reductions.reduce_window(self, eqn, ins[0])]
    if name in reductions.ALONG_AXIS and (outs := reductions.along_axis(self, eqn, ins)) is not None:
      return outs
    if name == "conv_general_dilated" and isinstance(ins[0], Act) and isinstance(ins[1], Const):
      return [producers.conv(self, eqn, ins[0], ins[1])]
    if name == "dot_general" and isinstance(ins[0], Act) != isinstance(ins[1], Act):
      k = ins[1] if isinstance(ins[0], Act) else ins[0]
      if not k.origin and not any(eqn.params["dimension_numbers"][1]):  # a fixed matrix: resize, not a layer
        return [linear_maps.constant_product(self, eqn, ins)]
      return [producers.dot(self, eqn, ins)]
    if name == "gather" and isinstance(ins[0], Act) and isinstance(ins[1], Const):
      return [linear_maps.gather(self, eqn, ins[0], ins[1])]
    if name == "gather" and isinstance(ins[0], Const) and isinstance(ins[1], Act):
      return [producers.lookup(self, eqn, ins[0], ins[1])]
    if name == "dot_general":
      return [producers.dot_of_activations(self, eqn, ins[0], ins[1])]
    return self.opaque(eqn, ins)

  # -- consts --------------------------------------------------------------------------

  def const_eqn(self, eqn, ins: list[Const]) -> list[Any]:
    name = eqn.primitive.name
    if name in _NP_STRUCTURAL and isinstance(ins[0].value, np.ndarray):
      values = [self.structural_array(eqn, ins[0].value)]
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      out = eqn.primitive.bind(*[jnp.asarray(c.value) for c in ins], **params)
      outs = out if eqn.primitive.multiple_results else [out]
      values = [host(o) for o in outs]
    origin: dict[str, np.ndarray] = {}
    if name in _STRUCTURAL and ins[0].origin:
      origin = {p: self.structural_array(eqn, idx) for p, idx in ins[0].origin.items()}
    elif name == "gather" and ins[0].origin:  # e.g. a position-embedding lookup at fixed positions
      params = {**eqn.primitive.get_bind_params(eqn.params), "fill_value": 0}
      pick = lambda idx: np.asarray(eqn.primitive.bind(jnp.asarray(idx + 1, jnp.int32), jnp.asarray(ins[1].value),
                                                       **params)).astype(np.int64) - 1
      origin = {p: pick(idx) for p, idx in ins[0].origin.items()}
    elif (name in _BINARY or name in _UNARY_ZERO_PRESERVING or name in _UNARY_OTHER) and len(values) == 1:
      shape = values[0].shape
      for c in ins:
        for p, idx in c.origin.items():
          idx = np.broadcast_to(idx, shape)
          origin[p] = np.where(idx >= 0, idx, origin[p]) if p in origin else idx
    # variables that entered but are not followed entry by entry into the result (a mean, a norm, a matmul)
    mixed = frozenset().union(*(c.mixed for c in ins), frozenset().union(*(c.origin for c in ins)) - origin.keys())
    return [Const(v, origin if i == 0 else {}, mixed) for i, v in enumerate(values)]

  @staticmethod
  def structural_array(eqn, arr: np.ndarray) -> np.ndarray:
    """Applies a structural primitive (reshape, broadcast, transpose, ...) to a metadata array."""
    return np.asarray(_NP_STRUCTURAL[eqn.primitive.name](arr, **eqn.params), order="C")  # 0-d stays 0-d

  # -- activations ---------------------------------------------------------------------

  def as_act(self, x: Any, shape: tuple[int, ...]) -> Act:
    if isinstance(x, Act):
      dims = tuple(range(len(shape) - x.ids.ndim, len(shape)))
      return Act(np.broadcast_to(x.ids, shape), np.broadcast_to(x.value, shape),
                 spread_axes(x.ids.shape, shape, dims, x.spread))
    return Act(np.full(shape, NO_NODE, np.int64), np.broadcast_to(np.asarray(x.value, np.float64), shape))

  @staticmethod
  def constant_values(eqn, ins: list[Any]) -> np.ndarray:
    """The op applied to the known constant values of its operands (NaN where any is unknown)."""
    shape = tuple(eqn.outvars[0].aval.shape)
    known = np.ones(shape, bool)
    for x in ins:
      if isinstance(x, Act):
        known &= np.broadcast_to(x.known, shape)
        if not known.any():  # the usual case: nothing about the input is fixed (a read-only view, no copy)
          return np.broadcast_to(np.float64(np.nan), shape)
    args = [jnp.asarray(np.where(x.known, x.value, 0), v.aval.dtype) if isinstance(x, Act) else jnp.asarray(x.value)
            for x, v in zip(ins, eqn.invars)]
    out = np.asarray(eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params)), np.float64)
    return np.where(known, np.broadcast_to(out, shape), np.nan)

  def attach(self, const: Const, act: Act, shape: tuple[int, ...]) -> None:
    for path, idx in const.origin.items():
      idx, ids = meeting(idx, act.ids, shape)
      ok = (idx >= 0) & (ids >= 0)
      if ok.any():  # one pair per (entry, node): a bias meets its channel at every position
        idx, ids = unique_pairs(idx[ok].ravel(), ids[ok].ravel())
        self.attachments.setdefault(path, []).append((idx, ids))

  def binary(self, name: str, eqn, ins: list[Any]) -> Act:
    shape = tuple(eqn.outvars[0].aval.shape)
    acts = [x for x in ins if isinstance(x, Act)]
    for x in ins:
      if isinstance(x, Const) and acts:
        self.attach(x, acts[0], shape)
        for path in x.origin:
          self.attach_ops.setdefault(path, set()).add(name)
        pins.met_by_fixed_array(self, x, acts[0], shape)
    value = self.constant_values(eqn, ins)
    zero = lambda x: np.broadcast_to(x.zero if isinstance(x, Act) else np.asarray(x.value) == 0, shape)
    if name in ("mul", "and"):  # 0 · anything = 0
      value = set_zero(value, zero(ins[0]) | zero(ins[1]))
    elif name == "div":
      value = set_zero(value, zero(ins[0]))
    if len(acts) == 1:  # with a constant: the activation's nodes (the constant has none)
      return Act(np.broadcast_to(acts[0].ids, shape), value, operands_spread(ins, shape))
    a, b = (self.as_act(x, shape) for x in ins[:2])
    if name == "mul":
      for x, y in ((a, b), (b, a)):
        if weights_every_channel(x, y):  # x's channel j times a weight shared by all of them: still channel j
          self.pin(y.ids, "a weight broadcast over the channels it multiplies (attention pooling, a spatial gate) "
                   "is kept with its producer's channel")
          return Act(x.ids, value, operands_spread(ins, shape))
    self.union(a.ids, b.ids)
    pins.unpartnered(self, a, b)
    pins.met_by_opaque(self, [a, b])
    return Act(np.where(a.ids >= 0, a.ids, b.ids), value, operands_spread(ins, shape))

  def select(self, eqn, ins: list[Any]) -> Act:
    shape = tuple(eqn.outvars[0].aval.shape)
    pred = ins[0]
    cases = [self.as_act(x, shape) for x in ins[1:]]
    acts = [c for x, c in zip(ins[1:], cases) if isinstance(x, Act)]
    if isinstance(pred, Act):  # element-wise like the cases: a predicate from their channels (leaky_relu's
      acts.append(self.as_act(pred, shape))  # x >= 0) goes with them; an input's (a mask) is an operand like any
    return self.join_cases(cases, acts, acts)

  def join_cases(self, cases: list[Act], acts: list[Act], met: list[Act]) -> Act:
    """One value that is one of ``cases`` element by element (a select's cases, a cond's branch outputs): the
    channels of ``acts`` joined, ``met``'s channels meeting a value of no channel kept, and the constant value where
    every case has the same one."""
    for c in acts[1:]:
      self.union(acts[0].ids, c.ids)
    pins.met_by_opaque(self, met)
    ids = np.full(cases[0].ids.shape, NO_NODE, np.int64)
    for c in acts:
      ids = np.where(ids >= 0, ids, c.ids)
    first = cases[0].value
    same = np.logical_and.reduce([c.value == first for c in cases])  # every case the same constant
    return Act(ids, np.where(same, first, np.nan))

  def structural(self, eqn, a: Act) -> Act:
    name = eqn.primitive.name
    if name == "reshape":
      self.note_shape_site(a, shape_sites.reshaped_axes(a.ids.shape, tuple(eqn.params["new_sizes"])), "reshape")
    elif name == "slice":
      self.note_shape_site(a, shape_sites.sliced_axes(a.ids.shape, eqn.params), "slice")
    ids = self.structural_array(eqn, a.ids).astype(np.int64)
    if name == "broadcast_in_dim":
      spread = spread_axes(a.ids.shape, tuple(eqn.params["shape"]), tuple(eqn.params["broadcast_dimensions"]), a.spread)
    else:
      spread = carried_spread(name, eqn.params, a.ids.shape, ids.shape, a.spread)
    return Act(ids, self.structural_array(eqn, a.value), spread)

  def note_shape_site(self, a: Act, axes: Sequence[int], op: str) -> None:
    """Records the nodes that vary along ``axes`` of ``a`` as passing through ``op``'s static shapes."""
    nodes = shape_sites.varying_nodes(a.ids, axes)
    if len(nodes):
      self.shape_site_groups.append(np.asarray(nodes, np.int64))
    for node in nodes.tolist():
      self.shape_sites.setdefault(int(node), op)

  def opaque(self, eqn, ins: list[Any]) -> list[Act]:
    for x in ins:
      if isinstance(x, Act):
        self.pin(x.ids, f"op {eqn.primitive.name!r} is not understood: its input channels are kept")
    return [Act.unknown(tuple(v.aval.shape)) for v in eqn.outvars]

  # -- producers' helpers --------------------------------------------------------------

  def kernel_param(self, k: Const) -> str | None:
    """The parameter path if the kernel operand is exactly one parameter, else None."""
    if len(k.origin) != 1:
      return None
    (path, idx), = k.origin.items()
    if idx.shape != k.value.shape or not np.array_equal(idx.ravel(), np.arange(idx.size)):
      return None
    return path

  def kernel_view(self, k: Const) -> kernels.KernelView | None:
    """The kernel as one parameter seen through an axis permutation / reversals, or None."""
    return kernels.view(k.value, k.origin, self.param_shapes)

  def input_features(self, x: Act, axes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Node and zero flag of every feature over ``axes`` (flattened, row-major). A feature whose
    node varies over the other positions gets no node, and its nodes are pinned."""
    axes = list(axes)
    n = int(np.prod([x.ids.shape[a] for a in axes]))
    move = lambda v: np.moveaxis(v, axes, range(v.ndim - len(axes), v.ndim)).reshape(-1, n)
    ids, zero, wild = move(x.ids), move(x.zero), move(x.wild)
    in_nodes, uniform = uniform_nodes(ids, wild)
    self.pin(ids[:, ~uniform], "a feature read by a layer carries several channels: they are kept")
    return in_nodes, np.all(zero, axis=0)

  def add_layer(self, layer: Layer, in_zero: np.ndarray, kernel: np.ndarray, why_not: str | None = None,
                computed_from: frozenset[str] = frozenset()) -> None:
    """Records a layer. ``computed_from``: the variables its kernel is computed from by more than entry-by-entry
    ops (``Const.mixed``): cutting its channels changes its other entries (the mean and norm of a standardised
    kernel) unless they rebuild an equal model, so its channels are shape sites (op "computed kernel <path>")."""
    index = len(self.layers)
    self.layers.append(layer)
    for n in layer.out_nodes:
      self.node_layer[int(n)] = index
    if not layer.sliceable:
      self.pin(layer.in_nodes, why_not)
      self.pinned.update(int(n) for n in layer.out_nodes)
      return
    layer.nz = np.any(layer.io(kernel) != 0, axis=2)
    layer.in_zero = in_zero
    if layer.groups > 1:  # its feature_group_count lives in the code (nnx.Conv's is updated; a custom layer's is not)
      for node in np.concatenate([layer.in_nodes, layer.out_nodes]).tolist():
        if node >= 0:
          self.shape_sites.setdefault(int(node), f"grouped conv {layer.kernel_path}")
    if computed_from:
      nodes = np.unique(np.concatenate([layer.in_nodes, layer.out_nodes]))
      nodes = nodes[nodes >= 0]
      self.shape_site_groups.append(nodes)
      for node in nodes.tolist():
        self.shape_sites.setdefault(int(node), f"computed kernel {layer.kernel_path}")
