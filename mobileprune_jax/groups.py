"""Which parameter leaves are regularised, and how their entries form groups.

Every leaf of a parameter pytree gets a *role*, inferred from its path and shape:

* ``"dense"``: a 2-D ``kernel`` (in, out), e.g. ``nnx.Linear`` / ``linen.Dense``.
* ``"conv"``: a ``kernel`` with 3+ dims (*spatial, in, out), e.g. ``nnx.Conv`` (HWIO, or
  (k, in, out) for 1-D convolutions).
* ``"bias"``: a ``bias`` next to a ``kernel`` (the bias of a dense or conv layer; attention's
  (heads, head_dim) biases too): each entry is its own group.
* ``"conv_out_in"``: a (*spatial, out, in) kernel, PyTorch's layout: ``nnx.ConvTranspose(transpose_kernel=True)``.
  Its shape cannot tell it from a conv either: ``rules_for_model(model)`` finds these.
* ``"depthwise"``: a depthwise conv kernel (*spatial, 1, C) (``feature_group_count`` = C): the
  group of channel c is its own filter, the taps are its shape groups. Its shape alone cannot tell
  it from a conv with one input channel: ``rules_for_model(model)`` finds these kernels (a tree with
  two or more such kernels and no rule for them gets one warning naming them). The
  channel c it reads is produced by the layer before (MobileNet's expand) and read by the one
  after (project): surgery cuts all three together, so a zero filter removes the whole chain.
* ``"heads_in"`` / ``"heads_out"``: attention kernels (in, heads, head_dim) of ``query``,
  ``key``, ``value`` and (heads, head_dim, out) of ``out`` (``nnx.MultiHeadAttention``): one
  group per head, so whole heads become zero (and surgery removes them).
* ``"none"``: not regularised: normalisation parameters (a ``scale``/``bias`` pair, as in
  BatchNorm and LayerNorm, or a 1-D ``scale`` with no kernel beside it, as in RMSNorm) and
  normalisation statistics (``mean``, ``var``).

Anything else (an embedding table, a custom parameter) is an error naming the path, unless
a rule says what it is (``rules_for_model`` knows embedding tables; ``Regulariser.for_model`` leaves
custom parameters unpenalised with one warning). Rules are ``(regex, role)`` pairs matched with ``re.search``
against the leaf's path string (e.g. ``"conv1/kernel"``, ``"params/Dense_0/bias"``); the
first matching rule wins and overrides the inference, as big_vision's masks do::

    rules = [(r"^head/", "none"), (r"embedding$", "none")]

For a role, the ``to_*`` layout functions put one group on the last axis (or, for the
MobilePrune tree, leaves on the last and a whole channel on the last two axes), and the
``from_*`` functions undo them. Groups use Flax's layouts (Dense kernel (in, out), conv
kernel (*spatial, in, out)):

* neuron group (dense): row j = every outgoing weight of input neuron j.
* channel tree (conv): input channel c → (taps, out); leaf = one tap (h, w, c) across all
  output filters (the shape group), root = the whole channel (the channel group).
* output group (DEGL): every incoming weight of one output unit / filter.
* element group (bias): each entry alone.

Works on linen parameter dicts and on ``flax.nnx`` State alike: NNX's trailing
``.value`` attribute is dropped from the path. Groups that follow the model's couplings (every reader of a
residual-stream channel as one unit) come from ``Regulariser.for_model`` (``mobileprune_jax.units``).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Rules = Sequence[tuple[str, str]]

ROLES = ("dense", "conv", "conv_out_in", "bias", "none", "depthwise", "heads_in", "heads_out")
_ATTENTION_INPUTS = {"query", "key", "value"}
_NORM_STATS = ("mean", "var")
_NORMS = tuple(getattr(nnx, n) for n in ("BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm")
               if hasattr(nnx, n))

__all__ = [
    "ROLES",
    "path_to_str",
    "leaf_paths",
    "leaf_roles",
    "unknown_leaves",
    "named_leaves",
    "to_neuron_groups",
    "from_neuron_groups",
    "to_channel_trees",
    "from_channel_trees",
    "to_output_groups",
    "from_output_groups",
    "to_element_groups",
    "to_depthwise_trees",
    "from_depthwise_trees",
    "to_head_groups",
    "from_head_groups",
    "general_layers",
    "rules_for_model",
    "from_element_groups",
]


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_to_str(path: Iterable[Any]) -> str:
  """'/'-joined key names of a pytree path, without NNX's trailing ``value``."""
  names = [_key_name(k) for k in path]
  if names and names[-1] == "value" and type(path[-1]).__name__ == "GetAttrKey":
    names = names[:-1]
  return "/".join(names)


