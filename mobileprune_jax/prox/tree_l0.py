"""θ: the exact prox of alpha·‖x‖₀ + beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂ on two-level trees (MobilePrune Algorithm 3).

``theta_bracketed`` (sort-free), ``theta_exact`` (per-leaf upper hulls and a sweep of their switch
events) and the leaf bounds are exported for tests and benchmarks; use ``theta``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mobileprune_jax.prox.bracketing import (
  as_ordered_int,
  bracket,
  cumsum,
  phi,
  phi_slope,
  scan,
  settle_ambiguous,
  sorted_stats,
  top_k_mask,
)
from mobileprune_jax.prox.convex import tree_coefs, tree_shrink
from mobileprune_jax.prox.validation import check_float, checked

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@checked("alpha", "beta", "gamma")
def theta(y: ArrayLike, alpha: ArrayLike, beta: ArrayLike, gamma: ArrayLike) -> Array:
  """Prox of alpha·‖x‖₀ + beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂ on a two-level tree (MobilePrune Alg. 3).

  Exact: for leaf support sizes kᵢ the value gain is Φ(Σᵢ hᵢ(kᵢ)) − alpha·Σᵢ kᵢ with
  hᵢ(k) = (‖top-k of yᵢ‖ − beta)_+² and Φ(H) = ½(√H − gamma)_+². Φ is convex, so an optimum
  maximises Σᵢ w·hᵢ(kᵢ) − alpha·kᵢ for some w; sweeping w over the breakpoints of the
  per-leaf upper hulls visits it (docs/algorithms.md §C.2). The result is the top-kᵢ entries of each leaf,
  leaf-shrunk by beta and root-shrunk by gamma. Most trees are settled without sorting
  (``theta_bracketed``: w is pinned between two bounds, and each leaf's choice at a given w is
  bracketed the same way, by thresholds on y²); only the trees left ambiguous are sorted and swept.

  Args:
    y: array of shape (..., L, F): L leaf groups y[..., i, :] of F entries under one root.
    alpha: non-negative ℓ0 coefficient, broadcastable against ``y.shape[:-2]``.
    beta: non-negative leaf-group coefficient, broadcastable against ``y.shape[:-2]``.
    gamma: non-negative root-group coefficient, broadcastable against ``y.shape[:-2]``.
  """
  y = check_float(y, 2, "theta")
  alpha, beta, gamma = tree_coefs(y, "theta", alpha=alpha, beta=beta, gamma=gamma)
  yc = y.astype(alpha.dtype).reshape((-1,) + y.shape[-2:])
  alpha, beta, gamma = alpha.reshape(-1), beta.reshape(-1), gamma.reshape(-1)
  x_fast, ambiguous, inner, outer = theta_bounds(yc, alpha, beta, gamma)
  x = settle_ambiguous(x_fast, ambiguous, theta_between, (yc, alpha, beta, gamma, inner, outer))
  return x.reshape(y.shape).astype(y.dtype)


def theta_bracketed(yc: Array, alpha: Array, beta: Array, gamma: Array) -> tuple[Array, Array]:
  """θ where ``bracket`` settles it (no sort, no hull, no sweep), and the mask of trees it leaves ambiguous.

  At a root slope w the linearised problem splits over the leaves: each maximises
  w·g(u_S) − alpha·|S| over its entries, itself a π-type problem with a convex value, so its
  maximisers are bracketed without sorting (``leaf_outer`` / ``leaf_inner``). Where the
  inner support at w_lo equals the outer one at w_hi, that support is θ's.
  Shapes: yc (T, L, F); alpha, gamma (T,); beta (T,) or per leaf (T, L).
  """
  x, ambiguous, _, _ = theta_bounds(yc, alpha, beta, gamma)
  return x, ambiguous


def theta_bounds(yc: Array, alpha: Array, beta: Array, gamma: Array) -> tuple[Array, Array, Array, Array]:
  """``theta_bracketed`` and, per entry, the inner and outer supports between which every optimum of an
  ambiguous tree lies (``bracket``)."""
  rel = 1024 * float(np.finfo(yc.dtype).eps)
  sq = jnp.square(yc)
  u_all = jnp.sum(sq, -1)
  b = leaf_beta(beta, yc)

  def state(w, outer):
    take, u, count = (leaf_outer if outer else leaf_inner)(sq, u_all, w, alpha, beta, rel)
    leaf_h = g(u, b)
    return take, leaf_h, jnp.sum(leaf_h, -1), jnp.sum(count, -1).astype(yc.dtype)

  take, _, ambiguous, zero, inner = bracket(state, jnp.sum(g(u_all, b), -1), alpha, gamma)
  keep = take & ~zero[:, None, None]
  return tree_shrink(jnp.where(keep, yc, 0), beta, gamma), ambiguous, inner, take


BAND = 64  # entries a leaf of an ambiguous tree may hold between its bounds for ``theta_banded``


def theta_between(yc: Array, alpha: Array, beta: Array, gamma: Array, inner: Array, outer: Array) -> Array:
  """θ on trees whose optima lie between ``inner`` ⊆ S* ⊆ ``outer``: ``theta_banded`` when no leaf of the batch
  holds more than ``BAND`` entries in between, else ``theta_exact`` (sorts every leaf)."""
  width = min(BAND, yc.shape[-1])
  if width == yc.shape[-1]:
    return theta_banded(yc, alpha, beta, gamma, inner, outer, width)
  fits = jnp.all(jnp.sum(outer & ~inner, -1) <= width)
  return jax.lax.cond(fits, lambda: theta_banded(yc, alpha, beta, gamma, inner, outer, width),
                      lambda: theta_exact(yc, alpha, beta, gamma))


def theta_banded(yc: Array, alpha: Array, beta: Array, gamma: Array, inner: Array, outer: Array, width: int) -> Array:
  """θ when inner ⊆ S* ⊆ outer and no leaf has more than ``width`` entries in its band outer ∖ inner.

  Within a leaf an optimum keeps the largest |y_j| for its size, so each leaf's support is its inner part plus
  the j largest of its band: hᵢ(j) = (√(u_in + Σ top-j band y²) − betaᵢ)_+², j = 0..|bandᵢ| (``lax.top_k``, no
  sort of the leaf), swept from the state j = 0 everywhere exactly as ``theta_swept`` sweeps from the empty one.
  Shapes as ``theta_bracketed``.
  """
  sq = jnp.square(yc)
  band = outer & ~inner
  values, index = jax.lax.top_k(jnp.where(band, jnp.abs(yc), -1), width)  # (T, L, width): the band, largest first
  in_band = values >= 0
  u_in = jnp.sum(jnp.where(inner, sq, 0), -1)
  k_in = jnp.sum(inner, (-2, -1)).astype(yc.dtype)
  zeros = jnp.zeros(u_in.shape + (1,), yc.dtype)
  u = u_in[..., None] + jnp.concatenate([zeros, cumsum(jnp.where(in_band, jnp.square(values), 0))], -1)
  h = jnp.square(jnp.maximum(jnp.sqrt(u) - leaf_beta(beta, yc)[..., None], 0))  # (T, L, width + 1)
  # past the band h stays flat (equal to the last real point): the hull drops those points as dominated
  steps, zero = sweep(h, alpha, gamma, k_in)
  from_band = jnp.zeros(yc.shape, bool)
  t, leaves = jnp.indices(yc.shape[:2])
  from_band = from_band.at[t[..., None], leaves[..., None], index].set(jnp.arange(width) < steps[..., None])
  keep = (inner | from_band) & ~zero[:, None, None]
  return tree_shrink(jnp.where(keep, yc, 0), beta, gamma)


def leaf_beta(beta: Array, yc: Array) -> Array:
  """The leaf coefficient per leaf, shape (T, L): ``beta`` is one per tree (T,) or already one per leaf (T, L)."""
  return jnp.broadcast_to(beta[:, None] if beta.ndim == 1 else beta, yc.shape[:2])


def theta_leafwise(y: Array, alpha: Array, beta: Array, gamma: Array) -> Array:
  """θ with one leaf coefficient per leaf: prox of alpha·‖x‖₀ + Σᵢ betaᵢ·‖xᵢ‖₂ + gamma·‖x‖₂ (coupled units).

  The derivation of ``theta`` holds leaf by leaf (hᵢ(k) = (‖top-k of yᵢ‖ − betaᵢ)_+²), so it is exact
  for any non-negative per-leaf coefficients. Internal: no checks, shapes y (T, L, F), alpha and gamma
  (T,), beta (T, L); computed in y's dtype.
  """
  x_fast, ambiguous, inner, outer = theta_bounds(y, alpha, beta, gamma)
  return settle_ambiguous(x_fast, ambiguous, theta_between, (y, alpha, beta, gamma, inner, outer))


def leaf_outer(sq: Array, u_all: Array, w: Array, alpha: Array, beta: Array, rel: float):
  """A support per leaf containing every maximiser S of w·g(u_S) − alpha·|S| (no sort).

  g is convex, so a maximiser S* keeps {j : ω*·y_j² ≥ alpha} with ω* = w·g'(u*) (the π argument
  of docs/algorithms.md §C.1 with the leaf as the group); ω* ≤ w·g'(u_all) gives a first outer support, and
  u* ≤ its u tightens the slope once. Slopes are widened by rel against rounding.
  Shapes: sq (T, L, F), u_all (T, L), w, alpha, beta (T,). Returns (take, u, count).
  """
  up = 1 + rel
  wb, b = w[:, None], leaf_beta(beta, sq)
  omega = wb * g_slope(u_all * up, b) * up
  _, u, _ = leaf_support(sq, omega, alpha, True)
  return leaf_support(sq, jnp.minimum(omega, wb * g_slope(u * up, b) * up), alpha, True)


def leaf_inner(sq: Array, u_all: Array, w: Array, alpha: Array, beta: Array, rel: float):
  """A support per leaf contained in every maximiser S of w·g(u_S) − alpha·|S| (no sort).

  The outer support is feasible, so its gain q_ref bounds the best gain q* from below, and
  w·g(u*) = q* + alpha·|S*| ≥ q_ref gives ω* ≥ ``leaf_slope_floor(q_ref)``; the entries kept
  strictly at that slope are in S*. Tightened once with their u and count (u* ≥ u, |S*| ≥ count).
  Shapes as ``leaf_outer``.
  """
  down = 1 - rel
  wb, a, b = w[:, None], alpha[:, None], leaf_beta(beta, sq)
  _, u_out, c_out = leaf_outer(sq, u_all, w, alpha, beta, rel)
  value, cost = wb * g(u_out, b), a * c_out
  q_ref = value - cost - rel * (value + cost)
  omega = leaf_slope_floor(q_ref, wb, b)
  _, u, c = leaf_support(sq, omega * down, alpha, False)
  omega = jnp.maximum(omega, jnp.maximum(wb * g_slope(u * down, b), leaf_slope_floor(q_ref + a * c * down, wb, b)))
  omega = jnp.minimum(omega, wb * g_slope(u_all, b))  # ω* never exceeds it: keeps the inner support inside the outer
  return leaf_support(sq, omega * down, alpha, False)


def leaf_support(sq: Array, omega: Array, alpha: Array, outer: bool) -> tuple[Array, Array, Array]:
  """Entries with omega·y² ≥ alpha (> when not ``outer``) per leaf, their squared norm and count."""
  value = omega[..., None] * sq
  take = value >= alpha[:, None, None] if outer else value > alpha[:, None, None]
  return take, jnp.sum(jnp.where(take, sq, 0), -1), jnp.sum(take, -1)


def leaf_slope_floor(gain: Array, w: Array, beta: Array) -> Array:
  """Least w·g'(u) over all u with w·g(u) ≥ gain: w·√gain / (beta·√w + √gain), 0 where gain ≤ 0."""
  root = jnp.sqrt(jnp.maximum(gain, 0))
  den = beta * jnp.sqrt(w) + root
  return jnp.where(gain > 0, w * root / jnp.where(den > 0, den, 1), 0)


