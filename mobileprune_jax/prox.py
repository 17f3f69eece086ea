"""Proximal operators of sparsity-inducing penalties, as pure JAX array functions.

Every operator here computes ``prox_{R}(y) = argmin_x ½‖x − y‖² + R(x)`` exactly and
returns exact zeros. The functions know nothing of Flax or optax: they act on arrays,
are jit-compiled, work in any floating dtype (half precision is computed in float32 and
cast back), and batch over leading axes.

Conventions:

* Element-wise operators (``hard_threshold``, ``soft_threshold``, ``ridge``) broadcast
  their coefficient against ``y``.
* Group operators (``group_soft_threshold``, ``l1_sgl``, ``pi``) treat the **last axis** as
  one group; their coefficients broadcast against ``y.shape[:-1]`` (one value per group).
* Tree operators (``theta``, ``tree_group_soft_threshold``, ``tree_l1_sgl``) take
  ``y`` of shape ``(..., L, F)``: ``L`` leaf groups of ``F`` members each, all under one
  root group made of the last two axes. Coefficients broadcast against ``y.shape[:-2]``
  (one value per tree).
* Ties go to zero: where keeping and dropping a group (or entry) give the same objective
  value, the result is zero.

Negative coefficients are rejected with a ``ValueError`` when they are concrete values;
traced coefficients (inside ``jit``) cannot be checked and must be non-negative.

``pi`` and ``theta`` sort only the groups their sort-free bounds leave ambiguous, with XLA's
sort on every backend: no host callback, whose presence would make the CPU runtime dispatch a
whole training step synchronously.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "hard_threshold",
    "soft_threshold",
    "ridge",
    "group_soft_threshold",
    "l1_sgl",
    "pi",
    "theta",
    "tree_group_soft_threshold",
    "tree_l1_sgl",
]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _check_nonnegative(name: str, value: ArrayLike) -> None:
  """Raises ValueError if a concrete coefficient has a negative (or NaN) entry."""
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.number):
    raise TypeError(f"coefficient {name!r} must be numeric, got {arr.dtype}")
  if np.any(np.isnan(arr)) or np.any(arr < 0):
    raise ValueError(f"coefficient {name!r} must be non-negative, got {value!r}")


def _check_float(y: ArrayLike, min_ndim: int, fn: str) -> Array:
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.floating):
    raise TypeError(f"{fn}: y must have a floating dtype, got {y.dtype}")
  if y.ndim < min_ndim:
    raise ValueError(f"{fn}: y must have at least {min_ndim} dimension(s), got shape {y.shape}")
  return y


def _compute_dtype(dtype) -> jnp.dtype:
  """float16/bfloat16 are computed in float32; float32/float64 as they are."""
  return jnp.promote_types(dtype, jnp.float32)


def _coef(c: ArrayLike, dtype, batch_shape: tuple[int, ...], fn: str, name: str) -> Array:
  """Broadcasts a per-group coefficient to ``batch_shape``, with a clear error."""
  c = jnp.asarray(c, dtype)
  try:
    return jnp.broadcast_to(c, batch_shape)
  except ValueError:
    raise ValueError(
        f"{fn}: coefficient {name!r} of shape {c.shape} does not broadcast against the "
        f"group shape {batch_shape}"
    ) from None


def _checked(*names: str) -> Callable:
  """Decorator: validates coefficient arguments eagerly, then calls the jitted function."""

  def wrap(fn):
    jitted = jax.jit(fn)

    @functools.wraps(fn)
    def call(y, *coefs):
      if len(coefs) != len(names):
        raise TypeError(f"{fn.__name__}() takes y and {len(names)} coefficient(s) {names}")
      for name, c in zip(names, coefs):
        _check_nonnegative(name, c)
      return jitted(y, *coefs)

    return call

  return wrap


def _scan(op, x: Array, reverse: bool = False) -> Array:
  """Inclusive prefix scan along the last axis (log-depth: faster than cumsum on CPU)."""
  return jax.lax.associative_scan(op, x, reverse=reverse, axis=x.ndim - 1)


def _cumsum(x: Array, block: int = 32) -> Array:
  """Inclusive prefix sums along the last axis as two small triangular matmuls.

  Sums within blocks of ``block`` entries, then adds the blocks' running totals: on CPU
  ~2–4× faster than a scan and as accurate (every entry is a short dot product).
  """
  n = x.shape[-1]
  b = min(block, n)
  m = -(-n // b)
  hi = jax.lax.Precision.HIGHEST
  blocks = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, m * b - n)]).reshape(x.shape[:-1] + (m, b))
  out = jnp.matmul(blocks, jnp.triu(jnp.ones((b, b), x.dtype)), precision=hi)
  if m > 1:
    out = out + jnp.matmul(out[..., -1], jnp.triu(jnp.ones((m, m), x.dtype), 1), precision=hi)[..., None]
  return out.reshape(x.shape[:-1] + (m * b,))[..., :n]


def _sorted_stats(y: Array) -> tuple[Array, Array]:
  """|y| sorted in descending order and its prefix norms (last axis).

  Returns:
    a_sorted: |y| in descending order, shape (..., n).
    s: s[..., k] = ‖top-k entries of y‖₂ for k = 0..n (shape (..., n + 1), s[..., 0] = 0).
  """
  a_sorted = jnp.flip(jnp.sort(jnp.abs(y), axis=-1), -1)
  sums = _cumsum(jnp.square(a_sorted))
  return a_sorted, jnp.sqrt(jnp.concatenate([jnp.zeros(y.shape[:-1] + (1,), sums.dtype), sums], axis=-1))


def _top_k_mask(a: Array, a_sorted: Array, k: Array) -> Array:
  """Mask of exactly k[...] largest entries of a ≥ 0 along the last axis.

  Entries tied with the k-th largest value are taken first-come along the axis, so the
  mask never holds more than k entries (ties matter: keeping one more tied entry changes
  the objective).
  """
  kth = jnp.take_along_axis(a_sorted, jnp.maximum(k - 1, 0)[..., None], axis=-1)
  above = a > kth
  tied = a == kth
  room = k[..., None] - jnp.sum(above, axis=-1, keepdims=True)
  too_many_tied = jnp.any((jnp.sum(tied, axis=-1, keepdims=True) > room) & (k[..., None] > 0))
  keep = jax.lax.cond(too_many_tied,  # rare (exact ties at the cut): rank the tied entries
                      lambda: above | (tied & (_scan(jnp.add, tied.astype(jnp.int32)) <= room)),
                      lambda: above | tied)
  return keep & (k[..., None] > 0)


def _shrink_factor(norm: Array, lam: Array) -> Array:
  """(1 − lam/‖·‖)_+ with 0/0 → 0 and norm == lam → 0."""
  safe = jnp.where(norm > 0, norm, 1)
  return jnp.where(norm > lam, 1 - lam / safe, 0)


def _phi(big_h: Array, gamma: Array) -> Array:
  """Φ(H) = ½(√H − gamma)_+²: what a support of (leaf-shrunk) squared norm H gains under a root shrink."""
  return 0.5 * jnp.square(jnp.maximum(jnp.sqrt(big_h) - gamma, 0))


def _phi_slope(big_h: Array, gamma: Array) -> Array:
  """Φ'(H) = ½(1 − gamma/√H)_+ (0 where √H ≤ gamma); non-decreasing in H."""
  root = jnp.sqrt(big_h)
  return jnp.where(root > gamma, 0.5 * (1 - gamma / jnp.where(root > 0, root, 1)), 0)