def leaf_paths(tree: Any) -> list[str]:
  """Path strings of the leaves of ``tree``, in ``jax.tree.leaves`` order."""
  return [path_to_str(p) for p, _ in jax.tree.flatten_with_path(tree)[0]]


def _validate_rules(rules: Rules | None) -> list[tuple[re.Pattern, str]]:
  compiled = []
  for rule in rules or ():
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
      raise ValueError(f"a rule must be a (regex, role) pair, got {rule!r}")
    pattern, role = rule
    if role not in ROLES:
      raise ValueError(f"rule {rule!r}: role must be one of {ROLES}, got {role!r}")
    compiled.append((re.compile(pattern), role))
  return compiled


def _infer_role(path: str, shape: tuple[int, ...], siblings: set[str], uncles: set[str]) -> str | None:
  parts = path.split("/")
  name, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
  attention = _ATTENTION_INPUTS <= uncles  # a module with query, key and value children
  if name == "kernel":
    if len(shape) == 2:
      return "dense"
    if len(shape) == 3 and attention and parent in _ATTENTION_INPUTS:
      return "heads_in"
    if len(shape) == 3 and attention and parent == "out":
      return "heads_out"
    if len(shape) >= 3:
      return "conv"
    return None
  if name == "bias" and "kernel" in siblings and attention and parent in _ATTENTION_INPUTS and len(shape) == 2:
    return "bias"
  if name in _NORM_STATS:
    return "none"
  if name == "scale" and ("bias" in siblings or "kernel" not in siblings) and len(shape) == 1:
    return "none"  # a normalisation's scale: with its bias, or alone (RMSNorm, LayerNorm(use_bias=False))
  if name == "bias" and len(shape) == 1:
    if "kernel" in siblings:
      return "bias"
    if "scale" in siblings:
      return "none"
  return None


def _check_shape(path: str, role: str, shape: tuple[int, ...]) -> None:
  ok = {"dense": len(shape) == 2, "conv": len(shape) >= 3, "conv_out_in": len(shape) >= 3, "bias": len(shape) >= 1, "none": True,
        "depthwise": len(shape) >= 3 and shape[-2] == 1, "heads_in": len(shape) == 3, "heads_out": len(shape) == 3}[role]
  if not ok:
    raise ValueError(f"parameter {path!r} of shape {shape} cannot have role {role!r}")


def _resolve_roles(params: Any, rules: Rules | None) -> list[tuple[str, tuple[int, ...], str | None, bool]]:
  """(path, shape, role or None, whether the role was inferred rather than given by a rule) per leaf."""
  compiled = _validate_rules(rules)
  flat = jax.tree.flatten_with_path(params)[0]
  paths = [path_to_str(p) for p, _ in flat]
  children: dict[str, set[str]] = {}
  for path in paths:
    parts = path.split("/")
    for i in range(len(parts)):  # every ancestor knows its children (modules as well as leaves)
      children.setdefault("/".join(parts[:i]), set()).add(parts[i])
  out = []
  for path, (_, leaf) in zip(paths, flat):
    shape = tuple(jnp.shape(leaf))
    role = next((r for pattern, r in compiled if pattern.search(path)), None)
    inferred = role is None
    if inferred:
      parent = path.rpartition("/")[0]
      role = _infer_role(path, shape, children[parent], children.get(parent.rpartition("/")[0], set()))
    out.append((path, shape, role, inferred))
  return out


def named_leaves(params: Any, rules: Rules | None) -> list[str]:
  """Paths of the leaves some rule of ``rules`` matches (their role is the rule's, not inferred)."""
  return [path for path, _, _, inferred in _resolve_roles(params, rules) if not inferred]


