"""Channel dependency analysis from a jaxpr of the model's forward pass.

The forward pass of an NNX module is traced with ``jax.make_jaxpr`` on a batch of one, and
the jaxpr is interpreted abstractly, equation by equation:

* A value that depends only on parameters and literals is a ``Const``: it is computed
  concretely, and for every element we remember which parameter entries it came from (its
  *origin*), through reshapes, broadcasts, transposes and element-wise arithmetic (as in
  BatchNorm's ``scale * rsqrt(var + eps)``).
* A value that depends on the input is an ``Act``: for every element we keep the id of the
  *channel node* it belongs to (or -1) and whether it is identically zero for every input.

Producers (``conv_general_dilated`` / ``dot_general`` with a parameter kernel) create one new
node per output channel and record, for every input channel they read, whether the weights
reading it are all zero. Element-wise ops keep node ids; reshapes, transposes, slices,
concatenations and pools move them around with the data, so a flatten of an NHWC map gives
the strided pattern {c, c+C, c+2C, ...}. Element-wise ops between two activations (a residual
add) join their nodes into one group (union-find). A parameter vector combined element-wise
with an activation (a bias, BatchNorm's scale and shift) is *attached* to the nodes it meets.
An op the analysis does not understand pins every node it reads (they are kept) and is named
in the report; so are the model's outputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import groups

NO_NODE = -1

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
_STRUCTURAL = {"reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice", "rev"}
_REDUCE = {"reduce_max", "reduce_min", "reduce_sum", "reduce_prod", "argmax", "argmin"}
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
          "remat": "jaxpr", "checkpoint": "jaxpr"}


@dataclasses.dataclass
class Const:
  """A value known without the input; ``origin[path]`` = flat index into that parameter (or -1)."""

  value: np.ndarray
  origin: dict[str, np.ndarray]


@dataclasses.dataclass
class Act:
  """An input-dependent value: channel node id and identically-zero flag per element."""

  ids: np.ndarray
  zero: np.ndarray


@dataclasses.dataclass
class Layer:
  """A conv or dense layer found in the trace.

  Attributes:
    kind: "conv" or "dense".
    kernel_path: parameter path of the kernel.
    in_axis / out_axis: the kernel axes of input and output features (parameter layout).
    in_nodes: node of each input feature of the kernel (per input channel for conv, per
      row for dense: a flattened NHWC map gives each channel's node at every position).
    out_nodes: the new node of each output feature.
    out_spatial: number of output positions per example (H·W for 2-D conv, 1 for dense).
    kernel_shape: shape of the kernel parameter.
    sliceable: False if the kernel is not a plain parameter (then nothing is cut here).
    nz: (n_in, n_out) booleans: some weight from input feature i to output f is non-zero.
    in_zero: (n_in,) booleans: input feature i is identically zero where this layer reads it.
  """

  kind: str
  kernel_path: str
  in_axis: int
  out_axis: int
  in_nodes: np.ndarray
  out_nodes: np.ndarray
  out_spatial: int
  kernel_shape: tuple[int, ...]
  sliceable: bool = True
  nz: np.ndarray | None = None
  in_zero: np.ndarray | None = None


@dataclasses.dataclass
class Graph:
  """Result of the analysis."""

  layers: list[Layer]
  parent: list[int]  # union-find over nodes
  pinned: set[int]
  node_layer: dict[int, int]  # node -> index of the layer that produces it
  attachments: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # path -> [(param flat idx, node)]
  notes: list[str]
  param_paths: list[str]
  output_shapes: list[tuple[int, ...]]

  def find(self, n: int) -> int:
    root = n
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[n] != root:
      self.parent[n], n = root, self.parent[n]
    return root


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
}


def _host(value: Any) -> Any:
  """numpy copy of an array; PRNG key arrays (e.g. Dropout's rngs) stay as they are."""
  if hasattr(value, "dtype") and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
    return value
  return np.asarray(value)


class _Tracer:
  def __init__(self, param_paths: Sequence[str]):
    self.param_paths = list(param_paths)
    self.parent: list[int] = []
    self.pinned: set[int] = set()
    self.layers: list[Layer] = []
    self.node_layer: dict[int, int] = {}
    self.attachments: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    self.notes: list[str] = []

  # -- nodes ---------------------------------------------------------------------------

  def new_nodes(self, n: int) -> np.ndarray:
    start = len(self.parent)
    self.parent.extend(range(start, start + n))
    return np.arange(start, start + n, dtype=np.int64)

  def find(self, n: int) -> int:
    while self.parent[n] != n:
      self.parent[n] = self.parent[self.parent[n]]
      n = self.parent[n]
    return n

  def union(self, a: np.ndarray, b: np.ndarray) -> None:
    for x, y in set(zip(a[(a >= 0) & (b >= 0)].tolist(), b[(a >= 0) & (b >= 0)].tolist())):
      rx, ry = self.find(x), self.find(y)
      if rx != ry:
        self.parent[max(rx, ry)] = min(rx, ry)

  def pin(self, ids: np.ndarray, why: str | None = None) -> None:
    nodes = set(np.unique(ids[ids >= 0]).tolist())
    if nodes:
      self.pinned.update(nodes)
      if why:
        self.notes.append(why)

  # -- interpretation ------------------------------------------------------------------

  def run(self, jaxpr: jax.extend.core.Jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v):
      if isinstance(v, jax.extend.core.Literal):
        return Const(np.asarray(v.val), {})
      return env[v]

    for v, c in zip(jaxpr.constvars, consts):
      env[v] = c if isinstance(c, (Const, Act)) else Const(_host(c), {})
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      outs = self.eqn(eqn, ins)
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
      a = ins[0]
      zero = a.zero if name in _UNARY_ZERO_PRESERVING or (name == "integer_pow" and eqn.params.get("y", 0) > 0) else np.zeros_like(a.zero)
      return [Act(a.ids, zero)]
    if name in _BINARY:
      return [self.binary(name, eqn, ins)]
    if name == "select_n":
      return [self.select(eqn, ins)]
    if name in _STRUCTURAL:
      return [self.structural(eqn, ins[0])]
    if name == "pad":
      return [self.pad(eqn, ins)]
    if name == "concatenate":
      return [self.concatenate(eqn, ins)]
    if name in _REDUCE:
      return [self.reduce(eqn, ins[0])]
    if name == "conv_general_dilated" and isinstance(ins[0], Act) and isinstance(ins[1], Const):
      return [self.conv(eqn, ins[0], ins[1])]
    if name == "dot_general" and isinstance(ins[0], Act) and isinstance(ins[1], Const):
      return [self.dot(eqn, ins[0], ins[1])]
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
      values = [_host(o) for o in outs]
    origin: dict[str, np.ndarray] = {}
    if name in _STRUCTURAL and ins[0].origin:
      origin = {p: self.structural_array(eqn, idx) for p, idx in ins[0].origin.items()}
    elif (name in _BINARY or name in _UNARY_ZERO_PRESERVING or name in _UNARY_OTHER) and len(values) == 1:
      shape = values[0].shape
      for c in ins:
        for p, idx in c.origin.items():
          idx = np.broadcast_to(idx, shape)
          origin[p] = np.where(idx >= 0, idx, origin[p]) if p in origin else idx
    return [Const(v, origin if i == 0 else {}) for i, v in enumerate(values)]

  @staticmethod
  def structural_array(eqn, arr: np.ndarray) -> np.ndarray:
    """Applies a structural primitive (reshape, broadcast, transpose, ...) to a metadata array."""
    return np.ascontiguousarray(_NP_STRUCTURAL[eqn.primitive.name](arr, **eqn.params))

  # -- activations ---------------------------------------------------------------------

  def as_act(self, x: Any, shape: tuple[int, ...]) -> Act:
    if isinstance(x, Act):
      return Act(np.broadcast_to(x.ids, shape), np.broadcast_to(x.zero, shape))
    return Act(np.full(shape, NO_NODE, np.int64), np.broadcast_to(np.asarray(x.value) == 0, shape))

  def attach(self, const: Const, act: Act, shape: tuple[int, ...]) -> None:
    for path, idx in const.origin.items():
      idx = np.broadcast_to(idx, shape)
      ids = np.broadcast_to(act.ids, shape)
      ok = (idx >= 0) & (ids >= 0)
      if not ok.any():
        continue
      self.attachments.setdefault(path, []).append((idx[ok].ravel(), ids[ok].ravel()))

  def binary(self, name: str, eqn, ins: list[Any]) -> Act:
    shape = tuple(eqn.outvars[0].aval.shape)
    acts = [x for x in ins if isinstance(x, Act)]
    for x in ins:
      if isinstance(x, Const) and acts:
        self.attach(x, acts[0], shape)
    a, b = (self.as_act(x, shape) for x in ins[:2])
    if len(acts) == 2:
      self.union(a.ids, b.ids)
    ids = np.where(a.ids >= 0, a.ids, b.ids)
    if name in ("add", "add_any", "sub", "max", "min"):
      zero = a.zero & b.zero
    elif name in ("mul", "and"):
      zero = a.zero | b.zero
    elif name == "div":
      zero = a.zero
    else:
      zero = np.zeros(shape, bool)
    return Act(ids, zero)

  def select(self, eqn, ins: list[Any]) -> Act:
    shape = tuple(eqn.outvars[0].aval.shape)
    pred = ins[0]
    if isinstance(pred, Act):
      self.pin(pred.ids, "select_n with an input-dependent predicate")
    cases = [self.as_act(x, shape) for x in ins[1:]]
    acts = [c for x, c in zip(ins[1:], cases) if isinstance(x, Act)]
    for c in acts[1:]:
      self.union(acts[0].ids, c.ids)
    ids = acts[0].ids if acts else np.full(shape, NO_NODE, np.int64)
    zero = np.logical_and.reduce([c.zero for c in cases])
    return Act(ids, zero)

  def structural(self, eqn, a: Act) -> Act:
    return Act(self.structural_array(eqn, a.ids).astype(np.int64), self.structural_array(eqn, a.zero))

  def pad(self, eqn, ins: list[Any]) -> Act:
    a, value = ins
    cfg = eqn.params["padding_config"]
    shape = tuple(eqn.outvars[0].aval.shape)
    if isinstance(value, Act) or any(interior for _, _, interior in cfg):
      return self.opaque(eqn, ins)[0]
    pad_ids = self.new_nodes(1)[0]
    self.pinned.add(int(pad_ids))  # channels made by a pad cannot be cut without changing the pad
    ids = np.full(shape, pad_ids, np.int64)
    zero = np.full(shape, bool(np.asarray(value.value) == 0))
    if any(lo < 0 or hi < 0 for lo, hi, _ in cfg):
      return self.opaque(eqn, ins)[0]
    src_a = self.as_act(a, tuple(eqn.invars[0].aval.shape))
    sl = tuple(slice(lo, lo + n) for (lo, _, _), n in zip(cfg, src_a.ids.shape))
    ids[sl] = src_a.ids
    zero[sl] = src_a.zero
    return Act(ids, zero)

  def concatenate(self, eqn, ins: list[Any]) -> Act:
    dim = eqn.params["dimension"]
    parts = [self.as_act(x, tuple(v.aval.shape)) for x, v in zip(ins, eqn.invars)]
    return Act(np.concatenate([p.ids for p in parts], dim), np.concatenate([p.zero for p in parts], dim))

  def reduce(self, eqn, a: Act) -> Act:
    axes = tuple(eqn.params.get("axes", ()))
    if eqn.primitive.name in ("argmax", "argmin"):
      self.pin(a.ids, f"{eqn.primitive.name} over activations")
      shape = tuple(eqn.outvars[0].aval.shape)
      return Act(np.full(shape, NO_NODE, np.int64), np.zeros(shape, bool))
    keep = [d for d in range(a.ids.ndim) if d not in axes]
    ids = np.transpose(a.ids, keep + list(axes)).reshape([a.ids.shape[d] for d in keep] + [-1])
    zero = np.transpose(a.zero, keep + list(axes)).reshape(ids.shape)
    same = np.all(ids == ids[..., :1], axis=-1)
    mixed_nonzero = ~same & ~np.all(zero, axis=-1)
    if mixed_nonzero.any():
      self.pin(ids[mixed_nonzero], f"{eqn.primitive.name} across channels")
    out_ids = np.where(same, ids[..., 0], NO_NODE)
    return Act(out_ids, np.all(zero, axis=-1))

  def opaque(self, eqn, ins: list[Any]) -> list[Act]:
    for x in ins:
      if isinstance(x, Act):
        self.pin(x.ids, f"op {eqn.primitive.name!r} is not understood: its input channels are kept")
    return [Act(np.full(tuple(v.aval.shape), NO_NODE, np.int64), np.zeros(tuple(v.aval.shape), bool))
            for v in eqn.outvars]

  # -- producers -----------------------------------------------------------------------

  def kernel_param(self, k: Const) -> str | None:
    """The parameter path if the kernel operand is exactly one parameter, else None."""
    if len(k.origin) != 1:
      return None
    (path, idx), = k.origin.items()
    if idx.shape != k.value.shape or not np.array_equal(idx.ravel(), np.arange(idx.size)):
      return None
    return path

  def input_features(self, x: Act, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Node and zero flag of every feature along ``axis`` (a feature whose node varies over the
    other positions gets no node, and its nodes are pinned)."""
    ids = np.moveaxis(x.ids, axis, -1).reshape(-1, x.ids.shape[axis])
    zero = np.moveaxis(x.zero, axis, -1).reshape(ids.shape)
    in_nodes = ids[0].copy()
    uniform = np.all(ids == in_nodes[None, :], axis=0)
    in_nodes[~uniform] = NO_NODE
    self.pin(ids[:, ~uniform], None)
    return in_nodes, np.all(zero, axis=0)

  def add_layer(self, layer: Layer, in_zero: np.ndarray, kernel: np.ndarray, eqn_name: str) -> None:
    index = len(self.layers)
    self.layers.append(layer)
    for n in layer.out_nodes:
      self.node_layer[int(n)] = index
    if not layer.sliceable:
      self.pin(layer.in_nodes, f"{eqn_name} with a kernel that is not a plain parameter: its channels are kept")
      self.pinned.update(int(n) for n in layer.out_nodes)
      return
    n_in, n_out = kernel.shape[layer.in_axis], kernel.shape[layer.out_axis]
    k_io = np.moveaxis(kernel, (layer.in_axis, layer.out_axis), (0, 1))
    layer.nz = np.any(k_io.reshape(n_in, n_out, kernel.size // max(n_in * n_out, 1)) != 0, axis=2)
    layer.in_zero = in_zero

  def conv(self, eqn, x: Act, k: Const) -> Act:
    dn = eqn.params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    out_shape = tuple(eqn.outvars[0].aval.shape)
    kernel = k.value
    path = self.kernel_param(k)
    grouped = eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1
    # per input channel node: must not vary over batch and spatial positions
    in_nodes, in_zero = self.input_features(x, lhs_spec[1])
    n_out = kernel.shape[rhs_spec[0]]
    out_nodes = self.new_nodes(n_out)
    spatial = math.prod(out_shape[d] for d in out_spec[2:])
    sliceable = path is not None and not grouped
    layer = Layer("conv", path or "<computed kernel>", rhs_spec[1], rhs_spec[0], in_nodes, out_nodes, spatial,
                  tuple(kernel.shape), sliceable)
    self.add_layer(layer, in_zero, kernel, "conv")
    # output channel f is identically zero iff every non-zero weight reads a zero channel
    n_in = kernel.shape[rhs_spec[1]]
    k_io = np.moveaxis(kernel, (rhs_spec[1], rhs_spec[0]), (0, 1)).reshape(n_in, n_out, kernel.size // max(n_in * n_out, 1))
    live = np.any(k_io != 0, axis=2) & ~in_zero[:, None] if not grouped else np.ones((1, n_out), bool)
    out_zero = ~np.any(live, axis=0)
    shape_nd = [1] * len(out_shape)
    shape_nd[out_spec[1]] = n_out
    return Act(np.broadcast_to(out_nodes.reshape(shape_nd), out_shape).copy(),
               np.broadcast_to(out_zero.reshape(shape_nd), out_shape).copy())

  def dot(self, eqn, x: Act, k: Const) -> Act:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    out_shape = tuple(eqn.outvars[0].aval.shape)
    kernel = k.value
    path = self.kernel_param(k)
    if len(lc) != 1 or len(rc) != 1 or lb or rb or kernel.ndim != 2:
      return self.opaque(eqn, [x, k])[0]
    in_axis, out_axis = rc[0], 1 - rc[0]
    in_nodes, in_zero = self.input_features(x, lc[0])
    n_out = kernel.shape[out_axis]
    out_nodes = self.new_nodes(n_out)
    layer = Layer("dense", path or "<computed kernel>", in_axis, out_axis, in_nodes, out_nodes, 1,
                  tuple(kernel.shape), path is not None)
    self.add_layer(layer, in_zero, kernel, "dot_general")
    k_io = np.moveaxis(kernel, in_axis, 0)
    out_zero = ~np.any((k_io != 0) & ~in_zero[:, None], axis=0)
    # output: lhs free dims then rhs free dim
    nd = len(out_shape)
    shape_nd = [1] * nd
    shape_nd[-1] = n_out
    return Act(np.broadcast_to(out_nodes.reshape(shape_nd), out_shape).copy(),
               np.broadcast_to(out_zero.reshape(shape_nd), out_shape).copy())


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
  tracer = _Tracer(paths)
  args = []
  for path, leaf in zip(paths, leaves):
    value = _host(leaf)
    args.append(Const(value, {path: np.arange(value.size, dtype=np.int64).reshape(value.shape)}))
  args.append(Act(np.full(x.shape, NO_NODE, np.int64), np.zeros(x.shape, bool)))
  outs = tracer.run(closed.jaxpr, closed.consts, args)
  output_shapes = []
  for o in outs:
    if isinstance(o, Act):
      tracer.pin(o.ids)
      output_shapes.append(tuple(o.ids.shape))
  return Graph(tracer.layers, tracer.parent, tracer.pinned, tracer.node_layer, tracer.attachments,
               list(dict.fromkeys(tracer.notes)), paths, output_shapes)