def _slope_floor(gain: Array, gamma: Array) -> Array:
  """Least Φ'(H) over all H with Φ(H) ≥ gain: ½(1 − gamma/(gamma + √(2·gain))), 0 where gain ≤ 0."""
  root = gamma + jnp.sqrt(2 * jnp.maximum(gain, 0))
  return jnp.where(gain > 0, 0.5 * (1 - gamma / jnp.where(root > 0, root, 1)), 0)


def _bracket(state: Callable, h_total: Array, alpha: Array, gamma: Array) -> tuple[Array, Array, Array, Array]:
  """Solves max_S Φ(H_S) − alpha·K_S without sorting, for the groups where two bounds agree.

  S is a support (a set of entries, grouped in leaves), H_S its value (a sum of per-leaf h) and
  K_S its size. Φ is convex, so an optimum S* also maximises the linearisation w*·H_S − alpha·K_S
  at w* = Φ'(H*) (spec §C.2), and the maximisers of the linearisation grow with w. Two bounds pin
  w*: w* ≤ Φ'(H_all) = w_hi, and a feasible support's gain G_ref ≤ G* gives
  Φ(H*) ≥ G_ref + alpha·K_lo, so w* ≥ w_lo (I_lo: a support inside every maximiser at w_lo, hence
  inside S*; the bound is then tightened once with its H and K). If that inner support at w_lo
  equals a support O_hi containing every maximiser at w_hi, then I_lo ⊆ S* ⊆ O_hi: O_hi is S*, or
  x = 0 if its gain is ≤ 0. If even Φ(H of O_hi) − alpha·K_lo ≤ 0, x = 0. Otherwise the group is
  ambiguous. The bounds are widened by 1024·eps (relative) against rounding, which only makes
  more groups ambiguous.

  Args:
    state: (w, outer) ↦ (selection, per-leaf h, H, K) of a support containing every maximiser of
      w·H − alpha·K (outer=True) or contained in every one (outer=False), per group; w has the
      group shape; per-leaf h has shape (groups, leaves), the selection the same or with one
      more axis (the leaves' entries).
    h_total: H of all entries, an upper bound on any H_S, per group.
    alpha, gamma: ℓ0 and root coefficients, per group.

  Returns:
    (selection, H) of the outer support at w_hi, and the masks ``ambiguous`` and ``zero`` (x = 0),
    per group.
  """
  rel = 1024 * float(np.finfo(h_total.dtype).eps)
  up, down = 1 + rel, 1 - rel
  w_hi = _phi_slope(h_total * up, gamma) * up
  sel_hi, leaf_hi, h_hi, k_hi = state(w_hi, True)
  phi_hi = _phi(h_hi, gamma)
  gain = phi_hi - alpha * k_hi
  g_ref = gain - rel * (phi_hi + alpha * k_hi)  # a lower bound on that support's gain, so on G*
  w_lo = jnp.minimum(_slope_floor(g_ref, gamma), w_hi)
  _, _, h_lo, k_lo = state(w_lo * down, False)
  w_lo = jnp.maximum(w_lo, jnp.maximum(_phi_slope(h_lo * down, gamma), _slope_floor(g_ref + alpha * k_lo * down, gamma)))
  w_lo = jnp.minimum(w_lo, w_hi)
  sel_lo, leaf_lo, _, k_lo = state(w_lo * down, False)
  same_sel = jnp.all(sel_lo == sel_hi, axis=tuple(range(leaf_hi.ndim, sel_hi.ndim)))
  same = same_sel | ((alpha[..., None] == 0) & (leaf_lo == leaf_hi))  # alpha = 0: zeros kept or not, same x
  settled = jnp.all(same, axis=-1)
  zero = (phi_hi * up - alpha * k_lo * down <= 0) | (settled & (gain <= 0))
  return sel_hi, h_hi, ~settled & ~zero, zero