def unknown_leaves(params: Any, rules: Rules | None = None) -> list[str]:
  """Paths of the leaves no rule covers and whose role their path and shape do not tell (``leaf_roles`` raises on them)."""
  return [path for path, _, role, _ in _resolve_roles(params, rules) if role is None]


def leaf_roles(params: Any, rules: Rules | None = None, *, warn_depthwise: bool = True) -> list[str]:
  """The role of every leaf of ``params`` (in ``jax.tree.leaves`` order).

  Args:
    params: a parameter pytree (linen dict, nnx.State, ...) of arrays or shape structs.
    rules: optional ``(regex, role)`` overrides, first match wins.
    warn_depthwise: warn when several (k, k, 1, C) kernels no rule names are taken as convs reading one channel
      (they are most likely depthwise, grouped per channel only by ``rules_for_model``); False where the caller
      does not group kernels (a support mask).

  Raises:
    ValueError: naming the path of a leaf whose role cannot be inferred and that no rule
      covers, or of a leaf whose shape does not fit the role a rule gives it.
  """
  roles = []
  lookalikes = []  # (k, k, 1, C) kernels no rule names: depthwise, or a conv reading one channel
  for path, shape, role, inferred in _resolve_roles(params, rules):
    if inferred and role == "conv" and len(shape) == 4 and shape[-2] == 1 and shape[-1] > 1:
      lookalikes.append(path)
    if role is None:
      raise ValueError(
          f"cannot tell how to group parameter {path!r} of shape {shape}: it is not a "
          "dense/conv kernel, a layer bias or a normalisation parameter. Pass a rule, "
          f"e.g. rules=[({re.escape(path)!r}, 'none')]"
      )
    _check_shape(path, role, shape)
    roles.append(role)
  if warn_depthwise and len(lookalikes) > 1:  # one such kernel is a grayscale net's first conv; several are most likely depthwise
    warnings.warn(f"{len(lookalikes)} kernels of shape (k, k, 1, C) are grouped as convs reading one channel (one "
                  f"group for the whole layer): {', '.join(lookalikes[:3])}{', ...' if len(lookalikes) > 3 else ''}; "
                  "if they are depthwise, use Regulariser.for_model(model, x) or rules=groups.rules_for_model(model)",
                  stacklevel=2)
  return roles


# --------------------------------------------------------------------------------------
# layouts: put the groups on the trailing axes, and back
# --------------------------------------------------------------------------------------


def to_neuron_groups(kernel: Array) -> Array:
  """Dense kernel (in, out) → (in, out): row j is input neuron j's group (identity)."""
  return kernel


def from_neuron_groups(groups: Array, shape: tuple[int, ...]) -> Array:
  return groups.reshape(shape)


def to_channel_trees(kernel: Array) -> Array:
  """Conv kernel (*spatial, in, out) → (in, taps, out): one tree per input channel."""
  n_in, n_out = kernel.shape[-2], kernel.shape[-1]
  taps = math.prod(kernel.shape[:-2])
  moved = jnp.moveaxis(kernel, -2, 0)  # (in, *spatial, out)
  return moved.reshape(n_in, taps, n_out)


def from_channel_trees(trees: Array, shape: tuple[int, ...]) -> Array:
  moved = trees.reshape((shape[-2],) + tuple(shape[:-2]) + (shape[-1],))
  return jnp.moveaxis(moved, 0, -2)


def to_output_groups(kernel: Array) -> Array:
  """Kernel (..., out) → (out, prod(...)): every incoming weight of one output unit/filter."""
  return jnp.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)


def from_output_groups(groups: Array, shape: tuple[int, ...]) -> Array:
  moved = groups.reshape((shape[-1],) + tuple(shape[:-1]))
  return jnp.moveaxis(moved, 0, -1)


def to_depthwise_trees(kernel: Array) -> Array:
  """Depthwise kernel (*spatial, 1, C) → (C, taps, 1): per channel, a tree whose leaves are its taps."""
  return jnp.moveaxis(kernel.reshape(-1, kernel.shape[-1]), -1, 0)[..., None]


def from_depthwise_trees(trees: Array, shape: tuple[int, ...]) -> Array:
  return jnp.moveaxis(trees[..., 0], 0, -1).reshape(shape)


