"""``Regulariser``: a penalty R over a parameter pytree and its exact prox at a step size.

    prox_{s·m·R}(y) = argmin_x ½‖x − y‖²_D + m·R(x),   D = diag(1/s)

``s`` is the step size — a scalar, or a pytree of per-coordinate step sizes (a diagonal metric,
e.g. Adam's preconditioner; see ``transforms.with_prox``) — and ``m`` a global multiplier on every
coefficient (what a budget controller adapts). With a per-coordinate ``s`` the metric is made
constant on each group (the group's mean of 1/s), which keeps the prox exact for group terms:
for a penalty that is a sum of terms on disjoint groups (or nested trees), the metric-weighted
prox with one scalar d_g per group is the Euclidean prox with step 1/d_g.

A penalty is a table ``role -> LeafRule`` (``groups.leaf_roles`` gives each leaf a role:
dense/conv/depthwise kernels, attention kernels, layer biases, or "none"): how the leaf is cut
into groups (``Layout``) and the prox of one batch of groups. Coefficients are ``ArrayLike``
(Python floats, arrays — also traced ones, so they can be injected, vmapped or changed at run
time without recompiling) or schedules of the step count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mobileprune_jax import groups
from mobileprune_jax.prox.validation import compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Coefficient = ArrayLike | optax.Schedule
# (groups, step per group (shape groups.shape[:-group_ndim]), coefficients) -> prox of the groups
GroupProx = Callable[[Array, Array, Mapping[str, Array]], Array]


class Layout(NamedTuple):
  """How a leaf is cut into groups: ``split(value) -> groups``, ``join(groups, shape) -> value``.

  ``group_ndim`` trailing axes of the grouped array make one group (0: every entry alone, 1: rows,
  2: two-level trees, leaves × members). ``stack``: groups of every leaf with this layout and the
  same ``groups.shape[-2]`` go through one call (θ compiles once per kernel size, not per shape).
  """

  split: Callable[[Array], Array]
  join: Callable[[Array, tuple[int, ...]], Array]
  group_ndim: int
  stack: bool = False


ELEMENTS = Layout(lambda v: v, lambda g, shape: g, 0)
ROWS = Layout(groups.to_neuron_groups, groups.from_neuron_groups, 1)
FILTERS = Layout(groups.to_output_groups, groups.from_output_groups, 1)
BIAS = Layout(groups.to_element_groups, groups.from_element_groups, 1)
CHANNEL_TREES = Layout(groups.to_channel_trees, groups.from_channel_trees, 2, stack=True)
DEPTHWISE_TREES = Layout(groups.to_depthwise_trees, groups.from_depthwise_trees, 2, stack=True)


def out_in(layout: Layout) -> Layout:
  """``layout`` for a (*spatial, out, in) kernel (``ConvTranspose(transpose_kernel=True)``): axes -1, -2 swapped."""
  swap = lambda v: jnp.swapaxes(v, -1, -2)
  return Layout(lambda v: layout.split(swap(v)), lambda g, shape: swap(layout.join(g, (*shape[:-2], shape[-1], shape[-2]))),
                layout.group_ndim, layout.stack)


CHANNEL_TREES_OUT_IN = out_in(CHANNEL_TREES)
FILTERS_OUT_IN = out_in(FILTERS)
HEADS_IN = Layout(lambda v: groups.to_head_groups(v, "heads_in"),
                  lambda g, shape: groups.from_head_groups(g, shape, "heads_in"), 1)
HEADS_OUT = Layout(lambda v: groups.to_head_groups(v, "heads_out"),
                   lambda g, shape: groups.from_head_groups(g, shape, "heads_out"), 1)


class LeafRule(NamedTuple):
  layout: Layout
  prox: GroupProx


def check_coefficient(fn: str, name: str, value: Any) -> None:
  """Concrete coefficients must be finite and ≥ 0; traced values and schedules pass (checked where made)."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  if isinstance(value, bool) or not isinstance(value, (int, float, np.ndarray, np.generic, jax.Array)):
    raise TypeError(f"{fn}: {name} must be a number, an array or a schedule, got {value!r}")
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.number):
    raise TypeError(f"{fn}: {name} must be numeric, got dtype {arr.dtype}")
  if not np.all(np.isfinite(arr)) or np.any(arr < 0):
    raise ValueError(f"{fn}: {name} must be a finite non-negative number, got {value!r}")