def g(u: Array, beta: Array) -> Array:
  """g(u) = (√u − beta)_+²: what a leaf of squared norm u is worth after its leaf shrink."""
  return 2 * phi(u, beta)


def g_slope(u: Array, beta: Array) -> Array:
  """g'(u) = (1 − beta/√u)_+; non-decreasing in u."""
  return 2 * phi_slope(u, beta)


def theta_exact(yc: Array, alpha: Array, beta: Array, gamma: Array) -> Array:
  """θ by sorting every leaf and sweeping (``theta_swept``); shapes as ``theta_bracketed``."""
  a_sorted, s = sorted_stats(yc)
  return theta_swept(yc, a_sorted, jnp.square(jnp.maximum(s - leaf_beta(beta, yc)[..., None], 0)), alpha, beta, gamma)


def theta_swept(yc: Array, a_sorted: Array, h: Array, alpha: Array, beta: Array, gamma: Array) -> Array:
  """θ by the full sweep: per-leaf upper hulls, all switch events merged and sorted, best prefix.

  Shapes as ``theta_bracketed``; h (T, L, F + 1) the value of each leaf's top-k, k = 0..F.
  """
  k_leaf, zero = sweep(h, alpha, gamma, jnp.zeros(h.shape[:1], h.dtype))
  keep = top_k_mask(jnp.abs(yc), a_sorted, jnp.where(zero[:, None], 0, k_leaf))
  return tree_shrink(jnp.where(keep, yc, 0), beta, gamma)