def to_head_groups(kernel: Array, role: str) -> Array:
  """Attention kernel → (heads, rest): (in, heads, d) for ``heads_in``, (heads, d, out) for ``heads_out``."""
  moved = jnp.moveaxis(kernel, 1, 0) if role == "heads_in" else kernel
  return moved.reshape(moved.shape[0], -1)


def from_head_groups(groups: Array, shape: tuple[int, ...], role: str) -> Array:
  if role == "heads_in":
    return jnp.moveaxis(groups.reshape(shape[1], shape[0], shape[2]), 0, 1)
  return groups.reshape(shape)


def _attention_projections(model: Any) -> set[int]:
  """ids of the ``nnx.MultiHeadAttention`` projections (their kernels take heads_in / heads_out by shape)."""
  return {id(child) for _, node in nnx.iter_graph(model) if isinstance(node, nnx.MultiHeadAttention)
          for child in (node.query, node.key, node.value, node.out)}


def _is_general(node: Any, attention: set[int]) -> bool:
  """An ``nnx.Einsum``, or an ``nnx.LinearGeneral`` with several input or output axes outside attention."""
  return isinstance(node, nnx.Einsum) or (isinstance(node, nnx.LinearGeneral) and id(node) not in attention
                                          and jnp.ndim(node.kernel[...]) != 2)


def general_layers(model: Any) -> dict[str, Any]:
  """Layers whose parameter shapes do not say which axis they read, by path: ``nnx.Einsum`` (any contraction) and
  ``nnx.LinearGeneral`` with several input or output axes outside ``nnx.MultiHeadAttention``."""
  attention = _attention_projections(model)
  return {path_to_str(path): node for path, node in nnx.iter_graph(model) if _is_general(node, attention)}


def rules_for_model(model: Any) -> list[tuple[str, str]]:
  """Rules for the kernels whose role their shape cannot tell: depthwise convs and PyTorch-layout transposed convs.

  ``nnx.Conv`` with ``feature_group_count`` = in = out features > 1 gets ``"depthwise"``; other
  grouped convs get ``"none"`` (not penalised: the input-channel tree would mix their groups;
  surgery still cuts a whole group once its outputs are unread or its inputs dead).
  ``nnx.ConvTranspose(transpose_kernel=True)`` (kernel (*spatial, out, in)) gets ``"conv_out_in"``.
  Tables and layers whose parameter shapes do not say which axis they read get ``"none"`` (not
  penalised; surgery still shrinks the layers around them): ``nnx.Embed`` (its rows are tokens),
  ``nnx.Einsum`` (any contraction) and ``nnx.LinearGeneral`` with several input or output axes (a
  2-D one is a dense layer; those of ``nnx.MultiHeadAttention`` keep their head roles). Normalisation
  layers (BatchNorm, LayerNorm, RMSNorm, GroupNorm, InstanceNorm) get ``"none"`` whatever their names.
  """
  rules = []
  attention = _attention_projections(model)
  for path, node in nnx.iter_graph(model):
    name = f"^{re.escape(path_to_str(path))}/"
    if isinstance(node, nnx.Embed):
      rules.append((name + "embedding$", "none"))
    elif _is_general(node, attention):
      rules.append((name + "(kernel|bias)$", "none"))
    elif isinstance(node, nnx.LinearGeneral) and id(node) not in attention:  # a 2-D one: a dense layer
      rules.append((name + "kernel$", "dense"))
      rules.append((name + "bias$", "bias"))
    elif isinstance(node, nnx.Conv) and node.feature_group_count > 1:
      depthwise = node.feature_group_count == node.in_features == node.out_features
      rules.append((name + "kernel$", "depthwise" if depthwise else "none"))
    elif isinstance(node, nnx.ConvTranspose) and node.transpose_kernel:
      rules.append((name + "kernel$", "conv_out_in"))
    elif isinstance(node, _NORMS):
      rules.append((name + "(scale|bias)$", "none"))
  return rules


def to_element_groups(x: Array) -> Array:
  """Any array → (size, 1): each entry is its own group."""
  return x.reshape(-1, 1)


def from_element_groups(groups: Array, shape: tuple[int, ...]) -> Array:
  return groups.reshape(shape)