def is_nonzero(value: Coefficient) -> bool:
  """False only for a concrete coefficient that is 0 everywhere (schedules and traced values count as set)."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return True
  return bool(np.any(np.asarray(value) != 0))


def evaluate(value: Coefficient, count: ArrayLike) -> Array:
  """A coefficient at step ``count`` (schedules are called with it)."""
  return jnp.asarray(value(count) if callable(value) else value)


def group_step(step: Array, layout: Layout) -> Array:
  """Step size per group: a scalar stays; per-coordinate steps give 1 / mean(1/s) over each group."""
  if step.ndim == 0:
    return step
  metric = layout.split(1 / step)
  if layout.group_ndim:
    metric = jnp.mean(metric, axis=tuple(range(-layout.group_ndim, 0)))
  return 1 / metric


def _bucket_width(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class Regulariser:
  """A penalty R(params) = Σ over leaves of a per-role group penalty, with its exact prox.

  Attributes:
    name: the penalty's name (used in error messages).
    coefficients: name -> coefficient (float, array, or schedule of the step count).
    rules_by_role: role -> ``LeafRule``; leaves of other roles are left as they are.
    rules: optional ``(regex, role)`` overrides of the roles (see ``groups``).
    unit_prox: the prox of the penalty on a model's coupled units (``for_model``); None: nothing to couple
      (element-wise penalties).
    unit_side: "reader" (units of what a kernel entry reads: MobilePrune, group lasso, ℓ1-SGL) or "writer"
      (what it writes: DEGL/EGL).
    reader_axes: path -> input axis of the custom kernels ``for_model`` found in a layout other than their role's
      (an (out, in) matrix used as ``x @ w.T``: axis 1), for what reads a kernel by its layer's inputs (the budget
      landing's spare unit).
  """

  name: str
  coefficients: Mapping[str, Coefficient]
  rules_by_role: Mapping[str, LeafRule]
  rules: groups.Rules | None = None
  unit_prox: Callable | None = None
  unit_side: str = "reader"
  reader_axes: Mapping[str, int] | None = None

  def __post_init__(self):
    groups._validate_rules(self.rules)
    for key, value in self.coefficients.items():
      check_coefficient(self.name, key, value)

  def for_model(self, model: Any, sample_input: Any, *, graph: Any = None) -> Regulariser:
    """This penalty with ``model``'s coupled units as its groups: the units surgery removes.

    One trace of ``model`` on ``sample_input`` (or ``graph``, a trace already made) gives the channel sets
    surgery removes together; every kernel entry joins the unit of the channel it reads, so a zero unit is a channel
    the rebuilt model drops (``regularisers.coupled``, docs/algorithms.md §K). DEGL/EGL take the writer side: a unit
    holds every producer's output filter of a channel set and the per-channel vectors of those channels (biases,
    normalisation scales and shifts, a PReLU slope; OTO's zero-invariant groups), so a zero unit is a zero channel
    surgery drops. Channels surgery must keep (a model output, a LayerNorm'd stream, a shape the code fixes) are in
    no unit.
    Element-wise penalties (ℓ0, ℓ1, ℓ2) come back unchanged except for the model's depthwise rules.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> class MLP(nnx.Module):
      ...   def __init__(self, rngs=nnx.Rngs(0)):
      ...     self.fc1, self.fc2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.fc2(nnx.relu(self.fc1(x)))
      >>> from mobileprune_jax import regularisers
      >>> model = MLP()
      >>> reg = regularisers.group_lasso(neuron=100.0).for_model(model, jnp.ones((2, 4)))
      >>> new = reg.prox(nnx.state(model, nnx.Param), 1.0)  # a hidden unit's group: its row of fc2
      >>> float(abs(new["fc2"]["kernel"][...]).max())
      0.0
    """
    from mobileprune_jax.regularisers.coupled import couple  # coupled builds on this class

    return couple(self, model, sample_input, graph)

  def blocks(self, blocks: Sequence[Sequence[str]]) -> list[list[str]]:
    """PALM blocks (lists of leaf paths) whose prox this penalty can take one at a time (per-layer: as given)."""
    return [list(b) for b in blocks]

  def roles(self, params: Any) -> list[str]:
    """The role of every leaf of ``params`` (``jax.tree.leaves`` order). Several (k, k, 1, C) kernels no rule names
    get a warning only from a penalty that groups convs and depthwise kernels differently."""
    conv, depthwise = self.rules_by_role.get("conv"), self.rules_by_role.get("depthwise")
    differ = conv is not None and depthwise is not None and conv.layout != depthwise.layout
    return groups.leaf_roles(params, self.rules, warn_depthwise=differ)

  def coefficients_at(self, count: ArrayLike = 0, multiplier: ArrayLike = 1.0) -> dict[str, Array]:
    """Every coefficient at step ``count``, times ``multiplier``."""
    return {k: evaluate(v, count) * multiplier for k, v in self.coefficients.items()}

  def prox(self, params: Any, step_size: Any, *, count: ArrayLike = 0, multiplier: ArrayLike = 1.0) -> Any:
    """prox_{s·m·R}(params): ``step_size`` is a scalar or a pytree like ``params`` (diagonal metric).

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from mobileprune_jax import regularisers
      >>> params = {"fc": {"kernel": jnp.array([[3.0, 4.0], [0.3, 0.4]])}}  # row j: input neuron j's group
      >>> new = regularisers.group_lasso(neuron=1.0).prox(params, 1.0)  # ‖row‖ 5 → 4, ‖row‖ 0.5 → 0
      >>> print(np.asarray(new["fc"]["kernel"]).round(3))
      [[2.4 3.2]
       [0.  0. ]]
    """
    leaves, treedef = jax.tree.flatten(params)
    steps = step_leaves(step_size, params, self.name)
    new = self.prox_leaves(self.roles(params), leaves, steps, count=count, multiplier=multiplier,
                           paths=groups.leaf_paths(params))
    return jax.tree.unflatten(treedef, new)

  def prox_leaves(self, roles: Sequence[str], leaves: Sequence[Array], step_size: ArrayLike | Sequence[Array], *,
                  count: ArrayLike = 0, multiplier: ArrayLike = 1.0,
                  paths: Sequence[str] | None = None) -> list[Array]:
    """The prox on a list of leaves with known roles (e.g. one PALM block); ``step_size`` scalar or per leaf.

    ``paths``: the leaves' paths (needed by coupled units, ignored by per-layer groups).
    """
    steps = step_size if isinstance(step_size, (list, tuple)) else [step_size] * len(leaves)
    coefs = self.coefficients_at(count, multiplier)
    out: list[Array | None] = [None] * len(leaves)
    stacked: dict[tuple, list] = {}
    for i, (role, leaf, step) in enumerate(zip(roles, leaves, steps)):
      rule = self.rules_by_role.get(role)
      if rule is None:
        out[i] = leaf
        continue
      s = group_step(jnp.asarray(step, compute_dtype(leaf.dtype)), rule.layout)
      grouped = rule.layout.split(leaf)
      if rule.layout.stack:  # one call per (prox, dtype, leaves per tree): conv and depthwise trees together
        s = jnp.broadcast_to(s, grouped.shape[:-2])
        stacked.setdefault((rule.prox, leaf.dtype, grouped.shape[-2]), []).append((i, grouped, s))
      else:
        out[i] = rule.layout.join(rule.prox(grouped, s, _cast(coefs, s.dtype)), leaf.shape).astype(leaf.dtype)
    for (tree_prox, _, _), members in stacked.items():
      for i, value in _stacked_prox(tree_prox, members, coefs).items():
        layout = self.rules_by_role[roles[i]].layout
        out[i] = layout.join(value, leaves[i].shape).astype(leaves[i].dtype)
    return out

  def acts_on(self, roles: Sequence[str], paths: Sequence[str]) -> list[bool]:
    """Whether the prox may change each leaf (its role has a rule); the others pass through untouched."""
    return [role in self.rules_by_role for role in roles]

  def as_transform(self, learning_rate: Coefficient) -> optax.GradientTransformationExtraArgs:
    """``u ↦ prox_{s·R}(p + u) − p`` with s = ``learning_rate`` (see ``transforms``)."""
    return prox_transform(self, learning_rate)


def _cast(coefs: Mapping[str, Array], dtype) -> dict[str, Array]:
  return {k: v.astype(dtype) for k, v in coefs.items()}


def _stacked_prox(tree_prox: GroupProx, members: list[tuple[int, Array, Array]], coefs) -> dict[int, Array]:
  """One prox call on the trees of several leaves, zero-padded to a common width (a power of two).

  Exact: zero entries are never in an optimal support (ties go to zero) and change no norm, and
  trees are independent.
  """
  width = _bucket_width(max(g.shape[-1] for _, g, _ in members))
  flat = [(g.reshape((-1,) + g.shape[-2:]), s.reshape(-1)) for _, g, s in members]
  trees = jnp.concatenate([jnp.pad(t, ((0, 0), (0, 0), (0, width - t.shape[-1]))) for t, _ in flat])
  steps = jnp.concatenate([s.astype(compute_dtype(trees.dtype)) for _, s in flat])
  result = tree_prox(trees, steps, _cast(coefs, steps.dtype))
  out, start = {}, 0
  for (i, g, _), (t, _) in zip(members, flat):
    out[i] = result[start:start + t.shape[0], :, :g.shape[-1]].reshape(g.shape)
    start += t.shape[0]
  return out


def step_leaves(step_size: Any, params: Any, fn: str) -> list[Array]:
  """Per-leaf step sizes from a scalar or a pytree with the structure of ``params``."""
  leaves = jax.tree.leaves(params)
  if jax.tree.structure(step_size) == jax.tree.structure(0):
    return [jnp.asarray(step_size)] * len(leaves)
  steps = jax.tree.leaves(step_size)
  if (jax.tree.structure(step_size) != jax.tree.structure(params)
      or any(jnp.shape(s) not in ((), jnp.shape(p)) for s, p in zip(steps, leaves))):
    raise ValueError(f"{fn}: step_size must be a scalar or a pytree of the params' structure and shapes")
  return [jnp.asarray(s) for s in steps]


def proximal_updates(regulariser: Regulariser, updates: Any, params: Any, step: Any, count: ArrayLike,
                     multiplier: ArrayLike) -> Any:
  """``prox_{s·m·R}(p + u) − p`` leaf by leaf; leaves the regulariser does not touch keep ``u`` exactly."""
  flat_u, treedef = jax.tree.flatten(updates)
  flat_p = jax.tree.leaves(params)
  if len(flat_u) != len(flat_p):
    raise ValueError(f"{regulariser.name}: updates and params have different structures")
  roles = regulariser.roles(params)
  steps = step_leaves(step, params, regulariser.name)
  moved = [(p + u).astype(p.dtype) for p, u in zip(flat_p, flat_u)]
  target = regulariser.prox_leaves(roles, moved, steps, count=count, multiplier=multiplier,
                                   paths=groups.leaf_paths(params))
  acts = regulariser.acts_on(roles, groups.leaf_paths(params))
  new_u = [(t - p).astype(u.dtype) if act else u for act, u, p, t in zip(acts, flat_u, flat_p, target)]
  return jax.tree.unflatten(treedef, new_u)


class ProxState(NamedTuple):
  """State of a proximal transform: the step count, for learning-rate and coefficient schedules."""

  count: Array


def prox_transform(regulariser: Regulariser, learning_rate: Coefficient) -> optax.GradientTransformationExtraArgs:
  """``u ↦ prox_{s·m·R}(p + u) − p`` with s = ``learning_rate`` (float, array or schedule of the count).

  Args:
    regulariser: the penalty R.
    learning_rate: the step size s; the same as the base optimizer's (see the module's notes on the
      plain chain; ``with_prox`` reads it from the base instead).

  The update takes the extra argument ``penalty_multiplier`` (m, default 1).
  """
  check_coefficient(regulariser.name, "learning_rate", learning_rate)

  def init_fn(params):
    regulariser.roles(params)  # fail at construction time, naming the path
    return ProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, penalty_multiplier: ArrayLike = 1.0, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f"{regulariser.name}: update needs params (the proximal step is taken at p + u)")
    step = evaluate(learning_rate, state.count)
    new_u = proximal_updates(regulariser, updates, params, step, state.count, penalty_multiplier)
    return new_u, ProxState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