def sweep(h: Array, alpha: Array, gamma: Array, k_base: Array) -> tuple[Array, Array]:
  """The best state of max Φ(Σᵢ hᵢ(jᵢ)) − alpha·(k_base + Σᵢ jᵢ) over jᵢ = 0..J, and whether x = 0 beats it.

  hᵢ is non-decreasing in j (T, L, J + 1); jᵢ counts entries beyond a base state of k_base entries per tree
  (hᵢ(0) its value). Per-leaf upper hulls give each leaf's switch events; merged and sorted by slope w, the
  states after every run of equal w (and the base state) are the maximisers of the linearisation for
  every w, so the best of them is the optimum. Returns (j per leaf (T, L), zero (T,)). Slopes must be ≥ 0
  (alpha ≥ 0): they are sorted as integers.
  """
  dt = h.dtype
  trees, leaves, width = h.shape
  base_h = jnp.sum(h[..., 0], -1)
  h = h - h[..., :1]  # the hull and the events do not change; every leaf now starts at 0
  alive, prev = upper_hull(h)

  # One switch event per hull vertex k > 0: the leaf goes from its previous vertex p to k
  # once w ≥ alpha·(k − p)/(h[k] − h[p]).
  idx = jnp.arange(width)
  event = alive & (idx > 0)
  dk = jnp.where(event, idx - prev, 0)
  dh = jnp.where(event, h - jnp.take_along_axis(h, prev, -1), 0)
  w = alpha[:, None, None] * dk.astype(dt) / jnp.where(event, dh, 1)
  # Rounding must not reorder a leaf's own events: make them non-decreasing per leaf.
  w = scan(jnp.maximum, jnp.where(event, w, -jnp.inf))
  w = jnp.where(event, w, jnp.inf)
  w = jnp.where(w == 0, 0, w)  # -0.0 (alpha = -0.0) is +0.0: the integer keys below order them alike

  # Merge all leaves' events of one tree and sweep w upwards. The state after all events with slope ≤ w
  # maximises the linearisation at w, so it suffices to evaluate the gain at the last event of each run of
  # equal w (and at the base state). Sorting the slopes alone is an integer sort (``sort_nonnegative``);
  # each event's dh and dk are added at the last slot of its run (a binary search), so prefix sums over
  # the sorted slots give the state at every run end without sorting the events themselves.
  keys = as_ordered_int(w.reshape(trees, leaves * width))
  sorted_keys = jax.lax.sort(keys, dimension=1, is_stable=False)
  slot = jax.vmap(lambda row, k: jnp.searchsorted(row, k, side="right"))(sorted_keys, keys) - 1
  rows = jnp.arange(trees)[:, None]
  at_slots = lambda v: cumsum(jnp.zeros(keys.shape, dt).at[rows, slot].add(v.reshape(trees, -1).astype(dt)))
  big_h, big_k = base_h[:, None] + at_slots(dh), k_base[:, None] + at_slots(dk)
  run_end = jnp.concatenate([sorted_keys[:, 1:] != sorted_keys[:, :-1], jnp.ones((trees, 1), bool)], -1)
  real = sorted_keys < as_ordered_int(jnp.asarray(jnp.inf, dt))
  gain = jnp.where(run_end & real, phi(big_h, gamma[:, None]) - alpha[:, None] * big_k, -jnp.inf)
  best = jnp.argmax(gain, axis=-1)
  best_gain = jnp.take_along_axis(gain, best[:, None], -1)[:, 0]
  base_gain = phi(base_h, gamma) - alpha * k_base
  zero = jnp.maximum(base_gain, best_gain) <= 0  # ties → 0
  w_best = jax.lax.bitcast_convert_type(jnp.take_along_axis(sorted_keys, best[:, None], -1)[:, 0], dt)
  w_best = jnp.where(base_gain >= best_gain, -1, w_best)  # the base state (ties: the smaller support)

  # Each leaf's steps in the best state.
  return jnp.sum(jnp.where(w <= w_best[:, None, None], dk, 0), axis=-1), zero


def upper_hull(h: Array) -> tuple[Array, Array]:
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
    prev = scan(jnp.maximum, jnp.concatenate([jnp.full(left.shape[:-1] + (1,), -1), left[..., :-1]], -1))
    nxt = scan(jnp.minimum, jnp.concatenate([right[..., 1:], jnp.full(right.shape[:-1] + (1,), big)], -1), reverse=True)
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