def _settle_ambiguous(x_fast: Array, ambiguous: Array, exact: Callable, args: tuple[Array, ...]) -> Array:
  """x_fast with the groups marked ambiguous (axis 0) replaced by ``exact(*args)`` on them.

  The ambiguous groups are gathered in chunks of 1/64 of all groups and solved chunk by
  chunk, so ``exact`` costs in proportion to how many there are (nothing when none is) and
  is compiled once.
  """
  groups = ambiguous.shape[0]
  if groups == 0:
    return x_fast
  chunk = max(1, groups // 64)

  def solve_chunk(carry):
    x, todo = carry
    idx = jnp.nonzero(todo, size=chunk, fill_value=0)[0]  # padding repeats group 0: solved exactly too
    return x.at[idx].set(exact(*(a[idx] for a in args))), todo.at[idx].set(False)

  return jax.lax.while_loop(lambda carry: jnp.any(carry[1]), solve_chunk, (x_fast, ambiguous))[0]


# --------------------------------------------------------------------------------------
# element-wise operators
# --------------------------------------------------------------------------------------


@_checked("alpha")
def hard_threshold(y: ArrayLike, alpha: ArrayLike) -> Array:
  """Prox of alpha·‖x‖₀: x = y·1[|y| > sqrt(2·alpha)] (ties go to zero).

  Args:
    y: input array (any shape, floating dtype).
    alpha: non-negative coefficient, broadcastable against ``y``.
  """
  y = _check_float(y, 0, "hard_threshold")
  alpha = jnp.asarray(alpha, _compute_dtype(y.dtype))
  keep = jnp.square(y.astype(alpha.dtype)) > 2 * alpha
  return jnp.where(keep, y, jnp.zeros_like(y))


@_checked("alpha")
def soft_threshold(y: ArrayLike, alpha: ArrayLike) -> Array:
  """Prox of alpha·‖x‖₁: x = sign(y)·(|y| − alpha)_+.

  Args:
    y: input array (any shape, floating dtype).
    alpha: non-negative coefficient, broadcastable against ``y``.
  """
  y = _check_float(y, 0, "soft_threshold")
  dt = _compute_dtype(y.dtype)
  yc = y.astype(dt)
  out = jnp.sign(yc) * jnp.maximum(jnp.abs(yc) - jnp.asarray(alpha, dt), 0)
  return out.astype(y.dtype)


@_checked("mu")
def ridge(y: ArrayLike, mu: ArrayLike) -> Array:
  """Prox of mu·‖x‖₂²: x = y / (1 + 2·mu).

  Args:
    y: input array (any shape, floating dtype).
    mu: non-negative coefficient, broadcastable against ``y``.
  """
  y = _check_float(y, 0, "ridge")
  dt = _compute_dtype(y.dtype)
  return (y.astype(dt) / (1 + 2 * jnp.asarray(mu, dt))).astype(y.dtype)


# --------------------------------------------------------------------------------------
# group operators (group = last axis)
# --------------------------------------------------------------------------------------


def _group_shrink(y: Array, lam: Array) -> Array:
  """Block soft threshold along the last axis; lam has shape y.shape[:-1]."""
  norm = jnp.linalg.norm(y, axis=-1)
  return y * _shrink_factor(norm, lam)[..., None]


@_checked("lam")
def group_soft_threshold(y: ArrayLike, lam: ArrayLike) -> Array:
  """Prox of lam·‖x‖₂ over the last axis: x = (1 − lam/‖y‖₂)_+ · y.

  Args:
    y: array of shape (..., n); each y[..., :] is one group.
    lam: non-negative coefficient, broadcastable against ``y.shape[:-1]``.
  """
  y = _check_float(y, 1, "group_soft_threshold")
  dt = _compute_dtype(y.dtype)
  lam = _coef(lam, dt, y.shape[:-1], "group_soft_threshold", "lam")
  return _group_shrink(y.astype(dt), lam).astype(y.dtype)


@_checked("l1", "lam")
def l1_sgl(y: ArrayLike, l1: ArrayLike, lam: ArrayLike) -> Array:
  """Prox of l1·‖x‖₁ + lam·‖x‖₂ (ℓ1 sparse group lasso): group shrink of soft(y, l1).

  Args:
    y: array of shape (..., n); each y[..., :] is one group.
    l1: non-negative ℓ1 coefficient, broadcastable against ``y.shape[:-1]``.
    lam: non-negative group coefficient, broadcastable against ``y.shape[:-1]``.
  """
  y = _check_float(y, 1, "l1_sgl")
  dt = _compute_dtype(y.dtype)
  l1 = _coef(l1, dt, y.shape[:-1], "l1_sgl", "l1")
  lam = _coef(lam, dt, y.shape[:-1], "l1_sgl", "lam")
  yc = y.astype(dt)
  z = jnp.sign(yc) * jnp.maximum(jnp.abs(yc) - l1[..., None], 0)
  return _group_shrink(z, lam).astype(y.dtype)


@_checked("lam", "eta")
def pi(y: ArrayLike, lam: ArrayLike, eta: ArrayLike) -> Array:
  """Prox of lam·‖x‖₂ + eta·‖x‖₀ over the last axis (MobilePrune Algorithm 2).

  For support size k the best support is the k largest |y_j|, with value
  S_k = ½(s_k − lam)_+² − eta·k, s_k = ‖top-k of y‖₂; x keeps the top-k* entries,
  k* = argmax S_k, shrunk by (1 − lam/s_k*), and x = 0 if max S_k ≤ 0.

  Most groups are settled without sorting (``_bracket``: the optimal support is
  {j : w*·y_j² ≥ eta} for a slope w* pinned between two cheap bounds); the rest are solved
  by the sort above.

  Args:
    y: array of shape (..., n); each y[..., :] is one group.
    lam: non-negative group coefficient, broadcastable against ``y.shape[:-1]``.
    eta: non-negative ℓ0 coefficient, broadcastable against ``y.shape[:-1]``.
  """
  y = _check_float(y, 1, "pi")
  dt = _compute_dtype(y.dtype)
  lam = _coef(lam, dt, y.shape[:-1], "pi", "lam")
  eta = _coef(eta, dt, y.shape[:-1], "pi", "eta")
  yc = y.astype(dt)
  flat = lambda a: a.reshape((-1,) + a.shape[y.ndim - 1:])
  x_fast, ambiguous = _pi_bracketed(flat(yc), flat(lam), flat(eta))
  x = _settle_ambiguous(x_fast, ambiguous, _pi_sorted, (flat(yc), flat(lam), flat(eta)))
  return x.reshape(y.shape).astype(y.dtype)


def _pi_sorted(yc: Array, lam: Array, eta: Array) -> Array:
  """π by sorting each group: the score S_k of every support size k, then the best k."""
  n = yc.shape[-1]
  a_sorted, s = _sorted_stats(yc)
  k = jnp.arange(n + 1, dtype=yc.dtype)
  score = 0.5 * jnp.square(jnp.maximum(s - lam[..., None], 0)) - eta[..., None] * k
  k_best = jnp.argmax(score, axis=-1)  # first maximum: smallest k; score[0] = 0
  s_best = jnp.take_along_axis(s, k_best[..., None], axis=-1)[..., 0]
  keep = _top_k_mask(jnp.abs(yc), a_sorted, k_best)
  scale = _shrink_factor(s_best, lam)
  return jnp.where(keep, yc * scale[..., None], 0)


def _pi_bracketed(yc: Array, lam: Array, eta: Array) -> tuple[Array, Array]:
  """π where ``_bracket`` settles it (no sort), and the mask of groups it leaves ambiguous."""
  sq = jnp.square(yc)

  def state(w, outer):  # each entry is a leaf of one member: kept iff w·y_j² ≥ eta (> for the inner bound)
    take = w[:, None] * sq >= eta[:, None] if outer else w[:, None] * sq > eta[:, None]
    leaf_h = jnp.where(take, sq, 0)
    return take, leaf_h, jnp.sum(leaf_h, -1), jnp.sum(take, -1).astype(yc.dtype)

  take, big_h, ambiguous, zero = _bracket(state, jnp.sum(sq, -1), eta, lam)
  scale = jnp.where(zero, 0, _shrink_factor(jnp.sqrt(big_h), lam))
  return jnp.where(take, yc * scale[..., None], 0), ambiguous


# --------------------------------------------------------------------------------------
# tree operators (leaves = last axis, root = last two axes)
# --------------------------------------------------------------------------------------


def _tree_shrink(z: Array, beta: Array, gamma: Array) -> Array:
  """Convex two-level tree prox: leaf group shrink (beta), then root shrink (gamma)."""
  z = _group_shrink(z, jnp.broadcast_to(beta[..., None], z.shape[:-1]))
  root = jnp.sqrt(jnp.sum(jnp.square(z), axis=(-2, -1)))
  return z * _shrink_factor(root, gamma)[..., None, None]


def _tree_coefs(y: Array, fn: str, **coefs: ArrayLike) -> tuple[Array, ...]:
  dt = _compute_dtype(y.dtype)
  return tuple(_coef(c, dt, y.shape[:-2], fn, name) for name, c in coefs.items())


@_checked("beta", "gamma")
def tree_group_soft_threshold(y: ArrayLike, beta: ArrayLike, gamma: ArrayLike) -> Array:
  """Prox of beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂ (two-level tree group lasso): leaf shrink, then root.

  Args:
    y: array of shape (..., L, F): L leaf groups y[..., i, :] under one root group.
    beta: non-negative leaf coefficient, broadcastable against ``y.shape[:-2]``.
    gamma: non-negative root coefficient, broadcastable against ``y.shape[:-2]``.
  """
  y = _check_float(y, 2, "tree_group_soft_threshold")
  beta, gamma = _tree_coefs(y, "tree_group_soft_threshold", beta=beta, gamma=gamma)
  return _tree_shrink(y.astype(beta.dtype), beta, gamma).astype(y.dtype)


@_checked("l1", "beta", "gamma")
def tree_l1_sgl(y: ArrayLike, l1: ArrayLike, beta: ArrayLike, gamma: ArrayLike) -> Array:
  """Prox of l1·‖x‖₁ + beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂: soft threshold → leaf shrink → root shrink.

  Args:
    y: array of shape (..., L, F): L leaf groups y[..., i, :] under one root group.
    l1: non-negative ℓ1 coefficient, broadcastable against ``y.shape[:-2]``.
    beta: non-negative leaf coefficient, broadcastable against ``y.shape[:-2]``.
    gamma: non-negative root coefficient, broadcastable against ``y.shape[:-2]``.
  """
  y = _check_float(y, 2, "tree_l1_sgl")
  l1, beta, gamma = _tree_coefs(y, "tree_l1_sgl", l1=l1, beta=beta, gamma=gamma)
  yc = y.astype(l1.dtype)
  z = jnp.sign(yc) * jnp.maximum(jnp.abs(yc) - l1[..., None, None], 0)
  return _tree_shrink(z, beta, gamma).astype(y.dtype)


def _upper_hull(h: Array) -> tuple[Array, Array]:
  """Vertices of the increasing part of the upper concave hull of {(k, h[k])}, k = 0..F.

  h is non-decreasing along the last axis with h[..., 0] = 0. A point is dropped when its
  h equals its left neighbour's (dominated: same h, larger k) or when it lies on or below
  the chord between its two alive neighbours. Points are dropped in parallel rounds until
  none can go; every dropped point lies under a chord of two real points, so it is never
  a hull vertex, and the surviving chain is concave, hence the hull.

  Returns:
    alive: boolean mask of hull vertices, same shape as h (alive[..., 0] = True).
    prev: for every vertex k > 0, the previous vertex.
  """
  n = h.shape[-1]
  idx = jnp.arange(n)
  big = n  # "no right neighbour"

  def neighbours(alive):
    """Previous alive point strictly before k, next alive point strictly after k."""
    left = jnp.where(alive, idx, -1)
    right = jnp.where(alive, idx, big)
    prev = _scan(jnp.maximum, jnp.concatenate([jnp.full(left.shape[:-1] + (1,), -1), left[..., :-1]], -1))
    nxt = _scan(jnp.minimum, jnp.concatenate([right[..., 1:], jnp.full(right.shape[:-1] + (1,), big)], -1), reverse=True)
    return prev, nxt

  def removable(alive, prev, nxt):
    p = jnp.maximum(prev, 0)
    q = jnp.minimum(nxt, n - 1)
    hk, hp, hq = h, jnp.take_along_axis(h, p, -1), jnp.take_along_axis(h, q, -1)
    kf = idx.astype(h.dtype)
    pf, qf = p.astype(h.dtype), q.astype(h.dtype)
    dominated = hk <= hp
    below = (hk - hp) * (qf - pf) <= (hq - hp) * (kf - pf)
    return alive & (idx > 0) & (dominated | ((nxt < big) & below))

  def body(state):
    alive, _, _, drop = state
    alive = alive & ~drop
    prev, nxt = neighbours(alive)
    return alive, prev, nxt, removable(alive, prev, nxt)

  alive = jnp.ones(h.shape, bool)
  prev = jnp.broadcast_to(idx - 1, h.shape)  # everyone alive: neighbours are k ± 1
  nxt = jnp.broadcast_to(idx + 1, h.shape)
  state = (alive, prev, nxt, removable(alive, prev, nxt))
  alive, prev, _, _ = jax.lax.while_loop(lambda s: jnp.any(s[3]), body, state)
  return alive, jnp.maximum(prev, 0)


@_checked("alpha", "beta", "gamma")
def theta(y: ArrayLike, alpha: ArrayLike, beta: ArrayLike, gamma: ArrayLike) -> Array:
  """Prox of alpha·‖x‖₀ + beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂ on a two-level tree (MobilePrune Alg. 3).

  Exact: for leaf support sizes kᵢ the value gain is Φ(Σᵢ hᵢ(kᵢ)) − alpha·Σᵢ kᵢ with
  hᵢ(k) = (‖top-k of yᵢ‖ − beta)_+² and Φ(H) = ½(√H − gamma)_+². Φ is convex, so an optimum
  maximises Σᵢ w·hᵢ(kᵢ) − alpha·kᵢ for some w; sweeping w over the breakpoints of the
  per-leaf upper hulls visits it (spec §C.2). The result is the top-kᵢ entries of each leaf,
  leaf-shrunk by beta and root-shrunk by gamma. Most trees are settled without sorting
  (``_theta_bracketed``: w is pinned between two bounds, and each leaf's choice at a given w is
  bracketed the same way, by thresholds on y²); only the trees left ambiguous are sorted and swept.

  Args:
    y: array of shape (..., L, F): L leaf groups y[..., i, :] of F entries under one root.
    alpha: non-negative ℓ0 coefficient, broadcastable against ``y.shape[:-2]``.
    beta: non-negative leaf-group coefficient, broadcastable against ``y.shape[:-2]``.
    gamma: non-negative root-group coefficient, broadcastable against ``y.shape[:-2]``.
  """
  y = _check_float(y, 2, "theta")
  alpha, beta, gamma = _tree_coefs(y, "theta", alpha=alpha, beta=beta, gamma=gamma)
  yc = y.astype(alpha.dtype).reshape((-1,) + y.shape[-2:])
  alpha, beta, gamma = alpha.reshape(-1), beta.reshape(-1), gamma.reshape(-1)
  x_fast, ambiguous = _theta_bracketed(yc, alpha, beta, gamma)
  x = _settle_ambiguous(x_fast, ambiguous, _theta_exact, (yc, alpha, beta, gamma))
  return x.reshape(y.shape).astype(y.dtype)


def _theta_exact(yc: Array, alpha: Array, beta: Array, gamma: Array) -> Array:
  """θ by sorting every leaf and sweeping (``_theta_swept``); shapes as ``_theta_bracketed``."""
  a_sorted, s = _sorted_stats(yc)
  return _theta_swept(yc, a_sorted, jnp.square(jnp.maximum(s - beta[:, None, None], 0)), alpha, beta, gamma)


def _g(u: Array, beta: Array) -> Array:
  """g(u) = (√u − beta)_+²: what a leaf of squared norm u is worth after its leaf shrink."""
  return 2 * _phi(u, beta)


def _g_slope(u: Array, beta: Array) -> Array:
  """g'(u) = (1 − beta/√u)_+; non-decreasing in u."""
  return 2 * _phi_slope(u, beta)


def _leaf_slope_floor(gain: Array, w: Array, beta: Array) -> Array:
  """Least w·g'(u) over all u with w·g(u) ≥ gain: w·√gain / (beta·√w + √gain), 0 where gain ≤ 0."""
  root = jnp.sqrt(jnp.maximum(gain, 0))
  den = beta * jnp.sqrt(w) + root
  return jnp.where(gain > 0, w * root / jnp.where(den > 0, den, 1), 0)


def _leaf_support(sq: Array, omega: Array, alpha: Array, outer: bool) -> tuple[Array, Array, Array]:
  """Entries with omega·y² ≥ alpha (> when not ``outer``) per leaf, their squared norm and count."""
  value = omega[..., None] * sq
  take = value >= alpha[:, None, None] if outer else value > alpha[:, None, None]
  return take, jnp.sum(jnp.where(take, sq, 0), -1), jnp.sum(take, -1)


def _leaf_outer(sq: Array, u_all: Array, w: Array, alpha: Array, beta: Array, rel: float):
  """A support per leaf containing every maximiser S of w·g(u_S) − alpha·|S| (no sort).

  g is convex, so a maximiser S* keeps {j : ω*·y_j² ≥ alpha} with ω* = w·g'(u*) (the π argument
  of spec §C.1 with the leaf as the group); ω* ≤ w·g'(u_all) gives a first outer support, and
  u* ≤ its u tightens the slope once. Slopes are widened by rel against rounding.
  Shapes: sq (T, L, F), u_all (T, L), w, alpha, beta (T,). Returns (take, u, count).
  """
  up = 1 + rel
  wb, b = w[:, None], beta[:, None]
  omega = wb * _g_slope(u_all * up, b) * up
  _, u, _ = _leaf_support(sq, omega, alpha, True)
  return _leaf_support(sq, jnp.minimum(omega, wb * _g_slope(u * up, b) * up), alpha, True)


def _leaf_inner(sq: Array, u_all: Array, w: Array, alpha: Array, beta: Array, rel: float):
  """A support per leaf contained in every maximiser S of w·g(u_S) − alpha·|S| (no sort).

  The outer support is feasible, so its gain q_ref bounds the best gain q* from below, and
  w·g(u*) = q* + alpha·|S*| ≥ q_ref gives ω* ≥ ``_leaf_slope_floor(q_ref)``; the entries kept
  strictly at that slope are in S*. Tightened once with their u and count (u* ≥ u, |S*| ≥ count).
  Shapes as ``_leaf_outer``.
  """
  down = 1 - rel
  wb, a, b = w[:, None], alpha[:, None], beta[:, None]
  _, u_out, c_out = _leaf_outer(sq, u_all, w, alpha, beta, rel)
  value, cost = wb * _g(u_out, b), a * c_out
  q_ref = value - cost - rel * (value + cost)
  omega = _leaf_slope_floor(q_ref, wb, b)
  _, u, c = _leaf_support(sq, omega * down, alpha, False)
  omega = jnp.maximum(omega, jnp.maximum(wb * _g_slope(u * down, b), _leaf_slope_floor(q_ref + a * c * down, wb, b)))
  omega = jnp.minimum(omega, wb * _g_slope(u_all, b))  # ω* never exceeds it: keeps the inner support inside the outer
  return _leaf_support(sq, omega * down, alpha, False)


def _theta_bracketed(yc: Array, alpha: Array, beta: Array, gamma: Array) -> tuple[Array, Array]:
  """θ where ``_bracket`` settles it (no sort, no hull, no sweep), and the mask of trees it leaves ambiguous.

  At a root slope w the linearised problem splits over the leaves: each maximises
  w·g(u_S) − alpha·|S| over its entries, itself a π-type problem with a convex value, so its
  maximisers are bracketed without sorting (``_leaf_outer`` / ``_leaf_inner``). Where the
  inner support at w_lo equals the outer one at w_hi, that support is θ's.
  Shapes: yc (T, L, F); coefficients (T,).
  """
  rel = 1024 * float(np.finfo(yc.dtype).eps)
  sq = jnp.square(yc)
  u_all = jnp.sum(sq, -1)
  b = beta[:, None]

  def state(w, outer):
    take, u, count = (_leaf_outer if outer else _leaf_inner)(sq, u_all, w, alpha, beta, rel)
    leaf_h = _g(u, b)
    return take, leaf_h, jnp.sum(leaf_h, -1), jnp.sum(count, -1).astype(yc.dtype)

  take, _, ambiguous, zero = _bracket(state, jnp.sum(_g(u_all, b), -1), alpha, gamma)
  keep = take & ~zero[:, None, None]
  return _tree_shrink(jnp.where(keep, yc, 0), beta, gamma), ambiguous


def _theta_swept(yc: Array, a_sorted: Array, h: Array, alpha: Array, beta: Array, gamma: Array) -> Array:
  """θ by the full sweep: per-leaf upper hulls, all switch events merged and sorted, best prefix.

  Shapes as ``_theta_bracketed``.
  """
  dt = h.dtype
  trees, leaves, width = yc.shape
  alive, prev = _upper_hull(h)

  # One switch event per hull vertex k > 0: the leaf goes from its previous vertex p to k
  # once w ≥ alpha·(k − p)/(h[k] − h[p]).
  idx = jnp.arange(width + 1)
  event = alive & (idx > 0)
  dk = jnp.where(event, idx - prev, 0)
  dh = jnp.where(event, h - jnp.take_along_axis(h, prev, -1), 0)
  w = alpha[:, None, None] * dk.astype(dt) / jnp.where(event, dh, 1)
  # Rounding must not reorder a leaf's own events: make them non-decreasing per leaf.
  w = _scan(jnp.maximum, jnp.where(event, w, -jnp.inf))
  w = jnp.where(event, w, jnp.inf)

  # Merge all leaves' events of one tree and sweep w upwards. The state after all events
  # with slope ≤ w maximises the linearisation at w, so it suffices to evaluate the gain
  # at the last event of each run of equal w (and at the empty state).
  w_flat = w.reshape(trees, leaves * (width + 1))
  order = jnp.argsort(w_flat, axis=-1, stable=True)  # ascending w
  w_sorted = jnp.take_along_axis(w_flat, order, -1)
  big_h = _cumsum(jnp.take_along_axis(dh.reshape(w_flat.shape), order, -1))
  big_k = _cumsum(jnp.take_along_axis(dk.reshape(w_flat.shape).astype(dt), order, -1))
  gain = _phi(big_h, gamma[:, None]) - alpha[:, None] * big_k
  run_end = jnp.concatenate([w_sorted[:, 1:] != w_sorted[:, :-1], jnp.ones((trees, 1), bool)], -1)
  gain = jnp.where(run_end & (w_sorted < jnp.inf), gain, -jnp.inf)
  best = jnp.argmax(gain, axis=-1)
  w_best = jnp.where(jnp.take_along_axis(gain, best[:, None], -1)[:, 0] > 0,
                     jnp.take_along_axis(w_sorted, best[:, None], -1)[:, 0], -jnp.inf)  # ties → 0

  # Leaf support sizes of the best state, and the entries that make them up.
  k_leaf = jnp.sum(jnp.where(w <= w_best[:, None, None], dk, 0), axis=-1)  # (T, L)
  keep = _top_k_mask(jnp.abs(yc), a_sorted, k_leaf)
  return _tree_shrink(jnp.where(keep, yc, 0), beta, gamma)
