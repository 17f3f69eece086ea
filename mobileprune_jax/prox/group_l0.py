"""π: the exact prox of lam·‖x‖₂ + eta·‖x‖₀ on each group (MobilePrune Algorithm 2).

``pi_bracketed`` (the sort-free path) and ``pi_sorted`` (the exact sort) are exported for tests
and benchmarks; use ``pi``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mobileprune_jax.prox.bracketing import bracket, cumsum, settle_ambiguous, shrink_factor, sorted_stats, top_k_mask
from mobileprune_jax.prox.validation import check_float, checked, coef, compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@checked("lam", "eta")
def pi(y: ArrayLike, lam: ArrayLike, eta: ArrayLike) -> Array:
  """Prox of lam·‖x‖₂ + eta·‖x‖₀ over the last axis (MobilePrune Algorithm 2).

  For support size k the best support is the k largest |y_j|, with value
  S_k = ½(s_k − lam)_+² − eta·k, s_k = ‖top-k of y‖₂; x keeps the top-k* entries,
  k* = argmax S_k, shrunk by (1 − lam/s_k*), and x = 0 if max S_k ≤ 0.

  Most groups are settled without sorting (``bracket``: the optimal support is
  {j : w*·y_j² ≥ eta} for a slope w* pinned between two cheap bounds); the rest are solved
  by the sort above.

  Args:
    y: array of shape (..., n); each y[..., :] is one group.
    lam: non-negative group coefficient, broadcastable against ``y.shape[:-1]``.
    eta: non-negative ℓ0 coefficient, broadcastable against ``y.shape[:-1]``.
  """
  y = check_float(y, 1, "pi")
  dt = compute_dtype(y.dtype)
  lam = coef(lam, dt, y.shape[:-1], "pi", "lam")
  eta = coef(eta, dt, y.shape[:-1], "pi", "eta")
  yc = y.astype(dt)
  flat = lambda a: a.reshape((-1,) + a.shape[y.ndim - 1:])
  yc, lam, eta = flat(yc), flat(lam), flat(eta)
  if yc.shape[-1] == 1:  # one-entry groups (biases): the closed form, nothing to bracket or rank
    return pi_single(yc, lam, eta).reshape(y.shape).astype(y.dtype)
  x_fast, ambiguous, inner, outer = pi_bounds(yc, lam, eta)
  x = settle_ambiguous(x_fast, ambiguous, pi_between, (yc, lam, eta, inner, outer))
  return x.reshape(y.shape).astype(y.dtype)


def pi_single(yc: Array, lam: Array, eta: Array) -> Array:
  """π on groups of one entry (shape (groups, 1)): x = y·(1 − lam/|y|)_+ where ½(|y| − lam)_+² > eta, else 0.

  The support is {y} or empty, so π's score S₁ = ½(|y| − lam)_+² − eta against S₀ = 0 decides (ties → 0).
  """
  a = jnp.abs(yc[:, 0])
  keep = 0.5 * jnp.square(jnp.maximum(a - lam, 0)) - eta > 0
  return jnp.where(keep, shrink_factor(a, lam), 0)[:, None] * yc


def pi_bracketed(yc: Array, lam: Array, eta: Array) -> tuple[Array, Array]:
  """π where ``bracket`` settles it (no sort), and the mask of groups it leaves ambiguous."""
  x, ambiguous, _, _ = pi_bounds(yc, lam, eta)
  return x, ambiguous


def pi_bounds(yc: Array, lam: Array, eta: Array) -> tuple[Array, Array, Array, Array]:
  """``pi_bracketed`` and the inner and outer supports that bracket every optimum of the ambiguous groups."""
  sq = jnp.square(yc)

  def state(w, outer):  # each entry is a leaf of one member: kept iff w·y_j² ≥ eta (> for the inner bound)
    take = w[:, None] * sq >= eta[:, None] if outer else w[:, None] * sq > eta[:, None]
    leaf_h = jnp.where(take, sq, 0)
    return take, leaf_h, jnp.sum(leaf_h, -1), jnp.sum(take, -1).astype(yc.dtype)

  take, big_h, ambiguous, zero, inner = bracket(state, jnp.sum(sq, -1), eta, lam)
  scale = jnp.where(zero, 0, shrink_factor(jnp.sqrt(big_h), lam))
  return jnp.where(take, yc * scale[..., None], 0), ambiguous, inner, take


BAND = 64  # entries an ambiguous group may hold between its bounds for the sort-free ranking (``pi_banded``)


def pi_between(yc: Array, lam: Array, eta: Array, inner: Array, outer: Array) -> Array:
  """π on groups whose optima lie between ``inner`` ⊆ S* ⊆ ``outer``: ``pi_banded`` when every group of the
  batch has at most ``BAND`` entries in between, else ``pi_sorted`` (a full sort)."""
  width = min(BAND, yc.shape[-1])
  if width == yc.shape[-1]:
    return pi_banded(yc, lam, eta, inner, outer, width)
  fits = jnp.all(jnp.sum(outer & ~inner, -1) <= width)
  return jax.lax.cond(fits, lambda: pi_banded(yc, lam, eta, inner, outer, width), lambda: pi_sorted(yc, lam, eta))


def pi_banded(yc: Array, lam: Array, eta: Array, inner: Array, outer: Array, width: int) -> Array:
  """π when inner ⊆ S* ⊆ outer and at most ``width`` entries lie in the band outer ∖ inner.

  An optimum keeps the largest |y_j| (for its size), so it is the inner support plus the j largest band
  entries for some j, or empty: S_j = ½(√(H_in + Σ top-j band y²) − lam)_+² − eta·(K_in + j) is scored for
  j = 0..|band| (``lax.top_k`` of the band, no sort of the group) and the best kept, x = 0 if no S_j > 0.
  Ties go to the smaller support, as in ``pi_sorted``.
  """
  a, sq = jnp.abs(yc), jnp.square(yc)
  band = outer & ~inner
  values, index = jax.lax.top_k(jnp.where(band, a, -1), width)  # band entries first, largest first
  in_band = values >= 0
  h_in = jnp.sum(jnp.where(inner, sq, 0), -1)
  k_in = jnp.sum(inner, -1).astype(yc.dtype)
  prefix = jnp.concatenate([jnp.zeros_like(h_in)[:, None], cumsum(jnp.where(in_band, jnp.square(values), 0))], -1)
  s = jnp.sqrt(h_in[:, None] + prefix)  # (groups, width + 1): the support's norm with j band entries
  j = jnp.arange(width + 1)
  score = 0.5 * jnp.square(jnp.maximum(s - lam[:, None], 0)) - eta[:, None] * (k_in[:, None] + j)
  score = jnp.where(j <= jnp.sum(in_band, -1, keepdims=True), score, -jnp.inf)
  best = jnp.argmax(score, axis=-1)  # first maximum: the smallest support
  keep_best = jnp.take_along_axis(score, best[:, None], -1)[:, 0] > 0  # else x = 0 (ties too)
  rows = jnp.arange(yc.shape[0])[:, None]
  from_band = jnp.zeros(yc.shape, bool).at[rows, index].set(jnp.arange(width) < best[:, None])
  scale = shrink_factor(jnp.take_along_axis(s, best[:, None], -1)[:, 0], lam) * keep_best
  return jnp.where(inner | from_band, yc * scale[:, None], 0)


def pi_sorted(yc: Array, lam: Array, eta: Array) -> Array:
  """π by sorting each group: the score S_k of every support size k, then the best k."""
  n = yc.shape[-1]
  a_sorted, s = sorted_stats(yc)
  k = jnp.arange(n + 1, dtype=yc.dtype)
  score = 0.5 * jnp.square(jnp.maximum(s - lam[..., None], 0)) - eta[..., None] * k
  k_best = jnp.argmax(score, axis=-1)  # first maximum: smallest k; score[0] = 0
  s_best = jnp.take_along_axis(s, k_best[..., None], axis=-1)[..., 0]
  keep = top_k_mask(jnp.abs(yc), a_sorted, k_best)
  scale = shrink_factor(s_best, lam)
  return jnp.where(keep, yc * scale[..., None], 0)
